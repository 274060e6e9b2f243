"""Prediction with any subset of modalities present: sliding windows, regions -> labels, NIfTI out.

The evaluation rule of METHOD.md: whole volume, MONAI sliding window with the training crop size as window and
overlap 1/3, sigmoid, threshold 0.5. Window probabilities (not logits) are averaged where windows overlap.

Encode once, decode per subset: ``SubsetPredictor`` runs the encoder once per window (every modality, plus the
zero-input response once) and the decoder once per requested subset, returning all subsets' probabilities
stacked on the channel axis. One sliding-window pass therefore yields the whole all-subsets table of a case.
Logits become probabilities through the task's rule (``Task.probabilities``: sigmoid per region for
segmentation, the default here; softmax over classes for classification), handed in by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from mckd_lab.data.brats import Case
from mckd_lab.data.cards import Card, load_card
from mckd_lab.models.network import Encoded

OVERLAP = 1 / 3
THRESHOLD = 0.5


def regions_to_labels(regions: np.ndarray | torch.Tensor, card: Card) -> np.ndarray:
    """Nested region masks -> one label map in the card convention.

    Regions are painted from the largest label set to the smallest, each with the label it has that no smaller
    region has. For BraTS (ET={4}, WT={1,2,4}, TC={1,4}): WT minus TC -> 2, TC minus ET -> 1, ET -> 4.

    Args:
        regions: bool/{0,1} (R, D, H, W) in the card's region (network channel) order, ET, WT, TC for BraTS.
        card: the data card naming the regions and their labels.

    Returns:
        uint8 (D, H, W) labels; 0 outside every region.
    """
    regions = np.asarray(regions.cpu() if torch.is_tensor(regions) else regions).astype(bool)
    if regions.shape[0] != len(card.regions):
        raise ValueError(f"{regions.shape[0]} region channels, card {card.name!r} has {len(card.regions)}")
    order = sorted(range(len(card.regions)), key=lambda i: -len(card.regions[i].labels))
    labels = np.zeros(regions.shape[1:], np.uint8)
    for k, i in enumerate(order):
        smaller = {v for j in order[k + 1 :] for v in card.regions[j].labels}
        own = [v for v in card.regions[i].labels if v not in smaller]
        if len(own) != 1:
            raise ValueError(f"card {card.name!r}: region {card.regions[i].name} does not nest in one label")
        labels[regions[i]] = own[0]
    return labels


class SubsetPredictor(nn.Module):
    """Encode once, decode for every subset: the window predictor of ``sliding_window_inference``.

    Every modality is encoded once (``model.encode``) and the zero input once per window shape
    (``model.encode_zero``, cached); subset S takes the real encodings of its modalities and the zero response
    elsewhere (bottleneck and skips, ``Encoded.subsets``), and ``model.decode`` fills and decodes it: this
    equals ``model(image * S, S)``, one forward pass per subset. Subsets are decoded together, stacked on the
    batch axis, up to ``decode_batch`` samples per decoder call. An all-False subset stands for "nothing
    present" (the Shapley baseline): every slot holds the zero response and, with nothing to fill from, is
    decoded as present.

    Args:
        model: a network following the model contract (``encode``, ``encode_zero``, ``decode``).
        subsets: S presence masks of M bools.
        probabilities: logits (N, C, ...) -> probabilities, the task's rule (default: sigmoid per region).
        decode_batch: most samples (subsets x windows) per decoder call. Small is faster on CPU, where
            decoding is memory-bound: on a 2-core AVX2 EPYC, 4 windows x 1 subset per call beat one window's
            15 subsets in one call by 1.1x (paired) and 4 x 15 by 1.5x (benchmarks/README.md, issue 14); a
            GPU may prefer more.

    Forward: image (B, M, *roi) (or a dict of tabular (B, F_m)) -> probabilities (B, S * C, *roi),
    subset-major.
    """

    def __init__(
        self,
        model: nn.Module,
        subsets: Sequence[Sequence[bool]],
        probabilities: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
        decode_batch: int = 4,
    ):
        super().__init__()
        self.model, self.decode_batch, self.probabilities = model, decode_batch, probabilities
        self.subsets = torch.tensor([[bool(p) for p in s] for s in subsets])
        self._zero = {}

    def zero_response(self, image: torch.Tensor | dict[str, torch.Tensor]) -> Encoded:
        """The encoder's response to an all-zero sample shaped like ``image``'s: batch 1, cached per shape."""
        one = {k: v[:1] for k, v in image.items()} if isinstance(image, dict) else image[:1]
        parts = one.items() if isinstance(one, dict) else [("", one)]
        key = tuple((k, v.shape, v.device, v.dtype) for k, v in parts)
        if key not in self._zero:
            self._zero[key] = self.model.encode_zero(one)
        return self._zero[key]

    def forward(self, image: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        enc, zero = self.model.encode(image), self.zero_response(image)
        batch = enc.bottleneck.shape[0]
        chunk = max(1, self.decode_batch // batch)
        outs = []
        for rows in self.subsets.to(enc.bottleneck.device).split(chunk):
            k = rows.shape[0]
            keep = rows.repeat_interleave(batch, 0)  # (k * B, M), subset-major
            present = torch.where(keep.any(1, keepdim=True), keep, True)
            logits = self.model.decode(enc.subsets(rows, zero), present).logits
            probs = self.probabilities(logits).view(k, batch, *logits.shape[1:]).transpose(0, 1)
            outs.append(probs.reshape(batch, -1, *logits.shape[2:]))
        return torch.cat(outs, 1)


def sliding_window(
    predictor, image: torch.Tensor, roi: Sequence[int], overlap: float = OVERLAP, sw_batch_size: int = 2
) -> torch.Tensor:
    """MONAI sliding window over a (B, M, D, H, W) volume with the package's settings (constant blending,
    zero padding where the volume is smaller than ``roi``); differentiable when ``predictor`` is."""
    return sliding_window_inference(
        image, list(roi), sw_batch_size, predictor, overlap=overlap, mode="constant"
    )


@torch.inference_mode()
def predict_subsets(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    subsets: Sequence[Sequence[bool]],
    roi: Sequence[int],
    overlap: float = OVERLAP,
    sw_batch_size: int = 4,
    decode_batch: int = 4,
    probabilities: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
) -> torch.Tensor:
    """Probabilities of one case for every subset, from one encode-once sliding-window pass.

    Args:
        image: (M, D, H, W) normalised volume (missing modalities zero), e.g. ``Case.image``.
        subsets: S presence masks (see ``SubsetPredictor``; all False = nothing present).
        roi: window (D, H, W), the training crop size.
        sw_batch_size: windows per encoder call; decode_batch, probabilities: see ``SubsetPredictor``.

    Returns:
        float32 (S, C, D, H, W) on the CPU, e.g. sigmoid probabilities per region (C = 3: ET, WT, TC).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image, dtype=torch.float32)
    predictor = SubsetPredictor(model, subsets, probabilities, decode_batch)
    out = sliding_window(predictor, x[None].to(device), roi, overlap, sw_batch_size)
    return out[0].view(len(subsets), -1, *x.shape[1:]).float().cpu()


