"""Mean filling and the pairwise modality-weighted knowledge-distillation loss (METHOD.md, "Forward pass"
step 3 and "Losses").

Layout: ``features`` (B, M, C, *s) per-modality bottlenecks (s: spatial axes, possibly none), ``present``
(B, M) bool, pair weights (M, M) indexed [teacher i, student j].
"""

from __future__ import annotations

import torch


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, M) -> (B, M, 1, ..., 1) broadcastable against ``like`` (B, M, C, *s)."""
    return mask.view(*mask.shape, *([1] * (like.dim() - 2)))


def fill_missing(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Replace every missing modality's bottleneck by the mean of the present ones, per sample.

    features (B, M, C, *s), present (B, M) bool with at least one True per row -> filled (B, M, C, *s).
    Present entries are returned unchanged (the same values, gradients flow through them).
    """
    if not bool(present.any(1).all()):
        raise ValueError(
            "every sample needs at least one present modality; got a row of present that is all False"
        )
    mask = _expand(present.bool(), features)
    total = torch.where(mask, features, torch.zeros_like(features)).sum(1, keepdim=True)
    mean = total / present.sum(1).to(features.dtype).view(-1, 1, *([1] * (features.dim() - 2)))
    return torch.where(mask, features, mean)


def pairwise_l1(features: torch.Tensor) -> torch.Tensor:
    """l_ij = mean |stopgrad(f_i) - f_j| over C and the spatial axes, for every ordered pair
    (teacher i, student j).

    features (B, M, C, *s) -> (B, M, M) indexed [b, i, j]; the teacher side is detached.
    """
    teacher = features.detach().unsqueeze(2)  # (B, M, 1, C, *s): i
    student = features.unsqueeze(1)  # (B, 1, M, C, *s): j
    return (teacher - student).abs().flatten(3).mean(-1)


def kd_pairs(present: torch.Tensor) -> torch.Tensor:
    """The KD pair set per sample: (B, M, M) bool, True where i != j and both i and j are present."""
    present = present.bool()
    eye = torch.eye(present.shape[1], dtype=torch.bool, device=present.device)
    return present.unsqueeze(2) & present.unsqueeze(1) & ~eye


def pairwise_kd_loss(
    features: torch.Tensor, present: torch.Tensor, pair_weights: torch.Tensor
) -> torch.Tensor:
    """L_KD = mean over the batch of sum_{i != j, both present} stopgrad(c_ij) * l_ij.

    features (B, M, C, *s) bottlenecks before filling; present (B, M) bool; pair_weights (M, M) c_ij indexed
    [teacher, student] (MCKD: w_i / w_j). Both the weights and the teacher features are detached, so the loss
    trains only the students. One present modality gives 0 (and no gradient).
    """
    per_pair = pairwise_l1(features) * pair_weights.detach().to(features.dtype)
    return torch.where(kd_pairs(present), per_pair, torch.zeros_like(per_pair)).sum((1, 2)).mean()
