"""ADNI classification per strategy on a generated cohort: speed (seconds per epoch, peak RSS) and quality.

Run: ``python benchmarks/bench_adni.py [--task adni] [--subjects 1000] [--epochs 30] [--speed-epochs 5]
[--seeds 0 1 2] [--threads 1] [--t1-size 32] [--speed-only]``. Results and the machine's description go to
``benchmarks/results/adni.json`` (task ``adni-t1``: ``adni_t1.json``).

- Speed: each strategy trains ``--speed-epochs`` epochs (``adni_config`` defaults: batch 64, an epoch is
  ceil(n_train / 64) iterations) in a fresh process, so that its peak RSS (VmHWM, imports included; the
  RSS after imports is recorded beside it) is its own. Wall and CPU seconds per epoch (CPU time tells contention
  on a shared machine apart from work). One torch thread by default: these MLPs are tiny, and two threads on a
  busy two-core machine were measured ~20x slower.
- Quality: every strategy and seed trains ``--epochs`` epochs (split seed = training seed) and is evaluated on
  its test split: mean over the 15 subsets of balanced accuracy and macro-F1; and balanced accuracy on the test
  subjects that have imaging (the strongest single modality), each with all its modalities, against an
  imaging-only model (same trainer, method ``none``, ``data.modalities = imaging``) and the majority class on
  the same subjects. Mean and sample standard deviation over seeds.
- Task ``adni-t1``: the cohort comes with T1 volumes (``--t1-size``) and ``mri`` (the volume) replaces
  ``imaging``; the single-modality baseline is an mri-only model, and an ``imaging-numbers-only`` model (task
  ``adni``, the FreeSurfer/PET numbers of the same scans, same subjects and splits) shows what the volume
  encoder recovers of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from machine import machine, peak_rss_mib

from mckd_lab.data.adni import AdniDataset
from mckd_lab.data.cohort import generate_cohort
from mckd_lab.method.strategies import STRATEGIES as ALL_STRATEGIES
from mckd_lab.metrics import balanced_accuracy
from mckd_lab.recipes import adni_config
from mckd_lab.runs import evaluate_run
from mckd_lab.tasks import make_task
from mckd_lab.tasks.classification import load_scaler, predict_probabilities
from mckd_lab.train import train

STRATEGIES = [m for m in ALL_STRATEGIES if m != "oracle"]  # oracle needs the testbed's weights (study.py)
RESULTS = Path(__file__).parent / "results"


def speed_one(csv: str, task: str, method: str, epochs: int) -> dict:
    """Train one strategy for ``epochs`` epochs in this process; seconds per epoch and peak RSS."""
    after_imports = peak_rss_mib()
    config = adni_config(csv, task=task, method=method, epochs=epochs, seed=0, **{"runtime.progress": False})
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        train(config, Path(tmp) / "run")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "iterations_per_epoch": config.optim.iterations // epochs,
        "seconds_per_epoch": round(wall / epochs, 3),
        "cpu_seconds_per_epoch": round(cpu / epochs, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_after_imports_mib": round(after_imports, 1),
    }


def with_imaging(run, only_imaging: bool = False) -> tuple[float, float, int]:
    """(balanced accuracy, majority balanced accuracy, n) on the run's test subjects that have the first
    modality (imaging, or mri for adni-t1)."""
    table = make_task(run.config.data.task).read_table(run.config.data.root)
    test = [int(r) for r in json.loads((run.run_dir / "splits.json").read_text())["test"]]
    rows = np.flatnonzero(np.isin(table.rid, test) & table.present[:, 0])
    data = AdniDataset(table, rows, load_scaler(run.run_dir / "scaler.json"), run.config.data.t1_size)
    present = data.present & torch.tensor([True, False, False, False]) if only_imaging else data.present
    y = data.target.numpy()
    pred = predict_probabilities(run.model, data.inputs, present).argmax(1)
    majority = balanced_accuracy(y, np.full(len(y), np.bincount(table.target).argmax()))
    return balanced_accuracy(y, pred), majority, len(rows)


def quality(csv: str, task: str, seeds: list[int], epochs: int, out: Path) -> dict:
    first = make_task(task).modalities[0]
    single = {f"{first}-only": (task, first)}  # name -> (task, the one modality)
    if task == "adni-t1":
        single["imaging-numbers-only"] = ("adni", "imaging")
    per: dict[str, list[dict]] = {m: [] for m in (*STRATEGIES, *single)}
    for seed in seeds:
        for method in per:
            extra = {"runtime.progress": False}
            run_task = single[method][0] if method in single else task
            if method in single:
                extra["data.modalities"] = [single[method][1]]
            config = adni_config(
                csv, task=run_task, method="none" if method in single else method, epochs=epochs, seed=seed,
                **extra,
            )  # fmt: skip
            tic = time.perf_counter()
            run = train(config, out / f"{method}_{seed}")
            seconds = time.perf_counter() - tic
            table_result = evaluate_run(run)
            bal, majority, n = with_imaging(run, only_imaging=method in single)
            record = {"seed": seed, "train_seconds": round(seconds, 1), "with_imaging_balanced_accuracy": bal,
                      "majority_balanced_accuracy": majority, "n_with_imaging": n}  # fmt: skip
            if method not in single:
                record |= {f"mean15_{k}": table_result["mean"][k] for k in ("balanced_accuracy", "macro_f1")}
                record["full_set_balanced_accuracy"] = table_result["subsets"][-1]["balanced_accuracy"]
            per[method].append(record)
            print(method, seed, {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()})
    summary = {}
    for method, records in per.items():
        keys = [
            k for k in records[0] if k.endswith(("accuracy", "macro_f1")) and not k.startswith("majority")
        ]
        summary[method] = {
            "seeds": records,
            "mean": {k: round(statistics.mean(r[k] for r in records), 4) for k in keys},
            "std": {
                k: round(statistics.stdev(r[k] for r in records), 4) if len(records) > 1 else 0.0
                for k in keys
            },
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["adni", "adni-t1"], default="adni")
    parser.add_argument("--t1-size", type=int, default=32, help="adni-t1: side of the T1 volumes")
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--speed-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--speed-only", action="store_true", help="re-measure speed; keep the quality of the results file"
    )
    parser.add_argument("--speed-one", nargs=2, metavar=("CSV", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_one:  # child process of the speed benchmark
        csv, method = args.speed_one
        print(json.dumps(speed_one(csv, args.task, method, args.speed_epochs)))
        return
    started = machine()
    t1_size = args.t1_size if args.task == "adni-t1" else None
    path = RESULTS / f"{args.task.replace('-', '_')}.json"
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        csv = str(
            generate_cohort(
                Path(tmp) / "ADNIMERGE_bench.csv", subjects=args.subjects, seed=0, t1_size=t1_size
            )
        )
        generate_seconds = round(time.perf_counter() - tic, 1)
        speed = {}
        for method in STRATEGIES:
            child = [sys.executable, __file__, "--speed-one", csv, method, "--speed-epochs", str(args.speed_epochs),
                     "--threads", str(args.threads), "--task", args.task]  # fmt: skip
            speed[method] = json.loads(
                subprocess.run(child, check=True, capture_output=True, text=True).stdout
            )
            print(method, speed[method])
        if args.speed_only:
            result = json.loads(path.read_text(encoding="utf-8"))
            result["speed"], result["speed_machine"] = speed, started
            result["speed_date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            print(f"updated the speed of {path}")
            return
        result = {
            "benchmark": f"ADNI classification per strategy (bench_adni.py), task {args.task}",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": started,
            "settings": {
                "task": args.task,
                "t1_size": t1_size,
                "cohort_seconds": generate_seconds,
                "subjects": args.subjects,
                "cohort_seed": 0,
                "epochs": args.epochs,
                "speed_epochs": args.speed_epochs,
                "seeds": args.seeds,
                "torch_threads": args.threads,
                "config": "adni_config defaults (MLP widths 32,32; adni-t1: volume encoder widths 8,16,32, 4^3 grid, "
                "flip + shift augmentation, AdamW 3e-3; adni: AdamW 1e-3; batch 64)",
            },  # fmt: skip
            "speed": speed,
            "quality": quality(csv, args.task, args.seeds, args.epochs, Path(tmp)),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
