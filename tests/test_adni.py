"""ADNI loader: cohort round trip, censoring, labels, subject splits, train-only scaling, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from mckd_lab.data.adni import (
    AdniFormatError,
    AdniTable,
    find_adnimerge,
    inspect_csv,
    load_adni,
    map_diagnosis,
    parse_numbers,
    read_adnimerge,
    split_subjects,
)
from mckd_lab.data.cards import load_card
from mckd_lab.data.cohort import generate_cohort

AT_BASELINE = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}


def row(rid, dx_bl="CN", viscode="bl", **values):
    """One hand-made ADNIMERGE row with only the columns the loader reads; ``values`` override."""
    base = dict(
        RID=rid,
        VISCODE=viscode,
        DX_bl=dx_bl,
        DX=AT_BASELINE.get(dx_bl, "CN"),
        AGE=70 + rid % 7,
        PTGENDER="Female",
    )
    base |= dict(PTEDUCAT=16, APOE4=0, FDG=1.2, AV45=1.1, ABETA="900", TAU="250", PTAU="22", Hippocampus=7000)
    base |= dict(Ventricles=30000, WholeBrain=1e6, Entorhinal=3500, Fusiform=17000, MidTemp=19000, ICV=1.5e6)
    return base | values


def write(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("adni") / "ADNIMERGE_test.csv", subjects=120, seed=5)


def test_round_trip_from_generated_cohort(cohort):
    raw = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    bl = raw[raw["VISCODE"] == "bl"]
    info = inspect_csv(cohort)
    assert info["subjects"] == 120 == bl["RID"].nunique()
    expected = (
        bl["DX_bl"].map({"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "AD"}).value_counts()
    )
    assert info["classes"] == {c: int(expected.get(c, 0)) for c in ("CN", "MCI", "AD")}
    filled = bl != ""
    assert info["availability"] == {
        "imaging": int((filled["Hippocampus"] & filled["ICV"]).sum()),
        "genetic": int(filled["APOE4"].sum()),
        "clinical": int((filled["AGE"] & filled["PTGENDER"] & filled["PTEDUCAT"]).sum()),
        "biospecimen": int((filled["ABETA"] & filled["TAU"] & filled["PTAU"]).sum()),
    }
    assert sum(info["patterns"].values()) == 120
    assert info["availability"]["imaging"] < 120 and info["availability"]["biospecimen"] < 120  # real gaps
    every = read_adnimerge(cohort, visits="all")
    assert len(every) == int((raw["DX"] != "").sum())
    assert every.skipped.get("rows without a diagnosis", 0) == int((raw["DX"] == "").sum()) > 0


def test_censored_values_read_as_their_bound():
    values = pd.Series([">1700", "<8", " 12.5", "", "<80", "> 1300"], index=range(2, 8))
    np.testing.assert_array_equal(
        parse_numbers(values, "X", censored=True), [1700, 8, 12.5, np.nan, 80, 1300]
    )
    with pytest.raises(AdniFormatError, match=r"column TAU, line 2: cannot read '>1700'"):
        parse_numbers(values, "TAU", "f.csv")  # not a censored column: '>' is an error
    with pytest.raises(AdniFormatError, match=r"f.csv: column ABETA, line 4: cannot read 'n/a'"):
        parse_numbers(pd.Series(["1", "2", "n/a"], index=[2, 3, 4]), "ABETA", "f.csv", censored=True)


def test_label_mapping_table():
    dx_bl = pd.Series(["CN", "SMC", "EMCI", "LMCI", "AD", ""])
    np.testing.assert_array_equal(map_diagnosis(dx_bl, "DX_bl"), [0, 0, 1, 1, 2, -1])
    dx = pd.Series(["CN", "MCI", "Dementia", "NL", "MCI to Dementia", "Dementia to MCI"])
    np.testing.assert_array_equal(map_diagnosis(dx, "DX"), [0, 1, 2, 0, 2, 1])
    assert load_card("adni").labels == {0: "CN", 1: "MCI", 2: "AD"}


def test_smc_is_cn_unless_dropped(tmp_path):
    path = write(tmp_path / "ADNIMERGE.csv", [row(1, "SMC"), row(2, "AD"), row(3, "EMCI")])
    assert read_adnimerge(path).target.tolist() == [0, 2, 1]
    dropped = read_adnimerge(path, drop_smc=True)
    assert dropped.rid.tolist() == [2, 3] and dropped.skipped == {"SMC subjects dropped": 1}


def test_all_visits_labels_from_dx_in_visit_order(tmp_path):
    rows = [row(7, "LMCI", "m12", DX="Dementia"), row(7, "LMCI"), row(7, "LMCI", "m06", DX=""), row(3, "CN")]
    table = read_adnimerge(write(tmp_path / "ADNIMERGE.csv", rows), visits="all")
    assert table.rid.tolist() == [3, 7, 7] and table.viscode.tolist() == ["bl", "bl", "m12"]
    assert table.target.tolist() == [0, 1, 2] and table.skipped == {"rows without a diagnosis": 1}


def test_availability_mask_and_icv_normalisation(tmp_path):
    rows = [row(1), row(2, ICV=""), row(3, APOE4="", ABETA=""), row(4, TAU="<80", FDG="")]
    table = read_adnimerge(write(tmp_path / "ADNIMERGE.csv", rows))
    assert table.present.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]]
    assert table.features["imaging"][0, 0] == pytest.approx(7000 / 1.5e6)
    assert table.features["biospecimen"][3].tolist() == [900, 80, 22]
    assert np.isnan(table.features["imaging"][3, 6])  # FDG empty, imaging still present
    clinical = read_adnimerge(
        write(tmp_path / "ADNIMERGE.csv", [row(1, MMSE=28, CDRSB=0.5, ADAS11=5, ADAS13=9, FAQ=0)]),
        cognitive=True,
    )
    assert clinical.feature_names["clinical"] == (
        "AGE",
        "PTGENDER",
        "PTEDUCAT",
        "MMSE",
        "CDRSB",
        "ADAS11",
        "ADAS13",
        "FAQ",
    )
    assert clinical.features["clinical"][0].tolist() == [71, 1, 16, 28, 0.5, 5, 9, 0]


def table_of(rid, target):
    n = len(rid)
    return AdniTable(
        path=None,
        modalities=("a",),
        classes=("CN", "MCI", "AD"),
        feature_names={"a": ("x",)},
        rid=np.asarray(rid),
        viscode=np.array(["bl"] * n, dtype=object),
        target=np.asarray(target),
        features={"a": np.zeros((n, 1))},
        present=np.ones((n, 1), dtype=bool),
    )


def test_splits_by_subject_stratified():
    rid = np.repeat(np.arange(100), 2)  # two visits per subject
    target = np.repeat([0] * 50 + [1] * 30 + [2] * 20, 2)
    splits = split_subjects(table_of(rid, target), seed=1)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(200))
    subjects = {name: set(rid[rows].tolist()) for name, rows in splits.items()}
    for a in subjects:
        for b in subjects:
            assert a == b or not subjects[a] & subjects[b]
    # 0.6/0.1/0.1/0.2 of 50 CN, 30 MCI and 20 AD subjects, each with both visits
    counts = {name: np.bincount(target[rows], minlength=3).tolist() for name, rows in splits.items()}
    assert counts == {"train": [60, 36, 24], "val": [10, 6, 4], "meta": [10, 6, 4], "test": [20, 12, 8]}
    assert split_subjects(table_of(rid, target), seed=1)["test"].tolist() == splits["test"].tolist()
    assert split_subjects(table_of(rid, target), seed=2)["test"].tolist() != splits["test"].tolist()


def test_scaling_fitted_on_train_only(tmp_path):
    rows = [row(r, ("CN", "LMCI", "AD")[r % 3], Hippocampus=5000 + 100 * r, AGE=60 + r) for r in range(1, 31)]
    first = load_adni(write(tmp_path / "ADNIMERGE.csv", rows), seed=0)
    train, test = first.splits["train"], first.splits["test"]
    test_rids = set(first.table.rid[test].tolist())
    hippo = np.array([5000 + 100 * r for r in first.table.rid[train]]) / 1.5e6
    assert first.scaler.mean["imaging"][0] == pytest.approx(hippo.mean())
    assert first.scaler.std["imaging"][0] == pytest.approx(hippo.std())
    assert first.scaler.mean["clinical"][0] == pytest.approx(
        np.mean([60 + r for r in first.table.rid[train]])
    )
    changed = [r | {"Hippocampus": 99999, "AGE": 20} if r["RID"] in test_rids else r for r in rows]
    second = load_adni(write(tmp_path / "ADNIMERGE.csv", changed), seed=0)
    assert second.splits["test"].tolist() == test.tolist()
    for m in first.table.modalities:
        np.testing.assert_array_equal(second.scaler.mean[m], first.scaler.mean[m])
        np.testing.assert_array_equal(second.scaler.std[m], first.scaler.std[m])
    # applied to the others: a test subject is scaled with the training statistics
    x = second.dataset("test")[0]["image"]["imaging"][0].item()
    assert x == pytest.approx((99999 / 1.5e6 - hippo.mean()) / hippo.std(), rel=1e-5)


def test_batches_follow_the_contract(tmp_path):
    rows = [row(1), row(2, ABETA="", FDG=""), row(3, "AD"), row(4, "LMCI", APOE4="")]
    data = load_adni(write(tmp_path / "ADNIMERGE.csv", rows), fractions={"train": 1.0, "test": 0.0})
    batch = next(iter(torch.utils.data.DataLoader(data.dataset("train"), batch_size=4)))
    assert {m: tuple(x.shape) for m, x in batch["image"].items()} == {
        "imaging": (4, 8),
        "genetic": (4, 1),
        "clinical": (4, 3),
        "biospecimen": (4, 3),
    }
    assert all(x.dtype == torch.float32 for x in batch["image"].values())
    assert batch["present"].dtype == torch.bool and batch["present"].shape == (4, 4)
    assert batch["target"].dtype == torch.int64 and batch["target"].tolist() == [0, 0, 2, 1]
    assert batch["case_id"] == ["1_bl", "2_bl", "3_bl", "4_bl"]
    assert batch["present"][1].tolist() == [True, True, True, False]
    assert batch["image"]["biospecimen"][1].abs().sum() == 0  # missing modality -> zeros
    assert batch["image"]["imaging"][1, 6] == 0  # missing FDG of a present modality -> training mean -> 0
    assert batch["image"]["genetic"][3].item() == 0


def test_dated_file_found_in_folder(tmp_path, cohort):
    folder = tmp_path / "adni"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")
    dated = folder / "ADNIMERGE_15Nov2023.csv"
    dated.write_bytes(cohort.read_bytes())
    assert find_adnimerge(folder) == dated
    assert inspect_csv(folder)["file"] == str(dated)
    (folder / "ADNIMERGE_01Jan2024.csv").write_bytes(cohort.read_bytes())
    with pytest.raises(AdniFormatError, match="several ADNIMERGE files.*ADNIMERGE_01Jan2024.csv.*15Nov2023"):
        find_adnimerge(folder)


def test_folder_without_adnimerge_and_empty_file(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(AdniFormatError, match=r"no file matching ADNIMERGE\*\.csv \(found: notes.txt\)"):
        find_adnimerge(tmp_path)
    (tmp_path / "ADNIMERGE.csv").write_text("")
    with pytest.raises(AdniFormatError, match=r"ADNIMERGE.csv: not a readable CSV"):
        read_adnimerge(tmp_path)


@pytest.mark.parametrize(
    ("rows", "drop", "message"),
    [
        ([row(1)], "Hippocampus", r"missing required column\(s\) Hippocampus"),
        ([row(1), row(2, "Demented")], None, r"column DX_bl, line 3: unknown diagnosis 'Demented'"),
        (
            [row(1), row(1, "CN", "m06", DX="Alzheimer")],
            None,
            r"column DX, line 3: unknown diagnosis 'Alzheimer'",
        ),
        ([row(1), row(5), row(5)], None, r"RID 5 VISCODE 'bl' appears on lines 3, 4"),
        ([row(1), row(2), row(3, AGE="seventy")], None, r"column AGE, line 4: cannot read 'seventy'"),
        ([row(1, PTGENDER="X")], None, r"column PTGENDER, line 2: unknown value 'X'"),
    ],
)
def test_bad_input_is_named(tmp_path, rows, drop, message):
    frame = pd.DataFrame(rows).drop(columns=[drop] if drop else [])
    path = tmp_path / "ADNIMERGE_bad.csv"
    frame.to_csv(path, index=False)
    before = path.read_bytes()
    with pytest.raises(AdniFormatError, match=message) as err:
        read_adnimerge(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # reading never modifies the file
