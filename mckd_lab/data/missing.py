"""Subsets of present modalities: canonical names and order, and the missing-modality samplers.

A subset is a ``present`` mask: a tuple of M bools over the modalities in card order (never all False).
Its name joins the present modality names with ``+`` in card order (``flair+t1ce``; full set
``flair+t1+t1ce+t2``). ``all_subsets(m)`` lists the 2^m - 1 subsets by size, then in
``itertools.combinations`` order: singles first, the full set last (the paper's table order).

A sampler is a distribution over subsets (``probabilities()``) and draws from it with one uniform number
taken from a ``torch.Generator`` or a ``numpy.random.Generator`` (``sample``), so a draw is replayable from
the generator's state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

Subset = tuple[bool, ...]


def all_subsets(m: int) -> list[Subset]:
    """The 2^m - 1 non-empty masks over m modalities: by size, then ``itertools.combinations`` order."""
    out = []
    for k in range(1, m + 1):
        for chosen in itertools.combinations(range(m), k):
            out.append(tuple(i in chosen for i in range(m)))
    return out


def subset_name(present: Sequence[bool] | torch.Tensor, names: Sequence[str]) -> str:
    """``flair+t1ce`` for present (True, False, True, False) over (flair, t1, t1ce, t2)."""
    present = [bool(p) for p in present]
    if len(present) != len(names):
        raise ValueError(f"a mask of {len(present)} values cannot name a subset of {len(names)} modalities")
    if not any(present):
        raise ValueError("the empty subset has no name: at least one modality must be present")
    return "+".join(n for n, p in zip(names, present, strict=True) if p)


def parse_subset(text: str, names: Sequence[str]) -> Subset:
    """The mask named by ``text``: modality names joined by ``+`` or ``,`` in any order (``t1ce,flair``)."""
    chosen = [t.strip() for t in text.replace(",", "+").split("+") if t.strip()]
    unknown = [t for t in chosen if t not in names]
    if unknown or not chosen:
        raise ValueError(
            f"cannot read subset {text!r}: {', '.join(unknown) or 'no modality'} is not one of "
            f"{', '.join(names)} (write present modalities joined by '+' or ',', e.g. flair+t1ce)"
        )
    return tuple(n in chosen for n in names)


def _uniform(generator: torch.Generator | np.random.Generator) -> float:
    """One number in [0, 1) from either kind of generator."""
    if isinstance(generator, np.random.Generator):
        return float(generator.random())
    return float(torch.rand((), generator=generator, dtype=torch.float64))


class SubsetSampler:
    """A distribution over the non-empty subsets of m modalities (subclasses define ``probabilities``)."""

    def __init__(self, m: int):
        if m < 1:
            raise ValueError(f"a sampler needs at least one modality, got m={m}")
        self.m = m

    def probabilities(self) -> dict[Subset, float]:
        """{subset: probability} over ``all_subsets(m)`` (zero-probability subsets included)."""
        raise NotImplementedError

    def sample(
        self, generator: torch.Generator | np.random.Generator, available: Sequence[bool] | None = None
    ) -> Subset:
        """Draw a subset (one uniform number from ``generator``).

        With ``available`` (a mask of the modalities the data has), the draw is the sampler's subset
        intersected with ``available``, conditioned on that intersection being non-empty: the result is
        always within ``available`` and never empty, so the last available modality is never dropped.
        """
        available = (
            tuple(True for _ in range(self.m)) if available is None else tuple(bool(a) for a in available)
        )
        if len(available) != self.m or not any(available):
            raise ValueError(
                f"available must be a mask of {self.m} values with at least one True, got {available}"
            )
        mass: dict[Subset, float] = {}
        for subset, p in self.probabilities().items():
            kept = tuple(s and a for s, a in zip(subset, available, strict=True))
            if any(kept) and p > 0:
                mass[kept] = mass.get(kept, 0.0) + p
        u = _uniform(generator) * sum(mass.values())
        ordered = [s for s in all_subsets(self.m) if s in mass]
        for subset in ordered:
            u -= mass[subset]
            if u < 0:
                return subset
        return ordered[-1]  # u landed on the rounding error of the last bucket

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.m})"


class ReferenceSampler(SubsetSampler):
    """The reference code's sampler: k ~ U{1..m}, then a uniform k-subset.

    Not uniform over subsets: for m = 4 the full set has 1/4, each single 1/16, each pair 1/24, each
    triple 1/16.
    """

    def probabilities(self) -> dict[Subset, float]:
        return {s: 1.0 / (self.m * math.comb(self.m, sum(s))) for s in all_subsets(self.m)}


class LCKDSampler(SubsetSampler):
    """LCKD's sampler: k ~ U{1..m-1}, then a uniform k-subset; never the full set."""

    def __init__(self, m: int):
        if m < 2:
            raise ValueError(
                f"the LCKD sampler never draws the full set, so it needs m >= 2 modalities, got {m}"
            )
        super().__init__(m)

    def probabilities(self) -> dict[Subset, float]:
        return {
            s: (0.0 if sum(s) == self.m else 1.0 / ((self.m - 1) * math.comb(self.m, sum(s))))
            for s in all_subsets(self.m)
        }


class UniformSubsetSampler(SubsetSampler):
    """Uniform over the 2^m - 1 non-empty subsets."""

    def probabilities(self) -> dict[Subset, float]:
        subsets = all_subsets(self.m)
        return {s: 1.0 / len(subsets) for s in subsets}


class BernoulliSampler(SubsetSampler):
    """Each modality present independently with probability ``p``, conditioned on at least one present."""

    def __init__(self, m: int, p: float = 0.5):
        if not 0.0 < p <= 1.0:
            raise ValueError(f"BernoulliSampler needs 0 < p <= 1, got p={p}")
        super().__init__(m)
        self.p = p

    def probabilities(self) -> dict[Subset, float]:
        norm = 1.0 - (1.0 - self.p) ** self.m
        return {s: self.p ** sum(s) * (1.0 - self.p) ** (self.m - sum(s)) / norm for s in all_subsets(self.m)}

    def __repr__(self) -> str:
        return f"BernoulliSampler(m={self.m}, p={self.p})"


class FullSetSampler(SubsetSampler):
    """Always every modality (the full-modality warm-up stage)."""

    def probabilities(self) -> dict[Subset, float]:
        return {s: float(all(s)) for s in all_subsets(self.m)}


SAMPLERS = {
    "reference": ReferenceSampler,
    "lckd": LCKDSampler,
    "uniform": UniformSubsetSampler,
    "bernoulli": BernoulliSampler,
    "full": FullSetSampler,
}


def make_sampler(name: str, m: int) -> SubsetSampler:
    """A sampler by name: ``reference``, ``lckd``, ``uniform``, ``bernoulli`` or ``full``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown missing-modality sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](m)


def restrict_present(available: torch.Tensor, subset: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """The one rule for a drawn subset: each sample keeps ``subset`` within what it has, and a sample that has
    none of ``subset`` keeps everything it has (its last modality is never dropped).

    available (B, M) bool, subset (M,) -> present (B, M) bool.
    """
    available = available.bool()
    present = available & torch.as_tensor(subset, dtype=torch.bool, device=available.device)
    return torch.where(present.any(1, keepdim=True), present, available)
