"""A synthetic ADNI-like cohort written as an ADNIMERGE CSV (real column names, value conventions, visits).

The figures the generator aims at, their sources and what is invented are in ``data_cards/adni_synthetic.md``.
In short: every subject gets a protocol phase (ADNI1/GO/2/3), a baseline diagnosis ``DX_bl``, demographics
and APOE4 drawn per class; a latent amyloid status (more likely with APOE4 and with disease) drives CSF ABETA
and AV45; a latent within-class severity ``z`` is shared by volumes, FDG, tau and cognition so that
modalities correlate; volumes shrink with age. Follow-up visits apply per-class yearly slopes, MCI/CN
subjects may convert, and each modality is measured only when the phase's protocol (and chance) says so.
The CSV is read back by :func:`mckd_lab.data.adni.read_adnimerge` like a real download. With ``t1_size``,
every baseline MRI is also rendered as a T1 volume (``mckd_lab.data.t1_phantoms``) whose ventricles,
hippocampi and cortex follow that row's FreeSurfer volumes, written to ``T1/<PTID>_bl.nii.gz`` next to the CSV
and named in an extra column ``T1_PATH`` (relative to the CSV's folder), as task ``adni-t1`` expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mckd_lab.data.anatomy import check_size
from mckd_lab.data.cards import load_card
from mckd_lab.data.t1_phantoms import T1_VOLUMES, render_t1, save_t1

# DX_bl group -> (class, weight of the MCI profile, DX string at baseline). EMCI sits halfway between CN and
# LMCI (= the ADNI1 MCI profile); SMC uses the CN profile.
GROUPS = {
    "CN": ("CN", 0.0, "CN"),
    "SMC": ("CN", 0.0, "CN"),
    "EMCI": ("MCI", 0.5, "MCI"),
    "LMCI": ("MCI", 1.0, "MCI"),
    "AD": ("AD", 1.0, "Dementia"),
}
# Enrolment share, DX_bl mix, enrolment window and visit schedule (months) per protocol phase.
PHASES = {
    "ADNI1": (
        0.33,
        {"CN": 0.28, "LMCI": 0.49, "AD": 0.23},
        ("2005-09-01", "2007-08-31"),
        (0, 6, 12, 18, 24, 36),
    ),
    "ADNIGO": (0.06, {"EMCI": 1.0}, ("2009-10-01", "2011-06-30"), (0, 6, 12, 24, 36, 48)),
    "ADNI2": (
        0.32,
        {"CN": 0.24, "SMC": 0.13, "EMCI": 0.23, "LMCI": 0.21, "AD": 0.19},
        ("2011-07-01", "2013-06-30"),
        (0, 6, 12, 24, 36, 48),
    ),
    "ADNI3": (
        0.29,
        {"CN": 0.55, "EMCI": 0.15, "LMCI": 0.15, "AD": 0.15},
        ("2016-09-01", "2021-12-31"),
        (0, 12, 24, 36),
    ),
}
FIRST_RID = {"ADNI1": 2, "ADNIGO": 2002, "ADNI2": 4001, "ADNI3": 6001}
# Probability of a measurement at baseline, and the follow-up months where it is repeated (for subjects who
# had it at baseline, with probability 0.8). MRI: FreeSurfer summaries passing QC.
MEASURED = {
    #          MRI   FDG   AV45  CSF   APOE4
    "ADNI1": ((0.90, 0.50, 0.00, 0.50, 0.99), {"FDG": (12, 24), "CSF": (12, 24)}),
    "ADNIGO": ((0.93, 0.95, 0.95, 0.85, 0.99), {"FDG": (24,), "AV45": (24, 48), "CSF": (24,)}),
    "ADNI2": ((0.93, 0.93, 0.93, 0.80, 0.99), {"FDG": (24,), "AV45": (24, 48), "CSF": (24,)}),
    "ADNI3": ((0.80, 0.30, 0.50, 0.35, 0.95), {"AV45": (24,)}),
}
# Baseline (mean, sd) per class at age 75 and an ICV of BASELINE_ICV_MM3 (mm^3): demographics, cognition and
# FreeSurfer/PET.
BASELINE_ICV_MM3 = 1.5e6
BASELINE = {
    "AGE": {"CN": (75.8, 5.0), "MCI": (74.7, 7.4), "AD": (75.3, 7.5)},
    "PTEDUCAT": {"CN": (16.0, 2.9), "MCI": (15.7, 3.0), "AD": (14.7, 3.1)},
    "MMSE": {"CN": (29.1, 1.0), "MCI": (27.0, 1.8), "AD": (23.3, 2.0)},
    "CDRSB": {"CN": (0.03, 0.12), "MCI": (1.6, 0.9), "AD": (4.3, 1.6)},
    "ADAS11": {"CN": (6.2, 2.9), "MCI": (11.5, 4.4), "AD": (18.6, 6.3)},
    "FAQ": {"CN": (0.1, 0.6), "MCI": (3.9, 4.5), "AD": (13.0, 6.9)},
    "Hippocampus": {"CN": (7300, 900), "MCI": (6500, 1050), "AD": (5800, 1000)},
    "Ventricles": {"CN": (33000, 17000), "MCI": (41000, 21000), "AD": (47000, 22000)},
    "WholeBrain": {"CN": (1030000, 50000), "MCI": (1010000, 55000), "AD": (980000, 55000)},
    "Entorhinal": {"CN": (3750, 600), "MCI": (3350, 700), "AD": (2900, 650)},
    "Fusiform": {"CN": (17700, 2200), "MCI": (16900, 2400), "AD": (15600, 2400)},
    "MidTemp": {"CN": (19900, 2600), "MCI": (19000, 2800), "AD": (17200, 2900)},
    "FDG": {"CN": (1.30, 0.11), "MCI": (1.23, 0.13), "AD": (1.08, 0.13)},
    "TAU": {"CN": (230, 80), "MCI": (270, 100), "AD": (330, 120)},
}
# Fractions of ICV that the T1 renderer draws as the unchanged MNI152 template (ratio 1): the CN means at 75.
T1_REFERENCE: dict[str, float] = {name: BASELINE[name]["CN"][0] / BASELINE_ICV_MM3 for name in T1_VOLUMES}
ADAS13_EXTRA = {
    "CN": 3.3,
    "MCI": 7.0,
    "AD": 10.5,
}  # ADAS13 - ADAS11: delayed word recall, number cancellation
MALE = {"CN": 0.52, "MCI": 0.64, "AD": 0.53}
APOE4_COUNTS = {"CN": (0.734, 0.245, 0.021), "MCI": (0.467, 0.417, 0.116), "AD": (0.339, 0.474, 0.187)}
AMYLOID_LOGIT = {"CN": -1.3, "MCI": -0.5, "AD": 1.2}  # + 1.5 per APOE4 allele + 0.5 z
# Sign of the shared severity z per variable (+: higher when worse) and its correlation weight.
SEVERITY = {
    "MMSE": -0.5,
    "CDRSB": 0.5,
    "ADAS11": 0.5,
    "FAQ": 0.5,
    "Hippocampus": -0.5,
    "Ventricles": 0.4,
    "WholeBrain": -0.3,
    "Entorhinal": -0.5,
    "Fusiform": -0.4,
    "MidTemp": -0.4,
    "FDG": -0.4,
    "TAU": 0.3,
}
AGE_SLOPE = {
    "Hippocampus": -45.0,
    "Ventricles": 1000.0,
    "WholeBrain": -4000.0,
    "Entorhinal": -20.0,
    "Fusiform": -80.0,
    "MidTemp": -90.0,
}  # mm^3 per year of age (cross-sectional)
# Change per year of follow-up, per baseline class: relative for volumes, absolute for scores and FDG.
YEARLY = {
    "Hippocampus": {"CN": -0.008, "MCI": -0.020, "AD": -0.035},
    "Entorhinal": {"CN": -0.008, "MCI": -0.022, "AD": -0.040},
    "Fusiform": {"CN": -0.005, "MCI": -0.012, "AD": -0.020},
    "MidTemp": {"CN": -0.005, "MCI": -0.012, "AD": -0.022},
    "WholeBrain": {"CN": -0.004, "MCI": -0.007, "AD": -0.010},
    "Ventricles": {"CN": 0.025, "MCI": 0.045, "AD": 0.070},
    "FDG": {"CN": -0.01, "MCI": -0.02, "AD": -0.04},
    "MMSE": {"CN": -0.1, "MCI": -0.6, "AD": -2.4},
    "CDRSB": {"CN": 0.1, "MCI": 0.8, "AD": 1.6},
    "ADAS11": {"CN": 0.0, "MCI": 1.1, "AD": 4.3},
    "FAQ": {"CN": 0.1, "MCI": 1.5, "AD": 4.0},
}
# Redundancy control (``generate_cohort(redundancy=R)``): imaging is the dominant source (the strongest
# separation of the classes: the hippocampus, about 0.9 / 1.7 sd below CN for MCI / AD). With R > 0 every other
# source is given R of that separation on top of what it carries: clinical through AGE (older with disease)
# and PTEDUCAT (fewer years), biospecimen through TAU (up) and ABETA (down), genetic through the APOE4 count
# distribution moved R of the way to APOE4_REDUNDANT. R = 0 is the cohort as calibrated above, bit for bit.
DOMINANT_SEPARATION = {"CN": 0.0, "MCI": 0.45, "AD": 0.85}  # half the hippocampus's (CN mean - class mean) / CN sd
APOE4_REDUNDANT = {"CN": (0.80, 0.18, 0.02), "MCI": (0.45, 0.45, 0.10), "AD": (0.20, 0.45, 0.35)}
CONVERSION = {"CN": 0.03, "SMC": 0.03, "EMCI": 0.05, "LMCI": 0.165, "AD": 0.0}  # per year, x2 when amyloid+
DECIMALS = {"ABETA": 1, "TAU": 1, "PTAU": 2}  # as ADNIMERGE writes them; censoring bounds from the adni card
ETHNICITY = {"Not Hisp/Latino": 0.96, "Hisp/Latino": 0.035, "Unknown": 0.005}
RACE = {
    "White": 0.92,
    "Black": 0.045,
    "Asian": 0.02,
    "More than one": 0.01,
    "Am Indian/Alaskan": 0.003,
    "Hawaiian/Other PI": 0.002,
}
MARRIAGE = {"Married": 0.75, "Widowed": 0.11, "Divorced": 0.09, "Never married": 0.04, "Unknown": 0.01}
CORTICAL = ("Entorhinal", "Fusiform", "MidTemp")  # FreeSurfer regions that fail QC on their own
VOLUMES = ("Ventricles", "Hippocampus", "WholeBrain", "Entorhinal", "Fusiform", "MidTemp", "ICV")
COGNITION = ("CDRSB", "ADAS11", "ADAS13", "MMSE", "FAQ")
BL_TWINS = COGNITION + ("FLDSTRENG",) + VOLUMES + ("FDG", "AV45", "ABETA", "TAU", "PTAU")
COLUMNS = (
    ("RID", "COLPROT", "ORIGPROT", "PTID", "SITE", "VISCODE", "EXAMDATE", "DX_bl", "AGE", "PTGENDER")
    + ("PTEDUCAT", "PTETHCAT", "PTRACCAT", "PTMARRY", "APOE4", "FDG", "AV45", "ABETA", "TAU", "PTAU")
    + COGNITION
    + ("FLDSTRENG",)
    + VOLUMES
    + ("DX", "EXAMDATE_bl")
    + tuple(f"{c}_bl" for c in BL_TWINS)
    + ("Years_bl", "Month_bl", "Month", "M")
)


def _choice(rng: np.random.Generator, table: dict[str, float], n: int) -> np.ndarray:
    keys = list(table)
    p = np.array([table[k] for k in keys])
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=n, p=p / p.sum())]


def _censor(values: np.ndarray, column: str) -> list[str]:
    """Elecsys convention: values outside the measuring range become '<lower' / '>upper' strings."""
    bounds = load_card("adni").header["censored"][column]
    lower, upper, decimals = bounds["lower"], bounds["upper"], DECIMALS[column]
    out = []
    for v in values:
        if np.isnan(v):
            out.append("")
        elif v < lower:
            out.append(f"<{lower}")
        elif v > upper:
            out.append(f">{upper}")
        else:
            out.append(f"{v:.{decimals}f}")
    return out


def _apoe4_counts(cls: str, redundancy: float) -> tuple[float, ...]:
    """APOE4 count probabilities (0, 1, 2 alleles) of a class, moved ``redundancy`` of the way to
    ``APOE4_REDUNDANT``."""
    return tuple((1 - redundancy) * a + redundancy * b
                 for a, b in zip(APOE4_COUNTS[cls], APOE4_REDUNDANT[cls], strict=True))  # fmt: skip


def _baseline(rng: np.random.Generator, n: int, redundancy: float = 0.0) -> pd.DataFrame:
    """One row per subject: phase, DX_bl, demographics, latent amyloid/severity and baseline measures;
    ``redundancy``: the non-imaging sources' extra class signal (``DOMINANT_SEPARATION``)."""
    names = list(PHASES)
    drawn = np.sort(rng.choice(len(names), size=n, p=[PHASES[p][0] for p in names]))  # rows in RID order
    phase = np.array(names, dtype=object)[drawn]
    group = np.empty(n, dtype=object)
    for p in names:
        idx = np.flatnonzero(phase == p)
        group[idx] = _choice(rng, PHASES[p][1], len(idx))
    cls = np.array([GROUPS[g][0] for g in group], dtype=object)
    mci_weight = np.array([GROUPS[g][1] for g in group])
    z = rng.standard_normal(n)  # within-class severity shared across modalities (+ = worse)

    def draw(var: str) -> np.ndarray:
        mean_cn, sd_cn = BASELINE[var]["CN"]
        mean = np.array([BASELINE[var][c][0] for c in cls])
        sd = np.array([BASELINE[var][c][1] for c in cls])
        # EMCI: halfway between the CN and the MCI profile
        mean = np.where(cls == "MCI", mean_cn + mci_weight * (mean - mean_cn), mean)
        sd = np.where(cls == "MCI", sd_cn + mci_weight * (sd - sd_cn), sd)
        rho = SEVERITY.get(var, 0.0)
        return mean + sd * (rho * z + np.sqrt(1 - rho**2) * rng.standard_normal(n))

    df = pd.DataFrame({"ORIGPROT": phase, "DX_bl": group, "label": cls, "z": z})
    df["AGE"] = np.clip(draw("AGE"), 55.0, 91.0)
    male = rng.random(n) < np.array([MALE[c] for c in cls])
    df["PTGENDER"] = np.where(male, "Male", "Female")
    df["PTEDUCAT"] = np.clip(np.round(draw("PTEDUCAT")), 6, 20)
    df["PTETHCAT"] = _choice(rng, ETHNICITY, n)
    df["PTRACCAT"] = _choice(rng, RACE, n)
    df["PTMARRY"] = _choice(rng, MARRIAGE, n)
    df["APOE4"] = [rng.choice(3, p=_apoe4_counts(c, redundancy)) for c in cls]
    logit = np.array([AMYLOID_LOGIT[c] for c in cls]) + 1.5 * df["APOE4"] + 0.5 * z
    df["amyloid"] = rng.random(n) < 1 / (1 + np.exp(-logit))
    df["ICV"] = np.where(male, 1.60e6, 1.44e6) + 1.2e5 * rng.standard_normal(n)
    for var in AGE_SLOPE:
        raw = draw(var) + AGE_SLOPE[var] * (df["AGE"] - 75.0)
        df[var] = np.maximum(raw, 0.2 * BASELINE[var]["CN"][0]) * df["ICV"] / BASELINE_ICV_MM3
    # extra class signal of the non-imaging sources (0 when redundancy is 0); EMCI gets half of MCI's
    extra = redundancy * np.array([DOMINANT_SEPARATION[c] for c in cls]) * np.where(cls == "MCI", mci_weight, 1.0)
    if redundancy > 0:  # after the volumes' age slope, so that the shift does not reach imaging
        df["AGE"] = np.clip(df["AGE"] + extra * BASELINE["AGE"]["CN"][1], 55.0, 91.0)
        df["PTEDUCAT"] = np.clip(np.round(df["PTEDUCAT"] - extra * BASELINE["PTEDUCAT"]["CN"][1]), 6, 20)
    df["FDG"] = draw("FDG")
    df["AV45"] = np.where(df["amyloid"], rng.normal(1.38, 0.17, n), rng.normal(1.02, 0.06, n))
    df["ABETA"] = np.where(
        df["amyloid"],
        680 * np.exp(0.28 * rng.standard_normal(n)),
        1450 * np.exp(0.22 * rng.standard_normal(n)),
    )
    df["ABETA"] *= np.exp(-0.25 * extra)
    tau = draw("TAU") + extra * BASELINE["TAU"]["CN"][1]
    df["TAU"] = np.maximum(tau, 40.0) * np.where(df["amyloid"], 1.25, 1.0)
    df["PTAU"] = 0.095 * df["TAU"] * np.exp(0.08 * rng.standard_normal(n))
    df["MMSE"] = draw("MMSE")
    df["CDRSB"] = draw("CDRSB")
    df["ADAS11"] = draw("ADAS11")
    df["ADAS13_extra"] = np.array([ADAS13_EXTRA[c] for c in cls]) + rng.normal(0, 1.5, n)
    df["FAQ"] = draw("FAQ")
    return df


