"""ADNI classification (CN / MCI / AD) with missing modalities: the task for the trainer, metrics, the
evaluation tables and single-subject prediction.

Same method, same strategies, same trainer as BraTS: :class:`ClassificationTask` follows the task interface of
``mckd_lab.tasks`` (``modalities``, ``score_names``, ``build_model``, ``loss``, ``scores``, ``datasets``).

- Data: an ADNIMERGE CSV (``data.root``) or, when none is given, a synthetic cohort generated into the run
  (``data.cohort_subjects``, ``data.cohort_seed``); one row per subject (baseline visit), split by subject
  (RID, ``data.split_seed``) into train / val / meta / test; scaling fitted on train only and saved to
  ``<run>/scaler.json`` so that evaluation and prediction scale new rows exactly as in training.
- Missingness is natural: each subject brings its availability mask (``present``). The trainer intersects
  it with the strategy's per-batch subset (``method.sampler``) and never drops a subject's last modality.
- Held-out split (MCKD's meta step, LCKD's election): the val and meta subjects that have every modality used.
  The meta step decodes the full set (METHOD.md), and a single-modality score then really uses that modality
  alone (a subject without it would otherwise be scored on what it has).
- Loss: cross-entropy with class weights N / (K * n_c) from the training split.
- ``data.modalities`` (optional) restricts a run to the subjects having all the named modalities, with the
  others removed: a fixed-subset baseline (e.g. an ``imaging``-only model) trained by the same trainer.
- Cognitive scores (MMSE, CDR-SB, ADAS, FAQ) are left out: the diagnosis is defined from them, so a model
  given them learns the diagnostic rule rather than biology (data_cards/adni.md). Task ``adni-cognitive`` adds
  them to ``clinical``, and the task name then says so in every config and table.
- Task ``adni-t1``: the ``mri`` modality, a T1 volume per subject (column ``T1_PATH``, read at ``data.t1_size``
  voxels a side and encoded by the segmentation encoder family), replaces the FreeSurfer/PET ``imaging``
  numbers; the generated cohort then comes with rendered T1 volumes (``mckd_lab.data.t1_phantoms``).

Evaluation (``evaluate_run``) scores the subjects of the run's test split (or of another CSV, less any subject
the run trained or held out on) in two tables: (a) every one of the 15 subsets S, made by removing available
modalities: subject b is scored with ``present_b & S``; subjects with none of S are left out (``n`` counts the
scored ones, ``n_full`` those that had all of S); (b) every availability pattern observed, with all of a
subject's modalities. Metrics: accuracy, balanced accuracy (mean recall over the classes present),
macro-F1, one-vs-rest macro AUC (None unless every class occurs) and the confusion matrix (rows true,
columns predicted).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from mckd_lab.config import RunConfig
from mckd_lab.data.adni import (
    SPLITS,
    AdniDataset,
    AdniTable,
    FeatureScaler,
    adni_modalities,
    load_adni,
    read_adnimerge,
)
from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets, subset_name
from mckd_lab.evaluate import write_json_atomic
from mckd_lab.models.classifier import build_classification_network
from mckd_lab.models.network import MultiModalNet

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
SUBSET_RULE = (
    "subsets made by removing available modalities: a subject is scored with its available modalities within "
    "the subset; subjects with none of them are left out (n scored, n_full had the whole subset)"
)


class ClassificationTask:
    """ADNI CN / MCI / AD (card order: imaging, genetic, clinical, biospecimen; with ``t1``: mri, genetic, ...).

    ``scores`` (LCKD's election) is the balanced accuracy; ``classes`` the label names (CN = 0, MCI = 1,
    AD = 2).
    ``class_weights`` (K,) is set by ``datasets`` from the training split (None: unweighted cross-entropy).
    """

    def __init__(self, card: str = "adni", cognitive: bool = False, t1: bool = False):
        self.card = load_card(card)
        self.cognitive, self.t1 = cognitive, t1
        self.specs = adni_modalities(self.card, t1)
        self.modalities = tuple(m.name for m in self.specs)
        self.classes = tuple(self.card.labels[i] for i in sorted(self.card.labels))
        self.score_names = ("balanced_accuracy",)
        self.class_weights: torch.Tensor | None = None

    def in_features(self) -> dict[str, int | None]:
        """{modality: number of columns, None for a volume}, card order (``clinical`` grows by the cognitive
        scores when on)."""
        extra = len(self.card.header["cognitive_columns"]) if self.cognitive else 0
        return {
            m.name: None if m.kind == "image" else len(m.columns) + (extra if m.name == "clinical" else 0)
            for m in self.specs
        }

    def build_model(self, config) -> MultiModalNet:
        """One encoder per modality (MLPs with widths ``config.channels``, the last the bottleneck width; a
        pooled compact CNN for a volume), a head."""
        if config.backbone != "compact":
            raise ValueError(
                f"model.backbone {config.backbone!r} is a segmentation backbone; the ADNI tasks have their own "
                "encoders (MLPs; a pooled compact CNN for a T1 volume): use model.backbone='compact' "
                "(model.channels sets their widths)"
            )
        return build_classification_network(self.in_features(), len(self.classes), config.channels)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy: logits (B, K), target (B,) class ids -> scalar."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), target.long(), weight=weight)

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(1,): balanced accuracy of the arg-max prediction over the batch."""
        pred = logits.argmax(1).cpu().numpy()
        return torch.tensor([balanced_accuracy(target.cpu().numpy(), pred)])

    def load(self, config, run_dir: str | Path):
        """The run's ``AdniData`` (read, split by subject, scaler fitted on train) from ``data_path``."""
        return load_adni(
            data_path(config, run_dir), seed=config.split_seed, cognitive=self.cognitive, t1=self.t1
        )

    def read_table(self, path: str | Path) -> AdniTable:
        """An ADNIMERGE CSV read with this task's modalities (baseline rows)."""
        return read_adnimerge(path, cognitive=self.cognitive, t1=self.t1)

    def datasets(self, config, run_dir: str | Path):
        """Training and held-out datasets (see the module docstring); writes ``<run>/scaler.json``."""
        from mckd_lab.tasks import Splits

        data = self.load(config, run_dir)
        keep = self.keep_mask(config)
        table = restrict(data.table, keep)
        # a fixed-subset run trains on the subjects having the whole subset; a normal run on every subject
        has = data.table.present[:, keep if config.modalities else np.zeros_like(keep)].all(1)
        rows = {name: r[has[r]] for name, r in data.splits.items()}
        heldout = np.sort(np.concatenate([rows["val"], rows["meta"]]))
        heldout = heldout[table.present[heldout][:, keep].all(1)]
        if len(rows["train"]) == 0 or len(heldout) == 0:
            raise ValueError(
                f"{data.table.path}: {len(rows['train'])} training subjects and {len(heldout)} held-out "
                f"(val + meta) subjects with every modality of {'+'.join(np.array(self.modalities)[keep])}; "
                "both must be > 0: give more subjects, or fewer modalities (data.modalities)"
            )
        counts = np.bincount(table.target[rows["train"]], minlength=len(self.classes))
        self.class_weights = torch.tensor(class_weights(counts), dtype=torch.float32)
        save_scaler(data.scaler, Path(run_dir) / "scaler.json")
        cases = {name: [str(r) for r in data.table.rid[idx]] for name, idx in data.splits.items()}
        cases["heldout"] = [str(r) for r in table.rid[heldout]]
        return Splits(
            AdniDataset(table, rows["train"], data.scaler, config.t1_size),
            AdniDataset(table, heldout, data.scaler, config.t1_size),
            cases,
        )

    def keep_mask(self, config) -> np.ndarray:
        """(M,) bool: the modalities a run uses (``data.modalities``; empty: all)."""
        unknown = [m for m in config.modalities if m not in self.modalities]
        if unknown:
            raise ValueError(
                f"data.modalities: {', '.join(unknown)} is not an ADNI modality; "
                f"use {', '.join(self.modalities)}"
            )
        return np.array([not config.modalities or m in config.modalities for m in self.modalities])


