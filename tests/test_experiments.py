"""papermill runs and sweeps on tiny throwaway notebooks (each run starts a real kernel: ~1-2 s)."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from mckd_lab import experiments as ex

PARAMETERS = """\
x: int = 1  # the multiplier
y = 0.5
label = "a"
fail_flag = ""  # a path: runs with x == 2 fail while it exists
run_dir = "run"
live = True  # live widgets; headless runs get False
"""
BODY = """\
import json, os, pathlib
if fail_flag and os.path.exists(fail_flag) and x == 2:
    raise RuntimeError(f"asked to fail with x={x}")
pathlib.Path(run_dir).mkdir(parents=True, exist_ok=True)
metrics = {"value": x * y, "nested": {"x": x, "label": label}, "table": [1, 2], "live": live}
pathlib.Path(run_dir, "metrics.json").write_text(json.dumps(metrics))
print("value", x * y)
"""


def make_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# toy"), nbformat.v4.new_code_cell(PARAMETERS)]
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.cells.append(nbformat.v4.new_code_cell(BODY))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toy(tmp_path):
    return make_notebook(tmp_path / "toy.ipynb")


def test_notebook_parameters_reads_types_defaults_and_help(toy):
    params = ex.notebook_parameters(toy)
    assert list(params) == ["x", "y", "label", "fail_flag", "run_dir", "live"]
    assert params["x"].types == (int,) and params["x"].default == 1 and params["x"].help == "the multiplier"
    assert params["y"].types == (float,) and params["label"].types == (str,)
    assert params["fail_flag"].help == "a path: runs with x == 2 fail while it exists"  # papermill drops it


def test_check_parameters_names_the_bad_parameter_and_the_allowed_ones(toy):
    with pytest.raises(ex.ParameterError, match=r"has no parameter 'z'(.|\n)*x: int = 1  \(the multiplier\)"):
        ex.check_parameters(toy, {"z": 1})
    with pytest.raises(ex.ParameterError, match=r"parameter 'x' .* must be int \(default 1\), got str '3'"):
        ex.check_parameters(toy, {"x": "3"})
    with pytest.raises(ex.ParameterError, match="must be int"):
        ex.check_parameters(toy, {"x": True})  # a bool is not an int parameter
    # an int is a fine float; a Path becomes text
    assert ex.check_parameters(toy, {"y": 2, "run_dir": Path("a/b")}) == {"y": 2, "run_dir": "a/b"}
    assert ex.parse_parameter_text(toy, [("x", "3"), ("label", "3"), ("y", "1e-2")]) == {
        "x": 3,
        "label": "3",
        "y": 0.01,
    }


def test_parameters_cell_annotations():
    params = ex.parse_parameters_cell(
        "a: str | None = None  # optional path\nb: Optional[int] = 3\nc: list[str] = ['x']\nd = Path('x')\n"
        "e, f = 1, 2\nprint(a)\n"
    )
    assert list(params) == ["a", "b", "c", "d"]  # tuple unpacking and calls are not parameters
    assert params["a"].types == (str, type(None)) and params["a"].help == "optional path"
    assert params["b"].accepts(None) and params["b"].accepts(4) and not params["b"].accepts("4")
    assert params["c"].types == (list,) and params["d"].types is None and params["d"].default == "Path('x')"


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "plain.ipynb")
    with pytest.raises(ex.ParameterError, match="no cell tagged 'parameters'"):
        ex.notebook_parameters(tmp_path / "plain.ipynb")


def test_run_notebook_writes_the_executed_notebook_and_the_run_dir(toy, tmp_path):
    out = tmp_path / "out"
    executed = ex.run_notebook(toy, out, {"x": 3})
    assert executed == out / "toy.ipynb"
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["value"] == 1.5 and metrics["live"] is False  # 3 * 0.5; static figures when headless
    nb = nbformat.read(executed, as_version=4)
    assert any("value 1.5" in o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert ex.has_outputs(executed) and not ex.has_outputs(toy)
    assert ex.strip_outputs(executed) is True and not ex.has_outputs(executed)
    assert ex.strip_outputs(executed) is False  # already clean: file untouched


def test_run_notebook_failure_points_at_the_executed_copy(toy, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    with pytest.raises(ex.NotebookError, match="RuntimeError: asked to fail with x=2") as info:
        ex.run_notebook(toy, tmp_path / "out", {"x": 2, "fail_flag": str(flag)})
    assert info.value.executed.is_file()


def test_sweep_2x2_on_a_two_worker_local_cluster_then_skips_finished_runs(toy, tmp_path):
    spec = {"runs": [{"notebook": str(toy), "grid": {"x": [1, 2], "y": [0.5, 2.0]}}]}
    out = tmp_path / "sweep"
    table = ex.sweep(spec, workers=2, out_dir=out, progress=False)
    assert list(table["status"]) == ["done"] * 4 and not table["cached"].any()
    assert sorted(table["metrics.value"]) == [0.5, 1.0, 2.0, 4.0]  # x * y over the grid
    assert set(table["metrics.nested.x"]) == {1, 2} and "metrics.table" not in table  # lists left out
    assert (out / "toy__x=2__y=2.0" / "toy.ipynb").is_file()
    saved = json.loads((out / "results.json").read_text())["runs"]
    assert [r["metrics.value"] for r in saved] == list(table["metrics.value"])
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert len(stamps) == 4
    workers = {json.loads(p.read_text())["pid"] for p in stamps}
    assert len(workers) == 2 and os.getpid() not in workers  # a 2-worker LocalCluster ran them, not this process

    again = ex.sweep(spec, workers=2, out_dir=out, progress=False)
    assert again["cached"].all() and list(again["metrics.value"]) == list(table["metrics.value"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")} == stamps


def test_sweep_reports_a_failed_run_and_retries_it(toy, tmp_path, capsys):
    flag = tmp_path / "flag"
    flag.touch()
    spec = {"runs": [{"notebook": str(toy), "parameters": {"fail_flag": str(flag)}, "grid": {"x": [1, 2]}}]}
    out = tmp_path / "sweep"
    table = ex.sweep(spec, workers=1, out_dir=out, progress=False)
    assert list(table["status"]) == ["done", "failed"]
    assert "asked to fail with x=2" in table["error"][1]
    error = json.loads((out / "toy__x=2" / "error.json").read_text())
    assert error["parameters"]["x"] == 2 and "RuntimeError" in error["traceback"]
    assert "FAILED toy__x=2" in capsys.readouterr().err

    flag.unlink()
    table = ex.sweep(spec, workers=1, out_dir=out, progress=False)
    assert list(table["status"]) == ["done", "done"] and list(table["cached"]) == [True, False]
    assert list(table["metrics.value"]) == [0.5, 1.0]
    assert not (out / "toy__x=2" / "error.json").exists()


def test_sweep_spec_is_validated_before_anything_runs(toy, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("runs:\n  - notebook: toy.ipynb\n    grid: {x: [1, '2']}\nseeds: [0]\n")
    with pytest.raises(ex.ParameterError, match=r"runs\[0\] \(toy.ipynb\) has no parameter 'seed'"):
        ex.sweep(spec_file, out_dir=tmp_path / "out", progress=False)
    spec_file.write_text("runs:\n  - notebook: toy.ipynb\n    grid: {x: [1, '2']}\n")
    with pytest.raises(ex.ParameterError, match=r"parameter 'x' .* got str '2'"):
        ex.sweep(spec_file, out_dir=tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="'run_dir' is set by the sweep"):
        ex.load_spec({"runs": [{"notebook": str(toy), "parameters": {"run_dir": "x"}}]})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['worker'\]"):
        ex.load_spec({"worker": 2, "runs": [{"notebook": str(toy)}]})
    assert not (tmp_path / "out").exists()


def test_command_line_run_and_strip(toy, tmp_path, capsys):
    out = tmp_path / "out"
    assert ex.main(["run", str(toy), "--out", str(out), "-p", "x", "3", "-p", "label", "7"]) == 0
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["value"] == 1.5 and metrics["nested"]["label"] == "7"  # "7" stays text for a str parameter
    assert ex.main(["run", str(toy), "--out", str(out), "-p", "z", "1"]) == 2
    assert "has no parameter 'z'" in capsys.readouterr().err
    assert ex.main(["strip", "--check", str(out / "toy.ipynb")]) == 1
    assert (
        ex.main(["strip", str(out / "toy.ipynb")]) == 0
        and ex.main(["strip", "--check", str(out / "toy.ipynb")]) == 0
    )


def test_prepare_only_injects_parameters_without_executing(toy, tmp_path):
    prepared = ex.run_notebook(toy, tmp_path / "out", {"x": 3}, prepare_only=True)
    nb = nbformat.read(prepared, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "x = 3" in injected[0].source and "live = False" in injected[0].source
    assert not ex.has_outputs(prepared) and not (tmp_path / "out" / "run").exists()
