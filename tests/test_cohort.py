"""Synthetic ADNI-like cohort: ADNIMERGE format, visits, published targets, correlations, missingness."""

import inspect
import json

import numpy as np
import pandas as pd
import pytest

from mckd_lab.data.cards import load_card
from mckd_lab.data.cohort import T1_REFERENCE, cohort_record, generate_cohort
from mckd_lab.data.t1_phantoms import T1_VOLUMES
from mckd_lab.study import cohort_importance, source_informativeness

SUBJECTS = 400


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "ADNIMERGE_01Jan2024.csv"
    path = generate_cohort(out, subjects=SUBJECTS, seed=3)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return path, df, df[df["VISCODE"] == "bl"].set_index("RID")


def num(values):
    return pd.to_numeric(values.replace("", np.nan))


def test_real_column_names_with_baseline_twins(cohort):
    _, df, bl = cohort
    expected = (
        "RID PTID VISCODE EXAMDATE COLPROT ORIGPROT DX_bl DX AGE PTGENDER PTEDUCAT PTETHCAT PTRACCAT PTMARRY "
        "APOE4 FDG AV45 ABETA TAU PTAU ICV Hippocampus Ventricles WholeBrain Entorhinal Fusiform MidTemp "
        "MMSE "
        "CDRSB ADAS11 ADAS13 Hippocampus_bl ABETA_bl MMSE_bl EXAMDATE_bl Years_bl Month"
    ).split()
    assert set(expected) <= set(df.columns), set(expected) - set(df.columns)
    # every row repeats its subject's baseline values in the _bl twins
    for col in ("Hippocampus", "ABETA", "MMSE", "EXAMDATE"):
        assert (df[f"{col}_bl"] == df["RID"].map(bl[col])).all(), col
    assert set(df["PTGENDER"]) == {"Male", "Female"}
    assert df["PTID"].str.fullmatch(r"\d{3}_S_\d{4}").all()
    assert (df["PTID"].str[-4:].astype(int) == df["RID"].astype(int)).all()


def test_visits_one_baseline_per_subject_and_same_seed_same_file(cohort, tmp_path):
    path, df, bl = cohort
    assert len(bl) == SUBJECTS and bl.index.is_unique
    assert set(df["VISCODE"]) <= {"bl", "m06", "m12", "m18", "m24", "m36", "m48"}
    assert 2.5 < len(df) / SUBJECTS < 6  # several visits per subject
    assert not df.duplicated(["RID", "VISCODE"]).any()
    assert (num(df["Years_bl"]) >= 0).all()
    again = generate_cohort(tmp_path / "a.csv", subjects=SUBJECTS, seed=3)
    assert again.read_bytes() == path.read_bytes()
    assert generate_cohort(tmp_path / "b.csv", subjects=SUBJECTS, seed=4).read_bytes() != path.read_bytes()


def test_diagnoses_by_phase(cohort):
    _, df, bl = cohort
    diagnosis = load_card("adni").header["diagnosis"]
    assert set(df["DX_bl"]) <= set(diagnosis["DX_bl"]) and set(df["DX"]) - {""} <= set(diagnosis["DX"])
    assert set(bl.loc[bl["ORIGPROT"] == "ADNI1", "DX_bl"]) == {"CN", "LMCI", "AD"}
    assert set(bl.loc[bl["ORIGPROT"] == "ADNIGO", "DX_bl"]) == {"EMCI"}
    at_baseline = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}
    assert (bl["DX"] == bl["DX_bl"].map(at_baseline)).all()


def test_censored_csf_strings(cohort):
    _, df, _ = cohort
    abeta = df["ABETA"]
    assert (abeta == ">1700").sum() > 10
    plain = abeta[(abeta != "") & ~abeta.str.match(r"^[<>]")]
    assert num(plain).between(200, 1700).all()
    assert set(df["PTAU"][df["PTAU"].str.match(r"^[<>]")]) <= {"<8", ">120"}
    assert set(df["TAU"][df["TAU"].str.match(r"^[<>]")]) <= {"<80", ">1300"}


