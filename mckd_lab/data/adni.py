"""ADNI loader: an ``ADNIMERGE*.csv`` table -> per-modality features, labels, availability, splits, batches.

Everything dataset-specific (modality columns and order, key columns, diagnosis mappings, censoring bounds,
encodings) comes from the card ``data_cards/adni.md``. Conventions:

- one row per subject (the ``bl`` visit, labelled from ``DX_bl``) by default, or one per diagnosed visit
  (labelled from ``DX``); labels CN = 0, MCI = 1, AD = 2; SMC -> CN unless dropped;
- censored CSF strings ``'>1700'`` / ``'<8'`` are read as the bound itself;
- FreeSurfer volumes are divided by ICV; a modality is present when all its key columns are non-empty;
- splits are by subject (RID), stratified by the subject's label; scaling (impute with the mean, standardise)
  is fitted on the training split only; missing modalities are zero vectors in batches;
- with ``t1=True`` (task ``adni-t1``) the card's ``t1_image`` modality ``mri`` replaces ``imaging``: a T1 volume
  per subject named by the ``T1_PATH`` column (relative paths from the CSV's folder), read at ``t1_size``.

Reading never modifies the file. Bad input raises :class:`AdniFormatError` naming file, column, value, line.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mckd_lab.data.cards import Card, Modality, load_card
from mckd_lab.data.missing import subset_name

SPLITS = {"train": 0.6, "val": 0.1, "meta": 0.1, "test": 0.2}


class AdniFormatError(ValueError):
    """An ADNIMERGE file that cannot be read as the card describes (the message says where and what to do)."""


def adni_modalities(card: Card | None = None, t1: bool = False) -> tuple[Modality, ...]:
    """The card's modalities in order; with ``t1`` the ``t1_image`` volume modality replaces the one it names."""
    card = card or load_card("adni")
    if not t1:
        return card.modalities
    spec = card.header["t1_image"]
    image = Modality(
        name=spec["name"], kind=spec["kind"], description=spec["description"],
        columns=tuple(spec["columns"]), key_columns=tuple(spec["key_columns"]),
    )  # fmt: skip
    return tuple(image if m.name == spec["replaces"] else m for m in card.modalities)


def find_adnimerge(path: str | Path, card: Card | None = None) -> Path:
    """The ADNIMERGE CSV at ``path``: the file itself, or the one ``ADNIMERGE*.csv`` in a folder."""
    card = card or load_card("adni")
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: no such file or folder; give an ADNIMERGE CSV or the folder holding it"
        )
    found = sorted(path.glob(card.header["file_pattern"]))
    if len(found) == 1:
        return found[0]
    others = sorted(p.name for p in path.iterdir())[:20]
    if not found:
        raise AdniFormatError(
            f"{path}: no file matching {card.header['file_pattern']} "
            f"(found: {', '.join(others) or 'nothing'}); "
            "download ADNIMERGE from the LONI IDA (see data_cards/adni.md) or name the CSV itself"
        )
    raise AdniFormatError(
        f"{path}: several ADNIMERGE files ({', '.join(p.name for p in found)}); name one of them"
    )


def parse_numbers(
    values: pd.Series, column: str, source: str = "<values>", censored: bool = False
) -> np.ndarray:
    """Text cells -> float64; empty cells -> NaN. With ``censored``, ``'>1700'`` and ``'<8'`` give the bound.

    ``values.index`` is reported as the line number in errors (the loader indexes rows by CSV line).
    """
    text = values.astype("string").str.strip()
    if censored:
        text = text.str.replace(r"^[<>]\s*", "", regex=True)
    numbers = pd.to_numeric(text, errors="coerce").astype(float)
    bad = numbers.isna() & text.notna() & (text != "")
    if bad.any():
        line = bad.idxmax()
        hint = (
            "only '<bound'/'>bound' strings are allowed as censored values"
            if censored
            else "expected a number"
        )
        raise AdniFormatError(
            f"{source}: column {column}, line {line}: cannot read {values[line]!r} ({hint}); "
            "fix or empty that cell"
        )
    return numbers.to_numpy()