def restrict(table: AdniTable, keep: np.ndarray) -> AdniTable:
    """The same table with only the modalities of ``keep`` (M,) present (the others become missing)."""
    return dataclasses.replace(table, present=table.present & keep)


def data_path(config, run_dir: str | Path) -> Path:
    """``data.root``, or the synthetic cohort ``<run>/cohort/ADNIMERGE_synthetic_n<subjects>_seed<seed>.csv``
    (generated the first time, reused after: the generator is deterministic). Task ``adni-t1``: the cohort
    ``..._t1-<t1_size>.csv`` with its T1 volumes rendered at ``data.t1_size`` in ``<run>/cohort/T1``."""
    if config.root:
        return Path(config.root)
    from mckd_lab.data.cohort import generate_cohort
    from mckd_lab.tasks import make_task

    t1_size = config.t1_size if make_task(config.task).t1 else None
    name = f"ADNIMERGE_synthetic_n{config.cohort_subjects}_seed{config.cohort_seed}"
    path = Path(run_dir) / "cohort" / (name + (f"_t1-{t1_size}" if t1_size else "") + ".csv")
    if not path.exists():
        generate_cohort(path, subjects=config.cohort_subjects, seed=config.cohort_seed, t1_size=t1_size)
    return path


def class_weights(counts: Sequence[int]) -> np.ndarray:
    """Weights N / (K * n_c) per class (a class absent from training gets 0): (K,) float64."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)


def save_scaler(scaler: FeatureScaler, path: Path) -> None:
    write_json_atomic({"mean": {m: v.tolist() for m, v in scaler.mean.items()},
                       "std": {m: v.tolist() for m, v in scaler.std.items()}}, path)  # fmt: skip


def load_scaler(path: Path) -> FeatureScaler:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the run was not trained on an ADNI table by mckd-lab train"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    return FeatureScaler(**{k: {m: np.asarray(v) for m, v in raw[k].items()} for k in ("mean", "std")})


# --- metrics ------------------------------------------------------------------------------------------------


def balanced_accuracy(target: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes that occur in ``target`` (N,); ``pred`` (N,) class ids."""
    classes = np.unique(target)
    return float(np.mean([(pred[target == c] == c).mean() for c in classes])) if len(classes) else math.nan


