"""ADNI classification (CN / MCI / AD) with missing modalities: the task for the trainer, metrics, the
evaluation tables and single-subject prediction.

Same method, same strategies, same trainer as BraTS: :class:`ClassificationTask` is a ``Task``
(``mckd_lab.tasks.base``); :class:`CognitiveClassificationTask` and :class:`T1ClassificationTask` are its
subclasses for ``adni-cognitive`` and ``adni-t1``.

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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mckd_lab.config import RunConfig, warmup_for
from mckd_lab.data.adni import (
    SPLITS,
    AdniData,
    AdniDataset,
    AdniTable,
    FeatureScaler,
    adni_modalities,
    load_adni,
    read_adnimerge,
)
from mckd_lab.data.cards import load_card
from mckd_lab.data.cohort import generate_cohort
from mckd_lab.data.missing import all_subsets, restrict_present, subset_name
from mckd_lab.explain import ExactModalityShapley, TabularIntegratedGradients
from mckd_lab.infer import SubsetPredictor, run_device
from mckd_lab.metrics import METRICS, balanced_accuracy, classification_metrics, percent, presence_marks
from mckd_lab.models.classifier import build_classification_network
from mckd_lab.models.network import MultiModalNet
from mckd_lab.rundir import RunDir, write_json_atomic
from mckd_lab.tasks.base import Setup, Task

SUBSET_RULE = (
    "subsets made by removing available modalities: a subject is scored with its available modalities within "
    "the subset; subjects with none of them are left out (n scored, n_full had the whole subset)"
)


class ClassificationTask(Task):
    """ADNI CN / MCI / AD (card order: imaging, genetic, clinical, biospecimen).

    ``scores`` (LCKD's election) is the balanced accuracy; ``classes`` the label names (CN = 0, MCI = 1,
    AD = 2). The loss is cross-entropy with class weights fitted on the training split (``setup``).
    """

    name = "adni"
    cognitive = False  # the cognitive scores in ``clinical`` (task adni-cognitive)
    t1 = False  # a T1 volume (``mri``) in place of the imaging numbers (task adni-t1)
    lr = 1e-3  # the recipe's AdamW rate

    def __init__(self, card: str = "adni"):
        self.card = load_card(card)
        self.specs = adni_modalities(self.card, self.t1)
        self.modalities = tuple(m.name for m in self.specs)
        self.classes = tuple(self.card.labels[i] for i in sorted(self.card.labels))
        self.score_names = ("balanced_accuracy",)

    # --- configuration ---------------------------------------------------------------------------------------
    def config(
        self,
        data: str | Path | None = None,
        *,
        method: str = "mckd",
        epochs: int = 30,
        seed: int = 0,
        subjects: int = 1000,
        batch_size: int = 64,
        iterations: int | None = None,
        size: int | None = None,
        device: str = "cpu",
        **overrides,
    ) -> RunConfig:
        """A RunConfig with CPU-sized defaults.

        ``data``: an ADNIMERGE CSV, or None for a synthetic cohort of ``subjects`` generated in the run. An
        epoch is ``ceil(n_train / batch_size)`` iterations (batches are drawn with replacement, as the
        trainer does); ``iterations`` overrides the total. The warm-up keeps every available modality for
        ``warmup_for(iterations)``. MLP widths (32, 32); AdamW (``lr``), weight decay 1e-2; meta rounds every
        20 iterations (5 held-out batches), LCKD elections every 50. ``size``: the T1 side (task adni-t1).
        ``overrides``: dotted keys, e.g. ``**{"method.sampler": "uniform"}``.
        """
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if iterations is None:
            n_train = (
                len(self.read(data).splits["train"])
                if data is not None
                else round(SPLITS["train"] * subjects)
            )
            iterations = epochs * math.ceil(n_train / batch_size)
        base = {
            "data.task": self.name, "data.root": None if data is None else str(data),
            "data.cohort_subjects": subjects, "data.split_seed": seed, "runtime.seed": seed, "runtime.device": device,
            "method.name": method, "method.meta_every_warmup": 20, "method.meta_every_missing": 20,
            "method.meta_batches": 5, "method.elect_every": 50, "optim.batch_size": batch_size,
            "model.channels": (32, 32), "optim.optimizer": "adamw", "optim.lr": self.lr, "optim.weight_decay": 1e-2,
            "optim.iterations": iterations, "optim.warmup_iterations": warmup_for(iterations),
        }  # fmt: skip
        if size is not None:
            base["data.t1_size"] = size
        return self.validated(RunConfig().with_overrides(base | overrides))

    def validate(self, config) -> list[str]:
        if config.model.backbone != "compact":
            return [
                f"model.backbone {config.model.backbone!r} is a segmentation backbone; the ADNI tasks have their "
                "own encoders (MLPs; a pooled compact CNN for a T1 volume): use model.backbone='compact' "
                "(model.channels sets their widths)"
            ]
        unknown = [m for m in config.data.modalities if m not in self.modalities]
        if unknown:
            return [
                f"data.modalities: {', '.join(unknown)} is not an ADNI modality; use {', '.join(self.modalities)}"
            ]
        return []

    def in_features(self) -> dict[str, int | None]:
        """{modality: number of columns, None for a volume}, card order (``clinical`` grows by the cognitive
        scores when on)."""
        extra = len(self.card.header["cognitive_columns"]) if self.cognitive else 0
        return {
            m.name: None if m.kind == "image" else len(m.columns) + (extra if m.name == "clinical" else 0)
            for m in self.specs
        }

    def feature_names(self) -> dict[str, list[str]]:
        """{modality: its input features' names}, card order (a volume: one name, ``<modality> volume``)."""
        names = {m.name: [f"{m.name} volume"] if m.kind == "image" else list(m.columns) for m in self.specs}
        if self.cognitive:
            names["clinical"] += list(self.card.header["cognitive_columns"])
        return names

    # --- data ------------------------------------------------------------------------------------------------
    def prepare_data(self, data_config, run_dir: str | Path) -> Path:
        """``data.root``, or the synthetic cohort ``<run>/cohort/ADNIMERGE_synthetic_n<subjects>_seed<seed>.csv``
        (generated the first time, reused after: the generator is deterministic). Task ``adni-t1``: the
        cohort ``..._t1-<t1_size>.csv`` with its T1 volumes rendered at ``data.t1_size`` in ``<run>/cohort/T1``."""
        if data_config.root:
            return Path(data_config.root)
        t1_size = data_config.t1_size if self.t1 else None
        name = f"ADNIMERGE_synthetic_n{data_config.cohort_subjects}_seed{data_config.cohort_seed}"
        name += f"_redundancy{data_config.cohort_redundancy:g}" if data_config.cohort_redundancy else ""
        path = Path(run_dir) / "cohort" / (name + (f"_t1-{t1_size}" if t1_size else "") + ".csv")
        if not path.exists():
            generate_cohort(path, subjects=data_config.cohort_subjects, seed=data_config.cohort_seed,
                            t1_size=t1_size, redundancy=data_config.cohort_redundancy)  # fmt: skip
        return path

    def read(self, path: str | Path, seed: int = 0) -> AdniData:
        """An ADNIMERGE CSV read with this task's modalities (baseline rows), split by subject, scaler fitted."""
        return load_adni(path, seed=seed, cognitive=self.cognitive, t1=self.t1)

    def read_table(self, path: str | Path) -> AdniTable:
        """An ADNIMERGE CSV read with this task's modalities (baseline rows)."""
        return read_adnimerge(path, cognitive=self.cognitive, t1=self.t1)

    def setup(self, data_config, run_dir: str | Path) -> Setup:
        """Training and held-out datasets (see the module docstring); the scaler goes to ``scaler.json``."""
        data = self.read(self.prepare_data(data_config, run_dir), data_config.split_seed)
        keep = self.keep_mask(data_config)
        table = restrict(data.table, keep)
        # a fixed-subset run trains on the subjects having the whole subset; a normal run on every subject
        has = data.table.present[:, keep if data_config.modalities else np.zeros_like(keep)].all(1)
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
        cases = {name: [str(r) for r in data.table.rid[idx]] for name, idx in data.splits.items()}
        cases["heldout"] = [str(r) for r in table.rid[heldout]]
        return Setup(
            AdniDataset(table, rows["train"], data.scaler, data_config.t1_size),
            AdniDataset(table, heldout, data.scaler, data_config.t1_size),
            cases,
            self.make_loss(torch.tensor(class_weights(counts), dtype=torch.float32)),
            files={"scaler.json": scaler_dict(data.scaler)},
        )

    def keep_mask(self, data_config) -> np.ndarray:
        """(M,) bool: the modalities a run uses (``data.modalities``; empty: all)."""
        return np.array([not data_config.modalities or m in data_config.modalities for m in self.modalities])

    def dataset(self, run, path: str | Path, rows: np.ndarray | None = None, table: AdniTable | None = None):
        """An ``AdniDataset`` of a run's view of ``path`` (its modalities, its scaler): ``rows`` (default all)."""
        table = restrict(
            table if table is not None else self.read_table(path), self.keep_mask(run.config.data)
        )
        rows = np.arange(len(table)) if rows is None else rows
        return AdniDataset(
            table, rows, load_scaler(Path(run.run_dir) / "scaler.json"), run.config.data.t1_size
        )

    # --- model and losses ------------------------------------------------------------------------------------
    def build_model(self, model_config) -> MultiModalNet:
        """One encoder per modality (MLPs with widths ``channels``, the last the bottleneck width; a pooled
        compact CNN for a volume), a head."""
        return build_classification_network(self.in_features(), len(self.classes), model_config.channels)

    def make_loss(self, class_weights: torch.Tensor | None = None):
        """Cross-entropy, class-weighted when ``class_weights`` (K,) is given: logits (B, K), target (B,)."""

        def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            weight = None if class_weights is None else class_weights.to(logits.device)
            return F.cross_entropy(logits.float(), target.long(), weight=weight)

        return loss

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(1,): balanced accuracy of the arg-max prediction over the batch."""
        pred = logits.argmax(1).cpu().numpy()
        return torch.tensor([balanced_accuracy(target.cpu().numpy(), pred)])

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes: logits (B, K) -> (B, K)."""
        return torch.softmax(logits.float(), 1)

    @torch.inference_mode()
    def infer(self, model: torch.nn.Module, image, subsets, config) -> torch.Tensor:
        """One direct pass over a subject's inputs {modality: (F_m,)}: (S, K) class probabilities."""
        model.eval()
        device = next(model.parameters()).device
        batch = {k: torch.as_tensor(v)[None].to(device) for k, v in image.items()}
        out = SubsetPredictor(model, subsets, self.probabilities)(batch)
        return out.view(len(subsets), -1).cpu()

    # --- a trained run ---------------------------------------------------------------------------------------
    def cases(self, run, split: str = "test") -> list[Subject]:
        """The subjects of one split of a run (``splits.json``), as the run sees them."""
        names = RunDir(run.run_dir).read_json("splits.json")[split]
        table = self.read_table(self.prepare_data(run.config.data, run.run_dir))
        ds = self.dataset(run, table.path, np.flatnonzero(np.isin(table.rid, [int(r) for r in names])), table)
        return [
            Subject(
                ds.case_ids[i],
                {m: x[i].numpy() for m, x in ds.inputs.items()},
                ds.present[i].numpy(),
                int(ds.target[i]),
            )  # fmt: skip
            for i in range(len(ds))
        ]

    def evaluate(self, run, data: str | Path | None = None, **options) -> dict:
        """Evaluate a trained run: ``data`` None, its own table's test split; ``data`` a CSV, its subjects
        that the run did not train or hold out on (by RID), scaled with the run's scaler. Keys: ``task``,
        ``protocol``, ``classes``, ``modalities``, ``subsets``, ``patterns``, ``mean``. ``options`` of another
        task's evaluation (e.g. BraTS post-processing) are refused."""
        if options:
            raise ValueError(f"{', '.join(sorted(options))}: not an evaluation option of task {self.name}")
        path = Path(data) if data is not None else self.prepare_data(run.config.data, run.run_dir)
        splits = RunDir(run.run_dir).read_json("splits.json")
        seen = {int(r) for name in ("train", "val", "meta") for r in splits[name]}
        table = self.read_table(path)
        rows = np.flatnonzero(~np.isin(table.rid, list(seen)))
        if len(rows) == 0:
            raise ValueError(
                f"{path}: every subject was used in training or held out by {run.run_dir}: nothing to evaluate"
            )
        keep = self.keep_mask(run.config.data)
        dataset = AdniDataset(
            table, rows, load_scaler(Path(run.run_dir) / "scaler.json"), run.config.data.t1_size
        )
        result = evaluate_model(run.model, dataset, keep)
        protocol = {
            "task": self.name,
            "data": str(path),
            "split": "test" if data is None else "subjects not used in training or held out",
            "n_subjects": int(len(rows)),
            "visits": "baseline (DX_bl)",
            "cognitive": self.cognitive,
            "modalities": "+".join(np.array(self.modalities)[keep]),
            "subsets": SUBSET_RULE,
            "metrics": "balanced accuracy = mean recall over present classes; macro-F1; AUC one-vs-rest macro",
        }
        return {"task": self.name, "protocol": protocol, "classes": list(self.classes),
                "modalities": list(self.modalities), **result}  # fmt: skip

    def render_table(self, result: dict) -> str:
        """Plain-text (Markdown) table of ``evaluate``'s result: a row per subset with presence marks (● / ○),
        n, n_full and the metrics in %, a mean row, then the availability patterns."""
        mods, head = result["modalities"], ["n", "n_full", "acc", "bal acc", "macro-F1", "AUC"]

        def cells(row: dict) -> list[str]:
            return [percent(row.get(k)) for k in METRICS]

        lines = [f"Protocol: {result['protocol']['split']}, {result['protocol']['n_subjects']} subjects, "
                 f"{result['protocol']['data']}", "", "| " + " | ".join(mods + head) + " |",
                 "|" + "|".join(":---:" for _ in mods + head) + "|"]  # fmt: skip
        for r in result["subsets"]:
            marks = presence_marks(r["present"], mods)
            lines.append("| " + " | ".join(marks + [str(r["n"]), str(r["n_full"])] + cells(r)) + " |")
        lines.append("| " + " | ".join(["**mean**"] + [""] * (len(mods) + 1) + cells(result["mean"])) + " |")
        lines += [
            "",
            "| pattern | n | acc | bal acc | macro-F1 | AUC |",
            "|---|:---:|:---:|:---:|:---:|:---:|",
        ]
        lines += [f"| {p['pattern']} | {p['n']} | " + " | ".join(cells(p)) + " |" for p in result["patterns"]]
        return "\n".join(lines)

    def table_arrays(self, result: dict) -> tuple[list[str], list[str], np.ndarray, str]:
        """Rows: the subsets and ``mean``; columns: the metrics; values in % (NaN: undefined)."""
        rows = [*result["subsets"], {"subset": "mean", **result["mean"]}]
        columns = [m for m in METRICS if m in result["mean"]]
        values = [[np.nan if row.get(c) is None else row[c] for c in columns] for row in rows]
        return [row["subset"] for row in rows], columns, 100 * np.array(values, dtype=float), "score"

    def subject_inputs(
        self, run, csv: str | Path | None, rid: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One subject's scaled baseline inputs {m: (1, F_m)} and ``present`` (1, M) as the run sees them.

        ``csv`` None: the run's own table. Raises ValueError when ``rid`` has no baseline row with a
        diagnosis in ``csv`` or no modality the run uses.
        """
        csv = self.prepare_data(run.config.data, run.run_dir) if csv is None else csv
        table = restrict(self.read_table(csv), self.keep_mask(run.config.data))
        rows = np.flatnonzero(table.rid == int(rid))
        if len(rows) == 0:
            raise ValueError(
                f"{csv}: no subject with RID {rid} (the loader reads baseline rows that have a DX_bl diagnosis)"
            )
        if not table.present[rows].any():
            needs = "; ".join(f"{m.name}: {', '.join(m.key_columns)}" for m in self.specs)
            raise ValueError(
                f"{csv}: RID {rid} has no modality the run uses: nothing to predict from (a modality counts "
                f"when all its key columns are filled: {needs})"
            )
        ds = self.dataset(run, csv, rows, table)
        return dict(ds.inputs), ds.present

    def predict(
        self, run, rid: int | None = None, data: str | Path | None = None, **others
    ) -> SubjectPrediction:
        """Class probabilities {CN, MCI, AD} for subject ``rid`` of ``data`` (None: the run's own table),
        from the modalities it has (within the run's ``data.modalities``)."""
        _need_rid(rid, others, "predict")
        image, present = self.subject_inputs(run, data, rid)
        probs = predict_probabilities(run.model, image, present)[0]
        return SubjectPrediction(int(rid), subset_name(present[0].tolist(), run.model.modalities),
                                 {c: float(p) for c, p in zip(self.classes, probs, strict=True)})  # fmt: skip

    def explain(
        self,
        run,
        rid: int | None = None,
        data: str | Path | None = None,
        out: str | Path | None = None,
        n_steps: int = 32,
        **others,
    ) -> dict:
        """Shapley values per class (class probability) over the subject's modalities, read from ``data`` (an
        ADNIMERGE CSV; default the run's), and Integrated Gradients per feature for the predicted class."""
        _need_rid(rid, others, "explain")
        device = run_device(run.config)
        model = run.model.to(device)
        image, present = self.subject_inputs(run, data, rid)
        sample, present = {m: x[0].to(device) for m, x in image.items()}, present[0].tolist()
        shapley = ExactModalityShapley(
            model, outputs=self.classes, value="probability", probabilities=self.probabilities
        ).attribute(sample, present)
        predicted = int(np.argmax(shapley.full))
        ig = TabularIntegratedGradients(model, n_steps=n_steps).attribute(sample, present, predicted)
        columns = self.feature_names()
        result = {
            "rid": int(rid),
            **shapley.to_dict(),
            "predicted": self.classes[predicted],
            "integrated_gradients": {
                "class": self.classes[predicted],
                "delta": ig.delta,
                "per_modality": ig.per_modality,
                "features": {
                    m: dict(zip(columns[m], map(float, a), strict=True)) for m, a in ig.features.items()
                },
            },
        }
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_json_atomic(result, Path(out) / f"rid{int(rid)}_explain.json")
        return result


class CognitiveClassificationTask(ClassificationTask):
    """``adni-cognitive``: the cognitive scores (MMSE, CDR-SB, ADAS, FAQ) join ``clinical``. The diagnosis is
    made from them, so the model learns the diagnostic rule; the task's name says so in every table."""

    name = "adni-cognitive"
    cognitive = True


class T1ClassificationTask(ClassificationTask):
    """``adni-t1``: ``mri``, a T1 volume per subject (column ``T1_PATH``, read at ``data.t1_size``), replaces
    the FreeSurfer/PET ``imaging`` numbers; encoded by a pooled compact CNN."""

    name = "adni-t1"
    t1 = True
    lr = 3e-3  # the volume encoder learns slowly at 1e-3 (benchmarks/README.md, ADNI T1)


def _need_rid(rid: int | None, others: dict, verb: str) -> None:
    """A clear error for a call without a subject, or with another task's options (e.g. a BraTS ``case``)."""
    given = sorted(k for k, v in others.items() if v is not None)
    if rid is None or given:
        extra = f" ({', '.join(given)} is not an option of an ADNI run)" if given else ""
        raise ValueError(f"to {verb} with an ADNI run, name a subject: --rid RID [--data FILE.csv]{extra}")


@dataclass(frozen=True)
class Subject:
    """One ADNI subject as a run sees it: ``image`` {modality: float32 (F_m,)} scaled with the run's scaler
    (zeros where absent), ``present`` bool (M,), ``target`` class id (CN 0, MCI 1, AD 2), ``case_id``
    ``"<RID>_<VISCODE>"``. The fields match ``Case``'s, so views take either."""

    case_id: str
    image: dict
    present: np.ndarray
    target: int


def restrict(table: AdniTable, keep: np.ndarray) -> AdniTable:
    """The same table with only the modalities of ``keep`` (M,) present (the others become missing)."""
    return dataclasses.replace(table, present=table.present & keep)


def class_weights(counts: Sequence[int]) -> np.ndarray:
    """Weights N / (K * n_c) per class (a class absent from training gets 0): (K,) float64."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)


def scaler_dict(scaler: FeatureScaler) -> dict:
    """The scaler as JSON values (``scaler.json``)."""
    return {
        "mean": {m: v.tolist() for m, v in scaler.mean.items()},
        "std": {m: v.tolist() for m, v in scaler.std.items()},
    }


def load_scaler(path: Path) -> FeatureScaler:
    raw = RunDir(path.parent).read_json(path.name)
    if raw is None:
        raise FileNotFoundError(
            f"{path} is missing: the run was not trained on an ADNI table by mckd-lab train"
        )
    return FeatureScaler(**{k: {m: np.asarray(v) for m, v in raw[k].items()} for k in ("mean", "std")})


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
        scored = (available & torch.tensor(subset)).any(1)  # subjects with none of the subset are left out
        present = restrict_present(available, subset)
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