def map_diagnosis(
    values: pd.Series, column: str, source: str = "<values>", card: Card | None = None
) -> np.ndarray:
    """Diagnosis strings of ``column`` (``DX_bl`` or ``DX``) -> class ids (card labels); empty cells -> -1."""
    card = card or load_card("adni")
    mapping = card.header["diagnosis"][column]
    ids = {name: i for i, name in card.labels.items()}
    text = _categories(values, column, mapping, source, "diagnosis", "diagnosis")
    return np.array([ids[mapping[v]] if v else -1 for v in text], dtype=np.int64)


def _visit_month(viscode: pd.Series) -> pd.Series:
    """``bl`` -> 0, ``m06`` -> 6, anything else after all months (sort key only)."""
    months = pd.to_numeric(viscode.str.extract(r"^m(\d+)$")[0], errors="coerce")
    return months.where(viscode != "bl", 0).fillna(10_000)


@dataclass(frozen=True)
class AdniTable:
    """Rows of an ADNIMERGE file as arrays, in the card's modality order. N rows, M modalities.

    ``features[m]``: float64 (N, F_m), raw units (volumes / ICV), NaN where not measured; ``present``: bool
    (N, M), all key columns non-empty; ``target``: int64 (N,), card labels; ``rid``: int64 (N,);
    ``skipped``: reason -> number of rows (or subjects) left out. Volume modalities (task ``adni-t1``) have
    ``features[m]`` (N, 0) and ``volumes[m]``: str (N,) absolute NIfTI paths, ``""`` where absent.
    """

    path: Path
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    feature_names: dict[str, tuple[str, ...]]
    rid: np.ndarray
    viscode: np.ndarray
    target: np.ndarray
    features: dict[str, np.ndarray]
    present: np.ndarray
    skipped: dict[str, int] = field(default_factory=dict)
    volumes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.target)


