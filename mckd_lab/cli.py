"""The ``mckd-lab`` command: data, training, evaluation, prediction, attributions and batch experiments.

Each subcommand is a thin shell over one library call; errors that concern the user's input (a bad file, an
unknown modality, a missing run) are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path

from mckd_lab import __version__, distributed
from mckd_lab.data.adni import format_inspection as describe_csv
from mckd_lab.data.adni import inspect_csv
from mckd_lab.data.brats import format_inspection as describe_folder
from mckd_lab.data.brats import inspect_folder
from mckd_lab.data.cohort import generate_cohort
from mckd_lab.data.phantoms import generate_phantoms
from mckd_lab.demo import run_demo
from mckd_lab.experiments import add_subcommands
from mckd_lab.method.strategies import STRATEGIES
from mckd_lab.rundir import CHECKPOINT, DiskFull, RunDir
from mckd_lab.runs import evaluate_run, explain_run, predict_run, render_table
from mckd_lab.tasks import TASKS, make_task, validate_config
from mckd_lab.train import TrainingDiverged, train
from mckd_lab.tutorials import copy_tutorials


def _print(result, as_json: bool, text: str | None = None) -> None:
    print(json.dumps(result, indent=2, default=str) if as_json else (text if text is not None else result))


def cmd_phantoms(a):
    out = generate_phantoms(a.out, cases=a.cases, size=a.size, seed=a.seed, redundancy=a.redundancy)
    print(f"wrote {a.cases} BraTS-like phantoms ({a.size}^3, seed {a.seed}, redundancy {a.redundancy:g}) in the "
          f"BraTS2018 layout to {out}")  # fmt: skip


def cmd_cohort(a):
    out = generate_cohort(a.out, subjects=a.subjects, seed=a.seed, t1_size=a.t1_size, redundancy=a.redundancy)
    with_t1 = f", baseline T1 volumes of {a.t1_size}^3 in {out.parent / 'T1'}" if a.t1_size else ""
    print(f"wrote an ADNIMERGE-format cohort of {a.subjects} subjects (seed {a.seed}, redundancy "
          f"{a.redundancy:g}) to {out}{with_t1}")  # fmt: skip


def cmd_inspect(a):
    path = Path(a.path)
    # a table file is an ADNIMERGE CSV, a folder a BraTS data set: the two formats this package reads
    read, describe = (inspect_csv, describe_csv) if path.is_file() or path.suffix.lower() == ".csv" else (
        inspect_folder, describe_folder)  # fmt: skip
    result = read(path)
    _print(result, a.json, describe(result))


def _parse_value(text: str):
    """A ``--set`` value: JSON when it parses (numbers, booleans, lists, null), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(a):
    """The RunConfig a ``train`` call asks for: the task's recipe with the flags given, then ``--set``."""
    flags = {"method": a.method, "seed": a.seed, "device": a.device, "size": a.size, "cases": a.cases,
             "iterations": a.iterations, "epochs": a.epochs}  # fmt: skip
    task = make_task(a.task)
    options = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(options) - set(inspect.signature(task.config).parameters))
    if unknown:
        raise ValueError(
            f"--{', --'.join(unknown)}: not an option of task {a.task} (see mckd-lab train --help)"
        )
    overrides = {"model.backbone": a.backbone} if a.backbone else {}
    if a.warmup is not None:
        overrides["optim.warmup_iterations"] = a.warmup
    if a.batch:
        overrides["optim.batch_size"] = a.batch
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write section.field=value, e.g. --set optim.lr=0.005")
        overrides[key] = _parse_value(value)
    config = task.config(a.data, **options)
    return validate_config(config.with_overrides(overrides))


def cmd_train(a):
    config = build_config(a)
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:  # --nproc: this command again, under torch's launcher
        try:
            return distributed.cli_train(a.nproc, distributed.without_option(a.argv, "--nproc"))
        except distributed.DistributedRunFailed as err:
            state = RunDir(a.out).last_checkpoint() if (a.out / CHECKPOINT).exists() else None
            kept = f"; {a.out} keeps iteration {state['iteration']}: continue with --resume" if state else ""
            raise distributed.DistributedRunFailed(f"{err}{kept}") from None
    run = train(config, a.out, resume=a.resume)
    if run is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return
    print(f"trained {config.method.name} for {run.iteration} iterations; run directory {a.out}")
    if run.importance:
        print("importance weights: " + ", ".join(f"{m} {w:.3f}" for m, w in run.importance.items()))


def cmd_evaluate(a):
    options = {"et_min_mm3": a.et_min_mm3, "nested": a.nested_regions}
    result = evaluate_run(a.run, data=a.data, **{k: v for k, v in options.items() if v})
    _print(result, a.json, render_table(result))


def cmd_predict(a):
    options = {"case": a.case, "out": a.out, "present": a.present, "rid": a.rid, "data": a.data}
    prediction = predict_run(a.run, **{k: v for k, v in options.items() if v is not None})
    _print(prediction.to_dict(), a.json, str(prediction))


def cmd_explain(a):
    options = {"case": a.case, "rid": a.rid, "out": a.out, "data": a.data, "n_steps": a.steps}
    result = explain_run(a.run, **{k: v for k, v in options.items() if v is not None})
    _print(result, a.json, format_shapley(result))


def format_shapley(result: dict) -> str:
    lines = [f"Shapley values of each modality (baseline = empty set: {result['baseline']})"]
    for output, values in result["shapley"].items():
        lines.append(f"  {output:>5}: " + "  ".join(f"{m} {v:+.3f}" for m, v in values.items()))
    return "\n".join(lines)


