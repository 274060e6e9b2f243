"""One conformance suite run over every strategy and every task (scikit-learn style), plus each strategy's own
rule: BraTS-like toy volumes, ADNI tables, ADNI with T1 volumes."""

import io
import json

import pytest
import torch
from torch.utils.data import default_collate
from toydata import ToyBalls

from mckd_lab.config import MethodConfig, ModelConfig
from mckd_lab.data.adni import load_adni
from mckd_lab.data.missing import SubsetSampler
from mckd_lab.method.strategies import STRATEGIES, StepContext, make_strategy
from mckd_lab.tasks import make_task

CONFIG = MethodConfig(meta_every_warmup=2, meta_every_missing=2, elect_every=2, meta_batches=1,
                      oracle_importance=(0.4, 0.1, 0.3, 0.2))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["brats", "adni", "adni-t1"])
def task_batches(request, adni_cohort, t1_cohort):
    """(task, a model-free description of one training and one held-out batch) for each task."""
    task = make_task(request.param)
    if request.param == "brats":
        data = ToyBalls(cases=4, size=16)
        batch = {k: torch.stack([data[i][k] for i in (0, 1)]) for k in ("image", "present", "target")}
        batch["present"] = torch.tensor([[True, True, False, True], [True, True, False, True]])
        heldout = {k: torch.stack([data[i][k] for i in (2, 3)]) for k in ("image", "present", "target")}
        return task, ModelConfig(channels=(4, 8, 16)), batch, heldout
    data = load_adni(t1_cohort if task.t1 else adni_cohort, t1=task.t1)
    batch = default_collate([data.dataset("train", 16)[i] for i in range(8)])
    heldout = default_collate([data.dataset("val", 16)[i] for i in range(8)])
    return task, ModelConfig(channels=(8, 8)), batch, heldout


@pytest.fixture
def context(task_batches):
    """A StepContext factory for the task: ``context(iteration, stage)`` (a fresh model each call)."""
    task, model_config, batch, heldout = task_batches

    def make(iteration, stage="missing"):
        torch.manual_seed(0)
        return StepContext(iteration, stage, task.build_model(model_config), task, batch, 1e-2, 0.1,
                           lambda k, size=None: heldout, torch.Generator().manual_seed(0), task.make_loss())  # fmt: skip

    return make


@pytest.fixture
def mods(task_batches):
    return task_batches[0].modalities


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request, mods):
    return make_strategy(request.param, mods, CONFIG)


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


def test_update_is_silent_when_not_due_and_never_steps_the_network(strategy, context):
    ctx = context(iteration=0)  # due at iterations 1, 3, ... (every 2)
    assert strategy.update(ctx) == {}
    ctx = context(iteration=1)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    record = strategy.update(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())
    kind = {"none": None, "uniform": None, "oracle": None, "lckd": "elect"}.get(strategy.name, "meta")
    assert record == {} if kind is None else (record["kind"], record["iteration"]) == (kind, 1)
    json.dumps(record)  # history lines are plain JSON


def test_state_dict_round_trips_through_weights_only_load(strategy, context, mods):
    strategy.update(context(iteration=1))
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    clone = make_strategy(strategy.name, mods, CONFIG)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(clone.pair_weights(), strategy.pair_weights())


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="mckd-bilevel"):
        make_strategy("mkcd", ("a", "b"), CONFIG)


# --- each strategy's own rule -------------------------------------------------------------------------------


def test_none_has_no_kd_and_uniform_weights_every_pair_one(mods):
    assert make_strategy("none", mods, CONFIG).pair_weights().sum() == 0
    assert make_strategy("uniform", mods, CONFIG).pair_weights().tolist() == [[1.0] * 4] * 4


@pytest.mark.parametrize("name", ["mckd", "mckd-bilevel"])
def test_mckd_meta_round_moves_omega_and_logs_importance(name, context, mods):
    s = make_strategy(name, mods, CONFIG)
    record = s.update(context(iteration=1))
    assert record["kind"] == "meta" and set(record["importance"]) == set(mods)
    assert sum(record["importance"].values()) == pytest.approx(1.0, abs=1e-5)
    assert any(abs(v) > 0 for v in record["omega"])
    w = s.importance()
    torch.testing.assert_close(s.pair_weights(), w[:, None] / w[None, :])


def test_mckd_meta_schedule_differs_between_stages(context, mods):
    s = make_strategy("mckd", mods, MethodConfig(meta_every_warmup=2, meta_every_missing=4, meta_batches=1))
    assert s.update(context(iteration=1, stage="warmup"))["kind"] == "meta"
    assert s.update(context(iteration=1, stage="missing")) == {}


def test_lckd_elects_the_best_single_modality_per_output_as_teachers(context, mods, task_batches):
    s = make_strategy("lckd", mods, CONFIG)
    assert s.sampler.probabilities()[(True,) * 4] == 0
    record = s.update(context(iteration=1))
    scores = record["scores"]  # {region (BraTS: ET, WT, TC) or balanced_accuracy (ADNI): {modality: score}}
    assert set(scores) == set(task_batches[0].score_names)
    assert all(set(v) == set(mods) and all(0 <= x <= 1 for x in v.values()) for v in scores.values())
    expected = {max(mods, key=lambda m: scores[r][m]) for r in scores if len(set(scores[r].values())) > 1}
    assert set(record["teachers"]) == expected or (not expected and record["teachers"] == list(mods))
    c = s.pair_weights()
    for i, m in enumerate(mods):  # unweighted KD from each teacher (row) to every modality
        assert c[i].tolist() == [1.0 if m in record["teachers"] else 0.0] * 4


def test_oracle_weights_are_the_given_ground_truth_and_never_move(context, mods):
    s = make_strategy("oracle", mods, CONFIG)
    w = torch.tensor([0.4, 0.1, 0.3, 0.2])
    torch.testing.assert_close(s.importance(), w)
    torch.testing.assert_close(s.pair_weights(), w[:, None] / w[None, :])  # MCKD's w_i / w_j, [teacher, student]
    assert s.pair_weights()[0, 1] == pytest.approx(4.0)  # the most important teacher pulls the least 4x
    assert s.update(context(iteration=1)) == {} and s.update(context(iteration=3)) == {}  # no meta step
    torch.testing.assert_close(s.importance(), w)
    unnormalised = make_strategy("oracle", mods, MethodConfig(oracle_importance=(4, 1, 3, 2)))
    torch.testing.assert_close(unnormalised.pair_weights(), s.pair_weights())


@pytest.mark.parametrize("given", [(), (0.5, 0.5), (0.5, 0.5, 0.0, 0.0)])
def test_oracle_refuses_missing_or_non_positive_weights(given):
    with pytest.raises(ValueError, match="oracle_importance"):
        make_strategy("oracle", ("flair", "t1", "t1ce", "t2"), MethodConfig(oracle_importance=given))