def _measures(rng: np.random.Generator, s, month: int, has: dict[str, bool], qc: dict[str, bool]) -> dict:
    """Imaging, CSF and cognition of subject ``s`` at ``month``: baseline + class slope + noise, or NaN."""
    repeats = MEASURED[s.ORIGPROT][1]
    years = month / 12.0

    def done(modality: str) -> bool:
        return has[modality] and (month == 0 or (month in repeats.get(modality, ()) and rng.random() < 0.8))

    row = {}
    mri = has["MRI"] and (month == 0 or rng.random() < 0.85)
    for var in AGE_SLOPE:
        drift = (1 + YEARLY[var][s.label] * years) * (1 + 0.015 * rng.standard_normal())
        row[var] = getattr(s, var) * drift if mri and qc.get(var, True) else np.nan
    row["ICV"] = s.ICV * (1 + 0.005 * rng.standard_normal()) if mri else np.nan
    fdg = s.FDG + YEARLY["FDG"][s.label] * years + rng.normal(0, 0.03)
    row["FDG"] = fdg if done("FDG") else np.nan
    av45 = s.AV45 + (0.01 * years if s.amyloid else 0.0) + rng.normal(0, 0.02)
    row["AV45"] = av45 if done("AV45") else np.nan
    csf = done("CSF")
    for var in ("ABETA", "TAU", "PTAU"):
        row[var] = getattr(s, var) * np.exp(rng.normal(0, 0.05)) if csf else np.nan
    for var in ("MMSE", "CDRSB", "ADAS11", "FAQ"):
        noise = 0.3 * BASELINE[var][s.label][1] * rng.standard_normal()  # test-retest noise
        row[var] = getattr(s, var) + YEARLY[var][s.label] * years + noise
    row["ADAS13"] = row["ADAS11"] + s.ADAS13_extra
    return row


