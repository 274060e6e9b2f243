"""Aggregate benchmarks/study.py's recorded runs: paired differences with bootstrap intervals, H1-H3, the dose
response, the feature distance per strategy and the meta schedule's cost. Writes ``summary.json`` and
``tables.md`` beside the runs and prints the tables. Only runs that are recorded count; a comparison uses the
seeds both of its strategies have."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from mckd_lab.study import bootstrap_metric, kendall_tau, mean_pairwise_tau, paired_bootstrap

COMPARISONS = (("uniform", "none"), ("mckd", "uniform"), ("oracle", "uniform"), ("oracle", "mckd"), ("mckd", "none"))
WEAK_ROWS = {"ET": ("flair", "t1", "t2"), "TC": ("flair", "t1", "t2"), "WT": ("t1", "t1ce")}  # non-dominant
REGIONS = ("ET", "TC", "WT")


def load(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("seed*.json"))]


def ci(r: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * r['mean']:+.{digits}f} [{scale * r['lo']:+.{digits}f}, {scale * r['hi']:+.{digits}f}]"


def verdict_sign(r: dict) -> str:
    return "+" if r["lo"] > 0 else "-" if r["hi"] < 0 else "0"


# --- BraTS ------------------------------------------------------------------------------------------------------
def dice_matrix(run: dict, region: str, subset: str | None) -> np.ndarray:
    """(cases,) Dice of one subset (None: the mean over the 15) for a region; ET: NaN on cases without ET."""
    if subset is None:
        values = np.mean([row["dice"][region] for row in run["subsets"]], axis=0)
    else:
        values = np.array(next(r for r in run["subsets"] if r["subset"] == subset)["dice"][region], dtype=float)
    if region == "ET":
        values = np.where(run["has_et"], values, np.nan)
    return values


def paired(runs: dict, a: str, b: str, region: str, subset: str | None) -> dict | None:
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if not seeds:
        return None
    diff = np.stack([dice_matrix(runs[a][s], region, subset) - dice_matrix(runs[b][s], region, subset)
                     for s in seeds])  # fmt: skip
    return paired_bootstrap(diff) | {"seeds": seeds}


def no_et(run: dict, subset: str | None = None) -> float:
    """Share of the test cases without ET that a run predicts without any ET voxel (Dice 1 by convention),
    over the 15 subsets (or one)."""
    rows = run["subsets"] if subset is None else [r for r in run["subsets"] if r["subset"] == subset]
    cases = ~np.array(run["has_et"])
    return float(np.mean([np.array(r["dice"]["ET"])[cases] == 1.0 for r in rows]))


def brats_report(runs_all: list[dict], truth: dict) -> tuple[dict, list[str]]:
    out, md = {}, []
    for r in sorted({x["redundancy"] for x in runs_all}):
        main = [x for x in runs_all if x["redundancy"] == r and x["kd_weight"] == 0.1]
        by = {}
        for x in main:
            by.setdefault(x["method"], {})[x["seed"]] = x
        if not by:
            continue
        mods = main[0]["modalities"]
        subsets = [row["subset"] for row in main[0]["subsets"]]
        block = {"n_test_cases": len(main[0]["cases"]), "n_test_with_et": int(sum(main[0]["has_et"])),
                 "seeds": {m: sorted(v) for m, v in by.items()}}  # fmt: skip
        # absolute: mean over 15 subsets per strategy, mean +- sd over seeds (ET: cases with ET)
        absolute = {}
        for m, seeds in by.items():
            absolute[m] = {reg: [float(np.nanmean(dice_matrix(run, reg, None))) for run in seeds.values()]
                           for reg in REGIONS}  # fmt: skip
            absolute[m]["no_et_clean"] = [no_et(run) for run in seeds.values()]
        block["mean15"] = absolute
        md += [f"### BraTS phantoms, redundancy R = {r:g} ({block['n_test_cases']} test cases, "
               f"{block['n_test_with_et']} with ET; seeds per strategy: "
               + ", ".join(f"{m} {len(v)}" for m, v in by.items()) + ")", "",
               "Mean Dice over the 15 subsets (%, mean ± sd over seeds; ET on the cases with ET; last column: "
               "cases without ET predicted ET-free, share over subsets):", "",
               "| strategy | ET | TC | WT | no-ET cases clean |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for m in ("none", "uniform", "mckd", "oracle"):
            if m in absolute:
                cells = [f"{100 * statistics.mean(absolute[m][k]):.1f} ± "
                         f"{100 * (statistics.stdev(absolute[m][k]) if len(absolute[m][k]) > 1 else 0):.1f}"
                         for k in (*REGIONS, "no_et_clean")]  # fmt: skip
                md.append(f"| {m} | " + " | ".join(cells) + " |")
        # paired differences: mean over 15 and per subset
        diffs = {}
        for a, b in COMPARISONS:
            rows = {}
            for subset in [None, *subsets]:
                rows["mean15" if subset is None else subset] = {
                    reg: paired(by, a, b, reg, subset) for reg in REGIONS}
            diffs[f"{a}-{b}"] = rows
        block["paired"] = diffs
        md += ["", "Paired differences of the mean over the 15 subsets (Dice points, 95 % bootstrap interval over "
               "cases x seeds):", "", "| difference | ET | TC | WT |", "|---|---:|---:|---:|"]  # fmt: skip
        for name, rows in diffs.items():
            if rows["mean15"]["WT"] is not None:
                md.append(f"| {name} | " + " | ".join(ci(rows["mean15"][reg]) for reg in REGIONS) + " |")
        md += ["", "Per subset (Dice points, 95 % interval): uniform − none | mckd − uniform | oracle − mckd", "",
               "| subset | " + " | ".join(f"{reg} u−n | {reg} m−u | {reg} o−m" for reg in REGIONS) + " |",
               "|---|" + "---:|" * 9]  # fmt: skip
        for subset in subsets:
            cells = []
            for reg in REGIONS:
                for name in ("uniform-none", "mckd-uniform", "oracle-mckd"):
                    x = diffs[name][subset][reg]
                    cells.append(ci(x) if x else "")
            md.append(f"| {subset} | " + " | ".join(cells) + " |")
        # H1: weak single-modality rows, uniform - none
        h1 = {f"{reg} {m}": diffs["uniform-none"][m][reg] for reg, ms in WEAK_ROWS.items() for m in ms}
        signs = [verdict_sign(x) for x in h1.values() if x]
        block["H1"] = {"rows": h1, "signs": signs}
        md += ["", "H1 rows: uniform − none on the single-sequence rows of the non-dominant sequences (Dice points, "
               "95 % interval; ET on the cases with ET):", "", "| region, row | uniform − none | mckd − none | "
               "oracle − none |", "|---|---:|---:|---:|"]  # fmt: skip
        for reg, ms in WEAK_ROWS.items():
            for m in ms:
                cells = []
                for a in ("uniform", "mckd", "oracle"):
                    x = paired(by, a, "none", reg, m)
                    cells.append(ci(x) if x else "")
                md.append(f"| {reg} {{{m}}} | " + " | ".join(cells) + " |")
        # H2: omega vs the drop-one ablation; ground truth
        mckd = by.get("mckd", {})
        w = {s: [run["importance"][m] for m in mods] for s, run in mckd.items()}
        drop = {s: run["drop_one_loss"] for s, run in mckd.items()}
        gt = truth.get(f"brats/R{r:g}", {}).get("importance")
        h2 = {"importance": w, "drop_one_loss": drop,
              "top_w": {s: mods[int(np.argmax(v))] for s, v in w.items()},
              "top_drop": {s: mods[int(np.argmax(v))] for s, v in drop.items()},
              "tau_w_between_seeds": mean_pairwise_tau(list(w.values())) if len(w) > 1 else None,
              "tau_w_drop": {s: kendall_tau(w[s], drop[s]) for s in w},
              "tau_drop_truth": {s: kendall_tau(drop[s], gt) for s in drop} if gt else None,
              "tau_w_truth": {s: kendall_tau(w[s], gt) for s in w} if gt else None,
              "ground_truth_importance": gt}  # fmt: skip
        h2["top_agree"] = sum(h2["top_w"][s] == h2["top_drop"][s] for s in w)
        for name in ("none", "uniform", "oracle"):  # the ablation of the other strategies, for comparison
            h2[f"drop_one_{name}"] = {s: run["drop_one_loss"] for s, run in by.get(name, {}).items()}
        block["H2"] = h2
        # feature distance per strategy
        block["feature_distance"] = {m: {"per_modality": np.mean([run["feature_distance"] for run in v.values()], 0).round(4).tolist(),
                                         "mean": round(float(np.mean([run["feature_distance"] for run in v.values()])), 4),
                                         "sd_seeds": round(float(np.std([np.mean(run["feature_distance"]) for run in v.values()], ddof=1)), 4) if len(v) > 1 else None}
                                     for m, v in by.items()}  # fmt: skip
        # timing: mckd / none, paired by seed
        pairs = sorted(set(by.get("mckd", {})) & set(by.get("none", {})))
        def whole(t):  # this process trained every iteration (not resumed): its CPU seconds are the run's
            return t["train_wall_s"] >= 0.9 * t["s_per_iteration"] * t["iterations_timed"]

        ratio = {}
        for s in pairs:
            a, b = by["mckd"][s]["timing"], by["none"][s]["timing"]
            ratio[s] = {"s_per_iteration": a["s_per_iteration"] / b["s_per_iteration"],
                        "cpu_s_per_iteration": a["cpu_s_per_iteration"] / b["cpu_s_per_iteration"]
                        if whole(a) and whole(b) else None,
                        "loadavg": [a["loadavg_start"][0], b["loadavg_start"][0]]}  # fmt: skip
        block["timing"] = {"mckd_over_none": ratio,
                           "loadavg": {m: [run["timing"]["loadavg_start"][0] for run in v.values()] for m, v in by.items()},
                           "s_per_iteration": {m: [run["timing"]["s_per_iteration"] for run in v.values()] for m, v in by.items()},
                           "meta_schedule": next(iter(mckd.values()))["meta_schedule"] if mckd else None}  # fmt: skip
        work = Path(__file__).resolve().parent.parent / "runs" / "study"
        overhead = {s: meta_overhead(work / run["key"].removesuffix(".json") / "history.jsonl")
                    for s, run in mckd.items()}  # fmt: skip
        block["timing_within_run"] = overhead
        md += h2_lines(h2, mods, "drop-one task loss on the 60 test volumes")
        md += fd_lines(block["feature_distance"], mods)
        if ratio:
            md += ["", "Cost of the meta schedule, mckd / none per seed (the two trained side by side, 1 thread each; "
                   "s/iteration from the history, meta rounds included; CPU s/iteration of the training process; "
                   "load average at the start):", "", "| seed | s/iteration | CPU s/iteration | load |",
                   "|---|---:|---:|---:|"]  # fmt: skip
            md[-2] = "| seed | s/iteration | CPU s/iteration | within the mckd run | load |"
            md[-1] = "|---|---:|---:|---:|---:|"
            for seed, v in ratio.items():
                cpu = f"{v['cpu_s_per_iteration']:.3f}" if v["cpu_s_per_iteration"] else "(resumed)"
                within = (overhead.get(seed) or {}).get("ratio")
                md.append(f"| {seed} | {v['s_per_iteration']:.3f} | {cpu} | {within or ''} | {v['loadavg'][0]:.1f} |")
        out[f"R{r:g}"] = block
    # dose response: kd 0 (= none), 0.1, 0.5, 1 at R = 0, seeds of the dose grid
    dose_runs = [x for x in runs_all if x["redundancy"] == 0]
    dose_seeds = sorted({x["seed"] for x in dose_runs if x["kd_weight"] not in (0.1,)} - {None})
    by = {}
    for x in dose_runs:
        by.setdefault((x["method"], x["kd_weight"]), {})[x["seed"]] = x
    dose = {}
    for m in ("uniform", "mckd"):
        for kd in (0.1, 0.5, 1.0):
            cell = {s: v for s, v in by.get((m, kd), {}).items() if s in dose_seeds}
            base = {s: v for s, v in by.get(("none", 0.1), {}).items() if s in cell}
            if cell and base:
                dose[f"{m} kd {kd:g}"] = {reg: paired({"a": cell, "b": base}, "a", "b", reg, None) for reg in REGIONS}
    out["dose"] = {"seeds": dose_seeds, "vs_none": dose}
    if dose:
        md += ["", f"### KD-weight dose response (R = 0, seeds {dose_seeds}; kd 0 is `none`): mean over the 15 "
               "subsets minus none (Dice points, 95 % interval)", "", "| strategy, kd | ET | TC | WT |",
               "|---|---:|---:|---:|"]  # fmt: skip
        for name, row in dose.items():
            md.append(f"| {name} | " + " | ".join(ci(row[reg]) for reg in REGIONS) + " |")
    return out, md


# --- ADNI -------------------------------------------------------------------------------------------------------
def _confusion(y: np.ndarray, p: np.ndarray, k: int = 3) -> np.ndarray:
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    c = _confusion(y, p)
    support = c.sum(1)
    return float(np.mean(np.diag(c)[support > 0] / support[support > 0]))


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    c = _confusion(y, p)
    tp, support, predicted = np.diag(c), c.sum(1), c.sum(0)
    present = support > 0
    f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return float(np.mean(f1[present]))


METRICS = {"balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1}


def adni_groups(by: dict, subsets: list[str], a: str, b: str, subset: str | None) -> list[tuple]:
    """Per seed both strategies have: (target, pred a, pred b) of the subjects scored on ``subset``, or, for
    None, (target, (N, 15) preds a, (N, 15) preds b) so the 15 subsets are resampled together."""
    out = []
    for s in sorted(set(by.get(a, {})) & set(by.get(b, {}))):
        y = np.array(by[a][s]["target"])
        pa = np.array([row["pred"] for row in by[a][s]["subsets"]])  # (15, N)
        pb = np.array([row["pred"] for row in by[b][s]["subsets"]])
        if subset is None:
            out.append((y, pa.T, pb.T))
        else:
            i = subsets.index(subset)
            keep = pa[i] >= 0
            out.append((y[keep], pa[i][keep], pb[i][keep]))
    return out


def mean15_difference(metric):
    """The statistic: mean over the 15 subsets of metric(a) - metric(b), each on the subjects it scores."""

    def stat(target, pa, pb):
        values = []
        for i in range(pa.shape[1]):
            keep = pa[:, i] >= 0
            values.append(metric(target[keep], pa[keep, i]) - metric(target[keep], pb[keep, i]))
        return float(np.mean(values))

    return stat


def adni_report(runs_all: list[dict], truth: dict) -> tuple[dict, list[str]]:
    out, md = {}, []
    for r in sorted({x["redundancy"] for x in runs_all}):
        by = {}
        for x in runs_all:
            if x["redundancy"] == r:
                by.setdefault(x["method"], {})[x["seed"]] = x
        mods = next(iter(next(iter(by.values())).values()))["modalities"]
        subsets = [row["subset"] for row in next(iter(next(iter(by.values())).values()))["subsets"]]
        block = {"seeds": {m: sorted(v) for m, v in by.items()}}

        absolute = {}
        for m, seeds in by.items():
            absolute[m] = {}
            for name, metric in METRICS.items():
                per_seed = []
                for run in seeds.values():
                    y = np.array(run["target"])
                    per_seed.append(np.mean([metric(y[np.array(row["pred"]) >= 0], np.array(row["pred"])[np.array(row["pred"]) >= 0])
                                             for row in run["subsets"]]))  # fmt: skip
                absolute[m][name] = per_seed
        block["mean15"] = absolute
        diffs = {}
        for a, b in COMPARISONS:
            if a in by and b in by:
                rows = {"mean15": {name: bootstrap_metric(adni_groups(by, subsets, a, b, None),
                                                          mean15_difference(metric), n_boot=300)
                                   for name, metric in METRICS.items()}}  # fmt: skip
                for subset in subsets:
                    rows[subset] = {name: bootstrap_metric(
                        adni_groups(by, subsets, a, b, subset),
                        lambda t, pa, pb, metric=metric: metric(t, pa) - metric(t, pb),
                        n_boot=500) for name, metric in METRICS.items()}  # fmt: skip
                diffs[f"{a}-{b}"] = rows
        block["paired"] = diffs
        mckd = by.get("mckd", {})
        w = {s: [run["importance"][m] for m in mods] for s, run in mckd.items()}
        drop = {s: run["drop_one_loss"] for s, run in mckd.items()}
        gt = truth.get(f"adni/R{r:g}", {}).get("importance")
        block["H2"] = {"importance": w, "drop_one_loss": drop,
                       "top_w": {s: mods[int(np.argmax(v))] for s, v in w.items()},
                       "top_drop": {s: mods[int(np.argmax(v))] for s, v in drop.items()},
                       "tau_w_between_seeds": mean_pairwise_tau(list(w.values())) if len(w) > 1 else None,
                       "tau_w_drop": {s: kendall_tau(w[s], drop[s]) for s in w},
                       "tau_drop_truth": {s: kendall_tau(drop[s], gt) for s in drop} if gt else None,
                       "ground_truth_importance": gt}  # fmt: skip
        block["H2"]["top_agree"] = sum(block["H2"]["top_w"][s] == block["H2"]["top_drop"][s] for s in w)
        block["feature_distance"] = {m: {"per_modality": np.mean([run["feature_distance"] for run in v.values()], 0).round(4).tolist(),
                                         "mean": round(float(np.mean([run["feature_distance"] for run in v.values()])), 4)}
                                     for m, v in by.items()}  # fmt: skip
        out[f"R{r:g}"] = block
        adni_md_tail = h2_lines(block["H2"], mods, "drop-one cross-entropy on the test subjects") + fd_lines(
            block["feature_distance"], mods)
        md += [f"### ADNI cohort, redundancy R = {r:g} (seeds per strategy: "
               + ", ".join(f"{m} {len(v)}" for m, v in by.items()) + ")", "",
               "Mean over the 15 subsets (%, mean ± sd over seeds):", "",
               "| strategy | balanced accuracy | macro-F1 |", "|---|---:|---:|"]  # fmt: skip
        for m in ("none", "uniform", "mckd", "oracle"):
            if m in absolute:
                md.append(f"| {m} | " + " | ".join(
                    f"{100 * statistics.mean(absolute[m][k]):.1f} ± {100 * (statistics.stdev(absolute[m][k]) if len(absolute[m][k]) > 1 else 0):.1f}"
                    for k in METRICS) + " |")  # fmt: skip
        md += ["", "Paired differences (points, 95 % bootstrap interval over subjects x seeds): mean over 15, and the "
               "single-source rows", "", "| difference | row | balanced accuracy | macro-F1 |", "|---|---|---:|---:|"]  # fmt: skip
        for name, rows in diffs.items():
            if name not in ("uniform-none", "mckd-uniform", "oracle-mckd"):
                continue  # the others are in summary.json
            for row in ["mean15", *[s for s in subsets if "+" not in s]]:
                md.append(f"| {name} | {row} | {ci(rows[row]['balanced_accuracy'])} | {ci(rows[row]['macro_f1'])} |")
        md += adni_md_tail + [""]
    return out, md


def shared_start(records: list[dict]) -> dict:
    """Check that a seed gives every strategy the same initial weights and batches: the first task loss (same
    weights, same first batch) and the subsets drawn at the start of both stages agree across strategies."""
    groups = {}
    for r in records:
        groups.setdefault((r["task"], r["redundancy"], r["seed"]), []).append(r)
    checked = {f"{task} R {red:g} seed {seed}": len({(x["first_task_loss"], tuple(x["first_subsets"])) for x in runs}) == 1
               for (task, red, seed), runs in sorted(groups.items())}  # fmt: skip
    return {"all_equal": all(checked.values()), "groups": checked, "runs": len(records)}


def meta_overhead(history: Path) -> dict | None:
    """Within one mckd run: the seconds its meta rounds added (each round's iteration minus the median of the
    10 iterations before it) over the seconds of everything else, and the implied mckd / none time ratio. Robust
    to a load that differs between two runs (not to one that changes within a few iterations)."""
    if not history.is_file():
        return None
    records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    seconds = {r["iteration"]: r["seconds"] for r in records if r.get("kind") == "train"}
    rounds = [r["iteration"] for r in records if r.get("kind") == "meta"]
    extra = sum(max(seconds[i] - float(np.median([seconds[j] for j in range(max(0, i - 10), i)] or [0])), 0.0)
                for i in rounds if i in seconds)  # fmt: skip
    total = sum(seconds.values())
    return {"rounds": len(rounds), "meta_s": round(extra, 2), "train_s": round(total - extra, 2),
            "ratio": round(total / max(total - extra, 1e-9), 4)}  # fmt: skip


def h2_lines(h2: dict, mods: list[str], ablation: str) -> list[str]:
    """H2 per seed: the final importance w, its top, the drop-one ablation's top, Kendall tau(w, ablation)."""
    lines = ["", f"H2: learned importance w = softmax(omega) of mckd vs the meta objective's own ranking ({ablation}; "
             f"order {', '.join(mods)}); ground-truth importance {h2['ground_truth_importance']}", "",
             "| seed | w | top w | drop-one Δloss | top drop-one | tau(w, drop-one) |", "|---|---|---|---|---|---:|"]  # fmt: skip
    for seed in h2["importance"]:
        w = " ".join(f"{v:.3f}" for v in h2["importance"][seed])
        d = " ".join(f"{v:+.4f}" for v in h2["drop_one_loss"][seed])
        lines.append(f"| {seed} | {w} | {h2['top_w'][seed]} | {d} | {h2['top_drop'][seed]} | "
                     f"{h2['tau_w_drop'][seed]:+.2f} |")  # fmt: skip
    tau = h2["tau_w_between_seeds"]
    lines += ["", f"Top modality of w = top of the ablation in {h2['top_agree']} of {len(h2['importance'])} seeds; "
              f"mean Kendall tau of w between seeds {'n/a' if tau is None else f'{tau:+.2f}'}."]  # fmt: skip
    return lines


