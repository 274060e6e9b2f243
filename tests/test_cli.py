"""``mckd-lab`` through its real entry point (``mckd_lab.cli.main``) on tiny runs: train, evaluate, predict,
explain, demo; user errors exit 2 with one clear line."""

import json

import nibabel as nib
import numpy as np
import pytest

from mckd_lab.cli import main
from mckd_lab.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--size", "32", "--cases", "6", "--iterations", "2", "--batch", "2", "--set", "model.channels=[4,8]",
        "--set", "runtime.progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def brats_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), "--method", "uniform", *TINY]) == 0
    return run


def test_train_writes_a_run_of_the_flags(brats_run, capsys):
    config = RunDir(brats_run).read_config()
    assert config["data"]["task"] == "brats" and config["method"]["name"] == "uniform"
    assert config["data"]["crop"] == [32, 32, 32] and config["model"]["channels"] == [4, 8]
    assert json.loads((brats_run / "config.json").read_text())["mckd_lab_version"]
    assert main(["train", "--out", str(brats_run), *TINY]) == 2  # a run is there: refused, nothing touched
    assert "already holds a run" in capsys.readouterr().err


def test_evaluate_prints_the_fifteen_subset_table(brats_run, capsys):
    assert main(["evaluate", str(brats_run)]) == 0
    text = capsys.readouterr().out
    assert text.count("\n| ") == 1 + 15 + 1 and "**mean of 15**" in text  # header, 15 subsets, mean
    assert main(["evaluate", str(brats_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "brats" and len(result["subsets"]) == 15
    assert result == json.loads((brats_run / "metrics.json").read_text())


def test_predict_writes_a_segmentation_of_the_case_grid(brats_run, tmp_path, capsys):
    case = next(p for p in (brats_run / "phantoms" / "HGG").iterdir() if p.is_dir())
    out = tmp_path / "seg.nii.gz"
    assert (
        main(["predict", str(brats_run), "--case", str(case), "--present", "flair,t1ce", "--out", str(out)])
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().out
    seg = nib.load(out)
    assert seg.shape == nib.load(next(case.glob("*_flair.nii.gz"))).shape
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    assert main(["predict", str(brats_run), "--rid", "3"]) == 2  # an ADNI option on a BraTS run
    assert "rid: not an option to predict with a BraTS run" in capsys.readouterr().err


def test_explain_gives_shapley_values_per_region(brats_run, capsys):
    case = next(p for p in (brats_run / "phantoms" / "HGG").iterdir() if p.is_dir())
    assert main(["explain", str(brats_run), "--case", str(case), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["shapley"]) == {"ET", "WT", "TC"} and result["case"] == case.name
    for region, values in result["shapley"].items():  # efficiency: the values share v(all) - v(empty)
        assert sum(values.values()) == pytest.approx(
            result["full"][region] - result["baseline"][region], abs=1e-5
        )


def test_adni_train_predict_and_a_flag_of_another_task(adni_cohort, tmp_path, capsys):
    run = tmp_path / "adni"
    assert main(["train", "--task", "adni", "--data", str(adni_cohort), "--out", str(run), "--epochs", "1",
                 "--set", "runtime.progress=false"]) == 0  # fmt: skip
    assert "trained mckd" in capsys.readouterr().out
    rid = json.loads((run / "splits.json").read_text())["test"][0]
    assert main(["predict", str(run), "--rid", rid, "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["rid"] == int(rid) and sum(prediction["probabilities"].values()) == pytest.approx(1.0)
    assert main(["train", "--task", "adni", "--out", str(tmp_path / "x"), "--cases", "3"]) == 2
    assert "--cases: not an option of task adni" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_and_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--iterations", "3"]) == 0
    out = capsys.readouterr().out
    assert "**mean of 15**" in out and "importance weights (softmax of omega)" in out
    assert (tmp_path / "demo" / "table.md").read_text().strip() in out
