"""A Binder-like check without Docker: what repo2docker would build from binder/ alone, then every notebook
with its default parameters inside it, under Binder's memory (2 GB).

    python binder/binder_check.py --venv /tmp/binder-venv --out executed/binder

1. a fresh virtual environment with the Python of binder/runtime.txt (``python3.X`` on PATH);
2. ``pip install -r binder/requirements.txt`` in it, then ``binder/postBuild`` (as repo2docker runs them);
3. notebooks 01 to 05 in order, each with ``mckd-lab run`` (papermill, the defaults; 03 and 04 open 01's run,
   as they do in a Binder session), timed with ``/usr/bin/time -v``, under a 2 GB limit on the resident memory
   of the whole process tree (papermill, the kernel, any worker), polled every 0.2 s: the run is stopped and
   reported when it goes over, as Binder's container limit would. (An address-space limit, ``prlimit --as`` /
   ``ulimit -v``, is no stand-in: torch reserves far more address space than it uses, and at 2 GB the kernel
   failed with MemoryError at 0.8 GB resident.)

Prints (and writes to ``--out/binder_check.md``) a table of wall time, CPU time and peak resident memory per
notebook, with the machine and its load. It takes as long as the notebooks do (tens of minutes on 2 cores), so
it is not part of ``make test``; its last result is recorded in notebooks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
NOTEBOOKS = ["01_brats_mckd", "02_adni_mckd", "03_missing_modalities", "04_attributions", "05_experiments"]
OPENS_01 = {"03_missing_modalities", "04_attributions"}  # they take notebook 01's run apart


def runtime_python() -> str:
    """The interpreter binder/runtime.txt names (``python-3.11`` -> ``python3.11`` on PATH)."""
    wanted = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    found = shutil.which(f"python{wanted}")
    if found is None:
        raise SystemExit(f"binder/runtime.txt asks for Python {wanted}: no python{wanted} on PATH")
    return found


def machine() -> str:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")), platform.processor(),
    )  # fmt: skip
    load = os.getloadavg()
    return f"{model}, {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)"


def build(venv: Path, log, torch_index: bool = True) -> dict[str, float]:
    """The environment from binder/ alone; returns the seconds each step took. ``torch_index`` False: the
    requirements without their ``--extra-index-url`` line (a machine that cannot reach PyTorch's index but has
    the same CPU wheel where pip finds it, e.g. ``PIP_FIND_LINKS``)."""
    steps = {}
    start = time.monotonic()
    subprocess.run([runtime_python(), "-m", "venv", "--clear", str(venv)], check=True, stdout=log, stderr=log)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                   check=True, stdout=log, stderr=log)  # fmt: skip
    requirements = BINDER / "requirements.txt"
    if not torch_index:
        lines = requirements.read_text().splitlines()
        requirements = venv / "requirements-without-torch-index.txt"
        requirements.write_text("\n".join(ln for ln in lines if not ln.startswith("--extra-index-url")) + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-r", str(requirements)],
                   check=True, stdout=log, stderr=log, cwd=ROOT)  # fmt: skip
    steps["pip install -r binder/requirements.txt"] = time.monotonic() - start
    start = time.monotonic()
    subprocess.run(["bash", str(BINDER / "postBuild")], check=True, stdout=log, stderr=log, cwd=ROOT, env=_env(venv))
    steps["binder/postBuild"] = time.monotonic() - start
    return steps


def _env(venv: Path) -> dict[str, str]:
    """The venv first on PATH (the kernel spec runs ``python``), no stray interpreter settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


