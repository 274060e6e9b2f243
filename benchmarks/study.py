"""The method's effect, measured (issue 13, part 3): one resumable command for the whole study.

    nice -n 19 .venv/bin/python benchmarks/study.py [--spec notebooks/sweeps/study.yaml] [--workers 2]
        [--work runs/study] [--commit] [--only brats|adni] [--report]

The grid is the sweep spec ``notebooks/sweeps/study.yaml`` (``train:`` entries, so ``mckd-lab sweep`` can run the
same trainings on a cluster); this script runs it with its own measurements, one run per process (1 torch
thread, ``--workers`` at once), and writes one small JSON per run under ``benchmarks/results/study/`` as each
finishes (``--commit``: and commits it), so that running the same command again skips what is recorded and
resumes an interrupted run from its checkpoint in ``--work``. ``--report`` only aggregates the recorded runs into
``results/study/summary.json`` and prints the tables.

Design:
- BraTS-like phantoms of 32^3 (96 cases, phantom seed 0, generated once per redundancy R into ``--work``), a
  fixed split (split seed 0): 60 test / 3 held-out (meta) / 33 training cases. Strategies none, uniform, mckd
  and oracle (fixed weights ``mckd_lab.study.phantom_importance(R)``, no meta step) at R = 0 and R = 0.5, seeds
  0-4; lckd and mckd-bilevel are left out (time). KD-weight dose response: uniform and mckd at kd 0.5 and 1
  (seeds 0-1, R = 0); kd 0.1 is the main grid and kd 0 is ``none`` (with kd 0 no strategy changes the network:
  omega only enters the KD weights). A seed fixes the initial weights and every batch, crop and subset (the
  trainer seeds them from (seed, iteration)): every strategy of a seed sees the same data in the same order.
- Per run: the 15-subset Dice table per test case (sliding window, threshold 0.5), the final importance
  weights and their trajectory, the meta objective's drop-one ablation (task loss on the 60 test volumes with
  each modality removed minus with all), the authors' feature distance per dropped modality, seconds and CPU
  seconds per iteration and the load average.
- ADNI: generated cohorts of 1,000 subjects (seed 0) at cohort redundancy 0 and 1; the same strategies (oracle:
  ``cohort_importance`` of a separate 2,000-subject cohort, seed 100), seeds 0-4 (the split follows the seed,
  as ``adni_config`` does); per run the predicted class of every test subject for every subset, so balanced
  accuracy and macro-F1 are bootstrapped over subjects x seeds.
- Statistics (``--report``): per subset, paired differences (uniform - none, mckd - uniform, oracle - mckd,
  oracle - uniform) with 95 % bootstrap intervals over cases x seeds (``mckd_lab.study.paired_bootstrap``); ET
  is scored on the test cases with enhancing tumour, and the cases without are reported apart (the share
  predicted with no ET voxel). H2: top modality of w vs the drop-one ablation per seed, Kendall tau of w
  between seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "study"
SPEC = ROOT / "notebooks" / "sweeps" / "study.yaml"
PHANTOM_CASES, PHANTOM_SIZE = 96, 32
COHORT_SUBJECTS, ORACLE_COHORT = 1000, {"subjects": 2000, "seed": 100}


# --- the grid ------------------------------------------------------------------------------------------------
def grid(spec: Path) -> list[dict]:
    """Every run of the spec: {key, task, params} with key the result file's path under results/study/."""
    from mckd_lab.experiments import load_spec

    runs = []
    for run in load_spec(spec).runs:
        p = run.parameters
        if p["task"] == "brats":
            r, kd = float(p.get("data.phantom_redundancy", 0.0)), float(p.get("method.kd_weight", 0.1))
            key = f"brats/R{r:g}/kd{kd:g}/{p['method']}/seed{p['seed']}.json"
        else:
            r = float(p.get("data.cohort_redundancy", 0.0))
            key = f"adni/R{r:g}/{p['method']}/seed{p['seed']}.json"
        runs.append({"key": key, "task": p["task"], "params": p, "redundancy": r})
    return runs


def order(runs: list[dict]) -> list[dict]:
    """Priority: ADNI (cheap: a whole arm of the study early), then the BraTS main grid (R = 0 then 0.5), seed by
    seed with none beside mckd (so the two run at the same time and share the load: the paired timing), then
    the dose response."""
    rank = {"none": 0, "mckd": 1, "uniform": 2, "oracle": 3}

    def key(run):
        p = run["params"]
        dose = float(p.get("method.kd_weight", 0.1)) != 0.1
        return (2 if dose else int(run["task"] == "brats"), run["redundancy"], p["seed"], rank.get(p["method"], 9))

    return sorted(runs, key=key)