def classification_metrics(target: np.ndarray, probs: np.ndarray) -> dict:
    """Metrics of probabilities ``probs`` (N, K) against class ids ``target`` (N,).

    Returns ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (over all K classes, 0 for a class never
    predicted nor present), ``auc`` (one-vs-rest macro; None unless all K classes occur in ``target``),
    ``confusion`` (K, K) counts, rows true, columns predicted.
    """
    k = probs.shape[1]
    pred, labels = probs.argmax(1), list(range(k))
    auc = None
    if len(np.unique(target)) == k:
        auc = float(roc_auc_score(target, probs, multi_class="ovr", labels=labels))
    return {
        "accuracy": float((pred == target).mean()),
        "balanced_accuracy": balanced_accuracy(target, pred),
        "macro_f1": float(f1_score(target, pred, labels=labels, average="macro", zero_division=0)),
        "auc": auc,
        "confusion": confusion_matrix(target, pred, labels=labels).tolist(),
    }


# --- evaluation tables --------------------------------------------------------------------------------------


@torch.no_grad()
def predict_probabilities(
    model: MultiModalNet, image: dict[str, torch.Tensor], present: torch.Tensor
) -> np.ndarray:
    """Class probabilities (N, K) for inputs {m: (N, F_m)} with ``present`` (N, M) (every row non-empty)."""
    model.eval()
    device = next(model.parameters()).device
    logits = model({m: x.to(device) for m, x in image.items()}, present.to(device)).logits
    return torch.softmax(logits.float(), 1).cpu().numpy()


def evaluate_model(model: MultiModalNet, dataset: AdniDataset, keep: Sequence[bool] | None = None) -> dict:
    """The two evaluation tables of ``dataset``'s subjects (see the module docstring).

    ``keep`` (M,): modalities the model may use (a fixed-subset run's ``data.modalities``); default all.
    Returns ``subsets`` (15 rows: ``subset``, ``present`` {modality: bool}, ``n``, ``n_full`` and the
    metrics), ``patterns`` (one row per observed availability pattern: ``pattern``, ``n`` and the metrics)
    and ``mean`` (each metric averaged over the subsets that scored anyone; AUC over those where defined).
    """
    names = model.modalities
    image, target = dataset.inputs, dataset.target.numpy()
    available = dataset.present.bool() & torch.tensor(True if keep is None else list(keep))
    subsets = []
    for subset in all_subsets(len(names)):
        present = available & torch.tensor(subset)
        scored = present.any(1)
        full = (present == torch.tensor(subset)).all(1)
        row = {"subset": subset_name(subset, names), "present": dict(zip(names, subset, strict=True)),
               "n": int(scored.sum()), "n_full": int(full.sum())}  # fmt: skip
        if row["n"]:
            probs = predict_probabilities(model, {m: x[scored] for m, x in image.items()}, present[scored])
            row |= classification_metrics(target[scored.numpy()], probs)
        else:
            row |= dict.fromkeys((*METRICS, "confusion"))
        subsets.append(row)
    patterns = []
    for pattern in sorted({tuple(p) for p in available.tolist() if any(p)}, key=lambda p: (-sum(p), p)):
        rows = (available == torch.tensor(pattern)).all(1)
        probs = predict_probabilities(model, {m: x[rows] for m, x in image.items()}, available[rows])
        patterns.append({"pattern": subset_name(pattern, names), "n": int(rows.sum())}
                        | classification_metrics(target[rows.numpy()], probs))  # fmt: skip
    scored = [r for r in subsets if r["n"]]
    mean = {
        k: float(np.mean(v)) if (v := [r[k] for r in scored if r[k] is not None]) else None for k in METRICS
    }
    return {"subsets": subsets, "patterns": patterns, "mean": mean}


