"""The reference recipe's rules (METHOD.md, issue 13), each on tiny tensors beside a value computed by hand:
the two-stage learning rate, a meta round of one Adam step per held-out crop, the meta forward of stage 2,
omega's initialisation, region-centred crops and the evaluation's post-processing options."""

import numpy as np
import pytest
import torch

from mckd_lab.config import MethodConfig, OptimConfig, poly_lr
from mckd_lab.data.cards import load_card
from mckd_lab.data.datasets import RegionIndicesd
from mckd_lab.losses import SegmentationLoss
from mckd_lab.method.importance import ImportanceWeights
from mckd_lab.method.meta import meta_step
from mckd_lab.method.strategies import StepContext, make_strategy
from mckd_lab.models import build_segmentation_network
from mckd_lab.tasks import make_task
from mckd_lab.tasks.segmentation import postprocess

CARD = load_card("brats")
MODS = CARD.modality_names


def test_stage_two_restarts_the_poly_schedule_against_the_total():
    reference = OptimConfig(lr=1e-2, poly_power=0.9, iterations=115_000, warmup_iterations=80_000)
    assert poly_lr(0, reference) == 1e-2
    assert poly_lr(40_000, reference) == pytest.approx(1e-2 * 0.5**0.9)  # stage 1 decays over its own 80k
    assert poly_lr(79_999, reference) == pytest.approx(1e-2 * (1 / 80_000) ** 0.9)  # ~0 at its end
    # the restart: 1e-2 (35/115)^0.9 = 1e-2 exp(0.9 ln 0.30435) = 3.428e-3 (METHOD.md rounds it to 3.4e-3)
    assert poly_lr(80_000, reference) == pytest.approx(3.428e-3, abs=5e-7)
    assert poly_lr(114_999, reference) == pytest.approx(1e-2 * (1 / 115_000) ** 0.9)
    no_warmup = OptimConfig(lr=1.0, poly_power=1.0, iterations=10, warmup_iterations=0)
    assert [poly_lr(i, no_warmup) for i in (0, 5)] == [1.0, 0.5]


def _tiny_net():
    torch.manual_seed(0)
    return build_segmentation_network(MODS, channels=(4, 8)).eval()


def _crops(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 4, size, size, size, generator=g), "present": torch.ones(n, 4, dtype=torch.bool),
            "target": (torch.rand(n, 3, size, size, size, generator=g) > 0.6).float()}  # fmt: skip


def test_a_meta_round_is_one_adam_step_per_held_out_crop_at_batch_one():
    config = MethodConfig(meta_every_warmup=1, meta_every_missing=1, meta_batches=20, meta_batch_size=1)
    asked = []

    def heldout(k, batch_size=None):
        asked.append((k, batch_size))
        return _crops(batch_size, seed=k)

    strategy = make_strategy("mckd", MODS, config)
    ctx = StepContext(0, "warmup", _tiny_net(), make_task("brats"), _crops(2), 1e-2, 0.1, heldout,
                      torch.Generator().manual_seed(0), SegmentationLoss())  # fmt: skip
    strategy.update(ctx)
    assert asked == [(k, 1) for k in range(20)]  # 20 crops, one at a time, each its own batch
    assert int(strategy.optimizer.state[strategy.weights.omega]["step"]) == 20  # 20 Adam steps


