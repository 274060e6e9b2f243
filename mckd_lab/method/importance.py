"""Importance weights: omega (M,) logits, w = softmax(omega), and MCKD's KD pair weights w_i / w_j."""

from __future__ import annotations

import torch
from torch import nn


class ImportanceWeights(nn.Module):
    """The importance weight vector (IWV). ``omega`` (M,) starts at zero (every modality equally important;
    the reference starts from uniform random logits in [0, 1)). Calling it returns w = softmax(omega) (M,)."""

    def __init__(self, num_modalities: int):
        super().__init__()
        self.omega = nn.Parameter(torch.zeros(num_modalities))

    def forward(self) -> torch.Tensor:
        return importance(self.omega)


def importance(omega: torch.Tensor) -> torch.Tensor:
    """w = softmax(omega): (M,) -> (M,), positive, summing to 1."""
    return torch.softmax(omega, dim=-1)


def mckd_pair_weights(omega: torch.Tensor) -> torch.Tensor:
    """c_ij = w_i / w_j (M, M), indexed [teacher i, student j].

    Differentiable in omega (the KD loss detaches it; the bi-level step differentiates it).

    The more important teacher pulls a less important student with weight > 1 and is pulled back weakly.
    """
    w = importance(omega)
    return w.unsqueeze(1) / w.unsqueeze(0)