def evaluate_run(run, data: str | Path | None = None) -> dict:
    """Evaluate a trained ADNI run (a ``Run`` or its folder) and return the JSON-ready result.

    ``data`` None: the run's own table, test split; the result is also written to ``<run>/metrics.json``.
    ``data`` a CSV: its subjects that the run did not train or hold out on (by RID), scaled with the run's
    scaler. Keys: ``protocol``, ``classes``, ``modalities``, ``subsets``, ``patterns``, ``mean``.
    """
    from mckd_lab.tasks import make_task

    run = _as_run(run)
    config, task = run.config, make_task(run.config.data.task)
    path = Path(data) if data is not None else data_path(config.data, run.run_dir)
    splits = json.loads((run.run_dir / "splits.json").read_text(encoding="utf-8"))
    seen = {int(r) for name in ("train", "val", "meta") for r in splits[name]}
    table = task.read_table(path)
    rows = np.flatnonzero(~np.isin(table.rid, list(seen)))
    if len(rows) == 0:
        raise ValueError(
            f"{path}: every subject was used in training or held out by {run.run_dir}: nothing to evaluate"
        )
    keep = task.keep_mask(config.data)
    scaler = load_scaler(run.run_dir / "scaler.json")
    result = evaluate_model(run.model, AdniDataset(table, rows, scaler, config.data.t1_size), keep)
    protocol = {
        "task": config.data.task,
        "data": str(path),
        "split": "test" if data is None else "subjects not used in training or held out",
        "n_subjects": int(len(rows)),
        "visits": "baseline (DX_bl)",
        "cognitive": task.cognitive,
        "modalities": "+".join(np.array(task.modalities)[keep]),
        "subsets": SUBSET_RULE,
        "metrics": "balanced accuracy = mean recall over present classes; macro-F1; AUC one-vs-rest macro",
    }
    result = {
        "protocol": protocol,
        "classes": list(task.classes),
        "modalities": list(task.modalities),
        **result,
    }
    if data is None:
        write_json_atomic(result, run.run_dir / "metrics.json")
    return result


def render_table(result: dict) -> str:
    """Plain-text (Markdown) table of ``evaluate_run``'s result: a row per subset with presence marks (● / ○),
    n, n_full and the metrics in %, a mean row, then the availability patterns."""
    mods, head = result["modalities"], ["n", "n_full", "acc", "bal acc", "macro-F1", "AUC"]

    def cells(row: dict) -> list[str]:
        return [_pct(row.get(k)) for k in METRICS]

    lines = [f"Protocol: {result['protocol']['split']}, {result['protocol']['n_subjects']} subjects, "
             f"{result['protocol']['data']}", "", "| " + " | ".join(mods + head) + " |",
             "|" + "|".join(":---:" for _ in mods + head) + "|"]  # fmt: skip
    for r in result["subsets"]:
        marks = ["●" if r["present"][m] else "○" for m in mods]
        lines.append("| " + " | ".join(marks + [str(r["n"]), str(r["n_full"])] + cells(r)) + " |")
    lines.append("| " + " | ".join(["**mean**"] + [""] * (len(mods) + 1) + cells(result["mean"])) + " |")
    lines += ["", "| pattern | n | acc | bal acc | macro-F1 | AUC |", "|---|:---:|:---:|:---:|:---:|:---:|"]
    lines += [f"| {p['pattern']} | {p['n']} | " + " | ".join(cells(p)) + " |" for p in result["patterns"]]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


# --- one subject --------------------------------------------------------------------------------------------


