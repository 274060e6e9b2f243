"""Each rule of METHOD.md on tiny tensors, with the expected values worked out by hand beside the code."""

import math

import numpy as np
import pytest
import torch

from mckd_lab.data.missing import (
    BernoulliSampler,
    LCKDSampler,
    ReferenceSampler,
    UniformSubsetSampler,
    all_subsets,
    parse_subset,
    subset_name,
)
from mckd_lab.losses import SegmentationLoss
from mckd_lab.method.importance import ImportanceWeights, mckd_pair_weights
from mckd_lab.method.kd import fill_missing, kd_pairs, pairwise_kd_loss
from mckd_lab.method.meta import (
    _Bottlenecks,
    kd_pair_losses,
    meta_rounds,
    meta_step,
    reference_omega_steps,
    scaled_meta_schedule,
)
from mckd_lab.models import build_segmentation_network

MODS = ("flair", "t1", "t1ce", "t2")


# --- filling ------------------------------------------------------------------------------------------------


def test_fill_missing_uses_the_mean_of_the_present_modalities_per_sample():
    features = torch.tensor([[1.0, 10.0, 5.0], [4.0, 7.0, 6.0]]).view(2, 3, 1)  # (B=2, M=3, C=1)
    present = torch.tensor([[True, False, True], [False, True, False]])
    filled = fill_missing(features, present)
    # sample 0: t1 missing -> (1 + 5) / 2 = 3; sample 1: only modality 1 present -> 7 everywhere
    assert filled.view(2, 3).tolist() == [[1.0, 3.0, 5.0], [7.0, 7.0, 7.0]]


def test_fill_missing_refuses_a_sample_with_nothing_present():
    with pytest.raises(ValueError, match="at least one present"):
        fill_missing(torch.zeros(1, 2, 1), torch.tensor([[False, False]]))


# --- the KD pair set and loss -------------------------------------------------------------------------------


def test_kd_pair_set_per_sample():
    present = torch.tensor(
        [[True, True, True, True], [True, False, False, False], [True, False, True, False]]
    )
    pairs = kd_pairs(present)
    assert pairs.sum((1, 2)).tolist() == [12, 0, 2]  # 4 * 3 ordered pairs; none with one; (0, 2) and (2, 0)
    assert pairs[2, 0, 2] and pairs[2, 2, 0] and not pairs[2, 0, 0]


def test_pairwise_kd_loss_by_hand_weights_and_teacher_detached():
    # one sample, M = 2, C = 1: f0 = 1, f1 = 3; c = [[-, 2], [0.5, -]]
    f = torch.tensor([[[1.0], [3.0]]], requires_grad=True)
    weights = torch.tensor([[9.0, 2.0], [0.5, 9.0]], requires_grad=True)  # the diagonal is never used
    loss = pairwise_kd_loss(f, torch.tensor([[True, True]]), weights)
    # l_01 = |f0 - f1| = 2 with weight 2; l_10 = |f1 - f0| = 2 with weight 0.5 -> 4 + 1 = 5
    assert loss.item() == pytest.approx(5.0)
    loss.backward()
    # teacher detached: f1 (student of 0) gets 2 * d|1 - f1|/df1 = 2; f0 (student of 1) gets 0.5 * -1 = -0.5
    assert f.grad.view(-1).tolist() == pytest.approx([-0.5, 2.0])
    assert weights.grad is None  # the weights are detached


def test_pairwise_kd_loss_is_the_batch_mean_of_per_sample_sums():
    f = torch.tensor([[[1.0], [3.0]], [[0.0], [8.0]]])
    present = torch.tensor([[True, True], [True, False]])  # sample 1 has one modality: 0
    loss = pairwise_kd_loss(f, present, torch.ones(2, 2))
    assert loss.item() == pytest.approx((2.0 + 2.0 + 0.0) / 2)


def test_l1_is_a_mean_over_channels_and_voxels():
    f = torch.zeros(1, 2, 2, 2, 1, 1)  # (B, M, C=2, 2, 1, 1)
    f[0, 1] = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)
    loss = pairwise_kd_loss(f, torch.tensor([[True, True]]), torch.ones(2, 2))
    assert loss.item() == pytest.approx(2 * (1 + 1 + 3 + 3) / 4)


