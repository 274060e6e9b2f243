"""The shipped notebooks: committed clean, one parameters cell each, each executed under papermill with tiny
parameters (a real kernel, the real library). Binder's dependency list covers pyproject's."""

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from mckd_lab import experiments as ex

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_brats_mckd", "02_adni_mckd", "03_missing_modalities", "04_attributions", "05_experiments"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def test_every_notebook_is_shipped_clean_with_one_parameters_cell():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
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
        assert nb.metadata["kernelspec"]["name"] == "python3"


def test_binder_requirements_cover_every_runtime_dependency():
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; the list is a plain TOML array
    needed = {
        _name(r) for r in ast.literal_eval(re.search(r"\ndependencies = (\[.*?\])", pyproject, re.S)[1])
    }
    lines = [
        ln.split("#")[0].strip() for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    ]
    given = {_name(ln) for ln in lines if ln and not ln.startswith("-")}
    assert needed <= given, f"binder/requirements.txt lacks {sorted(needed - given)}"
    torch = next(ln for ln in lines if ln.startswith("torch"))
    assert "+cpu" in torch and "--extra-index-url https://download.pytorch.org/whl/cpu" in lines  # no CUDA
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()


# --- execution with tiny parameters (each a real kernel: tens of seconds on 2 shared cores) -----------------
@pytest.fixture(scope="module")
def brats_run(tmp_path_factory):
    """Notebook 01 on 8 phantoms for 4 iterations; its run feeds notebooks 03 and 04."""
    out = tmp_path_factory.mktemp("nb01")
    executed = ex.run_notebook(NOTEBOOKS / "01_brats_mckd.ipynb", out, {"cases": 8, "iterations": 4})
    return executed, out / "run"


@pytest.mark.slow
def test_01_brats_trains_evaluates_and_keeps_static_figures(brats_run):
    executed, run = brats_run
    assert {"config.json", "history.jsonl", "model.pt", "metrics.json"} <= {p.name for p in run.iterdir()}
    nb = nbformat.read(executed, as_version=4)
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]  # fmt: skip
    assert len(figures) >= 4  # live=False: a static figure per view (a failing cell raises in run_notebook)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "brats" and len(metrics["subsets"]) == 15


@pytest.mark.slow
def test_02_adni(tmp_path):
    ex.run_notebook(NOTEBOOKS / "02_adni_mckd.ipynb", tmp_path, {"subjects": 200, "epochs": 1})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "adni" and len(metrics["subsets"]) == 15 and metrics["patterns"]


@pytest.mark.slow
def test_02_adni_with_t1_volumes(tmp_path):
    ex.run_notebook(
        NOTEBOOKS / "02_adni_mckd.ipynb", tmp_path, {"subjects": 120, "epochs": 1, "task": "adni-t1"}
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["modalities"][0] == "mri" and metrics["protocol"]["task"] == "adni-t1"
    assert list((tmp_path / "run" / "cohort" / "T1").glob("*_bl.nii.gz"))  # the cohort came with its scans


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("03_missing_modalities", {}), ("04_attributions", {"ig_steps": 2})])
def test_03_04_take_a_finished_run_apart(brats_run, tmp_path, name, extra):
    executed = ex.run_notebook(
        NOTEBOOKS / f"{name}.ipynb", tmp_path, {"source_run": str(brats_run[1]), **extra}
    )
    nb = nbformat.read(executed, as_version=4)
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]  # fmt: skip
    assert figures  # the views drew (a failing cell raises in run_notebook)
    if name == "04_attributions":
        assert len(list((tmp_path / "run" / "attributions").glob("*.nii.gz"))) == 4  # one map per sequence


@pytest.mark.slow
def test_05_runs_a_sweep_and_compares_strategies(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        f"runs:\n  - notebook: {NOTEBOOKS / '02_adni_mckd.ipynb'}\n"
        "    parameters: {subjects: 200, epochs: 1}\n    grid: {method: [none, mckd]}\n"
    )
    ex.run_notebook(NOTEBOOKS / "05_experiments.ipynb", tmp_path / "out", {"spec": str(spec)})
    table = ex.load_results(tmp_path / "out" / "run")
    assert list(table["method"]) == ["none", "mckd"] and list(table["status"]) == ["done", "done"]
    assert table["metrics.mean.balanced_accuracy"].between(0, 1).all()
