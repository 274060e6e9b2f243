"""One conformance suite run over every strategy (scikit-learn style), plus each strategy's own rule."""

import io
import json

import pytest
import torch
from toydata import ToyBalls

from mckd_lab.config import MethodConfig
from mckd_lab.data.missing import SubsetSampler
from mckd_lab.method.strategies import STRATEGIES, StepContext, make_strategy
from mckd_lab.models import build_segmentation_network
from mckd_lab.tasks import SegmentationTask

MODS = ("flair", "t1", "t1ce", "t2")
CONFIG = MethodConfig(meta_every_warmup=2, meta_every_missing=2, elect_every=2, meta_batches=1)


def _context(iteration, stage="missing"):
    torch.manual_seed(0)
    model = build_segmentation_network(MODS, channels=(4, 8, 16))
    data = ToyBalls(cases=4, size=16)
    batch = {k: torch.stack([data[i][k] for i in (0, 1)]) for k in ("image", "present", "target")}
    batch["present"] = torch.tensor([[True, True, False, True], [True, True, False, True]])
    heldout = {k: torch.stack([data[i][k] for i in (2, 3)]) for k in ("image", "present", "target")}
    return StepContext(iteration, stage, model, SegmentationTask(), batch, 1e-2, 0.1, lambda k: heldout,
                       torch.Generator().manual_seed(0))  # fmt: skip


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request):
    return make_strategy(request.param, MODS, CONFIG)


def test_pair_weights_are_detached_finite_non_negative(strategy):
    c = strategy.pair_weights()
    assert c.shape == (4, 4) and not c.requires_grad
    assert torch.isfinite(c).all() and (c >= 0).all()


def test_sampler_is_a_distribution(strategy):
    assert isinstance(strategy.sampler, SubsetSampler)
    assert sum(strategy.sampler.probabilities().values()) == pytest.approx(1.0)


def test_importance_is_none_or_a_distribution(strategy):
    w = strategy.importance()
    assert w is None or (w.shape == (4,) and w.sum().item() == pytest.approx(1.0))


def test_update_is_silent_when_not_due_and_never_steps_the_network(strategy):
    ctx = _context(iteration=0)  # due at iterations 1, 3, ... (every 2)
    assert strategy.update(ctx) == {}
    ctx = _context(iteration=1)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    record = strategy.update(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())
    assert record == {} or (record["kind"] in ("meta", "elect") and record["iteration"] == 1)
    json.dumps(record)  # history lines are plain JSON


def test_state_dict_round_trips_through_weights_only_load(strategy):
    strategy.update(_context(iteration=1))
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    clone = make_strategy(strategy.name, MODS, CONFIG)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(clone.pair_weights(), strategy.pair_weights())


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="mckd-bilevel"):
        make_strategy("mkcd", MODS, CONFIG)


# --- each strategy's own rule -------------------------------------------------------------------------------


def test_none_has_no_kd_and_uniform_weights_every_pair_one():
    assert make_strategy("none", MODS, CONFIG).pair_weights().sum() == 0
    assert make_strategy("uniform", MODS, CONFIG).pair_weights().tolist() == [[1.0] * 4] * 4


@pytest.mark.parametrize("name", ["mckd", "mckd-bilevel"])
def test_mckd_meta_round_moves_omega_and_logs_importance(name):
    s = make_strategy(name, MODS, CONFIG)
    record = s.update(_context(iteration=1))
    assert record["kind"] == "meta" and set(record["importance"]) == set(MODS)
    assert sum(record["importance"].values()) == pytest.approx(1.0, abs=1e-5)
    assert any(abs(v) > 0 for v in record["omega"])
    w = s.importance()
    torch.testing.assert_close(s.pair_weights(), w[:, None] / w[None, :])


def test_mckd_meta_schedule_differs_between_stages():
    s = make_strategy("mckd", MODS, MethodConfig(meta_every_warmup=2, meta_every_missing=4, meta_batches=1))
    assert s.update(_context(iteration=1, stage="warmup"))["kind"] == "meta"
    assert s.update(_context(iteration=1, stage="missing")) == {}


def test_lckd_elects_the_best_single_modality_per_region_as_teachers():
    s = make_strategy("lckd", MODS, CONFIG)
    assert s.sampler.probabilities()[(True,) * 4] == 0
    record = s.update(_context(iteration=1))
    scores = record["scores"]
    expected = {max(MODS, key=lambda m: scores[r][m]) for r in scores if len(set(scores[r].values())) > 1}
    assert set(record["teachers"]) == expected or (not expected and record["teachers"] == list(MODS))
    c = s.pair_weights()
    for i, m in enumerate(MODS):  # unweighted KD from each teacher (row) to every modality
        assert c[i].tolist() == [1.0 if m in record["teachers"] else 0.0] * 4