def test_mckd_pair_weights_are_w_i_over_w_j_and_omega_gets_no_kd_gradient():
    weights = ImportanceWeights(2)
    with torch.no_grad():
        weights.omega.copy_(torch.tensor([math.log(3.0), 0.0]))  # w = (0.75, 0.25)
    c = mckd_pair_weights(weights.omega)
    assert c.flatten().tolist() == pytest.approx([1.0, 3.0, 1 / 3, 1.0])
    f = torch.tensor([[[1.0], [3.0]]], requires_grad=True)
    pairwise_kd_loss(f, torch.tensor([[True, True]]), c).backward()
    assert weights.omega.grad is None
    assert f.grad.view(-1).tolist() == pytest.approx([-1 / 3, 3.0])  # the important flair pulls t1 3x harder


# --- task loss ----------------------------------------------------------------------------------------------


def test_segmentation_loss_by_hand():
    logits = torch.zeros(1, 3, 1, 1, 2)  # p = 0.5 everywhere
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2).expand(1, 3, 1, 1, 2)
    # Dice per channel: 1 - 2 * 0.5 / (1 + 1 + 1) = 2/3; BCE per channel ln 2, summed over 3 channels
    assert SegmentationLoss()(logits, target).item() == pytest.approx(2 / 3 + 3 * math.log(2), rel=1e-6)


# --- the meta step ------------------------------------------------------------------------------------------


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_segmentation_network(MODS, channels=(4, 8, 16))


def _batch(seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 4, size, size, size, generator=g)
    target = (torch.rand(2, 3, size, size, size, generator=g) > 0.7).float()
    return {"image": image, "present": torch.ones(2, 4, dtype=torch.bool), "target": target}


def test_meta_step_changes_omega_only():
    net, weights = _tiny_net(), ImportanceWeights(4)
    optimizer = torch.optim.Adam(weights.parameters(), lr=1e-2, weight_decay=5e-4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = meta_step(net, weights, optimizer, _batch(), SegmentationLoss())
    assert math.isfinite(loss)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # bitwise
    assert all(p.grad is None for p in net.parameters())
    assert not torch.equal(weights.omega.detach(), torch.zeros(4))
    # Adam's first step moves every coordinate by ~lr against the sign of its gradient
    assert weights.omega.detach().abs().tolist() == pytest.approx([1e-2] * 4, rel=1e-2)


def test_omega_is_not_used_at_inference():
    net, weights = _tiny_net().eval(), ImportanceWeights(4)
    assert all(p is not weights.omega for p in net.parameters())
    batch, present = _batch(), torch.tensor([[True, False, True, False]] * 2)
    with torch.no_grad():
        before = net(batch["image"], present).logits
        weights.omega.add_(torch.tensor([3.0, -1.0, 0.5, 2.0]))
        assert torch.equal(net(batch["image"], present).logits, before)


def test_forward_mode_pair_products_equal_reverse_mode_inner_products():
    """The bi-level step's <g, grad L_ij>, by one jvp for all pairs, agrees with explicit gradients."""
    net, batch = _tiny_net(), _batch(size=16)
    present = torch.tensor([[True, True, False, True], [True, False, True, True]])
    params = dict(net.named_parameters())
    g = {n: torch.randn_like(p) for n, p in params.items()}
    wrapper = _Bottlenecks(net)

    def pair_losses(p):
        return kd_pair_losses(torch.func.functional_call(wrapper, p, (batch["image"], present)), present)

    primals = {f"net.{n}": p.detach() for n, p in params.items()}
    _, inner = torch.func.jvp(pair_losses, (primals,), ({f"net.{n}": v for n, v in g.items()},))
    for i, j in [(0, 1), (3, 2), (1, 0)]:
        l_ij = kd_pair_losses(
            net.encode(net.zero_missing(batch["image"], present), present).bottleneck, present
        )[i, j]
        grads = torch.autograd.grad(l_ij, list(params.values()), allow_unused=True)
        expected = sum(
            (gr * g[n]).sum() for (n, _), gr in zip(params.items(), grads, strict=True) if gr is not None
        )
        torch.testing.assert_close(inner[i, j], expected, rtol=1e-3, atol=1e-6)
    assert inner[2, 1] == 0  # t1ce and t1 are never both present


# --- subsets and samplers -----------------------------------------------------------------------------------


def test_subset_order_and_names():
    subsets = all_subsets(4)
    assert len(subsets) == 15
    assert subsets[0] == (True, False, False, False) and subsets[-1] == (True,) * 4
    assert [sum(s) for s in subsets] == [1] * 4 + [2] * 6 + [3] * 4 + [4]
    assert subsets[4] == (True, True, False, False)  # combinations order: (0, 1) first among pairs
    assert subset_name((True, False, True, False), MODS) == "flair+t1ce"
    assert parse_subset("t1ce,flair", MODS) == (True, False, True, False)
    with pytest.raises(ValueError, match="t3"):
        parse_subset("flair+t3", MODS)


def test_reference_sampler_probabilities_are_exact():
    probs = ReferenceSampler(4).probabilities()
    by_size = {k: sorted({round(p, 12) for s, p in probs.items() if sum(s) == k}) for k in (1, 2, 3, 4)}
    # one value per size, in 48ths: singles 1/16 = 3/48, pairs 1/24 = 2/48, triples 1/16, full 1/4 = 12/48
    assert {k: [round(p * 48, 9) for p in v] for k, v in by_size.items()} == {
        1: [3.0],
        2: [2.0],
        3: [3.0],
        4: [12.0],
    }
    assert sum(probs.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "sampler", [ReferenceSampler(4), LCKDSampler(4), UniformSubsetSampler(4), BernoulliSampler(4, 0.3)]
)
def test_sampler_empirical_frequencies(sampler):
    rng = np.random.default_rng(0)
    n = 12_000
    counts: dict = {}
    for _ in range(n):
        s = sampler.sample(rng)
        counts[s] = counts.get(s, 0) + 1
    for subset, p in sampler.probabilities().items():
        assert counts.get(subset, 0) / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-9)


