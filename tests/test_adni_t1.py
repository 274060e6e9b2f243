"""Task adni-t1: a T1 volume per subject (column T1_PATH) in place of the imaging numbers. Reading and
normalising a volume, the table and batches, clear errors, the volume encoder, and a run end to end."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mckd_lab.classification import adni_config, evaluate_run, predict_subject
from mckd_lab.cli import main
from mckd_lab.data.adni import AdniDataset, AdniFormatError, FeatureScaler, load_adni, read_adnimerge
from mckd_lab.data.phantoms import phantom_affine
from mckd_lab.data.t1_volumes import read_t1
from mckd_lab.models.classifier import VolumeEncoder, build_classification_network
from mckd_lab.runs import explain_run
from mckd_lab.tasks import make_task
from mckd_lab.train import train

T1_MODS = ("mri", "genetic", "clinical", "biospecimen")

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(array, affine, path):
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- one volume ------------------------------------------------------------------------------------------


def test_read_t1_reorients_pads_resizes_and_normalises(tmp_path):
    """A (20, 16, 12) volume stored left-to-right (x spacing -2 mm) with a bright block at its most right-hand
    voxels: read at 16^3 it is RAS (the block at high x indices), padded to a cube (the block keeps its
    centre in y, z), and the brain voxels are z-scored (mean 0, std 1), background exactly 0."""
    data = np.zeros((20, 16, 12), np.float32)
    data[2:18, 2:14, 2:10] = 100.0
    data[2:5, 6:10, 4:8] = 300.0  # low i = right-hand side, as the x axis points left
    path = _save(data, np.diag([-2.0, 2.0, 2.0, 1.0]), tmp_path / "t1.nii.gz")
    volume = read_t1(path, 16)
    assert volume.shape == (1, 16, 16, 16) and volume.dtype == np.float32
    bright = np.argwhere(volume[0] > volume[0].max() * 0.8)
    assert bright[:, 0].min() >= 11  # RAS: the right-hand block is at the high end of x
    centre = bright[:, 1:].mean(0)
    assert np.all((centre >= 6.5) & (centre <= 8.5))  # the centred pad kept it there in y and z
    assert volume[0, 0, 0, 0] == 0 and volume[0, :, :, 0].max() == 0  # padding stays background (z pad 4)
    brain = volume[0][volume[0] != 0]
    assert abs(float(brain.mean())) < 1e-4 and float(brain.std()) == pytest.approx(1, 1e-3)


def test_bad_volumes_are_named_with_line_rid_and_file(t1_cohort, tmp_path):
    raw = pd.read_csv(t1_cohort, dtype=str, keep_default_na=False)
    raw.drop(columns="T1_PATH").to_csv(tmp_path / "no_column.csv", index=False)
    with pytest.raises(AdniFormatError, match="missing required column.*T1_PATH.*adni-t1"):
        read_adnimerge(tmp_path / "no_column.csv", t1=True)
    given = raw["T1_PATH"] != ""
    raw.loc[given, "T1_PATH"] = [str(t1_cohort.parent / c) for c in raw.loc[given, "T1_PATH"]]  # absolute
    row = raw.index[(raw["VISCODE"] == "bl") & given][0]
    rid = raw.loc[row, "RID"]
    raw.loc[row, "T1_PATH"] = "T1/nowhere.nii.gz"
    raw.to_csv(tmp_path / "ADNIMERGE_bad.csv", index=False)
    before = _digest(tmp_path / "ADNIMERGE_bad.csv")
    with pytest.raises(
        AdniFormatError, match=rf"line {row + 2} \(RID {rid}\).*nowhere.nii.gz.*does not exist"
    ):
        read_adnimerge(tmp_path / "ADNIMERGE_bad.csv", t1=True)
    assert _digest(tmp_path / "ADNIMERGE_bad.csv") == before  # reading never touches the file

    (tmp_path / "T1").mkdir()
    for name, content in {"empty": np.zeros((8, 8, 8)), "broken": None}.items():
        path = tmp_path / "T1" / f"{name}.nii.gz"
        if content is None:
            path.write_bytes(b"not a nifti at all")
        else:
            _save(content, np.eye(4), path)
        raw.loc[row, "T1_PATH"] = f"T1/{name}.nii.gz"
        raw.to_csv(tmp_path / "ADNIMERGE_bad.csv", index=False)
        table = read_adnimerge(tmp_path / "ADNIMERGE_bad.csv", t1=True)
        index = np.flatnonzero(table.rid == int(rid))
        scaler = FeatureScaler.fit(table, index)
        expected = "all zeros" if name == "empty" else "cannot read this NIfTI"
        with pytest.raises(AdniFormatError, match=rf"RID {rid} \(bl\): .*{name}.nii.gz.*{expected}"):
            AdniDataset(table, index, scaler, 16)


# --- the table and batches -------------------------------------------------------------------------------


def test_t1_table_and_batches(t1_cohort):
    raw = pd.read_csv(t1_cohort, dtype=str, keep_default_na=False)
    bl = raw[raw["VISCODE"] == "bl"].set_index(raw[raw["VISCODE"] == "bl"]["RID"].astype(int))
    data = load_adni(t1_cohort, t1=True)
    table = data.table
    assert table.modalities == T1_MODS and table.features["mri"].shape == (len(table), 0)
    has_t1 = (bl.loc[table.rid, "T1_PATH"] != "").to_numpy()
    np.testing.assert_array_equal(table.present[:, 0], has_t1)
    assert 0 < has_t1.sum() < len(table)  # some subjects have no scan
    first = np.flatnonzero(has_t1)[0]
    assert table.volumes["mri"][first] == str(t1_cohort.parent / bl.loc[table.rid[first], "T1_PATH"])
    tabular = read_adnimerge(t1_cohort)  # the same file read by task adni: same subjects, other modality
    np.testing.assert_array_equal(tabular.present[:, 1:], table.present[:, 1:])
    # generated volumes: one per baseline MRI, on the phantom grid, what the FreeSurfer row says was scanned
    np.testing.assert_array_equal(has_t1, tabular.present[:, 0])
    img = nib.load(table.volumes["mri"][first])
    np.testing.assert_allclose(img.affine, phantom_affine(32))
    assert img.shape == (32, 32, 32) and int(img.header["sform_code"]) == 4  # MNI152

    ds = data.dataset("train", t1_size=16)
    x = ds.inputs["mri"]
    assert x.shape == (len(ds), 1, 16, 16, 16) and x.dtype == torch.float32
    assert x[~ds.present[:, 0]].abs().max() == 0  # no scan: zeros
    sample = ds[int(np.flatnonzero(ds.present[:, 0].numpy())[0])]
    assert sample["image"]["mri"].shape == (1, 16, 16, 16) and sample["image"]["mri"].abs().max() > 0
    assert set(sample["image"]) == set(T1_MODS)


# --- the volume encoder ----------------------------------------------------------------------------------


def test_volume_encoder_ends_in_the_common_width_and_ignores_missing_volumes():
    torch.manual_seed(0)
    encoder = VolumeEncoder(12, (4, 8, 16))
    feature, skips = encoder(torch.randn(3, 1, 16, 16, 16))
    assert feature.shape == (3, 12) and skips == []
    torch.testing.assert_close(feature.mean(1), torch.zeros(3), atol=1e-5, rtol=0)  # LayerNorm, no affine
    torch.testing.assert_close(feature.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)

    net = build_classification_network({"mri": None, "genetic": 1}, widths=(12,)).eval()  # no dropout
    image = {"mri": torch.randn(4, 1, 16, 16, 16), "genetic": torch.randn(4, 1)}
    present = torch.tensor([[True, True], [False, True], [True, False], [False, True]])
    out = net(image, present)
    assert out.logits.shape == (4, 3) and out.features.shape == (4, 2, 12)
    out.logits.sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if k.startswith("encoders.0")}
    net.zero_grad()
    changed = {
        "mri": image["mri"] + 50 * torch.tensor([0.0, 1, 0, 1]).view(4, 1, 1, 1, 1),
        "genetic": image["genetic"],
    }
    out2 = net(changed, present)  # only the missing volumes changed: nothing the network computes changes
    torch.testing.assert_close(out2.logits, out.logits)
    out2.logits.sum().backward()
    for k, p in net.named_parameters():
        if k.startswith("encoders.0"):
            torch.testing.assert_close(p.grad, grads[k])


# --- a run end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t1_run(t1_cohort, tmp_path_factory):
    config = adni_config(
        t1_cohort, task="adni-t1", method="mckd", epochs=4, seed=0,
        **{"runtime.progress": False, "data.t1_size": 16, "model.channels": (16, 16),
           "method.meta_every_warmup": 2, "method.meta_every_missing": 2, "method.meta_batches": 1},
    )  # fmt: skip
    return train(config, tmp_path_factory.mktemp("adni_t1_run") / "run")


def test_t1_run_evaluates_predicts_and_explains(t1_run, t1_cohort, tmp_path):
    assert t1_run.model.modalities == T1_MODS
    records = t1_run.records("train")
    assert records and all(np.isfinite(r["loss"]) for r in records)
    assert any(r["kind"] == "meta" for r in t1_run.history)
    result = evaluate_run(t1_run)
    assert result["modalities"] == list(T1_MODS) and result["protocol"]["task"] == "adni-t1"
    assert len(result["subsets"]) == 15 and result["subsets"][0]["subset"] == "mri"
    assert result["subsets"][0]["n"] == result["subsets"][0]["n_full"] > 0

    # a subject with only its scan: every other modality's key columns emptied
    raw = pd.read_csv(t1_cohort, dtype=str, keep_default_na=False)
    test = json.loads((t1_run.run_dir / "splits.json").read_text())["test"]
    bl = (raw["VISCODE"] == "bl") & raw["RID"].isin(test) & (raw["T1_PATH"] != "")
    rid = int(raw.loc[bl, "RID"].iloc[0])
    only = (raw["RID"] == str(rid)) & (raw["VISCODE"] == "bl")
    raw.loc[only, ["APOE4", "AGE", "ABETA"]] = ""
    raw.to_csv(t1_cohort.parent / "ADNIMERGE_only_t1.csv", index=False)  # relative T1 paths still resolve
    prediction = predict_subject(t1_run, t1_cohort.parent / "ADNIMERGE_only_t1.csv", rid)
    assert prediction.subset == "mri" and sum(prediction.probabilities.values()) == pytest.approx(1.0)

    explained = explain_run(t1_run.run_dir, rid=rid, n_steps=4)
    ig = explained["integrated_gradients"]
    assert list(ig["features"]["mri"]) == ["mri volume"]
    assert ig["per_modality"]["mri"] == pytest.approx(ig["features"]["mri"]["mri volume"])
    assert set(explained["shapley"]) == {"CN", "MCI", "AD"}


def test_cli_writes_a_t1_cohort_and_trains_on_it(tmp_path, capsys):
    csv = tmp_path / "ADNIMERGE_cli.csv"
    assert main(["cohort", "--out", str(csv), "--subjects", "40", "--seed", "1", "--t1-size", "32"]) == 0
    assert "baseline T1 volumes of 32^3" in capsys.readouterr().out
    written = pd.read_csv(csv, dtype=str, keep_default_na=False)
    cells = written.loc[written["T1_PATH"] != "", "T1_PATH"]
    assert len(cells) and all((tmp_path / c).is_file() for c in cells)
    assert (written.loc[written["VISCODE"] != "bl", "T1_PATH"] == "").all()  # baseline scans only
    assert not list(tmp_path.glob("*.partial"))
    assert make_task("adni-t1").in_features() == {"mri": None, "genetic": 1, "clinical": 3, "biospecimen": 3}
    assert main(["cohort", "--out", str(tmp_path / "x.csv"), "--t1-size", "20"]) == 2  # not a phantom size
    assert "from 32 to 128" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()


def test_cli_inspects_an_adnimerge_csv_with_t1_volumes(t1_cohort, capsys):
    raw = pd.read_csv(t1_cohort, dtype=str, keep_default_na=False)
    baseline = raw[raw["VISCODE"] == "bl"]
    assert main(["inspect", str(t1_cohort), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["subjects"] == len(baseline) == 120
    assert report["t1_images"] == int((baseline["T1_PATH"] != "").sum())
    assert report["availability"]["imaging"] == int((baseline["Hippocampus"] != "").sum())
    assert sum(report["classes"].values()) == sum(report["patterns"].values()) == 120
    assert main(["inspect", str(t1_cohort)]) == 0
    text = capsys.readouterr().out
    assert "120 subjects at baseline" in text and f"T1 volumes (task adni-t1): {report['t1_images']}" in text
