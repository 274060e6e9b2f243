"""BraTS brain-tumour segmentation: volumes (B, M, D, H, W), targets (B, 3, D, H, W), regions ET, WT, TC.

Data: a BraTS folder in any official layout (``data.root``), or ``data.phantom_cases`` BraTS-like phantoms
generated into ``<run>/phantoms`` (read back through the same loader). Cases are split once
(``data.split_seed``) into test / held-out (meta) / train; training takes random foreground-biased crops.

Evaluation follows METHOD.md: whole volume, MONAI sliding window with the training crop as window and overlap
1/3, sigmoid, threshold 0.5, once per subset of present modalities, all 15 subsets from one encode-once pass
per case (``infer.predict_subsets``). Tables use the card's ``report_regions`` order (ET, TC, WT, the paper's)
and state their protocol (data, split, cases, inference, conventions: ``mckd_lab.metrics``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from tqdm.auto import tqdm

from mckd_lab.config import RunConfig, warmup_for
from mckd_lab.data.brats import (
    AXES,
    Case,
    MissingModalityWarning,
    label_to_regions,
    load_case,
    scan_folder,
    write_segmentation,
)
from mckd_lab.data.cards import Card, load_card
from mckd_lab.data.datasets import brats_dataset
from mckd_lab.data.missing import all_subsets, parse_subset, subset_name
from mckd_lab.data.phantoms import generate_phantoms
from mckd_lab.explain import ExactModalityShapley, VoxelIntegratedGradients
from mckd_lab.infer import (
    OVERLAP,
    THRESHOLD,
    Prediction,
    predict_case,
    predict_subsets,
    regions_to_labels,
    run_device,
)
from mckd_lab.losses import SegmentationLoss
from mckd_lab.metrics import DICE_CONVENTION, HD95_CONVENTION, dice, hd95, percent, presence_marks
from mckd_lab.models.network import MultiModalNet, build_segmentation_network
from mckd_lab.rundir import RunDir, write_json_atomic
from mckd_lab.tasks.base import Setup, Task, split_ids


def report_regions(card: Card) -> tuple[str, ...]:
    """Region column order of tables: the card's ``report_regions`` (BraTS: ET, TC, WT, the paper's)."""
    return tuple(card.header.get("report_regions", card.region_names))


@dataclass
class SubsetTable:
    """Per-case metrics for every subset of present modalities, and the paper's table built from them.

    Attributes:
        modalities: modality names in card order (M,).
        regions: region names in report order (R,), e.g. ("ET", "TC", "WT").
        subsets: presence masks (S,) of M bools, canonical order (singles first, full set last).
        case_ids: (N,) case ids.
        dice: float (N, S, R), Dice in [0, 1].
        hd95: float (N, S, R) in mm, or None when not computed.
        protocol: what was evaluated and how (data, split, cases, sliding window, conventions).
    """

    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    subsets: list[tuple[bool, ...]]
    case_ids: list[str]
    dice: np.ndarray
    hd95: np.ndarray | None = None
    protocol: dict = field(default_factory=dict)

    def _row(self, values: np.ndarray) -> dict[str, float]:
        return {r: round(float(v), 6) for r, v in zip(self.regions, values, strict=True)}

    def to_dict(self) -> dict:
        """The JSON layout: ``task``, ``protocol``, ``regions``, ``modalities``, ``cases``, ``subsets`` (each
        ``subset``, ``present`` {modality: bool}, ``dice`` {region: mean over cases}, ``hd95`` when computed,
        ``per_case`` {"dice": {region: [N values, cases order]}}), and ``mean`` (the same metrics averaged
        over subsets)."""
        mean_dice = self.dice.mean(0)  # (S, R)
        rows = []
        for s, present in enumerate(self.subsets):
            row = {
                "subset": subset_name(present, self.modalities),
                "present": {m: bool(p) for m, p in zip(self.modalities, present, strict=True)},
                "dice": self._row(mean_dice[s]),
            }
            if self.hd95 is not None:
                row["hd95"] = self._row(self.hd95[:, s].mean(0))
            row["per_case"] = {
                "dice": {
                    r: [round(float(v), 6) for v in self.dice[:, s, i]] for i, r in enumerate(self.regions)
                }
            }
            rows.append(row)
        mean = {"dice": self._row(mean_dice.mean(0))}
        if self.hd95 is not None:
            mean["hd95"] = self._row(self.hd95.mean((0, 1)))
        return {
            "task": SegmentationTask.name,
            "protocol": self.protocol,
            "regions": list(self.regions),
            "modalities": list(self.modalities),
            "cases": list(self.case_ids),
            "subsets": rows,
            "mean": mean,
        }


def describe_protocol(protocol: dict) -> str:
    """One line naming data, split, number of cases and the inference settings of a table."""
    keys = ("data", "split", "n_cases", "inference", "dice")
    return "; ".join(f"{k}: {_short(protocol[k])}" for k in keys if k in protocol)


def _short(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def postprocess(
    regions: np.ndarray, card: Card, spacing: Sequence[float], et_min_mm3: float = 0.0, nested: bool = False
) -> np.ndarray:
    """The evaluation options many BraTS codes apply to predicted regions (R, D, H, W) in network order.

    ``nested``: regions rebuilt from the label map they make (``regions_to_labels``, then the card's label
    sets), so ET within TC within WT. ``et_min_mm3`` > 0: an ET prediction smaller than this volume (mm^3, so
    500 voxels at 1 mm mean the same at any spacing) is relabelled necrosis: its voxels leave ET and stay in
    TC (and WT). Returns bool (R, D, H, W).
    """
    regions = np.asarray(regions, dtype=bool)
    if nested:
        regions = label_to_regions(regions_to_labels(regions, card), card).astype(bool)
    et, tc = card.region_names.index("ET"), card.region_names.index("TC")
    if et_min_mm3 > 0 and 0 < regions[et].sum() * float(np.prod(spacing)) < et_min_mm3:
        regions = regions.copy()
        regions[tc] |= regions[et]
        regions[et] = False
    return regions


def evaluate_case(
    model: torch.nn.Module,
    case: Case,
    roi: Sequence[int],
    card: Card,
    with_hd95: bool = True,
    et_min_mm3: float = 0.0,
    nested: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Dice (and HD95) of one case for all 2^M - 1 subsets, from one encode-once sliding-window pass;
    ``et_min_mm3`` and ``nested`` as in ``postprocess`` (off by default).

    Returns:
        dice (S, R) and hd95 (S, R) or None; subsets in ``all_subsets`` order, regions in report order.
    """
    subsets = all_subsets(len(card.modalities))
    masks = predict_subsets(model, case.image, subsets, roi).numpy() > THRESHOLD  # (S, 3, D, H, W)
    spacing = [case.geometry.spacing[a] for a in AXES]  # (D, H, W) order of the arrays
    if et_min_mm3 > 0 or nested:
        masks = np.stack([postprocess(m, card, spacing, et_min_mm3, nested) for m in masks])
    order = [card.region_names.index(r) for r in report_regions(card)]
    target = case.target[order] > 0.5
    d = np.stack([dice(m[order], target) for m in masks])
    h = np.stack([hd95(m[order], target, spacing) for m in masks]) if with_hd95 else None
    return d, h


