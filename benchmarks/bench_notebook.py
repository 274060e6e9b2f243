"""A tutorial with its defaults, timed as a student runs it: papermill from a fresh folder, kernel start included.

Runs ``papermill NOTEBOOK out.ipynb`` in a temporary folder holding a copy of the notebook (so its run is trained,
never reused) and records the wall time, papermill's own duration and the cells that took more than 0.5 s.
``--checkout DIR`` runs another checkout's notebook and package instead (``DIR/notebooks/NAME``, the kernel
with ``PYTHONPATH=DIR``), e.g. the code before an optimisation, with this environment; ``--label`` names the row.
Goal (issue 14): notebook 01 with its defaults <= 0.3 x the time before, <= 90 s on a 2-core AVX2 EPYC; every
other notebook <= 60 s once notebook 01 has run (those are timed by ``tests/test_notebooks.py``). Rows are
appended to ``results/notebooks.json`` with the machine record.

    .venv/bin/python benchmarks/bench_notebook.py 01_brats_mckd.ipynb [--checkout /tmp/old --label before]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from machine import append_row, finish, machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "notebooks.json"


def run_notebook(name: str, checkout: Path | None, threads: int | None) -> dict:
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = str(checkout)
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="bench_notebook_") as tmp:
        shutil.copy((checkout or ROOT) / "notebooks" / name, tmp)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "papermill", name, "out.ipynb", "-k", "python3"],
                             capture_output=True, text=True, env=env, cwd=tmp)  # fmt: skip
        wall = time.perf_counter() - start
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        executed = nbformat.read(Path(tmp) / "out.ipynb", as_version=4)
    cells = [(c.metadata.get("papermill", {}).get("duration") or 0.0, c.source.splitlines()[0][:80])
             for c in executed.cells if c.source]  # fmt: skip
    return {"wall_s": round(wall, 1), "papermill_s": round(executed.metadata.papermill["duration"], 1),
            "cells_over_half_a_second": [{"s": round(s, 1), "cell": src} for s, src in cells if s > 0.5]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="a file name under notebooks/, e.g. 01_brats_mckd.ipynb")
    parser.add_argument("--checkout", type=Path, help="time this checkout's notebook and package instead")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the kernel (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    info = machine()
    row = {"notebook": args.notebook, "label": args.label, "checkout": str(args.checkout or "."),
           "threads": args.threads or "torch default"}  # fmt: skip
    row |= run_notebook(args.notebook, args.checkout, args.threads)
    row["machine"] = finish(info)
    print(json.dumps(row, indent=2))
    append_row(args.out, "a tutorial with its defaults under papermill: wall time and slow cells",
               "notebook 01 <= 0.3 x the time before issue 14 and <= 90 s on a 2-core AVX2 EPYC")


if __name__ == "__main__":
    main()