# --- data shared by the runs --------------------------------------------------------------------------------
def shared_data(run: dict, work: Path) -> str:
    """The phantoms (BraTS) or cohort (ADNI) folder/CSV of a run, generated once per redundancy."""
    from mckd_lab.data.cohort import generate_cohort
    from mckd_lab.data.phantoms import generate_phantoms

    r = run["redundancy"]
    if run["task"] == "brats":
        p = run["params"]
        root = work / f"phantoms_R{r:g}"
        if not (root / "phantoms.json").exists():
            generate_phantoms(root, cases=p["cases"], size=p["size"], seed=0, redundancy=r)
        return str(root)
    csv = work / f"cohort_R{r:g}" / f"ADNIMERGE_synthetic_n{run['params']['subjects']}_seed0.csv"
    if not csv.exists():
        generate_cohort(csv, subjects=run["params"]["subjects"], seed=0, redundancy=r)
    return str(csv)


def check_ground_truth(runs: list[dict], work: Path) -> dict:
    """The oracle weights of the spec against the testbeds' ground truth (BraTS: exact; ADNI: recomputed on a
    separate cohort, recorded). Returns {task/R: {...}} for the summary."""
    from mckd_lab.data.cohort import generate_cohort
    from mckd_lab.study import (
        cohort_importance,
        phantom_importance,
        phantom_visibility,
        source_informativeness,
    )

    truth = {}
    for run in runs:
        p, r = run["params"], run["redundancy"]
        name = f"{run['task']}/R{r:g}"
        if name in truth:
            continue
        if run["task"] == "brats":
            truth[name] = {"visibility": phantom_visibility(r), "importance": list(phantom_importance(r))}
        else:
            csv = work / f"oracle_cohort_R{r:g}.csv"
            if not csv.exists():
                generate_cohort(csv, redundancy=r, **ORACLE_COHORT)
            info = source_informativeness(csv)
            truth[name] = {"informativeness": info, "importance": list(cohort_importance(info))}
        given = p.get("method.oracle_importance")
        if given is not None:
            truth[name]["spec_oracle_importance"] = list(given)
            if max(abs(a - b) for a, b in zip(given, truth[name]["importance"], strict=True)) > 0.02:
                raise SystemExit(f"{SPEC.name}: method.oracle_importance {given} of {name} is not the ground truth "
                                 f"{truth[name]['importance']}; update the spec")  # fmt: skip
    return truth


