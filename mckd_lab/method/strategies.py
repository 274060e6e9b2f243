"""Strategies: how the KD pair weights are chosen and learned (METHOD.md "What the method replaces").

One small interface, so the trainer never asks which method it runs:

- ``pair_weights() -> (M, M)`` detached KD weights c_ij [teacher i, student j] for the current iteration;
- ``sampler``: the missing-modality sampler of the missing stage;
- ``importance() -> (M,) | None``: importance weights to show (None when the strategy has none);
- ``update(ctx) -> dict``: called after every training step; does its own every-K logic and returns a
  history record (``{"kind": "meta" | "elect", ...}``) when it did something, else ``{}``;
- ``state_dict()`` / ``load_state_dict()``: tensors and plain values only (checkpoints load with
  ``weights_only=True``).

Strategies: ``none`` (modality dropout + mean filling, no KD), ``uniform`` (KD weight 1 on every present
pair), ``lckd`` (elected teachers), ``mckd`` (the reference: learned w_i / w_j, alternating meta step) and
``mckd-bilevel`` (omega by a one-step unrolled hypergradient) and ``oracle`` (fixed importance weights given
by the testbed's ground truth, ``method.oracle_importance``; no meta step: an upper reference for what learned
weights can give).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mckd_lab.data.missing import SubsetSampler, all_subsets, make_sampler, restrict_present
from mckd_lab.method.importance import ImportanceWeights, mckd_pair_weights
from mckd_lab.method.meta import bilevel_meta_step, meta_step


@dataclass
class StepContext:
    """What a strategy may look at after a training step.

    iteration: the step just taken (0-based); stage: ``warmup`` | ``missing``; batch: the training batch with
    ``present`` as used in the step; heldout(k, batch_size=None): the k-th held-out batch of this round
    (random crops with the training augmentation, all available modalities present; batch_size None: the
    training batch size); generator: for the strategy's random choices (seeded per iteration by the trainer);
    task: its scores ``task.scores`` / ``task.score_names``; loss: the run's task loss (logits, target) -> scalar.
    """

    iteration: int
    stage: str
    model: nn.Module
    task: Any
    batch: dict
    lr: float
    kd_weight: float
    heldout: Callable[..., dict]
    generator: torch.Generator
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    autocast: Callable[[], AbstractContextManager] = field(default=nullcontext)


class Strategy:
    """The ``none`` strategy (no KD) and the base of the others; the interface is in the module docstring."""

    name = "none"
    default_sampler = "reference"

    def __init__(self, modalities: Sequence[str], config, seed: int = 0):
        self.modalities = tuple(modalities)
        self.config = config
        self.sampler: SubsetSampler = make_sampler(
            config.sampler or self.default_sampler, len(self.modalities)
        )
        self.device = torch.device("cpu")

    def pair_weights(self) -> torch.Tensor:
        return torch.zeros(len(self.modalities), len(self.modalities), device=self.device)

    def importance(self) -> torch.Tensor | None:
        return None

    def update(self, ctx: StepContext) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def to(self, device: str | torch.device) -> Strategy:
        self.device = torch.device(device)
        return self

    def _due(self, ctx: StepContext, every: int) -> bool:
        return every > 0 and (ctx.iteration + 1) % every == 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, modalities={self.modalities}, sampler={self.sampler})"
        )


class UniformKD(Strategy):
    """KD over every present pair with weight 1 (omega frozen at uniform)."""

    name = "uniform"

    def pair_weights(self) -> torch.Tensor:
        return torch.ones(len(self.modalities), len(self.modalities), device=self.device)


class LCKD(Strategy):
    """LCKD (MICCAI 2023): every ``elect_every`` iterations each single modality is scored alone on the
    held-out split; per region (score) the best modality wins; the union of winners are the teachers. KD
    is unweighted L1 from each present teacher to every other present modality. Its sampler never draws the
    full set.
    Until the first election every modality is a teacher; a region where all modalities tie elects nobody,
    and an election where every region ties keeps the previous teachers."""

    name = "lckd"
    default_sampler = "lckd"

    def __init__(self, modalities: Sequence[str], config, seed: int = 0):
        super().__init__(modalities, config, seed)
        self.teachers = torch.ones(len(self.modalities), dtype=torch.bool)

    def pair_weights(self) -> torch.Tensor:
        return (
            self.teachers.to(self.device, torch.float32).unsqueeze(1).expand(-1, len(self.modalities)).clone()
        )

    def update(self, ctx: StepContext) -> dict:
        if not self._due(ctx, self.config.elect_every):
            return {}
        singles = [s for s in all_subsets(len(self.modalities)) if sum(s) == 1]
        scores = heldout_scores(ctx, singles, self.config.meta_batches)  # (M, R)
        decided = scores.amax(0) > scores.amin(0)  # a region where every modality ties elects nobody
        if decided.any():
            self.teachers = torch.zeros(len(self.modalities), dtype=torch.bool)
            self.teachers[scores.argmax(0)[decided]] = True
        return {
            "kind": "elect",
            "iteration": ctx.iteration,
            "teachers": [m for m, t in zip(self.modalities, self.teachers.tolist(), strict=True) if t],
            "scores": {
                r: {m: round(float(scores[i, k]), 6) for i, m in enumerate(self.modalities)}
                for k, r in enumerate(ctx.task.score_names)
            },
        }

    def state_dict(self) -> dict:
        return {"teachers": self.teachers.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.teachers = state["teachers"].bool().cpu().clone()


def heldout_scores(ctx: StepContext, subsets: Sequence[tuple[bool, ...]], batches: int) -> torch.Tensor:
    """Mean task scores (higher is better) on ``batches`` held-out batches for each subset: (S, R)."""
    totals = torch.zeros(len(subsets), len(ctx.task.score_names))
    training = ctx.model.training
    ctx.model.eval()  # scoring is evaluation (no dropout); the trainer's mode is restored below
    with torch.no_grad(), ctx.autocast():
        for k in range(batches):
            batch = ctx.heldout(k)
            for s, subset in enumerate(subsets):
                present = restrict_present(batch["present"], subset)
                logits = ctx.model(batch["image"], present).logits
                totals[s] += ctx.task.scores(logits.float(), batch["target"]).cpu()
    ctx.model.train(training)
    return totals / batches


class MCKD(Strategy):
    """MCKD, the reference: KD weights c_ij = w_i / w_j with w = softmax(omega); every ``meta_every_warmup``
    (stage 1) or ``meta_every_missing`` (stage 2) iterations, a round of ``meta_batches`` reference meta
    steps (one Adam step on omega each, lr ``meta_lr``, weight decay ``meta_weight_decay``), each on its own
    held-out batch of ``meta_batch_size`` crops (reference: 20 crops at batch 1). Stage 1 gives every
    available modality; stage 2 a subset drawn with the training sampler, as training does."""

    name = "mckd"

    def __init__(self, modalities: Sequence[str], config, seed: int = 0):
        super().__init__(modalities, config, seed)
        generator = torch.Generator().manual_seed(seed)  # omega_init uniform01 draws from it
        self.weights = ImportanceWeights(len(self.modalities), config.omega_init, generator)
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam(
            self.weights.parameters(), lr=self.config.meta_lr, weight_decay=self.config.meta_weight_decay
        )

    def pair_weights(self) -> torch.Tensor:
        return mckd_pair_weights(self.weights.omega).detach()

    def importance(self) -> torch.Tensor:
        return self.weights().detach()

    def update(self, ctx: StepContext) -> dict:
        every = self.config.meta_every_warmup if ctx.stage == "warmup" else self.config.meta_every_missing
        if not self._due(ctx, every):
            return {}
        losses = [self._meta_step(ctx, k) for k in range(self.config.meta_batches)]
        w = self.importance().tolist()
        return {
            "kind": "meta",
            "iteration": ctx.iteration,
            "omega": [round(float(v), 6) for v in self.weights.omega.detach().tolist()],
            "importance": {m: round(float(v), 6) for m, v in zip(self.modalities, w, strict=True)},
            "meta_loss": sum(losses) / len(losses),
        }

    def _meta_batch(self, ctx: StepContext, k: int) -> dict:
        """The k-th held-out batch of the round, with the stage's modalities present."""
        batch = dict(ctx.heldout(k, self.config.meta_batch_size))
        if ctx.stage == "missing":
            batch["present"] = restrict_present(batch["present"], self.sampler.sample(ctx.generator))
        return batch

    def _meta_step(self, ctx: StepContext, k: int) -> float:
        with ctx.autocast():
            return meta_step(ctx.model, self.weights, self.optimizer, self._meta_batch(ctx, k), ctx.loss)

    def state_dict(self) -> dict:
        return {"omega": self.weights.omega.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.weights.omega.copy_(state["omega"])
        self.optimizer.load_state_dict(state["optimizer"])

    def to(self, device: str | torch.device) -> MCKD:
        super().to(device)
        self.weights.to(self.device)  # in place: the optimiser keeps the same Parameter
        return self


class BilevelMCKD(MCKD):
    """MCKD with omega learned through a one-step unrolled update (``bilevel_meta_step``): each meta step
    samples a subset with the strategy's sampler for a held-out batch, so omega is judged on the held-out loss
    under missing modalities, and differentiates it through the KD-weighted training step just taken."""

    name = "mckd-bilevel"

    def _meta_step(self, ctx: StepContext, k: int) -> float:
        heldout = dict(ctx.heldout(k, self.config.meta_batch_size))
        heldout["present"] = restrict_present(heldout["present"], self.sampler.sample(ctx.generator))
        with ctx.autocast():
            return bilevel_meta_step(
                ctx.model,
                self.weights,
                self.optimizer,
                ctx.batch,
                heldout,
                ctx.loss,
                ctx.lr,
                ctx.kd_weight,
            )


class OracleKD(Strategy):
    """Oracle importance weights: MCKD's pair weights c_ij = w_i / w_j with w fixed from the ground truth of the
    testbed (``method.oracle_importance``: M positive numbers, normalised to sum 1; e.g.
    ``mckd_lab.study.phantom_importance``), never updated: no meta step. It bounds what learned weights can
    give when the learned ranking is the true one."""

    name = "oracle"

    def __init__(self, modalities: Sequence[str], config, seed: int = 0):
        super().__init__(modalities, config, seed)
        given = tuple(float(v) for v in (getattr(config, "oracle_importance", ()) or ()))
        if len(given) != len(self.modalities) or min(given) <= 0:
            raise ValueError(
                f"method oracle needs method.oracle_importance: {len(self.modalities)} positive weights, one per "
                f"modality ({', '.join(self.modalities)}); got {given or 'none'}"
            )
        self.weights = torch.tensor(given) / sum(given)

    def pair_weights(self) -> torch.Tensor:
        w = self.weights.to(self.device)
        return w.unsqueeze(1) / w.unsqueeze(0)

    def importance(self) -> torch.Tensor:
        return self.weights.to(self.device)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (Strategy, UniformKD, LCKD, MCKD, BilevelMCKD, OracleKD)
}


def make_strategy(name: str, modalities: Sequence[str], config, seed: int = 0) -> Strategy:
    """A strategy by name (none, uniform, lckd, mckd, mckd-bilevel, oracle) configured by a ``MethodConfig``;
    ``seed`` seeds its own random start (MCKD's ``omega_init="uniform01"``)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](modalities, config, seed)