@dataclass
class Prediction:
    """One case predicted with one subset: ``probabilities`` float32 (3, D, H, W) (ET, WT, TC), ``regions``
    bool (3, D, H, W) (probability > 0.5), ``labels`` uint8 (D, H, W) in the card convention, ``present``
    (M,)."""

    probabilities: np.ndarray
    regions: np.ndarray
    labels: np.ndarray
    present: tuple[bool, ...]
    written: Path | None = None  # the NIfTI file the labels were written to, if any

    def voxel_counts(self) -> dict[int, int]:
        """{label value: number of voxels} of ``labels``."""
        values, counts = np.unique(self.labels, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist(), strict=True))

    def to_dict(self) -> dict:
        return {"written": None if self.written is None else str(self.written), "present": list(self.present),
                "voxel_counts": self.voxel_counts()}  # fmt: skip

    def __str__(self) -> str:
        where = f"wrote {self.written} " if self.written is not None else ""
        return f"{where}(labels and voxel counts: {self.voxel_counts()})"


def predict_case(
    model: nn.Module,
    case: Case,
    roi: Sequence[int],
    present: Sequence[bool] | None = None,
    card: Card | None = None,
    overlap: float = OVERLAP,
) -> Prediction:
    """Predict a BraTS case with the modalities ``present`` (default: those the case has).

    Raises ValueError naming the case and modality when ``present`` asks for a modality the case lacks.
    """
    card = card or load_card("brats")
    present = tuple(bool(p) for p in (case.present if present is None else present))
    lacking = [
        m for m, want, has in zip(card.modality_names, present, case.present, strict=True) if want and not has
    ]
    if lacking or not any(present):
        raise ValueError(
            f"case {case.case_id}: cannot predict with {', '.join(lacking) or 'no modality'}; the case has "
            f"{', '.join(m for m, p in zip(card.modality_names, case.present, strict=True) if p)}"
        )
    probs = predict_subsets(model, case.image, [present], roi, overlap)[0].numpy()
    regions = probs > THRESHOLD
    return Prediction(probs, regions, regions_to_labels(regions, card), present)


def run_device(config) -> torch.device:
    """The run's ``runtime.device`` when CUDA is available here, else the CPU."""
    return torch.device(config.runtime.device if torch.cuda.is_available() else "cpu")
