"""Task losses (METHOD.md "Losses"). Layout ``BNHW[D]``; segmentation channels are the regions ET, WT, TC."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class SegmentationLoss(nn.Module):
    """Soft Dice + BCE-with-logits, as the reference code computes them.

    Dice: sigmoid probabilities, per sample and per channel, ``1 - 2 sum(p t) / (sum p + sum t + 1)`` (the
    reference's smooth 1 sits in the denominator only), averaged over samples and channels (MONAI
    ``DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=1)``). BCE: the mean over voxels and batch of each
    channel, summed over the channels. logits, target (B, C, D, H, W) -> scalar.
    """

    def __init__(self):
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1.0, batch=False, reduction="mean")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        logits, target = logits.float(), target.float()
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").transpose(0, 1).flatten(1)
        return self.dice(logits, target) + bce.mean(1).sum()

