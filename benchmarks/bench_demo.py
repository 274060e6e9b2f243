"""The demo's main job (``mckd-lab demo``, what ``make demo`` runs after setup): wall time and model quality.

Runs ``python -m mckd_lab.cli demo --out <fresh folder>`` in a subprocess (phantoms generated, MCKD trained,
the 15-subset table evaluated: the whole command, start-up included) and reads back what it printed: the
training and evaluation seconds, the command's peak resident memory (the largest child's ``ru_maxrss``) and the full-modality Dice (ET, TC, WT, on the demo's held-out test
phantoms). ``--checkout DIR`` runs another checkout's package instead (``PYTHONPATH=DIR``, e.g. the code
before an optimisation, with this environment), ``--label`` names the row. Goals (issue 14): wall time
<= 0.4 x the code before, with all four sequences Dice ET >= 55, TC >= 85, WT >= 88. Rows are appended to
``--out`` (default ``benchmarks/results/demo.json``) with the machine, its load before and after, and the
torch threads (``--threads``, given to the command as OMP_NUM_THREADS).

    .venv/bin/python benchmarks/bench_demo.py [--threads 1] [--checkout /tmp/oldmain --label before]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import append_row, finish, machine

RESULTS = Path(__file__).parent / "results" / "demo.json"
GOAL = {"ET": 55, "TC": 85, "WT": 88}


def run_demo(checkout: Path | None, threads: int, extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if checkout:
        env["PYTHONPATH"] = str(checkout)
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "mckd_lab.cli", "demo", "--out", f"{tmp}/demo", *extra],
                             capture_output=True, text=True, env=env, cwd=checkout or Path(__file__).parent.parent)  # fmt: skip
        wall = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    text = out.stdout
    dice = dict(re.findall(r"(ET|TC|WT) ([\d.]+)", text.split("all modalities: Dice", 1)[1].splitlines()[0]))
    trained, evaluated = re.search(r"trained in (\d+) s, evaluated in (\d+) s", text).groups()
    return {"wall_s": round(wall, 1), "trained_s": int(trained), "evaluated_s": int(evaluated),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "dice_all_four": {k: float(v) for k, v in dice.items()},
            "quality_goal_met": all(float(dice[k]) >= v for k, v in GOAL.items()),
            "warnings": [ln for ln in out.stderr.splitlines() if ln.startswith("warning:")]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkout", type=Path, help="time this checkout's package (PYTHONPATH) instead")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("demo_args", nargs="*", help="more arguments for mckd-lab demo (after --)")
    args = parser.parse_args()
    info = machine()
    row = {"label": args.label, "checkout": str(args.checkout or "."), "threads": args.threads}
    row |= run_demo(args.checkout, args.threads, args.demo_args)
    row["machine"] = finish(info) | {"torch_threads": args.threads}
    print(json.dumps(row, indent=2))
    append_row(args.out, "mckd-lab demo: whole command wall time and full-modality Dice",
               "<= 0.4 x the time before issue 14; Dice ET >= 55, TC >= 85, WT >= 88")


if __name__ == "__main__":
    main()
