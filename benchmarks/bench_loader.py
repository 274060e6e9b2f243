"""BraTS loader throughput: cases per second reading NIfTI every time, and from the in-memory case cache.

On phantoms (BraTS2018 layout, written by ``mckd_lab.data.phantoms``) at each cubic size, it times
- ``read``: ``load_case`` over every case (NIfTI read, checks, crop, normalisation, regions);
- ``uncached``: epochs of the training dataset with ``cache=False`` (each sample re-reads its case);
- ``cached``: building the dataset with ``cache=True`` (reads every case once), then epochs from memory.
Each rate is the best of ``--repeats`` runs. Training crops are (size // 2)^3, batch 2, one process with
``--threads`` torch threads (default 1, as in a DataLoader worker; on a busy machine small torch ops are
several times slower with more threads). The results, with the machine they came from, go to
``benchmarks/results/loader.json``.

    .venv/bin/python benchmarks/bench_loader.py [--sizes 64 128] [--cases 6] [--epochs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from machine import machine

from mckd_lab.data.brats import load_case, scan_folder
from mckd_lab.data.datasets import brats_dataset, make_loader
from mckd_lab.data.phantoms import generate_phantoms

RESULTS = Path(__file__).parent / "results" / "loader.json"


def best_rate(count: int, work, repeats: int) -> float:
    """``count`` items per second of ``work()``, the best of ``repeats`` runs (other jobs only slow a run)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return count / min(seconds)


def run_epochs(dataset, epochs: int) -> None:
    for seed in range(epochs):
        for _ in make_loader(dataset, batch_size=2, seed=seed):
            pass


def bench_size(root: Path, size: int, cases: int, epochs: int, repeats: int) -> dict:
    folder = generate_phantoms(root / f"phantoms{size}", cases=cases, size=size, seed=0)
    case_dirs = scan_folder(folder)[1]
    crop = (size // 2,) * 3
    samples = epochs * cases

    read = best_rate(cases, lambda: [load_case(d) for d in case_dirs], repeats)
    uncached = brats_dataset(case_dirs, crop_size=crop, cache=False)
    uncached_rate = best_rate(samples, lambda: run_epochs(uncached, epochs), repeats)
    start = time.perf_counter()
    cached = brats_dataset(case_dirs, crop_size=crop, cache=True)
    build_s = time.perf_counter() - start
    cached_rate = best_rate(samples, lambda: run_epochs(cached, epochs), repeats)
    return {
        "size": size,
        "cases": cases,
        "crop": list(crop),
        "epochs": epochs,
        "repeats": repeats,
        "read_cases_per_s": round(read, 2),
        "uncached_samples_per_s": round(uncached_rate, 2),
        "cached_build_s": round(build_s, 2),
        "cached_samples_per_s": round(cached_rate, 2),
        "cache_speedup": round(cached_rate / uncached_rate, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [bench_size(Path(tmp), size, args.cases, args.epochs, args.repeats) for size in args.sizes]
    result = {
        "benchmark": "bench_loader",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for run in runs:
        print(json.dumps(run))
    return result


if __name__ == "__main__":
    main()
