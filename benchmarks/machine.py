"""What every benchmark records beside its numbers: the machine, its load, and the library versions."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def simd_flags() -> list[str]:
    """The CPU's vector extensions that matter for torch's kernels (``/proc/cpuinfo`` flags), e.g. avx2 only
    vs avx512f: the same ISA level can run at different speeds, and an ISA variable can cap it."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
            return [f for f in wanted if f in flags]
    return []


def machine() -> dict:
    """Platform, CPU model, cores, its vector extensions, the ISA level torch dispatches to
    (``torch.backends.cpu.get_cpu_capability()``), torch threads, the load average when called (other jobs
    slow every number down), the git commit, the ISA/thread variables set, and the versions of the scientific
    libraries imported. Call :func:`finish` on it at the end for the load after."""
    import torch  # every benchmark here times torch: its ISA level and threads belong to every result

    info = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_simd": simd_flags(),
        "load_average_1min": os.getloadavg()[0],
        "load_average_before": list(os.getloadavg()),
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "torch_threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }
    for name in ("torch", "monai", "numpy", "scipy", "nibabel"):
        if name in sys.modules:
            info[name] = sys.modules[name].__version__
    return info


def finish(info: dict) -> dict:
    """``info`` (from :func:`machine`) with the load average after the measurements (1, 5, 15 min) and the
    torch threads in use now (a benchmark may set them after calling :func:`machine`)."""
    import torch

    load = os.getloadavg()
    return info | {"load_average_after_1min": load[0], "load_average_after": list(load),
                   "torch_threads": torch.get_num_threads()}  # fmt: skip


def append_row(path: Path, benchmark: str, goal: str, row: dict) -> None:
    """Add ``row`` to the results file ``path`` (``{"benchmark", "goal", "rows"}``), keeping the rows before it."""
    old = json.loads(path.read_text()) if path.exists() else {}
    result = {"benchmark": benchmark, "goal": goal, "rows": [*old.get("rows", []), row]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM (Linux; unlike ru_maxrss it does not carry the parent's peak
    across fork + exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
