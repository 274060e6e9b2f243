"""Learning omega: the reference's alternating meta step and a bi-level hypergradient step (METHOD.md).

Batches follow the batch contract (``image``, ``present`` = the data's availability, ``target``).
``task_loss(logits, target) -> scalar``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mckd_lab.method.importance import ImportanceWeights, mckd_pair_weights
from mckd_lab.method.kd import kd_pairs, pairwise_l1

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def meta_step(model: nn.Module, weights: ImportanceWeights, optimizer: torch.optim.Optimizer, batch: dict,
              task_loss: Loss) -> float:  # fmt: skip
    """The reference meta step: one Adam step on omega only; returns the task loss before the step.

    The modalities of ``batch["present"]`` are given (stage 1: every available one; stage 2: a random subset,
    as in training); each raw encoder bottleneck f_m (a missing one is the zero response: not mean-filled)
    is multiplied by w_m = softmax(omega)_m before decoding; the task loss is differentiated with respect to
    omega alone. The network is not stepped and its ``.grad`` are left untouched (the encoder runs without
    autograd: omega enters after it).
    """
    present = batch["present"].bool()
    with torch.no_grad():
        encoded = model.encode(model.zero_missing(batch["image"], present), present)
    loss = task_loss(model.decode(encoded, present, scale=weights(), fill=False).logits, batch["target"])
    optimizer.zero_grad(set_to_none=True)
    (weights.omega.grad,) = torch.autograd.grad(loss, [weights.omega])
    optimizer.step()
    return float(loss.detach())


class _Bottlenecks(nn.Module):
    """``net`` seen as params -> bottlenecks, for ``torch.func.functional_call``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image, present):
        return self.net.encode(self.net.zero_missing(image, present), present).bottleneck