def read_adnimerge(
    path: str | Path,
    *,
    visits: str = "baseline",
    cognitive: bool = False,
    drop_smc: bool = False,
    t1: bool = False,
) -> AdniTable:
    """Read an ADNIMERGE CSV (file or folder) into an :class:`AdniTable`, rows sorted by RID then visit.

    ``visits``: ``"baseline"`` (the ``bl`` row of each subject, label from ``DX_bl``) or ``"all"`` (every row
    with a ``DX``). ``cognitive``: append the card's cognitive scores to ``clinical`` (they define the label,
    hence opt-in).
    ``drop_smc``: leave out subjects whose ``DX_bl`` is SMC instead of counting them as CN.
    ``t1``: the volume modality of the card's ``t1_image`` replaces ``imaging`` (paths checked to exist).
    """
    if visits not in ("baseline", "all"):
        raise ValueError(f"visits must be 'baseline' or 'all', got {visits!r}")
    card = load_card("adni")
    h = card.header
    file = find_adnimerge(path, card)
    source = str(file)
    modalities = adni_modalities(card, t1)
    names = {
        m.name: m.columns + (tuple(h["cognitive_columns"]) if cognitive and m.name == "clinical" else ())
        for m in modalities
    }
    keys = [c for m in modalities for c in m.key_columns]
    used = [c for cols in names.values() for c in cols]
    needed = list(dict.fromkeys([h["subject_column"], h["visit_column"], "DX_bl", "DX", *keys, *used]))
    try:
        df = pd.read_csv(file, dtype=str, keep_default_na=False, usecols=lambda c: c in needed)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AdniFormatError(f"{source}: not a readable CSV ({err})") from err
    missing = [c for c in needed if c not in df.columns]
    if missing:
        paths = [m.columns[0] for m in modalities if m.kind == "image" and m.columns[0] in missing]
        hint = (
            f"add a column {paths[0]} with each baseline row's T1 NIfTI (task adni-t1; data_cards/adni.md, "
            "'T1 images')"
            if paths
            else "is this an ADNIMERGE export? The card data_cards/adni.md lists the columns used"
        )
        raise AdniFormatError(f"{source}: missing required column(s) {', '.join(missing)}; {hint}")
    df.index = pd.RangeIndex(2, len(df) + 2)  # CSV line numbers (line 1 is the header)
    rid_col, vis_col = h["subject_column"], h["visit_column"]
    df[vis_col] = df[vis_col].str.strip()
    rid = parse_numbers(df[rid_col], rid_col, source)
    if np.isnan(rid).any():
        raise AdniFormatError(
            f"{source}: column {rid_col}, line {int(np.argmax(np.isnan(rid))) + 2}: empty subject id"
        )
    df["_rid"] = rid.astype(np.int64)
    dup = df.duplicated(["_rid", vis_col], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        lines = df.index[dup & (df["_rid"] == first["_rid"]) & (df[vis_col] == first[vis_col])].tolist()
        raise AdniFormatError(
            f"{source}: {rid_col} {first['_rid']} {vis_col} {first[vis_col]!r} appears on lines "
            f"{', '.join(map(str, lines))} ({int(dup.sum())} duplicated rows in all); "
            "ADNIMERGE has one row per subject visit: remove the duplicates"
        )
    dx_bl = map_diagnosis(df["DX_bl"], "DX_bl", source, card)
    dx = map_diagnosis(df["DX"], "DX", source, card)
    skipped: Counter[str] = Counter()
    keep = np.ones(len(df), dtype=bool)
    if drop_smc:
        smc = (df["DX_bl"].str.strip() == "SMC").to_numpy()
        skipped["SMC subjects dropped"] = int(df.loc[smc, "_rid"].nunique())
        keep &= ~smc
    if visits == "baseline":
        is_bl = (df[vis_col] == h["baseline_visit"]).to_numpy()
        skipped["subjects without a baseline visit"] = int(
            df["_rid"].nunique() - df.loc[is_bl, "_rid"].nunique()
        )
        keep &= is_bl
        target = dx_bl
    else:
        target = dx
    skipped["rows without a diagnosis"] = int((keep & (target < 0)).sum())
    keep &= target >= 0
    df, target = df[keep], target[keep]
    order = np.lexsort((_visit_month(df[vis_col]).to_numpy(), df["_rid"].to_numpy()))
    df, target = df.iloc[order], target[order]

    censored, encodings = h["censored"], h.get("encodings", {})

    def column(c: str) -> np.ndarray:
        if c in encodings:
            return _encode(df[c], c, encodings[c], source)
        return parse_numbers(df[c], c, source, censored=c in censored)

    icv = column(h["icv_column"]) if h["icv_column"] in df.columns else None  # not needed by adni-t1
    features, present, volumes = {}, [], {}
    for m in modalities:
        if m.kind == "image":
            volumes[m.name] = _volume_paths(df, m.columns[0], file)
            features[m.name] = np.zeros((len(df), 0))
            present.append(volumes[m.name] != "")
            continue
        values = np.stack([column(c) for c in names[m.name]], axis=1)
        for j, c in enumerate(names[m.name]):
            if c in h["icv_normalised"]:
                values[:, j] = values[:, j] / icv
        features[m.name] = values
        keys = np.stack([icv if c == h["icv_column"] else column(c) for c in m.key_columns], axis=1)
        present.append(~np.isnan(keys).any(axis=1))
    return AdniTable(
        path=file,
        modalities=tuple(m.name for m in modalities),
        classes=tuple(card.labels[i] for i in sorted(card.labels)),
        feature_names=names,
        rid=df["_rid"].to_numpy(),
        viscode=df[vis_col].to_numpy(dtype=object),
        target=target.astype(np.int64),
        features=features,
        present=np.stack(present, axis=1),
        skipped={k: v for k, v in skipped.items() if v},
        volumes=volumes,
    )


def _volume_paths(df: pd.DataFrame, column: str, file: Path) -> np.ndarray:
    """str (N,): the volume paths of ``column`` made absolute (relative ones from the CSV's folder), ``""``
    where empty; a path that does not exist is an error naming the line and RID."""
    text = df[column].astype("string").str.strip().fillna("")
    paths = np.array([str((file.parent / t).resolve()) if t else "" for t in text], dtype=object)
    for line, rid, given, path in zip(df.index, df["_rid"], text, paths, strict=True):
        if path and not Path(path).is_file():
            raise AdniFormatError(
                f"{file}: column {column}, line {line} (RID {rid}): {given!r} -> {path} does not exist; "
                "fix the path (absolute, or relative to the CSV's folder) or empty the cell"
            )
    return paths


def _encode(values: pd.Series, column: str, mapping: dict[str, int], source: str) -> np.ndarray:
    """Text categories -> numbers from the card's ``encodings``; empty -> NaN; anything else is an error."""
    text = _categories(values, column, mapping, source, "value", "encodings")
    return np.array([float(mapping[v]) if v else np.nan for v in text])


def _categories(values: pd.Series, column: str, known, source: str, noun: str, card_key: str) -> pd.Series:
    """Stripped text of ``values`` ("" where empty); a value outside ``known`` is an error naming its line."""
    text = values.astype("string").str.strip().fillna("")
    unknown = ~text.isin(list(known)) & (text != "")
    if unknown.any():
        line = unknown.idxmax()
        raise AdniFormatError(
            f"{source}: column {column}, line {line}: unknown {noun} {text[line]!r}; known values are "
            f"{', '.join(known)} (data_cards/adni.md, {card_key!r}); fix the cell or extend the card"
        )
    return text


def split_subjects(
    table: AdniTable, fractions: dict[str, float] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Row indices per split (default train/val/meta/test = 0.6/0.1/0.1/0.2), by subject (RID), stratified.

    A subject's stratum is the label of its first row (its baseline). Within each class, subjects are
    shuffled with ``seed`` and dealt out by largest-remainder rounding of ``fractions``; all rows of a subject
    follow it.
    """
    fractions = dict(fractions or SPLITS)
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    rng = np.random.default_rng(seed)
    subjects, first = np.unique(table.rid, return_index=True)
    split_of: dict[int, str] = {}
    for label in np.unique(table.target[first]):
        members = rng.permutation(subjects[table.target[first] == label])
        quota = np.array([f / total for f in fractions.values()]) * len(members)
        counts = np.floor(quota).astype(int)
        counts[np.argsort(counts - quota)[: len(members) - counts.sum()]] += 1
        for name, chunk in zip(fractions, np.split(members, np.cumsum(counts)[:-1]), strict=True):
            split_of.update(dict.fromkeys(chunk.tolist(), name))
    which = np.array([split_of[r] for r in table.rid.tolist()], dtype=object)
    return {name: np.flatnonzero(which == name) for name in fractions}


@dataclass(frozen=True)
class FeatureScaler:
    """Impute-then-standardise per feature, learned from training rows where the modality is present.

    ``mean[m]``, ``std[m]``: float64 (F_m,). A feature never observed in training gets mean 0, std 1; a
    constant one std 1. Transform: NaN -> mean, then (x - mean) / std; rows where ``m`` is absent -> zeros.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, table: AdniTable, rows: np.ndarray) -> FeatureScaler:
        mean, std = {}, {}
        for k, m in enumerate(table.modalities):
            x = table.features[m][rows][table.present[rows, k]]
            seen = ~np.isnan(x)
            n = np.maximum(seen.sum(axis=0), 1)
            mu = np.where(seen, x, 0.0).sum(axis=0) / n
            sd = np.sqrt(np.where(seen, (x - mu) ** 2, 0.0).sum(axis=0) / n)
            mean[m], std[m] = mu, np.where(sd > 0, sd, 1.0)
        return cls(mean=mean, std=std)

    def transform(self, table: AdniTable, rows: np.ndarray) -> dict[str, np.ndarray]:
        """``{modality: float32 (len(rows), F_m)}`` scaled, imputed, zero where the modality is absent."""
        out = {}
        for k, m in enumerate(table.modalities):
            x = table.features[m][rows]
            z = (np.where(np.isnan(x), self.mean[m], x) - self.mean[m]) / self.std[m]
            out[m] = np.where(table.present[rows, k][:, None], z, 0.0).astype(np.float32)
        return out


class AdniDataset(torch.utils.data.Dataset):
    """Rows of an :class:`AdniTable` as samples of the batch contract (scaled with a fitted scaler).

    A sample: ``image`` {modality: float32 (F_m,)} (zeros when absent), ``present`` bool (M,), ``target``
    int64 (), ``case_id`` ``"<RID>_<VISCODE>"``. ``torch.utils.data.default_collate`` stacks them into
    ``image`` {m: (B, F_m)}, ``present`` (B, M), ``target`` (B,), ``case_id`` list[str]. A volume modality
    (task ``adni-t1``) is float32 (1, S, S, S), S = ``t1_size``; the volumes are read once, here.
    """

    def __init__(self, table: AdniTable, rows: np.ndarray, scaler: FeatureScaler, t1_size: int = 32):
        self.rows = np.asarray(rows)
        self.inputs = {m: torch.from_numpy(x) for m, x in scaler.transform(table, self.rows).items()}
        for m, paths in table.volumes.items():
            self.inputs[m] = torch.from_numpy(_read_volumes(table, paths[self.rows], self.rows, t1_size))
        self.present = torch.from_numpy(table.present[self.rows])
        self.target = torch.from_numpy(table.target[self.rows])
        self.case_ids = [
            f"{r}_{v}" for r, v in zip(table.rid[self.rows], table.viscode[self.rows], strict=True)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": {m: x[i] for m, x in self.inputs.items()},
            "present": self.present[i],
            "target": self.target[i],
            "case_id": self.case_ids[i],
        }


def _read_volumes(table: AdniTable, paths: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """float32 (N, 1, S, S, S): the volumes at ``paths`` (zeros where ``""``); errors name the RID."""
    from mckd_lab.data.t1_volumes import T1Error, read_t1  # MONAI transforms: only when there are volumes

    out = np.zeros((len(paths), 1, size, size, size), dtype=np.float32)
    for i, (path, row) in enumerate(zip(paths, rows, strict=True)):
        if path:
            try:
                out[i] = read_t1(path, size)
            except T1Error as err:
                raise AdniFormatError(
                    f"{table.path}: RID {table.rid[row]} ({table.viscode[row]}): {err}; replace the file or "
                    "empty its T1_PATH cell"
                ) from err
    return out


@dataclass(frozen=True)
class AdniData:
    """A read table, its subject-level splits and the scaler fitted on ``splits['train']``."""

    table: AdniTable
    splits: dict[str, np.ndarray]
    scaler: FeatureScaler

    def dataset(self, split: str, t1_size: int = 32) -> AdniDataset:
        return AdniDataset(self.table, self.splits[split], self.scaler, t1_size)


def load_adni(
    path: str | Path,
    *,
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    visits: str = "baseline",
    cognitive: bool = False,
    drop_smc: bool = False,
    t1: bool = False,
) -> AdniData:
    """Read, split by subject and fit the scaler on the training split: everything a training run needs."""
    table = read_adnimerge(path, visits=visits, cognitive=cognitive, drop_smc=drop_smc, t1=t1)
    splits = split_subjects(table, fractions, seed)
    return AdniData(table=table, splits=splits, scaler=FeatureScaler.fit(table, splits["train"]))


def inspect_csv(path: str | Path) -> dict:
    """Summary of an ADNIMERGE file at baseline: JSON-ready dict.

    Keys: ``file``, ``subjects``, ``classes`` {CN/MCI/AD: n}, ``availability`` {modality: n present},
    ``patterns`` {present modalities joined by '+': n subjects}, ``skipped`` {reason: n}; with a ``T1_PATH``
    column (task ``adni-t1``) also ``t1_images``: subjects with a T1 volume (every path checked to exist).
    """
    t = read_adnimerge(path)
    patterns = Counter(subset_name(row, t.modalities) if row.any() else "none" for row in t.present)
    result = {
        "file": str(t.path),
        "subjects": len(t),
        "classes": {c: int((t.target == i).sum()) for i, c in enumerate(t.classes)},
        "availability": {m: int(t.present[:, k].sum()) for k, m in enumerate(t.modalities)},
        "patterns": dict(patterns.most_common()),
        "skipped": t.skipped,
    }
    column = load_card("adni").header["t1_image"]["columns"][0]
    if column in pd.read_csv(t.path, nrows=0).columns:
        result["t1_images"] = int(read_adnimerge(path, t1=True).present[:, 0].sum())
    return result


def format_inspection(report: dict) -> str:
    """``inspect_csv``'s report as text: subjects per class, availability per modality, patterns, skips."""
    lines = [f"{report['file']}: ADNIMERGE, {report['subjects']} subjects at baseline"]
    lines.append("  classes: " + ", ".join(f"{c} {n}" for c, n in report["classes"].items()))
    lines.append("  available: " + ", ".join(f"{m} {n}" for m, n in report["availability"].items()))
    if "t1_images" in report:
        lines.append(f"  T1 volumes (task adni-t1): {report['t1_images']}")
    lines.append("  availability patterns:")
    lines += [f"    {n:6d}  {pattern}" for pattern, n in report["patterns"].items()]
    lines += [f"  skipped: {n} {reason}" for reason, n in report["skipped"].items()]
    return "\n".join(lines)