def _visits(rng: np.random.Generator, base: pd.DataFrame) -> pd.DataFrame:
    """Expand subjects into visits with slopes, conversions, dropout and protocol-driven missingness."""
    rows = []
    rid_next = dict(FIRST_RID)
    for s in base.itertuples(index=False):
        rid = rid_next[s.ORIGPROT]
        rid_next[s.ORIGPROT] += 1
        site = int(rng.integers(2, 142))
        start, end = (np.datetime64(d) for d in PHASES[s.ORIGPROT][2])
        enrol = start + np.timedelta64(int(rng.integers(0, int((end - start).astype(int)))), "D")
        p_mri, p_fdg, p_av45, p_csf, p_apoe = MEASURED[s.ORIGPROT][0]
        has = dict(
            zip(("MRI", "FDG", "AV45", "CSF"), rng.random(4) < (p_mri, p_fdg, p_av45, p_csf), strict=True)
        )
        qc = dict(zip(CORTICAL, rng.random(3) > 0.06, strict=True))  # FreeSurfer QC of the cortical regions
        apoe = s.APOE4 if rng.random() < p_apoe else np.nan
        hazard = CONVERSION[s.DX_bl] * (2.0 if s.amyloid else 1.0)
        dx, last_month = GROUPS[s.DX_bl][2], 0
        for month in PHASES[s.ORIGPROT][3]:
            if month == 18 and s.DX_bl not in ("LMCI", "EMCI"):
                continue  # ADNI1 saw only MCI participants at m18
            if month > 0 and rng.random() > 0.88:
                break  # dropout: no later visits
            if rng.random() < 1 - (1 - hazard) ** ((month - last_month) / 12.0):
                dx = {"CN": "MCI", "MCI": "Dementia"}.get(dx, dx)
            last_month = month
            jitter = int(round(rng.normal(0, 10))) if month else 0
            rows.append(
                {
                    "RID": rid,
                    "COLPROT": s.ORIGPROT,
                    "ORIGPROT": s.ORIGPROT,
                    "PTID": f"{site:03d}_S_{rid:04d}",
                    "SITE": site,
                    "VISCODE": "bl" if month == 0 else f"m{month:02d}",
                    "Month": month,
                    "EXAMDATE": enrol + np.timedelta64(int(round(30.44 * month)) + jitter, "D"),
                    "DX_bl": s.DX_bl,
                    "DX": dx if month == 0 or rng.random() > 0.03 else "",  # 3% of follow-ups undiagnosed
                    "AGE": round(s.AGE, 1),
                    "PTGENDER": s.PTGENDER,
                    "PTEDUCAT": s.PTEDUCAT,
                    "PTETHCAT": s.PTETHCAT,
                    "PTRACCAT": s.PTRACCAT,
                    "PTMARRY": s.PTMARRY,
                    "APOE4": apoe,
                    "FLDSTRENG": "1.5 Tesla MRI" if s.ORIGPROT == "ADNI1" else "3 Tesla MRI",
                    **_measures(rng, s, month, has, qc),
                }
            )
    return pd.DataFrame(rows)


