"""Importance weights: omega (M,) logits, w = softmax(omega), and MCKD's KD pair weights w_i / w_j."""

from __future__ import annotations

import torch
from torch import nn


class ImportanceWeights(nn.Module):
    """The importance weight vector (IWV). Calling it returns w = softmax(omega) (M,).

    ``init``: ``zeros`` (every modality equally important) or ``uniform01`` (the reference: ``torch.rand``
    logits in [0, 1), drawn from ``generator``, so a seeded run starts from the same omega).
    """

    def __init__(self, num_modalities: int, init: str = "zeros", generator: torch.Generator | None = None):
        super().__init__()
        if init not in ("zeros", "uniform01"):
            raise ValueError(f"omega init {init!r}: choose 'zeros' or 'uniform01'")
        start = torch.zeros(num_modalities) if init == "zeros" else torch.rand(num_modalities, generator=generator)
        self.omega = nn.Parameter(start)

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
