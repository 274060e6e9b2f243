"""The shipped notebooks: committed clean, one parameters cell each, one kernel, each executed under papermill
(a real kernel, the real library).

Notebooks 01 to 04 run with their **default parameters**, as a student meets them, and every expectation their
narrative states about those runs is checked here on what the executed notebooks printed and wrote: a sentence
that stops being true fails the suite, and is to be rephrased to what the runs show. This costs the default
run of notebook 01 once (its time is in notebooks/README.md); 03 and 04 then take that run apart in seconds.
05 runs a tiny sweep (its default sweep is timed in notebooks/README.md), 02 also the T1-volume task, small.
"""

import ast
import json
import re
from pathlib import Path

import nbformat
import nibabel as nib
import numpy as np
import pytest

from mckd_lab import experiments as ex

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_brats_mckd", "02_adni_mckd", "03_missing_modalities", "04_attributions", "05_experiments"]
PLOTLY = "application/vnd.plotly.v1+json"


def test_every_notebook_is_shipped_clean_with_one_parameters_cell_and_one_kernel():
    kernels = set()
    for name in NAMES:
        path = NOTEBOOKS / f"{name}.ipynb"
        assert not ex.has_outputs(path), (
            f"{path} carries outputs: run `python -m mckd_lab.experiments strip {path}`"
        )
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path}: {len(tagged)} cells tagged 'parameters'"
        params = ex.notebook_parameters(path)
        writes = {"run_dir"} if name != "03_missing_modalities" else set()  # 03 only reads a run
        assert {"live"} | writes <= set(params), f"{path}: declares {sorted(params)}"
        assert all(p.help for p in params.values()), f"{path}: every parameter needs a # comment"
        kernels.add(json.dumps(nb.metadata["kernelspec"], sort_keys=True))
    # one kernel, named as Jupyter's default: no notebook opens with a kernel-selection dialog
    assert len(kernels) == 1 and json.loads(kernels.pop())["name"] == "python3"


def test_sections_are_numbered_and_the_method_page_exists():
    for name in ("01_brats_mckd", "02_adni_mckd"):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        headings = [ln for c in nb.cells if c.cell_type == "markdown" for ln in c.source.splitlines()
                    if ln.startswith("## ")]  # fmt: skip
        numbered = [h for h in headings if re.match(r"## \d+ · ", h)]
        assert set(headings) - set(numbered) <= {"## Where next"}, f"{name}: unnumbered sections {headings}"
        numbers = [int(re.match(r"## (\d+)", h)[1]) for h in numbered]
        assert numbers == list(range(1, len(numbers) + 1)), f"{name}: sections {numbers}"
    method = (NOTEBOOKS / "METHOD.md").read_text()
    assert "notebooks/METHOD.md" in (ROOT / "README.md").read_text()
    import dataclasses

    from mckd_lab import config, train
    from mckd_lab.data import missing
    from mckd_lab.method import importance, kd, meta, strategies
    from mckd_lab.models import network

    # every snake_case name the page quotes is a function of the code it describes or a configuration field
    modules = (kd, importance, meta, strategies, strategies.Strategy, network, network.MultiModalNet, missing,
               config, train)
    fields = {f.name for c in (config.DataConfig, config.MethodConfig, config.OptimConfig, config.RuntimeConfig)
              for f in dataclasses.fields(c)}  # fmt: skip
    spans = re.findall(r"`([^`]+)`", method)
    quoted = {n for span in spans for n in re.findall(r"(?<![/\w])([a-z][a-z0-9]*_[a-z0-9_]+)(?![\w./])", span)}
    assert {"fill_missing", "pairwise_kd_loss", "meta_step"} <= quoted
    for name in quoted - fields:
        assert any(hasattr(m, name) for m in modules), f"METHOD.md names {name}, which the code does not have"


