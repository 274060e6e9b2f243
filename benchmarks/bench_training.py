"""Training cost per strategy: wall seconds per iteration and peak RSS, compact backbone, batch 2, on the CPU.

For every crop side (``--sizes``, default 32 48 64) phantoms are generated once (``--cases`` cases of
max(side, 48)^3 in a temporary folder; ``data.root`` points there, so every strategy reads the same data) and
each strategy (none, uniform, lckd, mckd, mckd-bilevel) trains in a fresh subprocess with
``mckd_lab.train.train``: compact backbone (16, 32, 64), batch 2, SGD, ``--threads`` torch threads. The
strategy's own periodic work is included and amortised: MCKD / bilevel meta rounds every ``--meta-every``
iterations with ``--meta-batches`` held-out batches (default 50 and 4, as mckd_lab/demo.py) in both stages,
LCKD elections at the same cadence on the same number of batches. The first ``--warmup`` iterations are
discarded; the next ``--measure`` iterations (a whole number of meta periods, so the window holds exactly
measure / meta-every rounds) are timed by wall clock between the history records of the first and last timed
iteration (the run's ``history.jsonl`` ``seconds`` mean is kept beside it). Stage 1 (all modalities) covers
the first half of the run, stage 2 (missing subsets) the rest. Peak RSS is the child's high-water mark (VmHWM:
the whole process, Python, torch and the cached training and held-out cases; ``rss_import_mb`` is the same
just before training). Goal (issue 14): mckd / none <= 1.15 per size. On a shared machine whose load
drifts between the runs the ratio across runs says little: ``overhead_within_run`` (mean seconds of all timed
iterations of a run over those of its iterations without a periodic round: the same training step) measures
the rounds' cost against the training step in one run, and ``round_s`` one round's extra seconds. Results with the machine (and the load
average before / after: other jobs on the machine slow every number down) go to ``--out`` (default
``benchmarks/results/training.json``).

    .venv/bin/python benchmarks/bench_training.py [--sizes 32 48 64] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import finish, machine, peak_rss_mib

RESULTS = Path(__file__).parent / "results" / "training.json"
STRATEGIES = ("none", "uniform", "lckd", "mckd", "mckd-bilevel")


def child(spec: dict) -> dict:
    """One timed training run in this (fresh) process; returns the measurements."""
    import torch

    from mckd_lab.config import RunConfig
    from mckd_lab.train import train

    torch.set_num_threads(spec["threads"])
    config = RunConfig().with_overrides(spec["overrides"])
    warmup, measure = spec["warmup"], spec["measure"]
    stamps = {}

    def clock(record: dict) -> None:
        if record["kind"] == "train" and record["iteration"] in (warmup - 1, warmup + measure - 1):
            stamps[record["iteration"]] = time.perf_counter()

    rss_import = peak_rss_mib()
    with tempfile.TemporaryDirectory() as run_dir:
        run = train(config, run_dir, callbacks=[clock])
    timed = [r for r in run.records("train") if warmup <= r["iteration"] < warmup + measure]
    periodic = [r for r in run.history if r["kind"] in ("meta", "elect")]
    with_round = {r["iteration"] for r in periodic}
    plain = [r["seconds"] for r in timed if r["iteration"] not in with_round]
    return {
        # the periodic work's cost measured inside the run: mean seconds of all timed iterations over those
        # of the iterations without a round (the same training step): immune to load that drifts between runs
        "overhead_within_run": round(
            sum(r["seconds"] for r in timed) / len(timed) / (sum(plain) / len(plain)), 4
        ),
        "round_s": round(
            sum(r["seconds"] for r in timed if r["iteration"] in with_round) / max(1, len(timed) - len(plain))
            - sum(plain) / len(plain),
            4,
        ),
        "s_per_it": round((stamps[warmup + measure - 1] - stamps[warmup - 1]) / measure, 4),
        "s_per_it_history": round(sum(r["seconds"] for r in timed) / len(timed), 4),
        "periodic_rounds_timed": sum(warmup <= r["iteration"] < warmup + measure for r in periodic),
        "peak_rss_mb": round(peak_rss_mib(), 1),
        "rss_import_mb": round(rss_import, 1),
    }


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                         text=True, cwd=Path(__file__).parent.parent)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{spec['overrides']['method.name']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--warmup", type=int, default=10, help="iterations discarded before timing")
    parser.add_argument("--measure", type=int, default=100, help="timed iterations (multiple of meta-every)")
    parser.add_argument("--meta-every", type=int, default=50)
    parser.add_argument("--meta-batches", type=int, default=4)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 16^3, 2 + 10 iterations")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.quick:
        args.sizes, args.warmup, args.measure, args.meta_every, args.meta_batches = [16], 2, 10, 5, 2
    if args.measure % args.meta_every:
        parser.error(f"--measure {args.measure} must be a multiple of --meta-every {args.meta_every}")
    from mckd_lab.data.phantoms import generate_phantoms

    info, rows = machine() | {"torch_threads": args.threads}, []
    iterations = args.warmup + args.measure
    with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
        for size in args.sizes:
            root = generate_phantoms(Path(tmp) / f"phantoms{size}", cases=args.cases, size=max(size, 48))
            times = {}
            for name in args.strategies:
                overrides = {
                    "data.root": str(root), "data.crop": [size] * 3, "data.heldout_cases": 3,
                    "optim.iterations": iterations, "optim.warmup_iterations": iterations // 2,
                    "method.name": name, "method.meta_every_warmup": args.meta_every,
                    "method.meta_every_missing": args.meta_every, "method.elect_every": args.meta_every,
                    "method.meta_batches": args.meta_batches,
                    "runtime.checkpoint_every": iterations, "runtime.progress": False,
                }  # fmt: skip
                spec = {"overrides": overrides, "threads": args.threads, "warmup": args.warmup,
                        "measure": args.measure}  # fmt: skip
                row = {"strategy": name, "crop": size} | run_child(spec)
                times[name] = row["s_per_it"]
                rows.append(row)
                print(row, flush=True)
            if "none" in times and "mckd" in times:
                ratio = round(times["mckd"] / times["none"], 3)
                within = next(
                    r["overhead_within_run"]
                    for r in rows
                    if r.get("strategy") == "mckd" and r["crop"] == size
                )
                rows.append({"crop": size, "ratio_mckd_over_none": ratio, "mckd_overhead_within_run": within})
                print(
                    f"crop {size}^3: mckd / none = {ratio} across runs, {within} within the mckd run "
                    "(goal <= 1.15)",
                    flush=True,
                )
    result = {
        "benchmark": "training: wall seconds per iteration and peak RSS per strategy (CPU)",
        "settings": {
            "backbone": "compact (16, 32, 64)",
            "batch_size": 2,
            "optimizer": "sgd",
            "phantom_cases": args.cases,
            "phantom_size": "max(crop, 48)",
            "heldout_cases": 3,
            "warmup_discarded": args.warmup,
            "timed_iterations": args.measure,
            "meta_every": args.meta_every,
            "meta_batches": args.meta_batches,
            "elect_every": args.meta_every,
            "stage1_iterations": iterations // 2,
            "one subprocess per run": True,
        },  # fmt: skip
        "goal": "mckd / none <= 1.15 per crop size (issue 14; 1.3 in issue 3)",
        "machine": finish(info) | {"torch_threads": args.threads},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
