"""Metrics and the all-subsets table (the paper's layout: a row per subset of present modalities).

Conventions (BraTS challenge, stated in every table's protocol):

- Dice per region and case, ``2|P & T| / (|P| + |T|)``; when prediction and truth are both empty the Dice is
  1, when only one is empty it is 0 (as MONAI ``DiceMetric(ignore_empty=False)``, tested).
- HD95: the 95th percentile of the symmetric surface distances in mm (MONAI ``compute_hausdorff_distance``,
  ``percentile=95``, voxel spacing from the case's affine); both empty -> 0, only one empty -> 373.13 mm
  (the BraTS evaluation's value: the diagonal of the 240x240x155 1 mm grid).
- Region masks are the card's regions (ET, WT, TC as network channels); tables use the card's
  ``report_regions`` order (ET, TC, WT, the paper's).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from tqdm.auto import tqdm

from mckd_lab.data.brats import AXES, Case, MissingModalityWarning, load_case, scan_folder
from mckd_lab.data.cards import Card, load_card
from mckd_lab.data.missing import all_subsets, subset_name
from mckd_lab.infer import OVERLAP, THRESHOLD, predict_subsets, run_device
from mckd_lab.tasks import phantoms_folder

HD95_ONE_EMPTY = 373.13
DICE_CONVENTION = "Dice per case and region; both empty -> 1, one empty -> 0; mean over cases"
HD95_CONVENTION = f"HD95 in mm (voxel spacing); both empty -> 0, one empty -> {HD95_ONE_EMPTY}"
PRESENT_MARK, ABSENT_MARK = "●", "○"


def dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
    """Dice of binary masks, one value per channel: ``2 |P & T| / (|P| + |T|)``.

    Args:
        pred, target: bool or {0, 1} masks of shape (C, *spatial) (e.g. C = 3 regions, spatial = D, H, W).

    Returns:
        float64 array (C,); both empty -> 1, only one empty -> 0 (BraTS). Equal to MONAI's
        ``DiceMetric(include_background=True, ignore_empty=False)`` (tested); NumPy, because MONAI's tensor
        path was measured up to ~100x slower on 48^3 masks when the CPU is shared.
    """
    p, t = _masks(pred), _masks(target)
    _check_shapes(p, t)
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    inter, total = (p & t).sum(1), p.sum(1) + t.sum(1)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def hd95(
    pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance of binary masks, one value per channel (MONAI).

    Args:
        pred, target: bool or {0, 1} masks of shape (C, *spatial).
        spacing: voxel size per spatial axis in mm (None: 1 mm).

    Returns:
        float64 array (C,) in mm; both empty -> 0, only one empty -> ``HD95_ONE_EMPTY`` (BraTS).
    """
    p, t = _masks(pred), _masks(target)
    _check_shapes(p, t)
    p_any, t_any = p.reshape(len(p), -1).any(1), t.reshape(len(t), -1).any(1)
    out = np.where(p_any | t_any, HD95_ONE_EMPTY, 0.0)
    both = p_any & t_any
    if both.any():
        with warnings.catch_warnings():  # MONAI warns about empty channels, which are handled above
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(
                torch.from_numpy(p[None, both]), torch.from_numpy(t[None, both]), include_background=True,
                percentile=95, spacing=spacing,
            )  # fmt: skip
        out[both] = hd[0].double().numpy()
    return out


