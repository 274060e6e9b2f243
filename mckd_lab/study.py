"""Measuring the method's effect (L2): the testbeds' ground truth, the authors' feature distance, the meta
objective's drop-one ablation, and paired statistics (issue 13; ``benchmarks/study.py`` runs the study).

- ``phantom_visibility(R)`` / ``phantom_importance(R)``: how much each sequence shows each region on phantoms of
  redundancy R (the card's contrast table, ``redundant_table``), and the importance vector it implies (the
  ``oracle`` strategy's weights).
- ``source_informativeness(csv)`` / ``cohort_importance(csv)``: balanced accuracy of each ADNI source alone
  (a cross-validated logistic regression on the generated cohort), and the importance vector it implies.
- ``feature_distance(model, image, present)``: the authors' measure, L1 between the mean-filled and the real
  bottleneck of a dropped modality, per modality.
- ``drop_one_losses(model, image, target, loss)``: the task loss with each modality removed minus with all:
  the ranking the meta objective itself implies.
- ``paired_bootstrap(diff)``: mean and 95 % interval of a paired difference over cases x seeds;
  ``bootstrap_metric``: the same for a metric recomputed on resampled subjects (balanced accuracy);
  ``kendall_tau(a, b)``: rank agreement of two score vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets
from mckd_lab.data.phantoms import TISSUES, contrast_table, redundant_table
from mckd_lab.method.kd import fill_missing

# Which tissue against which surround makes each region visible (card brats_phantoms, header "dominant").
REGION_TISSUES = {"WT": ("oedema",), "ET": ("enhancing",), "TC": ("necrosis", "non_enhancing")}


def phantom_visibility(redundancy: float) -> dict[str, dict[str, float]]:
    """{region: {sequence: |contrast of the region's tissue against its surround|}} on phantoms of
    ``redundancy`` (card ``brats_phantoms``: the contrast table made redundant, in units of normal white matter,
    before jitter, bias and noise). TC averages the necrotic core of enhancing cases and the solid core of the
    others."""
    card = load_card("brats_phantoms")
    table = redundant_table(contrast_table(), redundancy)  # (M, tissues)
    dominant = card.header["dominant"]
    out = {}
    for region, tissues in REGION_TISSUES.items():
        values = np.zeros(len(card.modality_names))
        for tissue in tissues:
            t, s = TISSUES.index(tissue), TISSUES.index(dominant[tissue]["surround"])
            values += np.abs(table[:, t] - table[:, s]) / len(tissues)
        out[region] = {m: round(float(v), 4) for m, v in zip(card.modality_names, values, strict=True)}
    return out


def phantom_importance(redundancy: float) -> tuple[float, ...]:
    """The importance vector the phantoms' ground truth implies (sums to 1, card order): per region, each
    sequence's visibility divided by the best sequence's (every region counts once), summed over regions."""
    vis = phantom_visibility(redundancy)
    total = sum(np.array(list(v.values())) / max(v.values()) for v in vis.values())
    return tuple(round(float(x), 4) for x in total / total.sum())


def source_informativeness(csv: str | Path, folds: int = 5, seed: int = 0) -> dict[str, float]:
    """{source: balanced accuracy of CN/MCI/AD from that source alone}, subjects (baseline rows) having it;
    a logistic regression on the standardised features (NaN -> mean), ``folds``-fold stratified CV. The ground
    truth of a generated cohort: how much each source carries about the diagnosis."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mckd_lab.data.adni import read_adnimerge
    from mckd_lab.metrics import balanced_accuracy

    table = read_adnimerge(csv)
    out = {}
    for k, m in enumerate(table.modalities):
        rows = np.flatnonzero(table.present[:, k])
        x = table.features[m][rows].astype(float)
        x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
        y = table.target[rows]
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
        pred = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        out[m] = round(float(balanced_accuracy(y, pred)), 4)
    return out


def cohort_importance(informativeness: dict[str, float], chance: float = 1 / 3) -> tuple[float, ...]:
    """The importance vector a cohort's ground truth implies: each source's balanced accuracy above chance
    (floored at 0.01 so every weight stays positive), normalised to sum 1, in the given order."""
    above = np.maximum(np.array(list(informativeness.values())) - chance, 0.01)
    return tuple(round(float(x), 4) for x in above / above.sum())


@torch.no_grad()
def feature_distance(model: torch.nn.Module, image, available: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' feature distance: for every subset S of the available modalities (not all of them) and
    every modality m outside S, mean |fill(f)_m - f_m| over channels and space, where fill(f)_m is the mean of
    the present bottlenecks (what the network decodes in place of m) and f_m m's real bottleneck. Averaged over
    the subsets and the batch: (M,) per dropped modality.

    image: (B, M, ...) or a dict of (B, F_m); available (B, M) bool (None: all)."""
    model.eval()
    real = model.encode(image).bottleneck.float()  # (B, M, C, *s): every modality encoded as given
    b, m = real.shape[:2]
    available = torch.ones(b, m, dtype=torch.bool) if available is None else available.bool().cpu()
    total, count = torch.zeros(m), torch.zeros(m)
    for subset in all_subsets(m):
        present = available & torch.tensor(subset)
        dropped = available & ~torch.tensor(subset)
        ok = present.any(1) & dropped.any(1)
        if not ok.any():
            continue
        filled = fill_missing(real[ok], present[ok])
        dist = (filled - real[ok]).abs().flatten(2).mean(-1)  # (b', M)
        total += torch.where(dropped[ok], dist, torch.zeros_like(dist)).sum(0)
        count += dropped[ok].sum(0)
    return total / count.clamp(min=1)


@torch.no_grad()
def drop_one_losses(model: torch.nn.Module, image, target: torch.Tensor,
                    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    available: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The meta objective's own ranking: task loss with modality m removed (mean-filled, as at inference)
    minus the loss with every available modality, per m: (M,). Larger = the decoder relies on m more.
    Samples lacking m are left out of m's entry."""
    model.eval()
    enc = model.encode(image)
    b, m = enc.bottleneck.shape[:2]
    available = torch.ones(b, m, dtype=torch.bool) if available is None else available.bool().cpu()
    zero = model.encode_zero(image)

    def loss_with(present: torch.Tensor, rows: torch.Tensor) -> float:
        sub = enc.where(present, zero)
        picked = type(enc)(sub.bottleneck[rows], [s[rows] for s in sub.skips])
        return float(loss(model.decode(picked, present[rows]).logits.float(), target[rows]))

    out = torch.zeros(m)
    for k in range(m):
        present = available.clone()
        present[:, k] = False
        rows = available[:, k] & present.any(1)
        if rows.any():
            out[k] = loss_with(present, rows) - loss_with(available, rows)
    return out


def paired_bootstrap(diff: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean and ``level`` percentile interval of a paired difference over cases x seeds.

    diff: (seeds, cases), the same cases for every seed (NaN: a case left out of that cell, e.g. ET without
    ET). Each replicate draws seeds with replacement, then cases with replacement (one draw shared by the
    drawn seeds: cases are the same phantoms), and takes the mean over the drawn cells. Returns
    {mean, lo, hi, n_seeds, n_cases}."""
    diff = np.atleast_2d(np.asarray(diff, dtype=float))
    s, n = diff.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, s, (n_boot, s))
    cases = rng.integers(0, n, (n_boot, n))
    picked = diff[seeds[:, :, None], cases[:, None, :]].reshape(n_boot, -1)  # (B, s * n)
    finite = np.isfinite(picked)
    reps = np.where(finite, picked, 0.0).sum(1) / np.maximum(finite.sum(1), 1)
    reps = reps[finite.any(1)]  # a replicate that drew only left-out cells has no value
    alpha = (1 - level) / 2
    return {"mean": float(np.nanmean(diff)), "lo": float(np.nanquantile(reps, alpha)),
            "hi": float(np.nanquantile(reps, 1 - alpha)), "n_seeds": int(s),
            "n_cases": int(np.isfinite(diff).any(0).sum())}  # fmt: skip


def bootstrap_metric(groups: Sequence[tuple], metric: Callable[..., float], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:  # fmt: skip
    """Mean and interval of a per-seed metric of paired predictions, over subjects x seeds.

    groups: one tuple of equal-length arrays per seed, e.g. (target, pred_a, pred_b); ``metric(*arrays)``
    (e.g. ``lambda y, a, b: bal(y, a) - bal(y, b)``). Each replicate draws seeds with replacement and, within
    each, its subjects with replacement; the statistic is the mean of the per-seed metrics."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([metric(*g) for g in groups]))
    reps = np.empty(n_boot)
    for r in range(n_boot):
        values = []
        for s in rng.integers(0, len(groups), len(groups)):
            n = len(groups[s][0])
            idx = rng.integers(0, n, n)
            values.append(metric(*(a[idx] for a in groups[s])))
        reps[r] = np.mean(values)
    alpha = (1 - level) / 2
    return {"mean": point, "lo": float(np.quantile(reps, alpha)), "hi": float(np.quantile(reps, 1 - alpha)),
            "n_seeds": len(groups), "n_cases": int(sum(len(g[0]) for g in groups))}  # fmt: skip


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score vectors (ties count neither way; 0 when either is constant)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    concordant = discordant = ties_a = ties_b = 0
    for i, j in combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif da == db:
            concordant += 1
        else:
            discordant += 1
    denom = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return float((concordant - discordant) / denom) if denom > 0 else 0.0


def mean_pairwise_tau(vectors: Sequence[Sequence[float]]) -> float:
    """Mean Kendall tau over all pairs of score vectors (e.g. one importance vector per seed)."""
    pairs = list(combinations(range(len(vectors)), 2))
    return float(np.mean([kendall_tau(vectors[i], vectors[j]) for i, j in pairs])) if pairs else float("nan")
