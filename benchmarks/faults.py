"""Faults, measured (issue 17): what was done to a training run or a sweep, and what survived.

Trials (each a real process, killed for real):

- ``kill``: a training process SIGKILLed at a random moment after its first checkpoint, ``--kills`` times (half
  at a uniformly random time, half at the moment a checkpoint's temporary file appears, i.e. during a
  checkpoint write), then resumed (``resume=True``); the resumed run must equal an uninterrupted one: the same
  network, strategy state and history (all but the timings), bit for bit;
- ``corrupt``: the last checkpoint flipped in one byte of tensor data, truncated, or emptied, then resumed:
  a warning naming the damaged file, the previous checkpoint used, the finished run equal to an uninterrupted one;
- ``lock``: a second process started on the folder of a training one: refused (how fast, with what message),
  the first one finishing equal to an uninterrupted run;
- ``disk_full``: training into a size-limited tmpfs (mounted here when run as root; else said why not)
  filled to a few kB of free space: the error, and whether the folder still loads and resumes once space is
  freed;
- ``sweep``: a Dask sweep (the embedded LocalCluster, 2 workers) whose workers are SIGKILLed repeatedly
  (tests/test_sweeps.py's toy notebook and killer): every run completes or is reported, and a finished
  result is never lost or rewritten.

Training runs are the test suite's tiny ones (tests/toydata.py balls, 16^3, channels 4-8-16) so that the
trials measure the run directory's guarantees, not the network. Each training process is forked from this
one (which imported the library once and never ran torch, so forking is safe) with one torch thread.

    .venv/bin/python benchmarks/faults.py [--kills 20] [--skip sweep] [--out benchmarks/results/faults.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from machine import machine  # noqa: E402
from toydata import ToyBalls  # noqa: E402

from mckd_lab.config import RunConfig  # noqa: E402
from mckd_lab.rundir import CHECKPOINT, RunDir, state_digest  # noqa: E402
from mckd_lab.train import train  # noqa: E402

RESULTS = HERE / "results" / "faults.json"


def config() -> RunConfig:
    return RunConfig().with_overrides({
        "optim.iterations": 24, "optim.warmup_iterations": 8, "model.channels": [4, 8, 16],
        "data.crop": [16, 16, 16], "method.meta_every_warmup": 4, "method.meta_every_missing": 4,
        "method.meta_batches": 2, "runtime.progress": False, "runtime.checkpoint_every": 2,
    })  # fmt: skip


def data() -> dict:
    return {"train_data": ToyBalls(cases=6, size=16, seed=0), "heldout_data": ToyBalls(cases=2, size=16, seed=1)}


# --- training in forked processes ----------------------------------------------------------------------------


def fork_train(folder: Path, resume: bool = False, stop_at: int | None = None) -> int:
    """Fork a process that trains ``config()`` into ``folder`` (``stop_at``: raise after that iteration's
    record); returns its pid. Exit status 0 done, 3 stopped as asked, 4 refused by the lock, 5 disk full, 1 other
    (its error in ``folder.parent / (folder.name + '.err')``)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        import torch

        torch.set_num_threads(1)

        class Stop(Exception):
            pass

        def stopper(record):
            if stop_at is not None and record["kind"] == "train" and record["iteration"] == stop_at:
                raise Stop

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                train(config(), folder, resume=resume, callbacks=[stopper], **data())
                code = 0
            except Stop:
                code = 3
            finally:
                notes = [str(w.message) for w in caught]
                if notes:
                    Path(f"{folder}.warnings").write_text("\n".join(notes))
    except BaseException as err:  # noqa: BLE001 - reported through the exit status and the .err file
        from mckd_lab.rundir import DiskFull, RunDirLocked

        code = 4 if isinstance(err, RunDirLocked) else 5 if isinstance(err, DiskFull) else 1
        Path(f"{folder}.err").write_text(f"{type(err).__name__}: {err}")
    finally:
        os._exit(code)


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run(folder: Path, **kwargs) -> int:
    return wait(fork_train(folder, **kwargs))


def fingerprint(folder: Path) -> dict:
    """Digests of the final network and strategy state, and the history without timings."""
    state = RunDir(folder).weights()
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(folder).history()]
    return {"model": state_digest(state["model"]), "strategy": state_digest(state["strategy"]),
            "iteration": state["iteration"], "history": state_digest(json.dumps(history, sort_keys=True))}  # fmt: skip


# --- trials --------------------------------------------------------------------------------------------------