def test_baseline_close_to_published_figures(cohort):
    """Petersen et al. 2010 (ADNI1 baseline): the card's targets, within sampling error and rounding."""
    _, _, bl = cohort
    groups = bl["DX_bl"]
    for col, targets, tol in (
        ("AGE", {"CN": 75.8, "LMCI": 74.7, "AD": 75.3}, 1.5),
        ("MMSE", {"CN": 29.1, "LMCI": 27.0, "AD": 23.3}, 0.6),
        ("ADAS11", {"CN": 6.2, "LMCI": 11.5, "AD": 18.6}, 1.5),
    ):
        means = num(bl[col]).groupby(groups).mean()
        for group, target in targets.items():
            assert abs(means[group] - target) < tol, (col, group, means[group])
    carriers = (num(bl["APOE4"]) > 0).groupby(groups.map({"CN": "CN", "LMCI": "MCI", "AD": "AD"})).mean()
    assert abs(carriers["CN"] - 0.266) < 0.1 and abs(carriers["AD"] - 0.661) < 0.12


def test_correlations_class_age_apoe(cohort):
    _, _, bl = cohort
    hippo = num(bl["Hippocampus"]) / num(bl["ICV"])
    by_class = hippo.groupby(bl["DX_bl"]).mean()
    assert by_class["CN"] > by_class["LMCI"] > by_class["AD"]
    cn = bl["DX_bl"] == "CN"
    assert np.corrcoef(hippo[cn].dropna(), num(bl["AGE"])[cn][hippo[cn].notna()])[0, 1] < -0.1
    abeta = num(bl["ABETA"].str.lstrip("<>"))
    apoe = num(bl["APOE4"])
    assert abeta[apoe == 0].median() - abeta[apoe > 0].median() > 150
    assert num(bl["FDG"]).groupby(bl["DX_bl"]).mean()["CN"] > num(bl["FDG"]).groupby(bl["DX_bl"]).mean()["AD"]


def test_missingness_follows_the_protocol(cohort):
    _, df, bl = cohort
    assert (df.loc[df["ORIGPROT"] == "ADNI1", "AV45"] == "").all()  # florbetapir started after ADNI1
    measured = bl.groupby("ORIGPROT")[["FDG", "AV45", "ABETA"]].agg(lambda c: (c != "").mean())
    assert 0.35 < measured.loc["ADNI1", "ABETA"] < 0.65  # lumbar puncture for about half of ADNI1
    assert measured.loc["ADNI2", "AV45"] > 0.85 and measured.loc["ADNI2", "FDG"] > 0.85
    assert measured.loc["ADNI3", "FDG"] < 0.5
    assert (bl["AGE"] != "").all() and (bl["PTGENDER"] != "").all()


def test_synthetic_card_matches_the_adni_card_and_the_generator():
    real, synthetic = load_card("adni"), load_card("adni_synthetic")
    assert [(m.name, m.columns, m.key_columns) for m in synthetic.modalities] == [
        (m.name, m.columns, m.key_columns) for m in real.modalities
    ]
    assert synthetic.labels == real.labels
    defaults = inspect.signature(generate_cohort).parameters
    assert synthetic.header["defaults"] == {k: defaults[k].default for k in ("subjects", "seed")}


def test_t1_reference_is_the_cn_mean_over_icv():
    assert tuple(T1_REFERENCE) == T1_VOLUMES == ("Hippocampus", "Ventricles", "WholeBrain")
    assert T1_REFERENCE == pytest.approx(  # CN means at 75 over ICV 1.5e6 mm^3
        {"Hippocampus": 7300 / 1.5e6, "Ventricles": 33000 / 1.5e6, "WholeBrain": 1030000 / 1.5e6}
    )


# --- redundancy: how much each source carries about the diagnosis --------------------------------------------


