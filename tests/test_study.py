"""The study's measures and statistics (mckd_lab.study) on hand-made numbers and tiny tensors, and the study
command's resume on a tiny grid (benchmarks/study.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from mckd_lab.models.network import Encoded, ModelOutput
from mckd_lab.study import (
    bootstrap_metric,
    drop_one_losses,
    feature_distance,
    kendall_tau,
    mean_pairwise_tau,
    paired_bootstrap,
    phantom_importance,
    phantom_visibility,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


# --- statistics -------------------------------------------------------------------------------------------------


def test_paired_bootstrap_of_a_constant_difference_is_that_constant():
    r = paired_bootstrap(np.full((5, 60), 0.25))
    assert r["mean"] == r["lo"] == r["hi"] == pytest.approx(0.25)
    assert (r["n_seeds"], r["n_cases"]) == (5, 60)


def test_paired_bootstrap_interval_of_hand_made_differences():
    # every seed: 30 cases +1, 30 cases -1 -> mean 0; the interval is symmetric about 0 and narrow
    zero = paired_bootstrap(np.tile([1.0, -1.0], (5, 30)), n_boot=4000)
    assert zero["mean"] == 0 and zero["lo"] < 0 < zero["hi"] and zero["hi"] - zero["lo"] < 0.7
    # shifted by +2: excludes 0, and the interval is the same width shifted
    two = paired_bootstrap(np.tile([3.0, 1.0], (5, 30)), n_boot=4000)
    assert two["mean"] == 2 and two["lo"] > 1.5 and two["hi"] < 2.5
    assert two["hi"] - two["lo"] == pytest.approx(zero["hi"] - zero["lo"], abs=0.1)
    # one seed far off widens the interval (seeds are resampled too)
    seeds = np.tile([1.0, -1.0], (5, 30))
    seeds[0] += 4.0
    assert paired_bootstrap(seeds, n_boot=4000)["hi"] - paired_bootstrap(seeds, n_boot=4000)["lo"] > 1.0


def test_paired_bootstrap_leaves_out_nan_cells():
    diff = np.array([[1.0, np.nan, 3.0], [1.0, np.nan, 3.0]])
    r = paired_bootstrap(diff)
    assert r["mean"] == 2.0 and r["n_cases"] == 2 and 1.0 <= r["lo"] <= r["hi"] <= 3.0


def test_bootstrap_metric_of_identical_and_better_predictions():
    y = np.array([0, 1, 2] * 20)
    same = bootstrap_metric([(y, y % 2, y % 2)] * 3, lambda t, a, b: float((a == t).mean() - (b == t).mean()))
    assert same["mean"] == same["lo"] == same["hi"] == 0
    better = bootstrap_metric([(y, y, (y + 1) % 3)] * 3, lambda t, a, b: float((a == t).mean() - (b == t).mean()))
    assert better["mean"] == 1.0 and better["lo"] == 1.0


def test_kendall_tau_on_hand_made_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # one swap of 6 pairs
    assert kendall_tau([1, 1, 1, 1], [1, 2, 3, 4]) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(20):  # tau-b with ties, as scipy computes it
        a, b = rng.integers(0, 3, 6), rng.integers(0, 3, 6)
        expected = kendalltau(a, b).statistic
        assert kendall_tau(a, b) == pytest.approx(0.0 if np.isnan(expected) else expected)
    assert mean_pairwise_tau([[1, 2, 3], [1, 2, 3], [3, 2, 1]]) == pytest.approx((1 - 1 - 1) / 3)


# --- the testbed's ground truth ---------------------------------------------------------------------------------


def test_phantom_ground_truth_is_the_cards_ranking():
    zero = phantom_visibility(0.0)
    assert max(zero["ET"], key=zero["ET"].get) == "t1ce" and max(zero["TC"], key=zero["TC"].get) == "t1ce"
    assert sorted(zero["WT"], key=zero["WT"].get)[-2:] == ["flair", "t2"]
    w = phantom_importance(0.0)  # flair, t1, t1ce, t2
    assert sum(w) == pytest.approx(1.0, abs=1e-3) and w[2] == max(w) and w[1] == min(w)
    half = phantom_visibility(0.5)
    assert all(max(v, key=v.get) == max(zero[r], key=zero[r].get) for r, v in half.items())  # still leads
    assert phantom_importance(1.0) == pytest.approx((0.25,) * 4)  # nothing to rank


# --- feature distance and drop-one ablation on hand-made models ---------------------------------------------------


class Scalars(torch.nn.Module):
    """A stand-in network: modality m's bottleneck is its input's mean (B, M, 1); the decoder reads only the
    (filled) bottleneck of modality ``reads``."""

    def __init__(self, reads: int = 0):
        super().__init__()
        self.reads = reads

    def encode(self, image, present=None):
        return Encoded(image.mean(-1, keepdim=True), [])

    def encode_zero(self, like):
        return Encoded(torch.zeros(like.shape[0], like.shape[1], 1), [])

    def decode(self, enc, present, scale=None, fill=True):
        from mckd_lab.method.kd import fill_missing

        filled = fill_missing(enc.bottleneck, present)
        return ModelOutput(filled[:, self.reads], enc.bottleneck, filled)


def test_feature_distance_is_l1_between_the_mean_filled_and_the_real_bottleneck():
    image = torch.tensor([[[0.0], [3.0], [6.0]]])  # bottlenecks 0, 3, 6
    # m = 0 dropped: filled from {1}: 3, {2}: 6, {1, 2}: 4.5 -> mean |. - 0| = 4.5
    # m = 1: {0}: 3, {2}: 3, {0, 2}: 0 -> 2; m = 2: {0}: 6, {1}: 3, {0, 1}: 4.5 -> 4.5
    torch.testing.assert_close(feature_distance(Scalars(), image), torch.tensor([4.5, 2.0, 4.5]))
    same = torch.ones(2, 4, 5)
    assert feature_distance(Scalars(), same).abs().max() == 0  # identical features: nothing to distil


def test_feature_distance_uses_only_available_modalities():
    image = torch.tensor([[[0.0], [3.0], [6.0]]])
    available = torch.tensor([[True, True, False]])  # t2-like modality absent: never real, never a filler
    torch.testing.assert_close(feature_distance(Scalars(), image, available), torch.tensor([3.0, 3.0, 0.0]))


def test_drop_one_loss_ranks_the_modality_the_decoder_reads():
    image = torch.tensor([[[1.0], [5.0], [9.0]], [[2.0], [4.0], [8.0]]])
    target = torch.tensor([[1.0], [2.0]])  # = modality 0's feature: the loss with all is 0

    def loss(logits, t):
        return (logits - t).abs().mean()

    d = drop_one_losses(Scalars(reads=0), image, target, loss)
    assert d[0] > 0 and d[1] == 0 and d[2] == 0  # only removing what the decoder reads costs anything
    assert d[0] == pytest.approx(((7 - 1) + (6 - 2)) / 2)  # filled with the mean of the two others


# --- the study command: resume, shared batches ------------------------------------------------------------------

TINY = """
name: tiny
seeds: [0]
runs:
  - train: {task: brats, cases: 10, size: 32, iterations: 4, data.test_fraction: 0.3, data.heldout_cases: 2,
            method.meta_every_warmup: 2, method.meta_every_missing: 2, method.meta_batches: 1,
            method.oracle_importance: [0.28, 0.1027, 0.3963, 0.221], model.channels: [4, 8]}
    grid: {data.phantom_redundancy: [0.0], method: [none, mckd]}