@dataclass
class SubjectPrediction:
    """Class probabilities of one subject from the modalities it has (``subset``)."""

    rid: int
    subset: str
    probabilities: dict[str, float]

    @property
    def predicted(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    def to_dict(self) -> dict:
        return {"rid": self.rid, "subset": self.subset, "probabilities": self.probabilities,
                "predicted": self.predicted}  # fmt: skip

    def __str__(self) -> str:
        probs = ", ".join(f"{c} {p:.3f}" for c, p in self.probabilities.items())
        return f"RID {self.rid} from {self.subset}: {probs} -> {self.predicted}"


def subject_inputs(run, csv: str | Path | None, rid: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One subject's scaled baseline inputs {m: (1, F_m)} and ``present`` (1, M) as the run sees them.

    ``csv`` None: the run's own table. Raises ValueError when ``rid`` has no baseline row with a diagnosis in
    ``csv`` or no modality the run uses.
    """
    from mckd_lab.tasks import make_task

    run = _as_run(run)
    task = make_task(run.config.data.task)
    csv = data_path(run.config.data, run.run_dir) if csv is None else csv
    table = restrict(task.read_table(csv), task.keep_mask(run.config.data))
    rows = np.flatnonzero(table.rid == int(rid))
    if len(rows) == 0:
        raise ValueError(
            f"{csv}: no subject with RID {rid} (the loader reads baseline rows that have a DX_bl diagnosis)"
        )
    if not table.present[rows].any():
        needs = "; ".join(f"{m.name}: {', '.join(m.key_columns)}" for m in task.specs)
        raise ValueError(
            f"{csv}: RID {rid} has no modality the run uses: nothing to predict from (a modality counts when "
            f"all its key columns are filled: {needs})"
        )
    ds = AdniDataset(table, rows, load_scaler(run.run_dir / "scaler.json"), run.config.data.t1_size)
    return dict(ds.inputs), ds.present


def predict_subject(run, csv: str | Path | None, rid: int) -> SubjectPrediction:
    """Class probabilities {CN, MCI, AD} for subject ``rid`` of ``csv`` (None: the run's own table), from the
    modalities it has (within the run's ``data.modalities``). ``run``: a ``Run`` or its folder."""
    from mckd_lab.tasks import make_task

    run = _as_run(run)
    image, present = subject_inputs(run, csv, rid)
    probs = predict_probabilities(run.model, image, present)[0]
    classes = make_task(run.config.data.task).classes
    return SubjectPrediction(int(rid), subset_name(present[0].tolist(), run.model.modalities),
                             {c: float(p) for c, p in zip(classes, probs, strict=True)})  # fmt: skip


def _as_run(run):
    from mckd_lab.train import Run, load_run

    return run if isinstance(run, Run) else load_run(run)


# --- configuration ------------------------------------------------------------------------------------------


def adni_config(
    data: str | Path | None = None,
    *,
    task: str = "adni",
    method: str = "mckd",
    epochs: int = 30,
    seed: int = 0,
    subjects: int = 1000,
    batch_size: int = 64,
    **overrides,
) -> RunConfig:
    """A ``RunConfig`` for an ADNI task (``adni``, ``adni-cognitive``, ``adni-t1``) with CPU-sized defaults.

    ``data``: an ADNIMERGE CSV, or None for a synthetic cohort of ``subjects`` generated in the run. An epoch
    is ``ceil(n_train / batch_size)`` iterations (batches are drawn with replacement, as the trainer does);
    the first quarter is the all-available warm-up. MLP widths (32, 32); AdamW lr 1e-3 (adni-t1: 3e-3), weight decay 1e-2; meta rounds every 20
    iterations (5 held-out batches), LCKD elections every 50. ``overrides``: dotted keys, e.g. ``{"method.sampler": "uniform"}``
    passed as ``**{"method.sampler": "uniform"}``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    from mckd_lab.tasks import make_task

    made = make_task(task)
    if not isinstance(made, ClassificationTask):
        raise ValueError(f"task {task!r} is not an ADNI task; use adni, adni-cognitive or adni-t1")
    t1 = made.t1
    n_train = (
        len(load_adni(data, t1=t1).splits["train"]) if data is not None else round(SPLITS["train"] * subjects)
    )
    iterations = epochs * math.ceil(n_train / batch_size)
    base = {
        "data.task": task, "data.root": None if data is None else str(data),
        "data.cohort_subjects": subjects, "data.split_seed": seed, "runtime.seed": seed,
        "method.name": method, "method.meta_every_warmup": 20, "method.meta_every_missing": 20,
        "method.meta_batches": 5, "method.elect_every": 50, "optim.batch_size": batch_size, "model.channels": (32, 32),
        "optim.optimizer": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 1e-2,
        "optim.iterations": iterations, "optim.warmup_iterations": iterations // 4,
    }  # fmt: skip
    if t1:  # the volume encoder learns slowly at 1e-3 (MCKD, seed 0: mean of the 15 subsets 0.48 vs 0.52)
        base["optim.lr"] = 3e-3
    return RunConfig().with_overrides(base | overrides).validate()
