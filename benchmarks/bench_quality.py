"""Segmentation quality of every strategy on phantoms: Dice over the 15 subsets of modalities, 3 seeds.

``--cases`` (40) phantoms of 48^3 (seed 0) are generated once into ``<work>/phantoms`` and every run reads
them (``data.root``); the split is fixed (``data.split_seed`` 0, test fraction 0.25 and 3 held-out cases as
the demo: 27 train / 3 held-out / 10 test). Each strategy (none, uniform, lckd, mckd, mckd-bilevel) trains
once per seed (``runtime.seed`` 0, 1, 2) with mckd_lab/demo.py's settings (``DEMO``: crop 32^3, 1500
iterations of which 500 warm-up, meta rounds every 50 iterations on 4 held-out batches; LCKD elections at the
same cadence) and is evaluated by ``mckd_lab.evaluate.evaluate_run`` on the 10 test cases, every subset,
sliding window. Per run: the mean Dice over the 15 subsets per region (ET, TC, WT) and the full-set Dice; per
strategy: their mean and sample standard deviation (ddof 1) across seeds. Runs live in
``<work>/<strategy>/seed<k>`` and a finished one (``metrics.json``) is skipped, an interrupted one resumed, so
the benchmark can be stopped and restarted. ``--workers 2`` trains two runs at once with 1 torch thread each.
No goal: the numbers are reported as they come out. Results go to ``--out`` (default
``benchmarks/results/quality.json``) and a markdown table is printed.

    .venv/bin/python benchmarks/bench_quality.py [--work runs/bench_quality] [--workers 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "quality.json"
STRATEGIES = ("none", "uniform", "lckd", "mckd", "mckd-bilevel")
REGIONS = ("ET", "TC", "WT")


def run_one(run_dir: str, overrides: dict, threads: int) -> dict:
    """Train (or resume) and evaluate one run; returns its summary (the run's metrics.json is the record)."""
    import torch

    from mckd_lab.config import RunConfig
    from mckd_lab.demo import DEMO
    from mckd_lab.evaluate import evaluate_run
    from mckd_lab.train import train

    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    start = time.perf_counter()
    if not (run_dir / "model.pt").exists():
        config = RunConfig().with_overrides(DEMO | overrides).validate()
        if not (run_dir / "checkpoint.pt").exists():  # stopped before its first checkpoint: start afresh
            (run_dir / "history.jsonl").unlink(missing_ok=True)
        train(config, run_dir, resume=(run_dir / "checkpoint.pt").exists())
    table = evaluate_run(run_dir, with_hd95=False)
    full = next(row for row in table["subsets"] if all(row["present"].values()))
    return {"mean15": table["mean"]["dice"], "full": full["dice"], "n_test": len(table["cases"]),
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def summary(run_dir: Path) -> dict:
    """The same summary from a finished run's metrics.json."""
    table = json.loads((run_dir / "metrics.json").read_text())
    full = next(row for row in table["subsets"] if all(row["present"].values()))
    return {"mean15": table["mean"]["dice"], "full": full["dice"], "n_test": len(table["cases"])}


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None}  # fmt: skip


def markdown(strategies: dict) -> str:
    head = [f"{r} (15)" for r in REGIONS] + [f"{r} (full)" for r in REGIONS]
    lines = ["| strategy | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name, s in strategies.items():
        cells = [s[k][r] for k in ("mean15", "full") for r in REGIONS]
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * c['mean']:.1f} ± {100 * (c['sd'] or 0):.1f}" for c in cells) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="phantoms and runs (default runs/bench_quality)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--iterations", type=int, help="training iterations (default: the demo's 1500)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (then 1 torch thread each)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads with --workers 1")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 16 cases, 2 strategies, 2 seeds, 6 its"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.iterations, args.seeds, args.strategies = 16, 6, [0, 1], ["none", "mckd"]
        args.work = args.work or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    args.work = args.work or Path("runs/bench_quality")
    start = time.perf_counter()
    from mckd_lab.data.phantoms import generate_phantoms
    from mckd_lab.demo import DEMO

    root = args.work / "phantoms"
    manifest = root / "phantoms.json"
    if manifest.exists() and len(json.loads(manifest.read_text())["cases"]) != args.cases:
        parser.error(f"{root} holds other phantoms than --cases {args.cases}; use another --work folder")
    if not manifest.exists():
        generate_phantoms(root, cases=args.cases, size=48, seed=0)
    common = {"data.root": str(root.resolve()), "data.split_seed": 0, "runtime.progress": args.workers == 1,
              "method.elect_every": DEMO["method.meta_every_missing"]}  # fmt: skip
    if args.iterations:
        common |= {"optim.iterations": args.iterations, "optim.warmup_iterations": args.iterations // 3}
        if args.quick:
            common |= {"method.meta_every_warmup": 2, "method.meta_every_missing": 2, "method.elect_every": 2,
                       "method.meta_batches": 1}  # fmt: skip
    jobs = {
        (name, seed): (str(args.work / name / f"seed{seed}"),
                       common | {"method.name": name, "runtime.seed": seed})
        for name in args.strategies for seed in args.seeds
    }  # fmt: skip
    threads = 1 if args.workers > 1 else args.threads
    results, todo = {}, jobs
    if args.workers == 1:
        for key, (run_dir, overrides) in todo.items():
            done = (Path(run_dir) / "metrics.json").exists()
            results[key] = summary(Path(run_dir)) if done else run_one(run_dir, overrides, threads)
            print(key, results[key], flush=True)
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {
                key: pool.submit(run_one, run_dir, overrides, threads)
                for key, (run_dir, overrides) in todo.items() if not (Path(run_dir) / "metrics.json").exists()
            }  # fmt: skip
            for key, (run_dir, _) in todo.items():
                results[key] = futures[key].result() if key in futures else summary(Path(run_dir))
                print(key, results[key], flush=True)
    strategies = {
        name: {k: {r: spread([results[name, s][k][r] for s in args.seeds]) for r in REGIONS}
               for k in ("mean15", "full")}
        for name in args.strategies
    }  # fmt: skip
    settings = {k: v for k, v in (DEMO | common).items() if k != "runtime.progress" and "phantom" not in k}
    result = {
        "benchmark": "quality on phantoms: Dice per region, mean of the 15 subsets and full set",
        "settings": settings
        | {
            "phantom_cases": args.cases,
            "phantom_size": 48,
            "phantom_seed": 0,
            "seeds": args.seeds,
            "sd": "sample (ddof 1) across seeds",
        },  # fmt: skip
        "strategies": strategies,
        "runs": [{"strategy": n, "seed": s} | r for (n, s), r in results.items()],
    }
    from machine import machine

    result["machine"] = machine() | {
        "workers": args.workers,
        "torch_threads_per_run": threads,
        "wall_seconds_this_invocation": round(time.perf_counter() - start),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(strategies))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