def kill_trials(root: Path, reference: dict, kills: int, rng: random.Random, span: float) -> dict:
    """Kill n: a random iteration k after the first checkpoint is chosen; once its history line is written,
    even n wait a random fraction of an iteration (``span`` / iterations after the first checkpoint) and
    kill; odd n wait for the next checkpoint's temporary file to appear and kill then (during the write)."""
    trials, its = [], config().optim.iterations
    every = config().runtime.checkpoint_every
    per_iteration = span / (its - every)
    for n in range(kills):
        folder = root / f"kill{n}"
        during_write = n % 2 == 1
        target = rng.randrange(every, its - every)
        pid = fork_train(folder)
        tmp, history = folder / f".{CHECKPOINT}.tmp", folder / "history.jsonl"
        while not (history.exists() and f'"iteration": {target},' in history.read_text()):
            time.sleep(0.002)
        tic = time.perf_counter()
        if during_write:
            while not tmp.exists() and time.perf_counter() - tic < 60:
                time.sleep(0.0002)
        else:
            time.sleep(rng.uniform(0.0, per_iteration))
        in_write = tmp.exists()
        os.kill(pid, signal.SIGKILL)
        status = wait(pid)
        records = RunDir(folder).history()
        finished = (folder / "model.pt").exists()
        checkpoint = RunDir(folder).last_checkpoint()["iteration"]
        resumed = run(folder, resume=True) if not finished else 0
        same = resumed == 0 and fingerprint(folder) == reference
        trials.append({"aimed": "checkpoint write" if during_write else "random moment", "after_iteration": target,
                       "temporary_file_present": in_write, "killed": status == -signal.SIGKILL,
                       "last_logged_iteration": records[-1]["iteration"] if records else None,
                       "checkpoint_iteration": checkpoint, "finished_before_kill": finished,
                       "resume_exit": resumed, "equal_to_uninterrupted": same})  # fmt: skip
        print(f"kill {n}: {trials[-1]}", flush=True)
    return {"trials": trials, "n": len(trials), "killed_mid_run": sum(t["killed"] and not t["finished_before_kill"] for t in trials),
            "resumed_equal": sum(t["equal_to_uninterrupted"] for t in trials),
            "killed_during_checkpoint_write": sum(t["temporary_file_present"] for t in trials)}  # fmt: skip