def test_redundancy_zero_is_the_calibrated_cohort_and_is_recorded(tmp_path):
    plain = generate_cohort(tmp_path / "plain.csv", subjects=80, seed=5)
    zero = generate_cohort(tmp_path / "zero.csv", subjects=80, seed=5, redundancy=0.0)
    assert plain.read_bytes() == zero.read_bytes()
    more = generate_cohort(tmp_path / "more.csv", subjects=80, seed=5, redundancy=1.0)
    assert more.read_bytes() != plain.read_bytes()
    assert json.loads(cohort_record(more).read_text())["redundancy"] == 1.0
    assert json.loads(cohort_record(plain).read_text()) == {
        "generator": "mckd_lab.data.cohort.generate_cohort", "subjects": 80, "seed": 5, "t1_size": None,
        "redundancy": 0.0}  # fmt: skip
    with pytest.raises(ValueError, match="redundancy"):
        generate_cohort(tmp_path / "bad.csv", subjects=10, redundancy=1.5)


def test_redundancy_leaves_imaging_alone_and_moves_the_other_sources(tmp_path):
    a = pd.read_csv(generate_cohort(tmp_path / "a.csv", subjects=400, seed=2), dtype=str, keep_default_na=False)
    b = pd.read_csv(generate_cohort(tmp_path / "b.csv", subjects=400, seed=2, redundancy=1.0), dtype=str,
                    keep_default_na=False)  # fmt: skip
    bl_a, bl_b = a[a.VISCODE == "bl"], b[b.VISCODE == "bl"]
    assert (bl_a["Hippocampus"] == bl_b["Hippocampus"]).all()  # imaging: the same draws (no age leak)
    ad, cn = bl_b.DX_bl == "AD", bl_b.DX_bl.isin(["CN", "SMC"])
    gap = {name: num(df.loc[ad & (df.VISCODE == "bl"), "AGE"]).mean() - num(df.loc[cn, "AGE"]).mean()
           for name, df in (("a", bl_a), ("b", bl_b))}  # fmt: skip
    assert gap["b"] > gap["a"] + 2  # AD older than CN by ~0.85 sd of age more


def test_ground_truth_ranking_per_redundancy(tmp_path):
    """The card's ranking, computed on small cohorts: at R = 0 imaging carries most and clinical least; at R = 1
    every other source carries more than at R = 0 and the spread between sources shrinks."""
    info = {r: source_informativeness(generate_cohort(tmp_path / f"r{r}.csv", subjects=1000, seed=4,
                                                      redundancy=r)) for r in (0.0, 1.0)}  # fmt: skip
    zero, one = info[0.0], info[1.0]
    assert max(zero, key=zero.get) == "imaging" and min(zero, key=zero.get) == "clinical"
    assert zero["imaging"] > zero["biospecimen"] > zero["genetic"] > zero["clinical"]
    for source in ("genetic", "clinical", "biospecimen"):
        assert one[source] > zero[source] + 0.03
    assert max(one.values()) - min(one.values()) < max(zero.values()) - min(zero.values()) - 0.03
    w = cohort_importance(zero)
    assert sum(w) == pytest.approx(1.0, abs=1e-3) and w[0] == max(w) and w[2] == min(w)


def test_redundancy_from_the_config_and_the_command_line(tmp_path):
    from mckd_lab.cli import main
    from mckd_lab.config import DataConfig
    from mckd_lab.tasks import make_task

    path = make_task("adni").prepare_data(DataConfig(task="adni", cohort_subjects=60, cohort_redundancy=0.5), tmp_path)
    assert "redundancy0.5" in path.name and json.loads(cohort_record(path).read_text())["redundancy"] == 0.5
    plain = make_task("adni").prepare_data(DataConfig(task="adni", cohort_subjects=60), tmp_path)
    assert plain.name == "ADNIMERGE_synthetic_n60_seed0.csv"  # R = 0: the file name of before
    main(["cohort", "--out", str(tmp_path / "cli.csv"), "--subjects", "60", "--redundancy", "0.5"])
    assert (tmp_path / "cli.csv").read_bytes() == path.read_bytes()