def test_the_meta_forward_scales_raw_bottlenecks_without_filling():
    net, weights = _tiny_net(), ImportanceWeights(4)
    with torch.no_grad():
        weights.omega.copy_(torch.tensor([0.5, -0.2, 0.1, 0.0]))
    batch = _crops(1)
    batch["present"] = torch.tensor([[True, False, True, False]])  # stage 2: a subset drawn as in training
    optimizer = torch.optim.SGD(weights.parameters(), lr=0.0)
    loss = meta_step(net, weights, optimizer, batch, SegmentationLoss())
    with torch.no_grad():  # by hand: the encoder's outputs (missing ones: the zero response), times w_m
        enc = net.encode(net.zero_missing(batch["image"], batch["present"]), batch["present"])
        w = torch.softmax(weights.omega, 0).view(1, 4, 1, 1, 1, 1)
        logits = net.head((enc.bottleneck * w).flatten(1, 2), [s.flatten(1, 2) for s in enc.skips])
        filled = net.decode(enc, batch["present"], scale=torch.softmax(weights.omega, 0)).logits
    assert loss == pytest.approx(SegmentationLoss()(logits, batch["target"]).item(), rel=1e-6)
    assert loss != pytest.approx(SegmentationLoss()(filled, batch["target"]).item(), rel=1e-6)  # not filled


def test_a_stage_two_meta_batch_has_the_training_samplers_subset():
    strategy = make_strategy("mckd", MODS, MethodConfig(sampler="bernoulli", meta_batches=1))
    ctx = StepContext(0, "missing", _tiny_net(), make_task("brats"), _crops(2), 1e-2, 0.1,
                      lambda k, size=None: _crops(size), torch.Generator().manual_seed(3), SegmentationLoss())  # fmt: skip
    drawn = strategy.sampler.sample(torch.Generator().manual_seed(3))
    assert strategy._meta_batch(ctx, 0)["present"][0].tolist() == list(drawn) != [True] * 4
    ctx.stage, ctx.generator = "warmup", torch.Generator().manual_seed(3)
    assert strategy._meta_batch(ctx, 0)["present"].all()  # stage 1: every available modality


def test_omega_starts_at_zero_or_at_seeded_uniform_logits():
    assert torch.equal(make_strategy("mckd", MODS, MethodConfig()).weights.omega.detach(), torch.zeros(4))
    drawn = make_strategy("mckd", MODS, MethodConfig(omega_init="uniform01"), seed=7).weights.omega.detach()
    assert torch.equal(drawn, torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert ((drawn >= 0) & (drawn < 1)).all() and len(set(drawn.tolist())) == 4
    with pytest.raises(ValueError, match="omega init 'normal'"):
        ImportanceWeights(4, "normal")


def test_region_indices_list_the_background_then_each_region():
    label = np.zeros((1, 2, 2, 2), np.uint8)
    label[0, 0, 0, :] = [4, 1]  # ET (4), necrosis (1)
    label[0, 1, 1, 1] = 2  # oedema
    out = RegionIndicesd("label", CARD)({"label": label})["label_cls_indices"]
    flat = {int(v): i for i, v in enumerate(label.ravel()) if v}
    assert [a.tolist() for a in out] == [
        [i for i in range(8) if i not in flat.values()],  # background
        [flat[4]],  # ET = {4}
        sorted(flat.values()),  # WT = {1, 2, 4}
        sorted([flat[4], flat[1]]),  # TC = {1, 4}
    ]  # network order ET, WT, TC


def test_post_processing_relabels_small_et_as_necrosis_and_nests_regions():
    regions = np.zeros((3, 4, 4, 4), bool)  # ET, WT, TC
    regions[0, 0, 0, :2] = True  # 2 voxels of ET, outside TC and WT (not nested)
    regions[1, 1:3, 1:3, 1:3] = True
    nested = postprocess(regions, CARD, spacing=(1.0, 1.0, 1.0), nested=True)
    assert nested[0].sum() == 2 and (nested[2] >= nested[0]).all() and (nested[1] >= nested[2]).all()
    # 2 voxels of 2 mm^3 each = 4 mm^3 of ET: under 5 mm^3 it becomes necrosis (stays in TC), over 3 it stays
    small = postprocess(nested, CARD, spacing=(1.0, 1.0, 2.0), et_min_mm3=5)
    assert small[0].sum() == 0 and (small[2] == nested[2] | nested[0]).all() and (small[1] == nested[1]).all()
    assert postprocess(nested, CARD, spacing=(1.0, 1.0, 2.0), et_min_mm3=3)[0].sum() == 2
