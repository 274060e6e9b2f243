"""BraTS datasets and loaders that yield batches in the package's contract, built from MONAI transforms.

A sample (``dataset[i]``) is a dict:

- ``image``: float32 tensor (M, D, H, W), modalities in card order, normalised; a missing modality is zeros.
- ``present``: bool tensor (M,), by default the case's real availability (which modality files exist).
- ``target``: float32 tensor (3, D, H, W), regions ET, WT, TC (absent for cases without a seg file).
- ``case_id``: str, the case folder's name.

Training samples are random crops of ``crop_size`` (D, H, W), centred with probability ``foreground_prob``
(METHOD.md: 0.5) on a voxel of a tumour region chosen first (ET, WT or TC, equally likely among those the case
has, then a voxel of it: ET-centred crops are not rare though ET is small) and otherwise on a non-tumour
voxel, then flipped and intensity-scaled.
Evaluation samples are whole cases cropped to the brain box (see :mod:`mckd_lab.data.brats`). A loader from
:func:`make_loader` stacks samples into ``image`` (B, M, D, H, W), ``present`` (B, M), ``target``
(B, 3, D, H, W) and ``case_id`` (list of B str).

With ``cache=True`` each case is read from NIfTI once and kept in memory (normalised image, integer labels,
padding and crop-centre indices); only the random transforms run per epoch. (An in-memory cache of our own
rather than MONAI's CacheDataset, so that a bad case raises :class:`~mckd_lab.data.brats.BratsError` itself,
not MONAI's RuntimeError wrapper.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambda,
    MapTransform,
    RandCropByLabelClassesd,
    RandFlipd,
    RandomizableTrait,
    RandScaleIntensityd,
    SpatialPadd,
    Transform,
)

from mckd_lab.data.brats import BratsError, label_to_regions, load_case, scan_folder
from mckd_lab.data.cards import Card, load_card
from mckd_lab.data.missing import parse_subset


class LabelToRegionsd(Transform):
    """Replace ``label`` (1, D, H, W) by ``target`` (3, D, H, W) float32, regions ET, WT, TC from the card."""

    def __init__(self, card: Card):
        self.card = card

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        if "label" in data:
            label = data.pop("label")
            label = label.numpy() if isinstance(label, torch.Tensor) else label
            data["target"] = label_to_regions(label[0], self.card)
        return data


class RegionIndicesd(MapTransform):
    """Add ``<label>_cls_indices``: flat int32 voxel indices of the background (label 0) and of each card
    region (BraTS: ET, WT, TC; regions overlap), the classes ``RandCropByLabelClassesd`` picks centres from.
    Deterministic, so a caching dataset keeps them."""

    def __init__(self, key: str, card: Card):
        super().__init__([key])
        self.card = card

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.key_iterator(data):
            label = np.asarray(data[key])[0]
            masks = [label == 0, *label_to_regions(label, self.card).astype(bool)]
            data[f"{key}_cls_indices"] = [np.flatnonzero(m).astype(np.int32) for m in masks]
        return data


def _first(samples: list[dict]) -> dict:
    return samples[0]


def training_transforms(
    card: Card, crop_size: Sequence[int] = (80, 160, 160), foreground_prob: float = 0.5
) -> Compose:
    """Pad to ``crop_size``, a random crop centred on a region or the background, flips, intensity scale,
    regions, plain tensors.

    The crop centre: with ``foreground_prob`` a voxel of one of the card's regions (each region equally
    likely; one a case lacks is skipped), else a background voxel. The padding and the voxel indices per
    class (int32) are deterministic, so a caching dataset keeps them: finding them costs more than the rest
    of a sample. Intensity scaling (x (1 + u),
    u ~ U(-0.1, 0.1), per channel) keeps zeros at zero, so background and missing modalities stay 0; an
    additive shift would not.
    """
    if not 0.0 <= foreground_prob <= 1.0:
        raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob}")
    keys = ["image", "label"]
    return Compose(
        [
            SpatialPadd(keys, spatial_size=crop_size),
            RegionIndicesd("label", card),
            RandCropByLabelClassesd(
                keys,
                "label",
                spatial_size=crop_size,
                ratios=[1.0 - foreground_prob] + [foreground_prob / len(card.regions)] * len(card.regions),
                num_classes=1 + len(card.regions),
                num_samples=1,
                indices_key="label_cls_indices",
                warn=False,  # a case without ET: the other classes share its ratio (renormalised)
            ),
            Lambda(_first),  # RandCropByLabelClassesd returns a list of num_samples (1) dicts
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandScaleIntensityd("image", factors=0.1, prob=0.5, channel_wise=True),
            LabelToRegionsd(card),
            EnsureTyped(["image", "target", "present"], track_meta=False),
        ],
        map_items=False,  # so that _first receives the crop's list rather than each of its items
    )


def eval_transforms(card: Card) -> Compose:
    """Whole cases (cropped to the brain box), no augmentation; ``target`` only where a seg file exists."""
    return Compose(
        [
            LabelToRegionsd(card),
            EnsureTyped(["image", "target", "present"], track_meta=False, allow_missing_keys=True),
        ]
    )


class BratsDataset(torch.utils.data.Dataset):
    """BraTS cases as samples: each case read by :func:`load_case`, then put through ``transform`` (MONAI).

    A read case is ``image`` (M, D, H, W), ``label`` (1, D, H, W) int16 (when a seg file exists),
    ``present`` (M,) and ``case_id``. ``present`` (optional mask) keeps only those modalities, intersected
    with each case's real availability, and zeroes the others. ``require_label`` refuses cases without a seg
    file. With ``cache`` every case is read once, here, and kept in memory together with the output of the
    transforms before the first random one (as MONAI's CacheDataset does); without, every access reads the
    NIfTI files again. Samples never share memory with the cache. Errors reading a case are
    :class:`BratsError` (not wrapped in MONAI's RuntimeError).
    """

    def __init__(
        self,
        case_dirs: Sequence[str | Path],
        transform: Compose,
        present: Sequence[bool] | None = None,
        require_label: bool = False,
        cache: bool = True,
        card: Card | None = None,
    ):
        self.case_dirs = [Path(d) for d in case_dirs]
        self.transform = transform
        self.present = None if present is None else np.asarray(present, dtype=bool)
        self.require_label = require_label
        self.card = card or load_card("brats")
        first_random = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait))
        self.cached_steps = len(transform.transforms) if first_random is None else first_random
        self.cases = [self.prepare(d) for d in self.case_dirs] if cache else None

    def read(self, case_dir: Path) -> dict:
        case = load_case(case_dir, card=self.card)
        present = case.present if self.present is None else case.present & self.present
        if not present.any():
            raise BratsError(
                f"case {case.case_id}: none of the requested modalities is available in its folder"
            )
        sample = {
            "image": case.image * present[:, None, None, None],
            "present": present,
            "case_id": case.case_id,
        }
        if case.label is not None:
            # int16, not uint8: MONAI's foreground/background split takes the bitwise complement of
            # torch.any(label), which stays uint8 for a uint8 tensor, so every voxel would count as background
            sample["label"] = case.label[None].astype(np.int16)
        elif self.require_label:
            raise BratsError(
                f"case {case.case_id}: no seg file, so it cannot be used for training; "
                f"use it for prediction (evaluation dataset) or leave it out"
            )
        return sample

    def prepare(self, case_dir: Path) -> dict:
        """A read case put through the deterministic transforms (what the cache keeps)."""
        return self.transform(self.read(case_dir), end=self.cached_steps)

    def __len__(self) -> int:
        return len(self.case_dirs)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index] if self.cases is not None else self.prepare(self.case_dirs[index])
        sample = self.transform(dict(case), start=self.cached_steps)
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in sample.items()}


def brats_dataset(
    source: str | Path | Sequence[str | Path],
    train: bool = True,
    crop_size: Sequence[int] = (80, 160, 160),
    foreground_prob: float = 0.5,
    present: str | Sequence[bool] | None = None,
    cache: bool = True,
    card: Card | None = None,
) -> BratsDataset:
    """A dataset over a BraTS folder (any layout) or an explicit list of case folders.

    ``train``: random crops of ``crop_size`` (D, H, W) with augmentation, cases must have labels; otherwise
    whole cases. ``present``: None keeps each case's real availability; a subset name (``flair+t1ce``) or a
    mask in card order keeps only those modalities. ``cache``: read each case once and keep it in memory.
    """
    card = card or load_card("brats")
    case_dirs = scan_folder(source, card)[1] if isinstance(source, (str, Path)) else source
    if isinstance(present, str):
        present = parse_subset(present, card.modality_names)
    transform = training_transforms(card, crop_size, foreground_prob) if train else eval_transforms(card)
    return BratsDataset(case_dirs, transform, present, require_label=train, cache=cache, card=card)


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    **kwargs,
) -> DataLoader:
    """A MONAI DataLoader whose shuffling and random transforms are replayed exactly from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        **kwargs,
    )