# --- helpers: what an executed notebook printed ---------------------------------------------------------------
def printed(executed: Path) -> str:
    """Everything an executed notebook printed or displayed as text (streams, text/plain, text/markdown)."""
    nb = nbformat.read(executed, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            for kind in ("text/markdown", "text/plain"):
                if kind in out.get("data", {}):
                    parts.append(out["data"][kind])
                    break
    return "\n".join(parts)


def figures(executed: Path) -> list[dict]:
    nb = nbformat.read(executed, as_version=4)
    return [o["data"][PLOTLY] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if PLOTLY in o.get("data", {})]  # fmt: skip


def dice_rows(metrics: dict) -> dict[str, dict[str, float]]:
    """{subset name: {region: Dice in %}} of a BraTS metrics.json."""
    return {row["subset"]: {r: 100 * v for r, v in row["dice"].items()} for row in metrics["subsets"]}


# --- notebook 01 with its defaults, once: the run the narrative of 01, 03 and 04 describes ---------------------
@pytest.fixture(scope="module")
def default_01(tmp_path_factory):
    out = tmp_path_factory.mktemp("nb01")
    executed = ex.run_notebook(NOTEBOOKS / "01_brats_mckd.ipynb", out, {})
    return executed, out / "run"


@pytest.mark.slow
def test_01_defaults_train_evaluate_and_show_what_the_text_says(default_01):
    executed, run = default_01
    assert {"config.json", "history.jsonl", "model.pt", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert len(figures(executed)) >= 4  # live=False: a static figure per view (a failing cell raises)
    text = printed(executed)
    assert "task=brats" in text and len(text.split("task=brats")[0]) < 20  # the compact summary, first
    assert "| **mean of 15** |" in text  # the table, displayed as Markdown (rendered in JupyterLab)
    config = json.loads((run / "config.json").read_text())
    splits = json.loads((run / "splits.json").read_text())
    # "the first third keep every modality" (parameters cell); "10 training phantoms" (section 4)
    assert config["optim"]["warmup_iterations"] == config["optim"]["iterations"] // 3
    assert len(splits["train"]) == 10
    # "every weight stays within 0.05 of 1/4" over "20 meta rounds" (section 3)
    metas = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if '"meta"' in line]
    assert len(metas) == 20
    for record in metas:
        assert all(abs(w - 0.25) < 0.05 for w in record["importance"].values()), record
    rows = dice_rows(json.loads((run / "metrics.json").read_text()))
    # "WT needs FLAIR or T2: above 70 % in every row with one of them, below 50 % in the rows with neither"
    for subset, dice in rows.items():
        names = subset.split("+")
        if "flair" in names or "t2" in names:
            assert dice["WT"] > 70, (subset, dice)
        else:
            assert dice["WT"] < 50, (subset, dice)
    # "averaged over the 8 rows with T1ce, ET is higher than over the 7 without it"
    with_t1ce = [d["ET"] for s, d in rows.items() if "t1ce" in s.split("+")]
    without = [d["ET"] for s, d in rows.items() if "t1ce" not in s.split("+")]
    assert (len(with_t1ce), len(without)) == (8, 7) and np.mean(with_t1ce) > np.mean(without)
    # "T1ce alone gives a better ET than all four sequences together"
    assert rows["t1ce"]["ET"] > rows["flair+t1+t1ce+t2"]["ET"]


@pytest.mark.slow
def test_03_defaults_on_notebook_01s_run(default_01, tmp_path):
    executed = ex.run_notebook(
        NOTEBOOKS / "03_missing_modalities.ipynb", tmp_path, {"source_run": str(default_01[1])}
    )
    assert len(figures(executed)) == 3  # the table, the explorer, the features
    assert "300 iterations" in printed(executed)  # it opened notebook 01's default run, trained nothing
    assert "(this run)" in printed(executed) and "none (recorded study)" in printed(executed)


def test_03s_statement_on_the_recorded_feature_distances():
    """Notebook 03: "without distillation the filled features are about three times as far from the real ones as
    with any distilling strategy, and the distilling strategies are close to one another" (recorded study)."""
    summary = json.loads((ROOT / "benchmarks" / "results" / "study" / "summary.json").read_text())
    mean = {k: v["mean"] for k, v in summary["brats"]["R0"]["feature_distance"].items()}
    distilling = [mean[k] for k in ("uniform", "mckd", "oracle")]
    assert all(2 < mean["none"] / d < 4.5 for d in distilling), mean
    assert max(distilling) / min(distilling) < 1.25, mean
    # its statements on the table are those of notebook 01, checked on the same run above


@pytest.mark.slow
def test_04_defaults_on_notebook_01s_run(default_01, tmp_path):
    executed = ex.run_notebook(NOTEBOOKS / "04_attributions.ipynb", tmp_path, {"source_run": str(default_01[1])})
    text = printed(executed)
    ranking = ast.literal_eval(re.search(r"\{'ET': .*?\}", text, re.S)[0])
    # "T1ce has the largest Shapley value for ET and FLAIR the largest for WT"
    assert ranking["ET"][0] == "t1ce" and ranking["WT"][0] == "flair", ranking
    # "48 steps leave a gap under 15 % of F(x) - F(0)"
    gap = float(re.search(r"a gap of ([0-9.]+)%", text)[1])
    assert gap < 15, text
    assert not re.search(r"^F\(x\) - F\(0\) =", text, re.M)  # a sentence, not a bare number
    # "the ET maps are not concentrated in T1ce: their total |attribution| is largest in FLAIR or T2"
    maps = {p.name.split("_")[-1].removesuffix(".nii.gz"): np.abs(nib.load(p).get_fdata()).sum()
            for p in (tmp_path / "run" / "attributions").glob("*_ET_*.nii.gz")}  # fmt: skip
    assert len(maps) == 4 and max(maps, key=maps.get) in ("flair", "t2"), maps
    fig = figures(executed)[0]
    assert "Shapley" in fig["layout"]["title"]["text"] and "gap of" in fig["layout"]["title"]["text"]


# --- notebook 02 with its defaults -----------------------------------------------------------------------------
@pytest.mark.slow
def test_02_defaults_show_what_the_text_says(tmp_path):
    executed = ex.run_notebook(NOTEBOOKS / "02_adni_mckd.ipynb", tmp_path, {})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "adni" and len(metrics["subsets"]) == 15 and metrics["patterns"]
    balanced = {row["subset"]: 100 * row["balanced_accuracy"] for row in metrics["subsets"]}
    full = "imaging+genetic+clinical+biospecimen"
    # "imaging alone reaches a balanced accuracy at least 10 points above any other single modality"
    singles = {m: balanced[m] for m in ("genetic", "clinical", "biospecimen")}
    assert balanced["imaging"] >= max(singles.values()) + 10, (balanced["imaging"], singles)
    # "dropping imaging from the full set costs more than dropping biospecimen"
    assert balanced[full] - balanced["genetic+clinical+biospecimen"] > balanced[full] - balanced[
        "imaging+genetic+clinical"
    ]
    # "biospecimen ... missing for almost half of the subjects"
    report = ast.literal_eval(re.search(r"\{'file': .*?'skipped': \{\}\}", printed(executed), re.S)[0])
    assert 0.35 < 1 - report["availability"]["biospecimen"] / report["subjects"] < 0.5
    # rare availability patterns are folded into a note, not shown as rows of n = 1
    rare = [p for p in metrics["patterns"] if p["n"] < 10]
    assert not rare or f"({sum(p['n'] for p in rare)} in all)" in printed(executed)
    assert len(figures(executed)) == 2  # the weights and the class probabilities
    assert (tmp_path / "run" / "history.jsonl").read_text().count('"kind": "meta"') == 9  # drawn: 9 meta rounds


@pytest.mark.slow
def test_02_adni_with_t1_volumes(tmp_path):
    ex.run_notebook(
        NOTEBOOKS / "02_adni_mckd.ipynb", tmp_path, {"subjects": 120, "epochs": 1, "task": "adni-t1"}
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"][0] == "mri" and metrics["protocol"]["task"] == "adni-t1"
    assert list((tmp_path / "run" / "cohort" / "T1").glob("*_bl.nii.gz"))  # the cohort came with its scans


@pytest.mark.slow
def test_05_runs_a_sweep_and_compares_strategies(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        f"runs:\n  - notebook: {NOTEBOOKS / '02_adni_mckd.ipynb'}\n"
        "    parameters: {subjects: 200, epochs: 1}\n    grid: {method: [none, mckd]}\n"
    )
    executed = ex.run_notebook(NOTEBOOKS / "05_experiments.ipynb", tmp_path / "out", {"spec": str(spec)})
    table = ex.load_results(tmp_path / "out" / "run")
    assert list(table["method"]) == ["none", "mckd"] and list(table["status"]) == ["done", "done"]
    assert table["metrics.mean.balanced_accuracy"].between(0, 1).all()
    text = printed(executed)
    assert "mckd - none" in text  # the paired table
    recorded = (ROOT / "benchmarks" / "results" / "study" / "tables.md").read_text()
    assert recorded.splitlines()[0] in text  # the recorded study, displayed
