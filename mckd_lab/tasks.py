"""Tasks: what the trainer needs to know about a problem, so that it never branches on the data.

A task gives ``modalities`` (card order), ``score_names`` (what ``scores`` returns, e.g. regions ET, WT, TC),
``build_model(model_config)``, ``loss(logits, target)``, ``scores(logits, target) -> (R,)`` (higher is better,
mean over the batch; LCKD's election reads it) and ``datasets(data_config, run_dir) -> Splits``.
Register a new task in ``TASKS`` (ADNI classification: tabular encoders + ``ClassificationHead``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice

from mckd_lab.data.cards import load_card
from mckd_lab.losses import SegmentationLoss
from mckd_lab.models.network import MultiModalNet, build_segmentation_network


@dataclass
class Splits:
    """Training and held-out (meta) datasets yielding batch-contract items; case ids of every split."""

    train: torch.utils.data.Dataset
    heldout: torch.utils.data.Dataset
    cases: dict[str, list[str]]


def split_cases(case_ids: list[str], heldout: int, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Shuffle sorted ids with ``seed``; the first ``round(test_fraction * N)`` are ``test``, the next
    ``heldout`` are ``heldout`` (meta split), the rest ``train`` (each list sorted)."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = round(test_fraction * len(ids))
    if len(ids) - n_test - heldout < 1:
        raise ValueError(
            f"{len(ids)} cases cannot give {n_test} test + {heldout} held-out cases and still leave one for "
            "training: lower data.heldout_cases or data.test_fraction, or give more cases"
        )
    shuffled = [ids[i] for i in order]
    parts = {"test": shuffled[:n_test], "heldout": shuffled[n_test : n_test + heldout],
             "train": shuffled[n_test + heldout :]}  # fmt: skip
    return {k: sorted(v) for k, v in parts.items()}


class SegmentationTask:
    """BraTS-style segmentation: volumes (B, M, D, H, W), targets (B, 3, D, H, W), regions ET, WT, TC."""

    def __init__(self, card: str = "brats"):
        self.card = load_card(card)
        self.modalities = self.card.modality_names
        self.score_names = self.card.region_names
        self.loss = SegmentationLoss()

    def build_model(self, config) -> MultiModalNet:
        return build_segmentation_network(
            self.modalities, config.backbone, config.channels, config.shared_encoder, len(self.score_names)
        )

    def scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice per region at threshold 0.5 (both empty -> 1), mean over the batch: (R,)."""
        pred = (logits.float() > 0).float()
        return compute_dice(pred, target.float(), include_background=True, ignore_empty=False).mean(0)

    def datasets(self, config, run_dir: str | Path) -> Splits:
        """Training / held-out datasets of random crops from ``config.root`` (or phantoms made in the run)."""
        from mckd_lab.data.brats import scan_folder
        from mckd_lab.data.datasets import brats_dataset

        root = Path(config.root) if config.root else phantoms_folder(config, run_dir)
        _, case_dirs = scan_folder(root, self.card)
        by_id = {Path(d).name: d for d in case_dirs}
        cases = split_cases(list(by_id), config.heldout_cases, config.test_fraction, config.split_seed)

        def dataset(ids):
            return brats_dataset(
                [by_id[i] for i in ids], train=True, crop_size=config.crop,
                foreground_prob=config.foreground_prob, cache=config.cache, card=self.card,
            )  # fmt: skip

        return Splits(dataset(cases["train"]), dataset(cases["heldout"]), cases)


def phantoms_folder(config, run_dir: str | Path) -> Path:
    """``<run>/phantoms``, generated from the data config the first time (reused when it exists)."""
    from mckd_lab.data.phantoms import generate_phantoms

    folder = Path(run_dir) / "phantoms"
    manifest = folder / "phantoms.json"
    if not manifest.exists():
        generate_phantoms(
            folder, cases=config.phantom_cases, size=config.phantom_size, seed=config.phantom_seed
        )
    recorded = json.loads(manifest.read_text())
    if (recorded["seed"], recorded["size"], len(recorded["cases"])) != (
        config.phantom_seed, config.phantom_size, config.phantom_cases):  # fmt: skip
        raise ValueError(f"{folder} holds other phantoms than data.phantom_*; use a new run folder")
    return folder


def _adni(cognitive: bool = False, t1: bool = False):
    from mckd_lab.classification import ClassificationTask  # imports this module (Splits): import lazily

    return ClassificationTask(cognitive=cognitive, t1=t1)


TASKS = {
    "brats": SegmentationTask,
    "adni": _adni,
    "adni-cognitive": lambda: _adni(cognitive=True),
    "adni-t1": lambda: _adni(t1=True),
}


def make_task(name: str):
    """The task for a data config's ``task`` field."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()