def fd_lines(fd: dict, mods: list[str]) -> list[str]:
    lines = ["", "Feature distance (the authors' measure: mean L1 between the mean-filled and the real bottleneck of a "
             "dropped modality, over the subsets that drop it; test cases, mean over seeds):", "",
             "| strategy | mean | " + " | ".join(mods) + " |", "|---|---:|" + "---:|" * len(mods)]  # fmt: skip
    for m in ("none", "uniform", "mckd", "oracle"):
        if m in fd:
            lines.append(f"| {m} | {fd[m]['mean']:.3f} | " + " | ".join(f"{v:.3f}" for v in fd[m]["per_modality"]) + " |")
    return lines


def report(results: Path, runs=None) -> dict:
    results = Path(results)
    truth_file = results / "ground_truth.json"
    truth = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    records = load(results)
    summary, md = {"ground_truth": truth}, []
    brats = [r for r in records if r["task"] == "brats"]
    adni = [r for r in records if r["task"] == "adni"]
    if brats:
        summary["brats"], lines = brats_report(brats, truth)
        md += lines + [""]
    if adni:
        summary["adni"], lines = adni_report(adni, truth)
        md += lines
    summary["n_runs"] = {"brats": len(brats), "adni": len(adni)}
    summary["same_seed_same_start"] = shared_start(records)
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    (results / "tables.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return summary


if __name__ == "__main__":
    import sys

    report(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "study")