def cmd_demo(a):
    run_demo(a.out, iterations=a.iterations, seed=a.seed)


def cmd_tutorials(a):
    paths = copy_tutorials(a.dir, force=a.force)
    notebooks = sum(p.suffix == ".ipynb" for p in paths)
    print(f"{a.dir}: {notebooks} tutorial notebooks, their sweep specs (sweeps/) and README.md")
    print(f"open them with:  jupyter lab {a.dir}")
    print(f"or run one headless:  mckd-lab run {Path(a.dir) / '01_brats_mckd.ipynb'} --out runs/01")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mckd-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="write synthetic BraTS-like cases in the BraTS2018 layout")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--redundancy", type=float, default=0.0,
                   help="0: each region visible where it is in real scans (the card's contrasts); "
                   "1: every region as visible on every sequence as on its best one")  # fmt: skip
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("cohort", help="write a synthetic ADNI-like cohort as an ADNIMERGE-format CSV")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--subjects", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--t1-size", type=int, help="also render each baseline MRI as a T1 volume of this side (32..128)"
    )
    p.add_argument("--redundancy", type=float, default=0.0,
                   help="0-1: how much of imaging's class signal the other sources also carry (card adni_synthetic)")
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("inspect", help="describe a BraTS folder or an ADNIMERGE CSV")
    p.add_argument("path", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="train a model (MCKD or a baseline) and write a run directory")
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default="brats",
        help="adni-t1: ADNI with a T1 volume per subject (column T1_PATH) in place of the imaging numbers; "
        "adni-cognitive: ADNI with the cognitive scores (from which the diagnosis is made)",
    )
    p.add_argument(
        "--data", type=Path, help="BraTS folder or ADNIMERGE CSV (default: generated phantoms/cohort)"
    )
    p.add_argument("--out", required=True, type=Path, help="the run directory")
    p.add_argument("--method", default="mckd", choices=list(STRATEGIES))
    p.add_argument(
        "--size", type=int, help="BraTS: cubic crop size (and phantom size when generating); adni-t1: T1 side"
    )
    p.add_argument("--cases", type=int, help="BraTS: number of phantoms to generate")
    p.add_argument(
        "--iterations", type=int, help="total iterations (warm-up + missing stage; BraTS default 200)"
    )
    p.add_argument("--warmup", type=int, help="iterations with every modality present (default: a third)")
    p.add_argument("--epochs", type=int, help="ADNI: epochs over the training subjects (default 30)")
    p.add_argument("--batch", type=int)
    p.add_argument("--seed", type=int, default=999)
    p.add_argument("--backbone", choices=["compact", "reference"], help="BraTS network (default compact)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="any config field")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--nproc", type=int, default=1, help="train in N processes with DDP (torch's launcher, as "
                   "torchrun --standalone --nproc_per_node N); --batch is per process")  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="the all-subsets table of a run (writes RUN/metrics.json)")
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, help="other data to evaluate on (BraTS folder or ADNIMERGE CSV)")
    p.add_argument("--et-min-mm3", type=float, help="BraTS: relabel predicted ET under this volume as necrosis")
    p.add_argument("--nested-regions", action="store_true", help="BraTS: rebuild predicted regions from labels")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict one BraTS case (NIfTI) or one ADNI subject (probabilities)")
    p.add_argument("run", type=Path)
    p.add_argument("--case", type=Path, help="BraTS case folder")
    p.add_argument("--present", help="modalities to use, e.g. flair,t1ce (default: all the case has)")
    p.add_argument("--out", type=Path, help="segmentation file to write, e.g. seg.nii.gz")
    p.add_argument("--data", type=Path, help="ADNIMERGE CSV (with --rid)")
    p.add_argument("--rid", type=int, help="ADNI subject id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Shapley values per modality and Integrated Gradients maps")
    p.add_argument("run", type=Path)
    p.add_argument("--case", type=Path, help="BraTS case folder")
    p.add_argument("--rid", type=int, help="ADNI subject id")
    p.add_argument("--data", type=Path, help="ADNIMERGE CSV (with --rid; default: the run's)")
    p.add_argument("--out", type=Path, help="folder for voxel maps (NIfTI) and the JSON")
    p.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("demo", help="phantoms -> train MCKD -> the 15-subset table")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--seed", type=int, default=999)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tutorials", help="copy the tutorial notebooks and their sweep specs into a folder")
    p.add_argument("dir", type=Path, help="the folder (created if needed)")
    p.add_argument(
        "--force", action="store_true", help="replace files there that differ from the shipped ones"
    )
    p.set_defaults(func=cmd_tutorials)

    add_subcommands(sub)  # run, sweep, strip (mckd_lab.experiments)
    for name in THREADED:
        sub.choices[name].add_argument(
            "--threads", type=int, metavar="N",
            help="CPU threads of torch / OpenMP (default: one per core); on a CPU other busy processes share, "
            "1 is often many times faster. Sets OMP_NUM_THREADS for the kernels and workers started from here",
        )  # fmt: skip
    return parser


THREADED = ("phantoms", "cohort", "train", "evaluate", "predict", "explain", "demo", "run", "sweep")


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads here, and OMP/MKL threads of the processes started from here
    (a papermill kernel, Dask workers: a sweep caps each run's threads at it)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads {threads}: give 1 or more")
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, DiskFull,
               distributed.DistributedRunFailed)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        set_threads(getattr(args, "threads", None))
        args.func(args)
    except Exception as err:
        if not isinstance(err, (*USER_ERRORS, TrainingDiverged)):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mckd-lab {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