def _format(df: pd.DataFrame) -> pd.DataFrame:
    """Round and clip to ADNIMERGE's value conventions, add the _bl twins and time columns, order columns."""
    df["MMSE"] = np.clip(np.round(df["MMSE"]), 0, 30)
    df["CDRSB"] = np.clip(np.round(df["CDRSB"] * 2) / 2, 0, 18) + 0.0  # no "-0.0"
    df["ADAS11"] = np.clip(np.round(df["ADAS11"] * 3) / 3, 0, 70).round(2)
    df["ADAS13"] = np.clip(np.round(df["ADAS13"] * 3) / 3, 0, 85).round(2)
    df["FAQ"] = np.clip(np.round(df["FAQ"]), 0, 30)
    for col in ("MMSE", "FAQ", "APOE4", "PTEDUCAT") + VOLUMES:
        df[col] = df[col].round().astype("Int64")
    df["FDG"] = df["FDG"].round(5)
    df["AV45"] = df["AV45"].round(5)
    for col in DECIMALS:
        df[col] = _censor(df[col].to_numpy(dtype=float), col)
    baseline = df[df["VISCODE"] == "bl"].set_index("RID")
    df["EXAMDATE_bl"] = df["RID"].map(baseline["EXAMDATE"])
    for col in BL_TWINS:
        df[f"{col}_bl"] = df["RID"].map(baseline[col])
    df["Years_bl"] = ((df["EXAMDATE"] - df["EXAMDATE_bl"]).dt.days / 365.25).round(5)
    df["Month_bl"] = (df["Years_bl"] * 12).round(5)
    df["M"] = df["Month"]
    return df[list(COLUMNS)]