"""


def _study(tmp_path, *extra):
    command = [sys.executable, str(ROOT / "benchmarks" / "study.py"), "--spec", str(tmp_path / "tiny.yaml"),
               "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--workers", "1", *extra]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_study_records_each_run_resumes_and_shares_batches_across_strategies(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = _study(tmp_path)
    assert "2 runs in tiny.yaml, 0 recorded, 2 to run" in out
    results = tmp_path / "results" / "brats" / "R0" / "kd0.1"
    none, mckd = (json.loads((results / m / "seed0.json").read_text()) for m in ("none", "mckd"))
    # the same seed: the same initial weights and batches for every strategy
    assert none["first_task_loss"] == mckd["first_task_loss"] and none["first_subsets"] == mckd["first_subsets"]
    assert len(none["cases"]) == 3 and len(none["subsets"]) == 15
    assert len(mckd["feature_distance"]) == 4 and len(mckd["drop_one_loss"]) == 4
    assert mckd["meta_schedule"]["rounds"] == 2 and mckd["importance"] is not None
    stamp = (results / "none" / "seed0.json").stat().st_mtime_ns
    # again: nothing to run; a removed record is the only run made again
    assert "2 recorded, 0 to run" in _study(tmp_path)
    (results / "mckd" / "seed0.json").unlink()
    assert "1 recorded, 1 to run" in _study(tmp_path)
    assert (results / "none" / "seed0.json").stat().st_mtime_ns == stamp
    assert json.loads((results / "mckd" / "seed0.json").read_text())["first_task_loss"] == mckd["first_task_loss"]
    assert (tmp_path / "results" / "summary.json").is_file()