def test_lckd_sampler_never_draws_the_full_set():
    probs = LCKDSampler(4).probabilities()
    assert probs[(True,) * 4] == 0 and sum(probs.values()) == pytest.approx(1.0)
    assert probs[(True, False, False, False)] == pytest.approx(1 / 12)  # k = 1 w.p. 1/3, then 1 of 4


def test_sampling_within_availability_never_drops_the_last_modality():
    g = torch.Generator().manual_seed(0)
    sampler = ReferenceSampler(4)
    assert {sampler.sample(g, available=(False, False, True, False)) for _ in range(50)} == {
        (False, False, True, False)
    }
    draws = {sampler.sample(g, available=(True, False, False, True)) for _ in range(200)}
    assert draws == {(True, False, False, False), (False, False, False, True), (True, False, False, True)}


# --- the meta schedule scaled to the run length ----------------------------------------------------------------


def _rounds_by_the_strategy_rule(iterations, warmup, every_warmup, every_missing):
    """Meta rounds as ``Strategy._due`` decides them, iteration by iteration."""
    count = 0
    for t in range(iterations):
        every = every_warmup if t < warmup else every_missing
        count += every > 0 and (t + 1) % every == 0
    return count


def test_reference_schedule_is_17420_omega_steps():
    assert reference_omega_steps() == (80_000 // 100 + 1 + 35_000 // 500) * 20 == 17_420


@pytest.mark.parametrize("iterations, warmup, every_w, every_m", [(500, 166, 51, 255), (100, 33, 7, 35), (9, 3, 2, 4)])
def test_meta_rounds_count_what_the_strategies_do(iterations, warmup, every_w, every_m):
    assert meta_rounds(iterations, warmup, every_w, every_m) == _rounds_by_the_strategy_rule(
        iterations, warmup, every_w, every_m
    )


@pytest.mark.parametrize("iterations, warmup, fraction", [(500, 166, 0.005), (1500, 500, 0.01), (400, 133, 0.02)])
def test_scaled_meta_schedule_hits_the_fraction_with_the_authors_shape(iterations, warmup, fraction):
    s = scaled_meta_schedule(iterations, warmup, fraction)
    assert s["meta_batches"] == 20 and s["meta_every_missing"] == 5 * s["meta_every_warmup"]
    rounds = _rounds_by_the_strategy_rule(iterations, warmup, s["meta_every_warmup"], s["meta_every_missing"])
    assert s["meta_fraction"] == pytest.approx(rounds * 20 / 17_420, abs=1e-6)
    assert abs(rounds - fraction * 17_420 / 20) <= 1.0  # the closest whole number of rounds (within one)


def test_scaled_meta_schedule_at_full_length_is_the_authors():
    s = scaled_meta_schedule(115_000, 80_000, 1.0)
    assert (s["meta_every_warmup"], s["meta_every_missing"]) == (100, 500)
    assert s["meta_fraction"] == pytest.approx(1.0, abs=2e-3)  # their extra round at iteration 0 aside
    with pytest.raises(ValueError, match="fraction"):
        scaled_meta_schedule(100, 30, 0.0)