def corrupt_trials(root: Path, reference: dict) -> dict:
    trials = []
    for damage in ("flipped byte in tensor data", "truncated to half", "emptied"):
        folder = root / f"corrupt-{damage.split()[0]}"
        assert run(folder, stop_at=8) == 3  # checkpoints at iterations 6 and 8 (checkpoint.prev.pt = 6)
        path = folder / CHECKPOINT
        raw = bytearray(path.read_bytes())
        if damage.startswith("flipped"):
            import torch

            weights = torch.load(path, weights_only=True)["model"]
            tensor = max(weights.values(), key=lambda t: t.numel())
            at = bytes(raw).find(tensor.numpy().tobytes()[:32])
            raw[at + 7] ^= 0xFF
        elif damage.startswith("truncated"):
            raw = raw[: len(raw) // 2]
        else:
            raw = bytearray()
        path.write_bytes(bytes(raw))
        status = run(folder, resume=True)
        note = Path(f"{folder}.warnings").read_text() if Path(f"{folder}.warnings").exists() else ""
        trials.append({"damage": damage, "resume_exit": status, "warning": note,
                       "names_the_file": str(path) in note, "used_previous": "iteration 6" in note,
                       "equal_to_uninterrupted": status == 0 and fingerprint(folder) == reference})  # fmt: skip
        print(f"corrupt: {trials[-1]}", flush=True)
    return {"trials": trials}


def lock_trial(root: Path, reference: dict) -> dict:
    folder = root / "lock"
    first = fork_train(folder)
    while not (folder / "history.jsonl").exists():
        time.sleep(0.01)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    tic = time.perf_counter()
    second = wait(fork_train(folder, resume=True))
    refused_after = time.perf_counter() - tic
    message = Path(f"{folder}.err").read_text() if Path(f"{folder}.err").exists() else ""
    first_status = wait(first)
    result = {"second_exit": second, "refused": second == 4, "seconds_to_refusal_including_fork_and_setup":
              round(refused_after, 3), "message": message, "names_folder_and_pid": str(folder) in message and
              f"pid {first}" in message, "files_before_refusal": sorted(before), "first_exit": first_status,
              "first_equal_to_uninterrupted": first_status == 0 and fingerprint(folder) == reference}  # fmt: skip
    print(f"lock: {result}", flush=True)
    return result


def disk_full_trial(root: Path, reference: dict) -> dict:
    if os.geteuid() != 0:
        return {"skipped": "not root: cannot mount a size-limited tmpfs here (mount needs CAP_SYS_ADMIN)"}
    mount = Path(tempfile.mkdtemp(prefix="mckd-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        return {"skipped": f"mount -t tmpfs failed: {done.stderr.strip()}"}
    try:
        folder = mount / "run"
        assert run(folder, stop_at=4) == 3
        checkpoint_bytes = (folder / CHECKPOINT).stat().st_size
        free = shutil.disk_usage(mount).free
        filler = mount / "filler"
        with open(filler, "wb") as f:  # leave less than one checkpoint's room
            f.write(b"\0" * max(0, free - checkpoint_bytes // 2))
        status = run(folder, resume=True)
        message = Path(f"{folder}.err").read_text() if Path(f"{folder}.err").exists() else ""
        leftovers = sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))
        loadable = RunDir(folder).last_checkpoint()["iteration"]
        history_ok = len(RunDir(folder).history()) > 0
        filler.unlink()
        resumed = run(folder, resume=True)
        result = {"filesystem": "tmpfs size=4m", "checkpoint_bytes": checkpoint_bytes, "exit": status,
                  "disk_full_error": status == 5, "message": message, "temporary_files_left": leftovers,
                  "loadable_checkpoint_iteration": loadable, "history_readable": history_ok,
                  "resumed_after_freeing_space_exit": resumed,
                  "equal_to_uninterrupted": resumed == 0 and fingerprint(folder) == reference}  # fmt: skip
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
    print(f"disk full: {result}", flush=True)
    return result


def sweep_trial(root: Path) -> dict:
    import nbformat
    import test_sweeps as ts

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(ts.PARAMETERS), nbformat.v4.new_code_cell(ts.BODY)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    toy, marks, out = root / "toy.ipynb", root / "marks", root / "sweep"
    nbformat.write(nb, toy)
    marks.mkdir()
    targets = {"2-0", "3-0", "3-1", "4-0", "5-0", "5-1", "5-2", "6-0"}  # run 5 loses every worker it gets
    spec = {"retries": 2, "runs": [{"notebook": str(toy), "parameters": {"nap": 4.0, "marks": str(marks)},
                                    "grid": {"x": [1, 2, 3, 4, 5, 6]}}]}  # fmt: skip
    tic = time.perf_counter()
    table, killed, errors, seen = ts.sweep_while_killing(spec, out, marks, targets)
    rows = table.to_dict("records")
    result = {"runs": len(rows), "workers_killed": len(killed), "killer_errors": [str(e) for e in errors],
              "status": {str(r["run"] if "run" in r else i): r["status"] for i, r in enumerate(rows)},
              "done": sum(r["status"] == "done" for r in rows), "reported_failed": sum(r["status"] == "failed" for r in rows),
              "values_of_done_runs": [r.get("metrics.value") for r in rows if r["status"] == "done"],
              "finished_results_lost_or_rewritten": sum(d.read_text() != t if d.exists() else 1 for d, t in seen.items()),
              "attempts_per_run": {x: len(ts.attempts(marks, x)) for x in range(1, 7)},
              "seconds": round(time.perf_counter() - tic, 1)}  # fmt: skip
    print(f"sweep: {result}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--skip", action="append", default=[], choices=["kill", "corrupt", "lock", "disk_full", "sweep"])
    parser.add_argument("--only", action="append", default=[], help="run these trials and merge them into --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = {"machine_before": machine(), "config": config().to_dict(), "trials": {}}
    if args.only:
        args.skip = [t for t in ("kill", "corrupt", "lock", "disk_full", "sweep") if t not in args.only]
        kept = json.loads(args.out.read_text()) if args.out.exists() else {}
        result["trials"] = {k: v for k, v in kept.get("trials", {}).items() if k not in args.only}
        result["earlier_trials_machine"] = kept.get("machine_before")
    tic = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mckd-faults-") as tmp:
        root = Path(tmp)
        pid = fork_train(root / "reference")
        while not (root / "reference" / CHECKPOINT).exists():
            time.sleep(0.005)
        first = time.perf_counter()
        assert wait(pid) == 0, (root / "reference.err").read_text()
        span = time.perf_counter() - first
        reference = fingerprint(root / "reference")
        result["reference_seconds_after_first_checkpoint"] = round(span, 2)
        steps = {"kill": lambda: kill_trials(root, reference, args.kills, random.Random(args.seed), span),
                 "corrupt": lambda: corrupt_trials(root, reference), "lock": lambda: lock_trial(root, reference),
                 "disk_full": lambda: disk_full_trial(root, reference), "sweep": lambda: sweep_trial(root)}  # fmt: skip
        for name, step in steps.items():
            if name not in args.skip:
                result["trials"][name] = step()
    result["seconds"] = round(time.perf_counter() - tic, 1)
    result["machine_after"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
