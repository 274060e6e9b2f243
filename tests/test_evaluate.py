"""Metrics (Dice, HD95) against MONAI and by hand; the all-subsets table layout, JSON and rendering."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from toydata import ToyBalls

from mckd_lab.config import RunConfig
from mckd_lab.data.brats import load_case, scan_folder
from mckd_lab.data.missing import all_subsets, subset_name
from mckd_lab.evaluate import (
    HD95_ONE_EMPTY,
    SubsetTable,
    dice,
    evaluate_run,
    hd95,
    render_table,
    write_json_atomic,
)
from mckd_lab.infer import predict_case
from mckd_lab.runs import predict_run
from mckd_lab.train import train


def test_dice_by_hand_and_empty_convention():
    pred = np.zeros((3, 4, 4, 4), bool)
    target = np.zeros((3, 4, 4, 4), bool)
    pred[0, 0, 0, :3] = True  # 3 voxels
    target[0, 0, 0, 1:] = True  # 3 voxels, 2 shared: 2 * 2 / (3 + 3)
    pred[1, 1, 1, 1] = True  # channel 1: predicted, truth empty -> 0
    # channel 2: both empty -> 1 (BraTS)
    np.testing.assert_allclose(dice(pred, target), [4 / 6, 0.0, 1.0])
    np.testing.assert_allclose(dice(target[1:2], pred[1:2]), [0.0])  # truth only -> 0


def test_dice_agrees_with_monai_dicemetric_on_random_masks():
    rng = np.random.default_rng(0)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    for density in (0.0, 0.01, 0.3):
        pred = rng.random((3, 9, 10, 11)) < density
        target = rng.random((3, 9, 10, 11)) < 0.2
        target[2] = False
        expected = metric(torch.as_tensor(pred[None]).float(), torch.as_tensor(target[None]).float())[0]
        np.testing.assert_allclose(dice(pred, target), expected.numpy(), rtol=1e-6)
        metric.reset()


def test_dice_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match=r"prediction \(3, 4, 4, 4\) and target \(3, 4, 4, 5\)"):
        dice(np.zeros((3, 4, 4, 4)), np.zeros((3, 4, 4, 5)))


def test_hd95_by_hand_with_spacing_and_empty_conventions():
    pred = np.zeros((3, 1, 1, 12), bool)
    target = np.zeros((3, 1, 1, 12), bool)
    pred[0, 0, 0, 2] = True
    target[0, 0, 0, 5] = True  # one point each, 3 voxels apart on the last axis
    pred[1, 0, 0, 0] = True  # channel 1: truth empty; channel 2: both empty
    out = hd95(pred, target, spacing=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(out, [6.0, HD95_ONE_EMPTY, 0.0])


def _table() -> SubsetTable:
    subsets = [(True, False), (False, True), (True, True)]
    d = np.array(
        [
            [[0.5, 0.6, 0.7], [0.1, 0.2, 0.3], [0.9, 0.8, 1.0]],
            [[0.3, 0.4, 0.5], [0.3, 0.2, 0.1], [0.7, 0.8, 0.6]],
        ]
    )
    return SubsetTable(
        modalities=("flair", "t1ce"),
        regions=("ET", "TC", "WT"),
        subsets=subsets,
        case_ids=["a", "b"],
        dice=d,
        hd95=np.full((2, 3, 3), 2.0),
        protocol={"data": "phantoms", "split": "test", "n_cases": 2, "inference": {"roi": [16, 16, 16]}},
    )


def test_table_json_layout_and_means(tmp_path):
    out = _table().to_dict()
    assert list(out) == ["task", "protocol", "regions", "modalities", "cases", "subsets", "mean"]
    assert out["task"] == "brats"
    assert [r["subset"] for r in out["subsets"]] == ["flair", "t1ce", "flair+t1ce"]
    assert out["subsets"][1]["present"] == {"flair": False, "t1ce": True}
    assert out["subsets"][0]["dice"] == {"ET": 0.4, "TC": 0.5, "WT": 0.6}  # mean of the 2 cases
    assert out["subsets"][0]["per_case"]["dice"]["ET"] == [0.5, 0.3]
    # mean over subsets of the case means: ET (0.4 + 0.2 + 0.8) / 3
    assert out["mean"]["dice"]["ET"] == pytest.approx(1.4 / 3, abs=1e-6)
    assert out["mean"]["hd95"] == {"ET": 2.0, "TC": 2.0, "WT": 2.0}
    path = write_json_atomic(out, tmp_path / "metrics.json")
    assert json.loads(path.read_text()) == out
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_rendering_marks_presence_and_states_protocol():
    text = render_table(_table().to_dict())
    lines = text.splitlines()
    assert lines[0].startswith(
        "Protocol: data: phantoms; split: test; n_cases: 2; inference: roi=[16, 16, 16]"
    )
    assert lines[2] == "| flair | t1ce | Dice ET | Dice TC | Dice WT |"
    assert lines[4] == "| ● | ○ | 40.00 | 50.00 | 60.00 |"
    assert lines[6] == "| ● | ● | 80.00 | 80.00 | 80.00 |"
    assert lines[7] == "| **mean of 3** |  | 46.67 | 50.00 | 53.33 |"
    assert "HD95 ET" in render_table(_table().to_dict(), hd95=True)


# --- a tiny real run on phantoms ----------------------------------------------------------------------------


def train_tiny_run(run_dir):
    """6 phantoms of 32^3 (4 train, 1 held out, 2 test... as split_cases says), 2 iterations, 16^3 crops."""
    config = RunConfig().with_overrides({
        "data.phantom_cases": 6, "data.phantom_size": 32, "data.crop": [16, 16, 16], "data.heldout_cases": 1,
        "data.test_fraction": 0.34, "model.channels": [4, 8], "optim.iterations": 2,
        "optim.warmup_iterations": 1,
        "method.meta_every_warmup": 1, "method.meta_every_missing": 1, "method.meta_batches": 1,
        "runtime.progress": False,
    })  # fmt: skip
    return train(config, run_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("runs") / "tiny")


def test_evaluate_run_writes_the_table_of_the_test_split(tiny_run):
    result = evaluate_run(tiny_run.run_dir)
    assert json.loads((tiny_run.run_dir / "metrics.json").read_text()) == result
    splits = json.loads((tiny_run.run_dir / "splits.json").read_text())
    assert result["cases"] == splits["test"] and len(result["cases"]) == 2
    assert [r["subset"] for r in result["subsets"]] == [
        subset_name(s, result["modalities"]) for s in all_subsets(4)
    ]
    protocol = result["protocol"]
    assert protocol["split"].startswith("test") and protocol["n_cases"] == 2 and protocol["method"] == "mckd"
    inference = {
        "roi": [16, 16, 16],
        "overlap": 0.3333,
        "blend": "constant",
        "threshold": 0.5,
        "encode_once": True,
    }
    assert protocol["inference"] == inference
    # one entry recomputed the slow way: predict the case with flair + t1ce, Dice of the regions (ET, TC, WT)
    case = load_case(
        next(d for d in scan_folder(tiny_run.run_dir / "phantoms")[1] if d.name == result["cases"][1])
    )
    pred = predict_case(tiny_run.model, case, (16, 16, 16), (True, False, True, False))
    order = [0, 2, 1]  # network channels ET, WT, TC -> report order ET, TC, WT
    expected = dice(pred.regions[order], case.target[order] > 0)
    row = next(r for r in result["subsets"] if r["subset"] == "flair+t1ce")
    np.testing.assert_allclose(
        [row["per_case"]["dice"][r][1] for r in ("ET", "TC", "WT")], expected, atol=1e-6
    )
    means = np.mean([[r["dice"][k] for k in ("ET", "TC", "WT")] for r in result["subsets"]], 0)
    np.testing.assert_allclose([result["mean"]["dice"][k] for k in ("ET", "TC", "WT")], means, atol=1e-5)
    assert set(result["mean"]) == {"dice", "hd95"}


def test_evaluate_run_on_another_folder_leaves_out_the_runs_training_cases(tiny_run):
    before = (
        (tiny_run.run_dir / "metrics.json").stat().st_mtime_ns
        if (tiny_run.run_dir / "metrics.json").exists()
        else None
    )
    result = evaluate_run(tiny_run.run_dir, data=tiny_run.run_dir / "phantoms", with_hd95=False)
    splits = json.loads((tiny_run.run_dir / "splits.json").read_text())
    assert result["cases"] == splits["test"]  # the same phantoms: only the unseen ones remain
    assert result["protocol"]["split"] == "cases not used in training or held out"
    assert "hd95" not in result["mean"] and "hd95" not in result["subsets"][0]
    after = (
        (tiny_run.run_dir / "metrics.json").stat().st_mtime_ns
        if (tiny_run.run_dir / "metrics.json").exists()
        else None
    )
    assert before == after  # another folder's table is returned, not written over the run's own


def test_predict_run_writes_the_segmentation_on_the_case_grid(tiny_run, tmp_path):
    case_dir = scan_folder(tiny_run.run_dir / "phantoms")[1][0]
    pred = predict_run(tiny_run.run_dir, case=case_dir, out=tmp_path / "seg.nii.gz", present="t1ce,flair")
    assert pred.present == (True, False, True, False)
    img, source = nib.load(tmp_path / "seg.nii.gz"), nib.load(next(case_dir.glob("*_flair.nii.gz")))
    assert img.shape == source.shape and np.allclose(img.affine, source.affine)
    case = load_case(case_dir)
    np.testing.assert_array_equal(np.asarray(img.dataobj), case.geometry.uncrop(pred.labels))
    with pytest.raises(ValueError, match="cannot read subset 'flair,dwi'"):
        predict_run(tiny_run.run_dir, case=case_dir, out=tmp_path / "x.nii.gz", present="flair,dwi")


def test_a_run_trained_in_memory_is_evaluated_on_a_named_folder_only(tiny_run, tmp_path):
    config = RunConfig.from_dict(json.loads((tiny_run.run_dir / "config.json").read_text()))
    run = train(
        config, tmp_path / "mem", train_data=ToyBalls(cases=2, size=16), heldout_data=ToyBalls(cases=1)
    )
    with pytest.raises(FileNotFoundError, match="has no test split.*--data DIR"):
        evaluate_run(run.run_dir)
    result = evaluate_run(run.run_dir, data=tiny_run.run_dir / "phantoms", with_hd95=False)
    assert len(result["cases"]) == 6  # nothing was seen from disk: every phantom is evaluated