def _masks(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.asarray(x.detach().cpu() if torch.is_tensor(x) else x).astype(bool)


def _check_shapes(p: np.ndarray, t: np.ndarray) -> None:
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} masks differ in shape")


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
        """The JSON layout: ``protocol``, ``regions``, ``modalities``, ``cases``, ``subsets`` (each
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
            "protocol": self.protocol,
            "regions": list(self.regions),
            "modalities": list(self.modalities),
            "cases": list(self.case_ids),
            "subsets": rows,
            "mean": mean,
        }


def render_table(table: dict, hd95: bool = False) -> str:
    """Markdown (readable as plain text) rendering of ``SubsetTable.to_dict()``: the protocol as a line above,
    a presence mark per modality (● present, ○ missing), Dice in % per region, and a mean row."""
    modalities, regions = table["modalities"], table["regions"]
    show_hd = hd95 and "hd95" in table["mean"]
    head = (
        list(modalities)
        + [f"Dice {r}" for r in regions]
        + ([f"HD95 {r}" for r in regions] if show_hd else [])
    )

    def cells(row: dict) -> list[str]:
        out = [f"{100 * row['dice'][r]:.2f}" for r in regions]
        return out + ([f"{row['hd95'][r]:.2f}" for r in regions] if show_hd else [])

    lines = [f"Protocol: {describe_protocol(table['protocol'])}", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(":---:" for _ in head) + "|")
    for row in table["subsets"]:
        marks = [PRESENT_MARK if row["present"][m] else ABSENT_MARK for m in modalities]
        lines.append("| " + " | ".join(marks + cells(row)) + " |")
    lines.append(
        "| "
        + " | ".join(
            [f"**mean of {len(table['subsets'])}**"] + [""] * (len(modalities) - 1) + cells(table["mean"])
        )
        + " |"
    )
    return "\n".join(lines)


def describe_protocol(protocol: dict) -> str:
    """One line naming data, split, number of cases and the inference settings of a table."""
    keys = ("data", "split", "n_cases", "inference", "dice")
    return "; ".join(f"{k}: {_short(protocol[k])}" for k in keys if k in protocol)


def _short(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def write_json_atomic(obj: dict, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
    return path


def evaluate_case(
    model: torch.nn.Module, case: Case, roi: Sequence[int], card: Card, with_hd95: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Dice (and HD95) of one case for all 2^M - 1 subsets, from one encode-once sliding-window pass.

    Returns:
        dice (S, R) and hd95 (S, R) or None; subsets in ``all_subsets`` order, regions in report order.
    """
    subsets = all_subsets(len(card.modalities))
    masks = predict_subsets(model, case.image, subsets, roi).numpy() > THRESHOLD  # (S, 3, D, H, W)
    order = [card.region_names.index(r) for r in report_regions(card)]
    target = case.target[order] > 0.5
    spacing = [case.geometry.spacing[a] for a in AXES]  # (D, H, W) order of the arrays
    d = np.stack([dice(m[order], target) for m in masks])
    h = np.stack([hd95(m[order], target, spacing) for m in masks]) if with_hd95 else None
    return d, h


def report_regions(card: Card) -> tuple[str, ...]:
    """Region column order of tables: the card's ``report_regions`` (BraTS: ET, TC, WT, the paper's)."""
    return tuple(card.header.get("report_regions", card.region_names))


def evaluate_cases(
    model: torch.nn.Module,
    case_dirs: Sequence[str | Path],
    roi: Sequence[int],
    card: Card | None = None,
    with_hd95: bool = True,
    protocol: dict | None = None,
    progress: bool = False,
) -> SubsetTable:
    """The all-subsets table of BraTS case folders (cases lacking a modality file are skipped, with a warning,
    and listed in ``protocol["skipped"]``: every subset must be a real choice of inputs)."""
    card = card or load_card("brats")
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
        d, h = evaluate_case(model, case, roi, card, with_hd95)
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


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, with_hd95: bool = True, progress: bool = False
) -> dict:
    """Evaluate a trained run over every subset of modalities and return the JSON-ready table.

    ``data`` None: the run's own data (``data.root`` or its phantoms), test split (``splits.json``); the
    result is also written to ``<run>/metrics.json`` (atomically). ``data`` a BraTS folder: its cases that the
    run did not train or hold out on (by case id); nothing is written. ADNI runs are handed to
    ``mckd_lab.classification.evaluate_run`` (same contract, classification metrics).
    """
    from mckd_lab.train import load_run  # here: the trainer may come to use this module

    run = load_run(run_dir)
    config = run.config
    if config.data.task != "brats":
        from mckd_lab.classification import evaluate_run as evaluate_classification

        return evaluate_classification(run, data)
    card = load_card("brats")
    splits_path = run.run_dir / "splits.json"  # absent when the run was trained on in-memory data
    if data is None and not splits_path.exists():
        raise FileNotFoundError(
            f"{splits_path} does not exist (the run was trained on in-memory data, so it has no test split): "
            "name a BraTS folder to evaluate on (evaluate_run(run, data=DIR), mckd-lab evaluate RUN --data DIR)"
        )
    splits = json.loads(splits_path.read_text(encoding="utf-8")) if splits_path.exists() else {}
    if data is None:
        root = Path(config.data.root) if config.data.root else phantoms_folder(config.data, run.run_dir)
        split = f"test ({config.data.test_fraction:g} of the cases, seed {config.data.split_seed})"
        case_dirs = [d for d in scan_folder(root, card)[1] if d.name in set(splits["test"])]
    else:
        root, split = Path(data), "cases not used in training or held out"
        seen = set(splits.get("train", [])) | set(splits.get("heldout", []))
        case_dirs = [d for d in scan_folder(root, card)[1] if d.name not in seen]
    if not case_dirs:
        raise ValueError(f"{root}: no case left to evaluate for run {run.run_dir} (split: {split})")
    protocol = {
        "data": str(root) if config.data.root or data is not None else f"phantoms {root}",
        "split": split,
        "run": str(run.run_dir),
        "method": config.method.name,
        "iterations": run.iteration,
    }
    table = evaluate_cases(
        run.model.to(run_device(config)), case_dirs, config.data.crop, card, with_hd95, protocol, progress
    )
    result = table.to_dict()
    if data is None:
        write_json_atomic(result, run.run_dir / "metrics.json")
    return result