# --- one run ------------------------------------------------------------------------------------------------
def run_one(run: dict, work: str, data: str) -> dict:
    """Train (or resume) one run and measure it; returns the JSON-ready record. Runs in a worker process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from mckd_lab.experiments import train_config
    from mckd_lab.method.meta import meta_fraction
    from mckd_lab.recipes import train_or_reuse
    from mckd_lab.runs import evaluate_run

    params = dict(run["params"], data=data)
    config = train_config(params)
    run_dir = Path(work) / run["key"].removesuffix(".json")
    saved = run_dir / "config.json"  # the same run found there (another config is cleared and started afresh)
    resumed = saved.exists() and json.loads(saved.read_text()).get("optim") == config.to_dict()["optim"]
    load = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    trained = train_or_reuse(config, run_dir)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    table = evaluate_run(trained, **({"with_hd95": False} if run["task"] == "brats" else {}))
    o, me = config.optim, config.method
    train_records = trained.records("train")
    record = {
        "key": run["key"], "task": run["task"], "method": me.name, "seed": config.runtime.seed,
        "redundancy": run["redundancy"], "kd_weight": me.kd_weight, "params": run["params"],
        "config": config.to_dict() | {"data": config.to_dict()["data"] | {"root": Path(data).name}},
        "meta_schedule": {"every_warmup": me.meta_every_warmup, "every_missing": me.meta_every_missing,
                          "steps_per_round": me.meta_batches, "batch_size": me.meta_batch_size,
                          "rounds": len(trained.records("meta")),
                          "fraction_of_reference": round(meta_fraction(o.iterations, o.warmup_iterations,
                              me.meta_every_warmup, me.meta_every_missing, me.meta_batches), 6)},
        "importance": trained.importance,
        "importance_trajectory": [[r["iteration"], list(r["importance"].values())]
                                  for r in trained.records("meta")],
        "timing": {"train_wall_s": round(wall, 2), "train_cpu_s": round(cpu, 2),
                   "iterations_timed": len(train_records),
                   "s_per_iteration": round(sum(r["seconds"] for r in train_records) / max(len(train_records), 1), 5),
                   "cpu_s_per_iteration": round(cpu / max(len(train_records), 1), 5),
                   "loadavg_start": [round(x, 2) for x in load],
                   "loadavg_end": [round(x, 2) for x in os.getloadavg()], "resumed": resumed},
        "first_subsets": [r["subset"] for r in train_records[:5] + train_records[o.warmup_iterations:o.warmup_iterations + 5]],
        "first_task_loss": round(train_records[0]["loss_task"], 6) if train_records else None,
    }  # fmt: skip
    record |= measure_brats(trained, table) if run["task"] == "brats" else measure_adni(trained, table)
    return record


def measure_brats(run, table: dict) -> dict:
    import numpy as np
    import torch

    from mckd_lab.study import drop_one_losses, feature_distance

    cases = run.task.cases(run, "test")
    stride = run.model.output_stride  # cases are cropped to the brain: pad them (zeros) to a common, valid shape
    shape = [-(-max(c.image.shape[1 + a] for c in cases) // stride) * stride for a in range(3)]

    def pad(x):
        return np.pad(x, [(0, 0)] + [(0, n - k) for n, k in zip(shape, x.shape[1:], strict=True)])

    image = torch.from_numpy(np.stack([pad(c.image) for c in cases]))
    target = torch.from_numpy(np.stack([pad(c.target) for c in cases]))
    loss = run.task.make_loss()
    drops, dists = [], []
    for i in range(0, len(cases), 10):
        drops.append(drop_one_losses(run.model, image[i:i + 10], target[i:i + 10], loss) * len(image[i:i + 10]))
        dists.append(feature_distance(run.model, image[i:i + 10]) * len(image[i:i + 10]))
    regions = run.task.card.region_names  # ET, WT, TC
    return {
        "cases": table["cases"],
        "has_et": [bool(c.target[regions.index("ET")].any()) for c in cases],
        "subsets": [{"subset": r["subset"], "present": r["present"],
                     "dice": {k: [round(v, 4) for v in vals] for k, vals in r["per_case"]["dice"].items()}}
                    for r in table["subsets"]],
        "mean15": table["mean"]["dice"],
        "drop_one_loss": [round(float(v), 6) for v in sum(drops) / len(cases)],
        "feature_distance": [round(float(v), 6) for v in sum(dists) / len(cases)],
        "modalities": list(run.model.modalities),
    }  # fmt: skip


def measure_adni(run, table: dict) -> dict:
    import numpy as np
    import torch

    from mckd_lab.data.missing import all_subsets, subset_name
    from mckd_lab.study import drop_one_losses, feature_distance
    from mckd_lab.tasks.classification import predict_probabilities

    subjects = run.task.cases(run, "test")
    inputs = {m: torch.from_numpy(np.stack([s.image[m] for s in subjects])) for m in run.model.modalities}
    available = torch.from_numpy(np.stack([s.present for s in subjects])).bool()
    target = np.array([s.target for s in subjects])
    rows = []
    for subset in all_subsets(len(run.model.modalities)):
        present = available & torch.tensor(subset)
        keep = present.any(1)
        pred = predict_probabilities(run.model, {m: x[keep] for m, x in inputs.items()}, present[keep]).argmax(1)
        full = np.full(len(subjects), -1)
        full[keep.numpy()] = np.asarray(pred)
        rows.append({"subset": subset_name(subset, run.model.modalities), "pred": full.tolist()})
    loss = torch.nn.CrossEntropyLoss()
    return {
        "subjects": [s.case_id for s in subjects] if hasattr(subjects[0], "case_id") else None,
        "target": target.tolist(), "available": available.int().tolist(), "subsets": rows,
        "mean15": table["mean"],
        "drop_one_loss": [round(float(v), 6) for v in drop_one_losses(run.model, inputs, torch.from_numpy(target), loss, available)],
        "feature_distance": [round(float(v), 6) for v in feature_distance(run.model, inputs, available)],
        "modalities": list(run.model.modalities),
    }  # fmt: skip


# --- bookkeeping ----------------------------------------------------------------------------------------------
def write(record: dict, results: Path, commit: bool) -> Path:
    path = results / record["key"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    tmp.replace(path)
    if commit:
        git_commit([path], f"study: {record['key']} (benchmarks/study.py)")
    return path


def git_commit(paths: list[Path], message: str) -> None:
    """Commit only these files (others' work in the tree is left alone); a busy index is retried, then left
    for the next commit."""
    for attempt in range(5):
        add = subprocess.run(["git", "add", "--", *map(str, paths)], cwd=ROOT, capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *map(str, paths)], cwd=ROOT, capture_output=True, text=True
        ).returncode == 0  # fmt: skip
        if done:
            return
        time.sleep(2 + 3 * attempt)
    print(f"(not committed: {message}; the next commit takes it)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=["brats", "adni"])
    parser.add_argument("--commit", action="store_true", help="git-commit each result file as it is written")
    parser.add_argument("--report", action="store_true", help="only aggregate the recorded runs")
    args = parser.parse_args()
    runs = order(grid(args.spec))
    if args.only:
        runs = [r for r in runs if r["task"] == args.only]
    if not args.report:
        args.work.mkdir(parents=True, exist_ok=True)
        truth = check_ground_truth(runs, args.work)
        (args.results).mkdir(parents=True, exist_ok=True)
        (args.results / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        todo = [r for r in runs if not (args.results / r["key"]).exists()]
        print(f"{len(runs)} runs in {args.spec.name}, {len(runs) - len(todo)} recorded, {len(todo)} to run", flush=True)
        data = {r["key"]: shared_data(r, args.work) for r in todo}
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, r, str(args.work), data[r["key"]]): r for r in todo}
            for future in as_completed(futures):
                run = futures[future]
                try:
                    path = write(future.result(), args.results, args.commit)
                    print(time.strftime("%H:%M:%S"), "recorded", path, flush=True)
                except Exception as err:  # noqa: BLE001 - one failed run is reported, the others go on
                    print(time.strftime("%H:%M:%S"), "FAILED", run["key"], repr(err), flush=True)
    from study_report import report

    report(args.results, runs)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