def kd_pair_losses(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """L_ij = mean over the batch of l_ij on the pairs present: (M, M), so that L_KD = sum_ij c_ij L_ij."""
    per_pair = pairwise_l1(features)
    return torch.where(kd_pairs(present), per_pair, torch.zeros_like(per_pair)).mean(0)


def bilevel_meta_step(model: nn.Module, weights: ImportanceWeights, optimizer: torch.optim.Optimizer,
                      train_batch: dict, heldout_batch: dict, task_loss: Loss, lr: float,
                      kd_weight: float) -> float:  # fmt: skip
    """One Adam step on omega by the hypergradient of a one-step unrolled update (beyond the reference).

    Training loss L(theta; c) = task + kd_weight * sum_ij c_ij L_ij(theta), c_ij = w_i / w_j; one SGD step
    theta' = theta - lr grad L. The held-out loss under missing modalities (``heldout_batch["present"]``, a
    sampled subset) then has
        d L_meta(theta') / d c_ij = -lr * kd_weight * <grad L_meta(theta'), grad L_ij(theta)>,
    first order (L is linear in c). Both gradients are taken at the current parameters (the trainer has just
    stepped, so these are theta', and grad L_ij is evaluated one step late: an O(lr) difference). The inner
    products for all pairs come from one forward-mode product of L_ij along grad L_meta; the chain to omega
    goes through c_ij = w_i / w_j by autograd. The network is not stepped. Returns the held-out loss.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    out = model(heldout_batch["image"], heldout_batch["present"].bool())
    meta_loss = task_loss(out.logits, heldout_batch["target"])
    grads = torch.autograd.grad(meta_loss, list(params.values()), allow_unused=True)
    tangents = {
        f"net.{n}": torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }
    primals = {f"net.{n}": p.detach() for n, p in params.items()}
    wrapper, present = _Bottlenecks(model), train_batch["present"].bool()

    def pair_losses(p):
        return kd_pair_losses(
            torch.func.functional_call(wrapper, p, (train_batch["image"], present)), present
        )

    _, inner = torch.func.jvp(pair_losses, (primals,), (tangents,))  # (M, M): <grad L_meta, grad L_ij>
    hyper = -lr * kd_weight * inner.detach()
    optimizer.zero_grad(set_to_none=True)
    (weights.omega.grad,) = torch.autograd.grad(
        (hyper * mckd_pair_weights(weights.omega)).sum(), [weights.omega]
    )
    optimizer.step()
    return float(meta_loss.detach())


# --- the meta schedule scaled to a run's length -------------------------------------------------------------
# The authors' schedule (METHOD.md): 115k iterations, of which 80k all-modality (stage 1) with a meta round every
# 100 iterations and 35k missing-modality (stage 2) with one every 500, a round also at iteration 0; 20 Adam
# steps on omega per round (one per held-out crop at batch 1).
REFERENCE_SCHEDULE = {"iterations": 115_000, "warmup_iterations": 80_000, "meta_every_warmup": 100,
                      "meta_every_missing": 500, "meta_batches": 20}  # fmt: skip


def meta_rounds(iterations: int, warmup_iterations: int, every_warmup: int, every_missing: int) -> int:
    """Meta rounds a run makes: a round after iteration t when (t + 1) % every == 0 for its stage's cadence
    (the strategies' rule; 0 = never), counted over both stages."""
    warm = warmup_iterations // every_warmup if every_warmup > 0 else 0
    miss = iterations // every_missing - warmup_iterations // every_missing if every_missing > 0 else 0
    return warm + miss


def reference_omega_steps() -> int:
    """Adam steps on omega in the authors' schedule: (80k/100 + 1 + 35k/500) rounds x 20 = 17,420."""
    r = REFERENCE_SCHEDULE
    rounds = r["warmup_iterations"] // r["meta_every_warmup"] + 1
    rounds += (r["iterations"] - r["warmup_iterations"]) // r["meta_every_missing"]
    return rounds * r["meta_batches"]


def meta_fraction(iterations: int, warmup_iterations: int, every_warmup: int, every_missing: int,
                  steps_per_round: int) -> float:  # fmt: skip
    """Adam steps on omega of a run (rounds x steps per round) as a fraction of the authors' 17,420."""
    rounds = meta_rounds(iterations, warmup_iterations, every_warmup, every_missing)
    return rounds * steps_per_round / reference_omega_steps()


def scaled_meta_schedule(iterations: int, warmup_iterations: int, fraction: float,
                         steps_per_round: int = 20) -> dict:  # fmt: skip
    """The meta cadence giving a run ``fraction`` of the authors' Adam steps on omega, with their shape.

    Both stages keep the authors' ratio of cadences (a round 5 times as often in stage 1 as in stage 2) and
    ``steps_per_round`` steps per round (theirs: 20); the common period is chosen so that the rounds x steps
    come closest to ``fraction`` x 17,420 (at least one round). Returns the ``method.*`` overrides
    (``meta_every_warmup``, ``meta_every_missing``, ``meta_batches``, ``meta_fraction`` = the fraction really
    obtained), so a run's config.json records it.
    """
    if fraction <= 0 or steps_per_round < 1:
        raise ValueError(f"fraction must be > 0 and steps_per_round >= 1, got {fraction}, {steps_per_round}")
    r = REFERENCE_SCHEDULE
    ratio = r["meta_every_missing"] // r["meta_every_warmup"]
    target = fraction * reference_omega_steps() / steps_per_round  # rounds wanted
    best = None
    for every in range(1, max(iterations, 1) + 1):  # stage-1 period; stage 2 every * ratio
        rounds = meta_rounds(iterations, warmup_iterations, every, every * ratio)
        if rounds == 0:
            break
        gap = abs(rounds - target)
        if best is None or gap < best[0]:
            best = (gap, every)
    every = best[1] if best else 1
    got = meta_fraction(iterations, warmup_iterations, every, every * ratio, steps_per_round)
    return {"meta_every_warmup": every, "meta_every_missing": every * ratio, "meta_batches": steps_per_round,
            "meta_fraction": round(got, 6)}  # fmt: skip