def generate_cohort(
    out_csv: str | Path, subjects: int = 600, seed: int = 0, t1_size: int | None = None, redundancy: float = 0.0
) -> Path:
    """Write a synthetic ADNIMERGE-format CSV with ``subjects`` participants and their visits.

    Deterministic for ``seed``. Values are class-conditional (card ``adni_synthetic``); ABETA/TAU/PTAU are
    strings with Elecsys censoring ('>1700', '<80', '<8'); empty cells are missing measurements.
    ``t1_size`` (32..128): also render baseline T1 volumes of that side and add the ``T1_PATH`` column.
    ``redundancy`` R in [0, 1]: every source other than imaging also carries R of imaging's class separation
    (``DOMINANT_SEPARATION``; 0: the calibrated cohort, bit for bit; card ``adni_synthetic``). R is recorded in
    ``<csv>.json`` beside the CSV (with subjects and seed).
    The CSV is written last, through a temporary file (a half-written cohort is never left under its name).
    Returns the path written.
    """
    if subjects < 1:
        raise ValueError(f"subjects must be >= 1, got {subjects}")
    if not 0.0 <= redundancy <= 1.0:
        raise ValueError(f"redundancy must be in [0, 1] (0: the calibrated cohort), got {redundancy}")
    rng = np.random.default_rng(seed)
    base = _baseline(rng, subjects, redundancy)
    table = _format(_visits(rng, base))
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    if t1_size is not None:
        table["T1_PATH"] = _render_t1(table, out.parent, t1_size, seed)
    record = {"generator": "mckd_lab.data.cohort.generate_cohort", "subjects": subjects, "seed": seed,
              "t1_size": t1_size, "redundancy": float(redundancy)}  # fmt: skip
    cohort_record(out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    partial = out.with_name(out.name + ".partial")
    table.to_csv(partial, index=False, date_format="%Y-%m-%d")
    partial.replace(out)
    return out


def cohort_record(csv: str | Path) -> Path:
    """The JSON record written beside a generated cohort (``<name>.csv.json``: subjects, seed, redundancy)."""
    csv = Path(csv)
    return csv.with_name(csv.name + ".json")


def _render_t1(table: pd.DataFrame, folder: Path, size: int, seed: int) -> list[str]:
    """Render and save the T1 volume of every baseline row with an MRI; the ``T1_PATH`` cells ("" elsewhere).

    Each volume follows its row's FreeSurfer volumes divided by ICV, relative to ``T1_REFERENCE``; noise is
    seeded by (seed, RID)."""
    check_size(size)
    cells = []
    for row in table.itertuples(index=False):
        if row.VISCODE != "bl" or pd.isna(row.ICV):
            cells.append("")
            continue
        ratios = {v: float(getattr(row, v)) / float(row.ICV) / T1_REFERENCE[v] for v in T1_VOLUMES}
        volume = render_t1(ratios, size, np.random.default_rng([seed, int(row.RID)]))
        name = f"T1/{row.PTID}_bl.nii.gz"
        save_t1(volume, folder / name)
        cells.append(name)
    return cells