def evaluate_cases(
    model: torch.nn.Module,
    case_dirs: Sequence[str | Path],
    roi: Sequence[int],
    card: Card | None = None,
    with_hd95: bool = True,
    protocol: dict | None = None,
    progress: bool = False,
    et_min_mm3: float = 0.0,
    nested: bool = False,
) -> SubsetTable:
    """The all-subsets table of BraTS case folders (cases lacking a modality file are skipped, with a warning,
    and listed in ``protocol["skipped"]``: every subset must be a real choice of inputs). ``et_min_mm3``,
    ``nested``: the post-processing of ``postprocess``, stated in the protocol when on."""
    card = card or load_card(SegmentationTask.name)
    protocol = dict(protocol or {})
    ids, dices, hds, skipped = [], [], [], []
    for case_dir in tqdm(case_dirs, desc="evaluate", disable=not progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingModalityWarning)
            case = load_case(case_dir, card=card)
        if case.target is None or not case.present.all():
            skipped.append(case.case_id)
            warnings.warn(f"case {case.case_id}: skipped (needs labels and every modality)", stacklevel=2)
            continue
        d, h = evaluate_case(model, case, roi, card, with_hd95, et_min_mm3, nested)
        ids.append(case.case_id)
        dices.append(d)
        hds.append(h)
    if not ids:
        raise ValueError(
            f"no case to evaluate among {len(case_dirs)} folders (skipped: {', '.join(skipped)})"
        )
    inference = {"roi": list(roi), "overlap": round(OVERLAP, 4), "blend": "constant", "threshold": THRESHOLD}
    protocol.update(n_cases=len(ids), inference={**inference, "encode_once": True}, dice=DICE_CONVENTION)
    if with_hd95:
        protocol["hd95"] = HD95_CONVENTION
    if et_min_mm3 > 0:
        protocol["postprocess"] = f"predicted ET under {et_min_mm3:g} mm^3 relabelled necrosis (kept in TC)"
    if nested:
        protocol["regions_from_labels"] = "predicted regions rebuilt from their label map (ET in TC in WT)"
    if skipped:
        protocol["skipped"] = skipped
    return SubsetTable(
        modalities=card.modality_names,
        regions=report_regions(card),
        subsets=all_subsets(len(card.modalities)),
        case_ids=ids,
        dice=np.stack(dices),
        hd95=np.stack(hds) if with_hd95 else None,
        protocol=protocol,
    )