def run_notebook(venv: Path, name: str, out: Path, memory: str, log) -> dict[str, str]:
    """One notebook with its defaults under the memory limit; its wall time, CPU time and peak memory."""
    params = ["-p", "source_run", str(out / NOTEBOOKS[0] / "run")] if name in OPENS_01 else []
    command = ["/usr/bin/time", "-v", str(venv / "bin" / "mckd-lab"), "run",
               str(ROOT / "notebooks" / f"{name}.ipynb"), "--out", str(out / name), *params]  # fmt: skip
    print(f"$ {' '.join(command)}", file=log, flush=True)
    code, peak, text = watch(command, to_bytes(memory), _env(venv))
    log.write(text)
    stats = dict(re.findall(r"^\s*(.+?): (.+)$", text, re.M))
    cpu = float(stats.get("User time (seconds)", "nan")) + float(stats.get("System time (seconds)", "nan"))
    status = "ok" if code == 0 else f"failed ({code})"
    if code is None:
        status = f"stopped: over {memory}"
    return {
        "status": status,
        "wall": stats.get("Elapsed (wall clock) time (h:mm:ss or m:ss)", "?"),
        "cpu": f"{cpu:.0f} s",
        "peak": f"{peak / 2**30:.2f} GB (largest process {int(stats.get('Maximum resident set size (kbytes)', 0)) / 2**20:.2f})",
    }


def watch(command: list[str], limit: int, env: dict) -> tuple[int | None, int, str]:
    """Run ``command``, polling the resident memory of its whole process tree every 0.2 s; past ``limit``
    bytes the tree is killed. Returns (exit code, None when killed; peak bytes; its output)."""
    import psutil

    with tempfile.TemporaryFile("w+") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        root, peak, killed = psutil.Process(proc.pid), 0, False
        while proc.poll() is None:
            tree = [root, *root.children(recursive=True)]
            total = 0
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total)
            if total > limit:
                for process in reversed(tree):
                    try:
                        process.kill()
                    except psutil.Error:
                        pass
                killed = True
                break
            time.sleep(0.2)
        proc.wait()
        output.seek(0)
        return (None if killed else proc.returncode), peak, output.read()


def to_bytes(size: str) -> int:
    """``2G`` -> 2147483648 (prlimit takes bytes: it reads ``2G`` as 2, and every process then crashes)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(size[:-1]) * units[size[-1].upper()]) if size[-1].upper() in units else int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/binder-venv"), help="where to build (replaced)")
    parser.add_argument("--out", type=Path, default=ROOT / "executed" / "binder", help="executed notebooks")
    parser.add_argument("--memory", default="2G", help="limit on the resident memory of a notebook's processes")
    parser.add_argument("--skip-build", action="store_true", help="reuse --venv as it is")
    parser.add_argument("--no-torch-index", action="store_true",
                        help="drop the requirements' --extra-index-url line (PyTorch's index unreachable)")
    parser.add_argument("--only", nargs="+", choices=NOTEBOOKS, help="run these notebooks only (03, 04: 01 ran)")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the kernels run in notebooks/: 03 and 04 get 01's run by absolute path
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"Machine: {machine()}; limit: {args.memory} resident, the whole process tree.", ""]
    with (args.out / "binder_check.log").open("w") as log:
        if not args.skip_build:
            if args.no_torch_index:
                lines.append("Built without the requirements' --extra-index-url line (torch's CPU wheel from PIP_FIND_LINKS).")
            for step, seconds in build(args.venv, log, torch_index=not args.no_torch_index).items():
                lines.append(f"- {step}: {seconds:.0f} s")
            lines.append("")
        lines += ["| notebook | status | wall time | CPU time | peak resident memory, all processes |",
                  "|---|---|---|---|---|"]
        for name in args.only or NOTEBOOKS:
            result = run_notebook(args.venv, name, args.out, args.memory, log)
            lines.append(f"| {name} | {result['status']} | {result['wall']} | {result['cpu']} | {result['peak']} |")
            print(lines[-1], flush=True)
    lines += ["", f"Load average after the runs: {machine().split('load average ')[1]}"]
    (args.out / "binder_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all("| ok |" in ln for ln in lines if ln.startswith("| 0")) else 1


if __name__ == "__main__":
    sys.exit(main())