class SegmentationTask(Task):
    """BraTS-style segmentation (card ``brats``): Dice + BCE loss, Dice per region as scores (LCKD)."""

    name = "brats"

    def __init__(self, card: str = "brats"):
        self.card = load_card(card)
        self.modalities = self.card.modality_names
        self.score_names = self.card.region_names

    # --- configuration ---------------------------------------------------------------------------------------
    def config(
        self,
        data: str | Path | None = None,
        *,
        method: str = "mckd",
        iterations: int = 200,
        seed: int = 0,
        cases: int = 16,
        size: int = 32,
        device: str = "cpu",
        **overrides,
    ) -> RunConfig:
        """A validated RunConfig sized for a laptop or Binder (notebook 01's parameters, the CLI's defaults).

        ``data``: a BraTS folder, or None for ``cases`` phantoms of ``size``^3 (phantom seed 0) generated in
        the run. ``size`` is also the training crop. The data and its split stay fixed (seed 0) while ``seed``
        seeds the training, so seeds compare like with like. The warm-up keeps every modality for
        ``warmup_for(iterations)`` iterations; a meta round every ``iterations // 20`` iterations on 2
        held-out batches and an LCKD election every ``iterations // 5``; 2 held-out cases, a quarter of the
        cases for testing. ``overrides``: dotted keys, e.g. ``**{"optim.lr": 3e-3}``.
        """
        every = max(1, iterations // 20)
        base = {
            "data.task": self.name, "data.root": None if not data else str(data), "data.phantom_cases": cases,
            "data.phantom_size": size, "data.crop": [size] * 3, "data.heldout_cases": 2,
            "data.test_fraction": 0.25, "method.name": method, "method.meta_every_warmup": every,
            "method.meta_every_missing": every, "method.meta_batches": 2, "method.elect_every": 4 * every,
            "optim.iterations": iterations, "optim.warmup_iterations": warmup_for(iterations),
            "runtime.seed": seed, "runtime.device": device,
        }  # fmt: skip
        return self.validated(RunConfig().with_overrides(base | overrides))

    def validate(self, config) -> list[str]:
        d, m = config.data, config.model
        if m.backbone == "reference":
            fits = d.crop[0] % 16 == 0 and d.crop[1] % 32 == 0 and d.crop[2] % 32 == 0
            return (
                []
                if fits
                else [f"data.crop {d.crop}: the reference backbone needs D % 16 == 0, H, W % 32 == 0"]
            )
        k = 2 ** len(m.channels)
        if all(c % k == 0 for c in d.crop):
            return []
        return [
            f"data.crop {d.crop}: compact with {len(m.channels)} widths needs every side divisible by {k}"
        ]

    # --- data ------------------------------------------------------------------------------------------------
    def prepare_data(self, data_config, run_dir: str | Path) -> Path:
        """``data.root``, or ``<run>/phantoms`` generated from the data config the first time (reused after)."""
        if data_config.root:
            return Path(data_config.root)
        folder = Path(run_dir) / "phantoms"
        manifest = folder / "phantoms.json"
        if not manifest.exists():
            generate_phantoms(
                folder,
                cases=data_config.phantom_cases,
                size=data_config.phantom_size,
                seed=data_config.phantom_seed,
                redundancy=data_config.phantom_redundancy,
            )
        recorded = json.loads(manifest.read_text())
        if (recorded["seed"], recorded["size"], len(recorded["cases"]), recorded.get("redundancy", 0.0)) != (
            data_config.phantom_seed, data_config.phantom_size, data_config.phantom_cases,
            data_config.phantom_redundancy):  # fmt: skip
            raise ValueError(f"{folder} holds other phantoms than data.phantom_*; use a new run folder")
        return folder

    def _case_dirs(self, data_config, run_dir: str | Path) -> dict[str, Path]:
        _, case_dirs = scan_folder(self.prepare_data(data_config, run_dir), self.card)
        return {Path(d).name: Path(d) for d in case_dirs}

    def setup(self, data_config, run_dir: str | Path) -> Setup:
        """Training / held-out datasets of random crops of the run's data, split by case id."""
        by_id = self._case_dirs(data_config, run_dir)
        cases = split_ids(
            list(by_id), data_config.heldout_cases, data_config.test_fraction, data_config.split_seed
        )

        def dataset(ids):
            return brats_dataset(
                [by_id[i] for i in ids], train=True, crop_size=data_config.crop,
                foreground_prob=data_config.foreground_prob, cache=data_config.cache, card=self.card,
            )  # fmt: skip

        return Setup(dataset(cases["train"]), dataset(cases["heldout"]), cases, self.make_loss())

    # --- model and losses ------------------------------------------------------------------------------------
    def build_model(self, model_config) -> MultiModalNet:
        return build_segmentation_network(
            self.modalities, model_config.backbone, model_config.channels, model_config.shared_encoder,
            len(self.score_names),
        )  # fmt: skip

    def make_loss(self, class_weights: torch.Tensor | None = None) -> SegmentationLoss:
        return SegmentationLoss()

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice per region at threshold 0.5 (both empty -> 1), mean over the batch: (R,)."""
        pred = (logits.float() > 0).float()
        return compute_dice(pred, target.float(), include_background=True, ignore_empty=False).mean(0)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid per region: logits (B, 3, *s) -> (B, 3, *s)."""
        return torch.sigmoid(logits)

    def infer(self, model: torch.nn.Module, image, subsets, config) -> torch.Tensor:
        """Sliding windows of the training crop over a (M, D, H, W) volume: (S, 3, D, H, W)."""
        return predict_subsets(model, image, subsets, config.data.crop)

    # --- a trained run ---------------------------------------------------------------------------------------
    def cases(self, run, split: str = "test") -> list[Case]:
        """The ``Case`` objects of one split of a run (``splits.json``), read from the run's data."""
        by_id = self._case_dirs(run.config.data, run.run_dir)
        names = RunDir(run.run_dir).read_json("splits.json")[split]
        return [load_case(by_id[name], card=self.card) for name in names]

    def evaluate(
        self,
        run,
        data: str | Path | None = None,
        with_hd95: bool = True,
        progress: bool = False,
        et_min_mm3: float = 0.0,
        nested: bool = False,
    ) -> dict:
        """The all-subsets table of a run: its own test split (``data`` None), or the cases of a BraTS folder
        ``data`` that the run did not train or hold out on (by case id). ``et_min_mm3``, ``nested``: the
        BraTS post-processing options (``postprocess``), off by default."""
        config, rundir = run.config, RunDir(run.run_dir)
        splits = rundir.read_json("splits.json")
        if data is None and splits is None:
            raise FileNotFoundError(
                f"{rundir / 'splits.json'} does not exist (the run was trained on in-memory data, so it has no "
                "test split): name a BraTS folder to evaluate on (evaluate_run(run, data=DIR), mckd-lab "
                "evaluate RUN --data DIR)"
            )
        if data is None:
            root = self.prepare_data(config.data, run.run_dir)
            split = f"test ({config.data.test_fraction:g} of the cases, seed {config.data.split_seed})"
            case_dirs = [d for d in scan_folder(root, self.card)[1] if d.name in set(splits["test"])]
        else:
            root, split = Path(data), "cases not used in training or held out"
            seen = set((splits or {}).get("train", [])) | set((splits or {}).get("heldout", []))
            case_dirs = [d for d in scan_folder(root, self.card)[1] if d.name not in seen]
        if not case_dirs:
            raise ValueError(f"{root}: no case left to evaluate for run {run.run_dir} (split: {split})")
        protocol = {
            "data": str(root) if config.data.root or data is not None else f"phantoms {root}",
            "split": split,
            "run": str(run.run_dir),
            "method": config.method.name,
            "iterations": run.iteration,
        }
        model = run.model.to(run_device(config))
        table = evaluate_cases(
            model, case_dirs, config.data.crop, self.card, with_hd95, protocol, progress, et_min_mm3, nested
        )
        return table.to_dict()

    def render_table(self, result: dict, hd95: bool = False) -> str:
        """Markdown (readable as plain text) rendering of ``evaluate``'s result: the protocol as a line above,
        a presence mark per modality (● present, ○ missing), Dice in % per region, and a mean row."""
        modalities, regions = result["modalities"], result["regions"]
        show_hd = hd95 and "hd95" in result["mean"]
        head = (
            list(modalities)
            + [f"Dice {r}" for r in regions]
            + ([f"HD95 {r}" for r in regions] if show_hd else [])
        )

        def cells(row: dict) -> list[str]:
            out = [percent(row["dice"][r]) for r in regions]
            return out + ([f"{row['hd95'][r]:.2f}" for r in regions] if show_hd else [])

        lines = [f"Protocol: {describe_protocol(result['protocol'])}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(":---:" for _ in head) + "|")
        for row in result["subsets"]:
            lines.append("| " + " | ".join(presence_marks(row["present"], modalities) + cells(row)) + " |")
        mean = [f"**mean of {len(result['subsets'])}**"] + [""] * (len(modalities) - 1)
        lines.append("| " + " | ".join(mean + cells(result["mean"])) + " |")
        return "\n".join(lines)

    def table_arrays(self, result: dict) -> tuple[list[str], list[str], np.ndarray, str]:
        """Rows: the subsets and ``mean``; columns: the regions; values: mean Dice in %."""
        rows = [*result["subsets"], {"subset": "mean", **result["mean"]}]
        columns = list(result["regions"])
        values = 100 * np.array([[row["dice"][c] for c in columns] for row in rows], dtype=float)
        return [row["subset"] for row in rows], columns, values, "Dice"

    def predict(
        self,
        run,
        case: str | Path | None = None,
        out: str | Path | None = None,
        present: str | Sequence[bool] | None = None,
        **others,
    ) -> Prediction:
        """Predict a BraTS case folder and write the labels as NIfTI on the input's grid.

        ``present``: modality names joined by ``,`` or ``+`` (``"flair,t1ce"``), a mask, or None for every
        modality the case has. The window is the run's training crop (``data.crop``); the file at ``out`` has
        the case's original shape and affine and the layout's label values (``write_segmentation``).
        """
        _refuse(others, "predict")
        if case is None or out is None:
            raise ValueError(
                "predicting with a BraTS run needs a case folder and a file to write (--case DIR --out SEG.nii.gz)"
            )
        loaded = load_case(case, card=self.card)
        if isinstance(present, str):
            present = parse_subset(present, self.modalities)
        model = run.model.to(run_device(run.config))
        prediction = predict_case(model, loaded, run.config.data.crop, present, self.card)
        prediction.written = write_segmentation(prediction.labels, loaded, out, self.card)
        return prediction

    def explain(
        self, run, case: str | Path | None = None, out: str | Path | None = None, n_steps: int = 32, **others
    ) -> dict:
        """Exact modality Shapley values per region (value: Dice against the case's labels, or the mean region
        probability when it has none); with ``out``, Integrated Gradients maps of each region (zero baseline,
        ``n_steps``) written as NIfTI per modality on the case's grid, plus ``<case>_explain.json``."""
        _refuse(others, "explain")
        if case is None:
            raise ValueError("explaining with a BraTS run needs a case folder (--case DIR)")
        model, roi, card = run.model.to(run_device(run.config)), run.config.data.crop, self.card
        loaded = load_case(case, card=card)
        value = "dice" if loaded.target is not None else "probability"
        shapley = ExactModalityShapley(model, outputs=card.region_names, value=value).attribute(
            loaded.image, loaded.present, loaded.target, roi
        )
        result = {"case": loaded.case_id, **shapley.to_dict()}
        if out is not None:
            maps = {}
            integrated_gradients = VoxelIntegratedGradients(model, outputs=card.region_names, n_steps=n_steps)
            for region in report_regions(card):
                ig = integrated_gradients.attribute(loaded.image, loaded.present, region, roi)
                files = ig.save_nifti(loaded, out, card.modality_names)
                maps[region] = {"delta": ig.delta, "files": [str(p) for p in files]}
            result["integrated_gradients"] = maps
            write_json_atomic(result, Path(out) / f"{loaded.case_id}_explain.json")
        return result


def _refuse(options: dict, verb: str) -> None:
    """A clear error for options of another task's ``predict`` / ``explain`` (e.g. an ADNI ``rid``)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ValueError(f"{', '.join(given)}: not an option to {verb} with a BraTS run (give a case folder)")
