"""Batch experiments: run a parameterised notebook with papermill, sweep a grid of runs, collect the results.

A notebook's cell tagged ``parameters`` (papermill's convention) is its interface: the names, defaults, type
annotations and ``# help`` comments found there (read with ``ast``, which unlike papermill's line parser never
drops a line silently) are what :func:`check_parameters` validates against, before anything executes. A
parameter's type is its annotation (``size: int = 32``) or else the type of its literal default; a default
of ``None`` without an annotation accepts anything.

``run_notebook(nb, out_dir, parameters)`` writes::

    out_dir/<notebook name>.ipynb   the executed notebook, outputs included
    out_dir/run/                    the run directory, passed as the notebook's ``run_dir`` parameter
                                    (and ``live=False`` when the notebook declares ``live``)

``sweep(spec)`` runs a grid (notebook x parameters x seeds, or training configs x seeds) on a Dask
``distributed`` cluster (``mckd_lab.clusters``: an embedded LocalCluster by default, dask-jobqueue,
dask-kubernetes or a running scheduler), one Dask task per run, and writes under its output folder::

    <out>/<run name>/               one folder per run, laid out as above, plus
        done.json                   written atomically when the run finished: the run is skipped next time
        error.json                  the error of a failed run: it is reported and retried on the next call
        attempts.json               host and process of each start of the run in the current call
    <out>/results.csv, results.json one row per run: notebook, run, parameters, seed, status, seconds,
                                    error, and the scalar fields of its metrics.json as ``metrics.<key>``
                                    (nested keys joined by dots; lists and the ``protocol`` left out)
    <out>/dask-logs/                the batch jobs' output (dask-jobqueue clusters)

A run executes its notebook with papermill in a fresh kernel on its worker (a training run trains and
evaluates in the worker itself, no kernel). Its executed notebook is moved into place whole, ``done.json``
comes last. A worker that dies mid-run has the run started again on another worker, where the notebook's
``train_or_reuse`` resumes it from its checkpoint; after ``retries`` such restarts (or failures of its
kernel) the run is reported with its error. An error of the run's own code (a cell, the trainer) is
reported at once: it would only happen again.

A sweep spec (YAML file or dict); relative notebook and data paths are relative to the spec file's folder (to
the current folder for a dict)::

    name: strategies                # optional, default: the file's stem
    out: runs/sweeps/strategies     # optional, relative to the current folder; default runs/sweeps/<name>.
                                    # Every worker must see it at the same path (a shared file system)
    seeds: [0, 1, 2]                # optional; each seed is passed as the parameter named by seed_parameter
    seed_parameter: seed            # optional
    timeout: 3600                   # optional, seconds per cell
    retries: 2                      # optional: restarts of a run after its worker died or its kernel failed
    cluster: {kind: slurm, cores: 4, memory: 16GB, walltime: "02:00:00", queue: gpu, gpus: 1}
                                    # optional: where the runs execute (mckd_lab.clusters); flags override it
    runs:
      - notebook: ../01_brats_mckd.ipynb
        parameters: {size: 32}      # fixed values
        grid: {method: [none, mckd]} # every combination of these lists (cartesian product)
        seeds: [0]                  # optional, overrides the top-level seeds for this entry
      - train: {task: adni, epochs: 1, subjects: 200}  # a training run, no notebook: the task, its data
        grid: {method: [none, mckd]} # (optional) and the options of its Task.config (train_config)

Command line (also reachable through ``mckd-lab run`` / ``mckd-lab sweep``)::

    python -m mckd_lab.experiments run NOTEBOOK --out DIR [-p NAME VALUE]...
    python -m mckd_lab.experiments sweep SPEC.yaml [--workers N] [--out DIR] [--retries N]
        [--cluster local|slurm|pbs|sge|lsf|kubernetes] [--scheduler tcp://HOST:PORT]
        [--queue Q] [--cores N] [--memory 16GB] [--walltime HH:MM:SS] [--gpus N]
    python -m mckd_lab.experiments strip notebooks/*.ipynb [--check]

The notebook helpers (``brats_config``, ``prepare_run``, ``train_or_reuse``, ``load_or_train``,
``split_cases``) are ``mckd_lab.recipes``'s; they are re-exported here for code written before they moved,
and ``load_results`` is ``mckd_lab.runs``'s. Both are imported on first use (module ``__getattr__``), as are the
tasks and the trainer, so that a sweep's Dask workers that only execute notebooks never import them.

papermill (and through it jupyter_client) and Dask are imported inside the functions that use them, so
importing this module stays light and free of Jupyter.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mckd_lab.clusters import KINDS, ClusterSpec, connect
from mckd_lab.rundir import write_json_atomic

if TYPE_CHECKING:  # the re-exports, for readers and linters; imported on first use by __getattr__ below
    from mckd_lab.recipes import brats_config, load_or_train, prepare_run, split_cases, train_or_reuse
    from mckd_lab.runs import load_results

__all__ = [
    "NotebookError", "ParameterError", "add_subcommands", "brats_config", "check_parameters", "load_or_train",
    "load_results", "load_spec", "notebook_parameters", "prepare_run", "run_notebook", "split_cases", "sweep",
    "train_config", "train_or_reuse",
]  # fmt: skip


def __getattr__(name: str):
    """The re-exported helpers, imported on first use (PEP 562; see the module docstring)."""
    if name in {"brats_config", "load_or_train", "prepare_run", "split_cases", "train_or_reuse"}:
        from mckd_lab import recipes

        return getattr(recipes, name)
    if name == "load_results":
        from mckd_lab.runs import load_results

        return load_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RUN_DIR = "run_dir"  # the parameter naming where a notebook writes its run
LIVE = "live"  # the parameter choosing live widgets (True) or static figures (False)
SPEC_KEYS = {"name", "out", "seeds", "seed_parameter", "timeout", "retries", "cluster", "runs"}
RUN_KEYS = {"notebook", "train", "parameters", "grid", "seeds"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ATTEMPTS = "attempts.json"  # in a run folder: one record per start of the run in the current sweep call
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": list}


class ParameterError(ValueError):
    """A parameter a notebook does not have, or a value of the wrong type."""


class NotebookError(RuntimeError):
    """A notebook raised while executing; ``executed`` is the executed copy holding the traceback."""

    def __init__(self, message: str, executed: Path):
        super().__init__(message)
        self.executed = executed


# ---------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Parameter:
    """One entry of a notebook's ``parameters`` cell. ``types`` is None when any value is accepted."""

    name: str
    default: Any
    types: tuple[type, ...] | None
    help: str = ""

    def describe(self) -> str:
        kind = "any" if self.types is None else " | ".join(t.__name__ for t in self.types)
        return f"{self.name}: {kind} = {self.default!r}" + (f"  ({self.help})" if self.help else "")

    def accepts(self, value: Any) -> bool:
        if self.types is None or (value is None and type(None) in self.types):
            return True
        if isinstance(value, bool):  # bool is an int to Python, never to a notebook parameter
            return bool in self.types
        if isinstance(value, int) and float in self.types:
            return True
        return isinstance(value, tuple(t for t in self.types if t is not type(None)))


def _annotation_types(node: ast.expr) -> tuple[type, ...] | None:
    """``int`` -> (int,); ``str | None`` and ``Optional[str]`` -> (str, NoneType); unknown -> None (any)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation_types(node.left), _annotation_types(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Constant) and node.value is None:
        return (type(None),)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Optional":
        inner = _annotation_types(node.slice)
        return None if inner is None else inner + (type(None),)
    if isinstance(node, ast.Subscript):
        node = node.value
    kind = _TYPES.get(node.id) if isinstance(node, ast.Name) else None
    return None if kind is None else (kind,)


def parse_parameters_cell(source: str) -> dict[str, Parameter]:
    """The ``name = default`` / ``name: type = default  # help`` lines of a parameters cell, in order.

    A default that is not a Python literal is kept as its source text and accepts any value.
    """
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, annotation = node.targets[0].id, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, annotation = node.target.id, node.annotation
        else:
            continue
        text = ast.get_source_segment(source, node.value)
        try:
            default, literal = ast.literal_eval(node.value), True
        except ValueError:
            default, literal = text, False
        if annotation is not None:
            types = _annotation_types(annotation)
        elif literal and default is not None:
            types = (list,) if isinstance(default, tuple) else (type(default),)
        else:
            types = None
        tail = lines[node.end_lineno - 1][node.end_col_offset :].strip()
        found[name] = Parameter(name, default, types, tail[1:].strip() if tail.startswith("#") else "")
    return found


def notebook_parameters(notebook: str | Path) -> dict[str, Parameter]:
    """The parameters declared in the cell tagged ``parameters`` of ``notebook``, in cell order."""
    import nbformat

    notebook = Path(notebook)
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ParameterError(
            f"{notebook} has no cell tagged 'parameters'; tag the cell that holds its defaults "
            "(JupyterLab: property inspector > cell tags) so papermill can inject values"
        )
    try:
        return parse_parameters_cell(cells[0].source)
    except SyntaxError as err:
        raise ParameterError(f"{notebook}: the parameters cell is not valid Python: {err}") from None


def check_parameters(
    notebook: str | Path | dict[str, Parameter], parameters: dict[str, Any] | None, *, where: str = ""
) -> dict[str, Any]:
    """Validate ``parameters`` against a notebook's parameters cell (a path, or its `notebook_parameters`).

    Returns a clean copy (``Path`` values as strings, tuples as lists). Raises `ParameterError` naming the
    parameter, the value and the allowed names/types. Nothing is executed.
    """
    where = where or ("the notebook" if isinstance(notebook, dict) else str(notebook))
    declared = notebook if isinstance(notebook, dict) else notebook_parameters(notebook)
    allowed = "\n  ".join(p.describe() for p in declared.values())
    clean = {}
    for name, value in (parameters or {}).items():
        if name not in declared:
            raise ParameterError(f"{where} has no parameter {name!r}; its parameters are:\n  {allowed}")
        value = str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        param = declared[name]
        if not param.accepts(value):
            raise ParameterError(
                f"parameter {name!r} of {where} must be {' | '.join(t.__name__ for t in param.types)} "
                f"(default {param.default!r}), got {type(value).__name__} {value!r}"
            )
        clean[name] = value
    return clean


def parse_parameter_text(notebook: str | Path, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Turn command-line ``-p NAME VALUE`` pairs into typed values: the text itself for a str parameter,
    else a Python literal (``3``, ``1e-2``, ``[1, 2]``) or YAML (``true``, ``null``)."""
    declared = notebook_parameters(notebook)
    values = {}
    for name, text in pairs:
        param = declared.get(name)
        if param is not None and param.types is not None and str in param.types:
            values[name] = text
            continue
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = yaml.safe_load(text)
    return check_parameters(declared, values, where=str(notebook))


# ---------------------------------------------------------------------------------------------- one run
def run_notebook(
    notebook: str | Path,
    out_dir: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    kernel_name: str | None = None,
    timeout: float | None = None,
    progress: bool = False,
    log_output: bool = False,
    prepare_only: bool = False,
) -> Path:
    """Execute ``notebook`` with papermill into ``out_dir``; returns the executed notebook's path.

    Parameters are validated first (`check_parameters`). If the notebook declares ``run_dir`` and no value
    is given, it is set to ``out_dir/run`` (absolute); a declared ``live`` defaults to False (static figures,
    which an executed notebook keeps; live widgets need a running kernel). The kernel runs in the notebook's
    folder, as in JupyterLab. ``kernel_name`` defaults to the notebook's own (``python3``: this interpreter).
    ``timeout`` is seconds per cell. A failing notebook raises `NotebookError`; its executed copy keeps the
    traceback. ``prepare_only``: write the copy with the parameters injected, without executing it (e.g. to
    run shrunk notebooks under ``pytest --nbval-lax``).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook, out_dir = Path(notebook), Path(out_dir)
    declared = notebook_parameters(notebook)
    params = check_parameters(declared, parameters, where=str(notebook))
    if RUN_DIR in declared and RUN_DIR not in params:
        params[RUN_DIR] = str((out_dir / "run").resolve())
    if LIVE in declared and LIVE not in params:
        params[LIVE] = False  # no browser will ever show a live widget: keep the static figures
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(notebook.resolve().parent),
            progress_bar=progress,
            log_output=log_output,
            execution_timeout=timeout,
            prepare_only=prepare_only,
        )
    except PapermillExecutionError as err:
        raise NotebookError(
            f"{notebook.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
            f"the executed notebook with the full traceback is {executed}",
            executed,
        ) from None
    return executed


# ---------------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a notebook and its full parameter set (seed included), or, with ``notebook`` None,
    a training run whose ``parameters`` are its task, data and config options (`train_config`)."""

    name: str
    notebook: Path | None
    parameters: dict[str, Any]
    seed: int | None = None


@dataclass(frozen=True)
class Sweep:
    """A spec read and expanded (`load_spec`): its runs, where they write, where they execute, their retries."""

    name: str
    out: Path
    runs: list[SweepRun]
    timeout: float | None = None
    seed_parameter: str = "seed"
    cluster: ClusterSpec = ClusterSpec()
    retries: int = 2


class RunFailed(RuntimeError):
    """A run stopped by something outside its own code (its kernel died, could not start): Dask's ``retries``
    start it again. Its ``error.json`` is written before this is raised."""


def _slug(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text)


def _unknown(keys, allowed, where):
    if extra := set(keys) - allowed:
        raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def train_config(options: dict[str, Any]):
    """The RunConfig of a training run of a sweep: ``options`` are ``task`` (a name of ``mckd_lab.tasks``),
    ``data`` (optional: the task's data, else synthetic) and the keyword options of that task's ``config``
    (``method``, ``seed``, ``epochs``, dotted keys such as ``optim.lr``). No progress bar unless asked: the
    run executes on a worker, not in a terminal."""
    from mckd_lab.tasks import make_task

    options = dict(options)
    task = make_task(options.pop("task"))
    data = options.pop("data", None)
    return task.config(data, **{"runtime.progress": False, **options})


def _expand(entry: dict, here: str, base: Path, seeds: list, seed_parameter: str):
    """The (name, notebook or None, checked parameters, seed) of every grid point x seed of one runs entry."""
    _unknown(entry, RUN_KEYS, here)
    if ("notebook" in entry) == ("train" in entry):
        raise ValueError(f"{here} needs either a 'notebook' or a 'train' (task and config options), not both")
    grid = entry.get("grid") or {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{here}: grid[{key!r}] must be a non-empty list, got {values!r}")
    if "notebook" in entry:
        notebook = (base / entry["notebook"]).resolve()
        declared, fixed, stem = notebook_parameters(notebook), entry.get("parameters") or {}, notebook.stem
        if RUN_DIR in grid or RUN_DIR in fixed:
            raise ValueError(f"{here}: {RUN_DIR!r} is set by the sweep (one folder per run); remove it")
    else:
        if "parameters" in entry:
            raise ValueError(f"{here}: a 'train' entry takes its fixed options in 'train', not 'parameters'")
        notebook, fixed = None, dict(entry["train"] or {})
        if "task" not in fixed:
            from mckd_lab.tasks import TASKS

            raise ValueError(f"{here}: 'train' needs a 'task' (one of {', '.join(TASKS)})")
        if fixed.get("data"):
            fixed["data"] = str((base / fixed["data"]).resolve())
        stem = fixed["task"]
    for combo in itertools.product(*grid.values()):
        for seed in entry.get("seeds", seeds):
            params = {**fixed, **dict(zip(grid, combo, strict=True))}
            if seed is not None:
                params[seed_parameter] = seed
            if notebook is not None:
                params = check_parameters(declared, params, where=f"{here} ({notebook.name})")
            else:
                try:
                    train_config(params)
                except (TypeError, ValueError) as err:  # an unknown option, a bad value, an unknown task
                    raise ValueError(f"{here}: train options {params}: {err}") from None
            label = [stem] + [f"{k}={_slug(v)}" for k, v in zip(grid, combo, strict=True)]
            yield "__".join(label + ([] if seed is None else [f"seed={seed}"])), notebook, params, seed


def load_spec(spec: str | Path | dict, out_dir: str | Path | None = None) -> Sweep:
    """Read and expand a sweep spec (see the module docstring); every run's parameters (a training run's
    config) and the ``cluster`` section are validated here, before anything executes."""
    if isinstance(spec, dict):
        where, base, raw = "sweep spec", Path.cwd(), spec
        default_name = "sweep"
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec {path} does not exist")
        where, base, raw = str(path), path.resolve().parent, yaml.safe_load(path.read_text()) or {}
        default_name = path.stem
    _unknown(raw, SPEC_KEYS, where)
    if not raw.get("runs"):
        raise ValueError(f"{where}: 'runs' must list at least one entry with a 'notebook' or a 'train'")
    retries = raw.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"{where}: retries must be a whole number >= 0, got {retries!r}")
    cluster = ClusterSpec.from_dict(raw.get("cluster"), f"{where}: cluster", base)
    seed_parameter = raw.get("seed_parameter", "seed")
    runs: dict[str, SweepRun] = {}
    for i, entry in enumerate(raw["runs"]):
        here = f"{where}: runs[{i}]"
        for name, notebook, params, seed in _expand(
            entry, here, base, raw.get("seeds", [None]), seed_parameter
        ):
            if name in runs:
                raise ValueError(f"{here}: two runs are both named {name!r}; make the grid entries differ")
            runs[name] = SweepRun(name, notebook, params, seed)
    out = Path(out_dir or raw.get("out") or Path("runs") / "sweeps" / raw.get("name", default_name))
    return Sweep(raw.get("name", default_name), out.resolve(), list(runs.values()), raw.get("timeout"),
                 seed_parameter, cluster, retries)  # fmt: skip


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested dicts as ``{"a.b": value}``; lists (tables, curves) are left out."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
    return flat


def _is_done(run: SweepRun, folder: Path) -> bool:
    done = folder / "done.json"
    return done.is_file() and json.loads(done.read_text()).get("parameters") == run.parameters


def _notebook_run(run: SweepRun, folder: Path, timeout: float | None) -> None:
    """papermill writes the executed notebook cell by cell: it is written in a scratch folder of this attempt
    and moved into the run folder at the end (``os.replace``), so the run folder never holds half of one."""
    for stale in folder.glob(".attempt-*"):  # left by an attempt whose worker died
        shutil.rmtree(stale, ignore_errors=True)
    scratch, final = folder / f".attempt-{uuid.uuid4().hex[:12]}", folder / run.notebook.name
    params = dict(run.parameters)
    if RUN_DIR in notebook_parameters(run.notebook):
        params[RUN_DIR] = str(folder / "run")  # in the run folder, where a retry resumes it
    try:
        run_notebook(run.notebook, scratch, params, timeout=timeout)
    except NotebookError as err:
        raise NotebookError(str(err).replace(str(err.executed), str(final)), final) from None
    finally:
        if (scratch / final.name).is_file():
            os.replace(scratch / final.name, final)
        shutil.rmtree(scratch, ignore_errors=True)


def _train_run(run: SweepRun, folder: Path, threads: int | None) -> None:
    """Train (or resume, after a worker died) and evaluate in the worker itself: no kernel."""
    import torch

    from mckd_lab.recipes import train_or_reuse
    from mckd_lab.runs import evaluate_run

    if threads:
        torch.set_num_threads(threads)  # torch was imported before the worker knew its share of the cores
    evaluate_run(train_or_reuse(train_config(run.parameters), folder / "run"))


def _execute(run: SweepRun, folder: Path, timeout: float | None, threads: int | None, retries: int) -> dict:
    """One run: the Dask task that a worker executes; returns ``{"run", "status", "error"}``.

    ``threads``: the OMP/MKL/OpenBLAS threads of its kernel (and torch's, for a training run). ``done.json``
    is written (atomically) only after everything else. An error of the run's own code (a notebook cell, the
    trainer) is written to ``error.json`` and returned: it would only happen again. Anything else (the kernel
    died or never started) raises `RunFailed` after writing ``error.json``, for Dask to retry elsewhere.

    Every start is recorded in ``attempts.json`` (host, process), which the sweep clears when it begins: a
    run started ``retries + 1`` times already, each attempt stopped by its worker's death or a failure
    outside its code, is reported instead of started again. Counting here, not with the scheduler's
    ``allowed-failures``, counts only the attempts that ran: Dask also counts a worker's death against a run
    that was merely waiting on it.
    """
    if _is_done(run, folder):  # finished by an attempt whose worker died before it could report
        return {"run": run.name, "status": "done", "error": ""}
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run": run.name, "notebook": run.notebook and str(run.notebook), "parameters": run.parameters,
              "seed": run.seed, "host": socket.gethostname(), "pid": os.getpid()}  # fmt: skip
    log = folder / ATTEMPTS
    attempts = json.loads(log.read_text()) if log.is_file() else []
    if len(attempts) > retries:
        error = (f"GaveUp: started {len(attempts)} times (retries: {retries}); each attempt was stopped from "
                 f"outside the run (its worker died or its kernel failed): see {log}")  # fmt: skip
        write_json_atomic({**record, "error": error, "own_code": False}, folder / "error.json")
        return {"run": run.name, "status": "failed", "error": error}
    write_json_atomic(
        [*attempts, {"host": record["host"], "pid": record["pid"], "started": time.time()}], log
    )
    if threads:  # Dask's nanny starts workers with one thread each; a kernel inherits this environment
        for var in THREAD_VARIABLES:
            os.environ[var] = str(threads)
    (folder / "error.json").unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        if run.notebook is None:
            _train_run(run, folder, threads)
        else:
            _notebook_run(run, folder, timeout)
    except Exception as err:  # noqa: BLE001 - every failure of a run is recorded and reported
        error, own = f"{type(err).__name__}: {err}", run.notebook is None or isinstance(err, NotebookError)
        write_json_atomic({**record, "seconds": time.perf_counter() - start, "error": error, "own_code": own,
                           "traceback": "".join(traceback.format_exception(err))}, folder / "error.json")  # fmt: skip
        if not own:
            raise RunFailed(error) from None
        return {"run": run.name, "status": "failed", "error": error}
    write_json_atomic({**record, "seconds": time.perf_counter() - start, "attempts": len(attempts) + 1},
                      folder / "done.json")  # fmt: skip
    return {"run": run.name, "status": "done", "error": ""}


def _row(run: SweepRun, folder: Path, cached: bool) -> dict:
    done, failed = folder / "done.json", folder / "error.json"
    status_file = done if done.is_file() else failed if failed.is_file() else None
    info = json.loads(status_file.read_text()) if status_file else {}
    row = {
        "run": run.name,
        "notebook": run.notebook.name if run.notebook else None,
        **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in run.parameters.items()},
        "seed": run.seed,
        "status": "done" if status_file == done else "failed" if status_file else "missing",
        "cached": cached,
        "seconds": info.get("seconds"),
        "error": info.get("error", ""),
    }
    metrics = folder / "run" / "metrics.json"
    if row["status"] == "done" and metrics.is_file():
        summary = {k: v for k, v in json.loads(metrics.read_text()).items() if k != "protocol"}
        row.update({f"metrics.{k}": v for k, v in flatten(summary).items()})
    return row


def sweep(
    spec: str | Path | dict,
    workers: int | None = None,
    *,
    out_dir: str | Path | None = None,
    cluster: str | dict[str, Any] | None = None,
    retries: int | None = None,
    progress: bool = True,
):
    """Run every run of ``spec`` not finished yet on a Dask cluster; return the results table.

    ``cluster``: a kind (``"slurm"``) or options over the spec's ``cluster:`` section (``{"scheduler":
    "tcp://host:8786"}``, ``{"kind": "slurm", "queue": "gpu"}``; see ``mckd_lab.clusters``); nothing: an
    embedded LocalCluster. ``workers``: its worker processes (local), batch jobs or pods. ``retries``: over
    the spec's (default 2): how many more times a run is started after its worker died or its kernel failed.

    Each run is one Dask task (`_execute`). A run whose folder holds ``done.json`` with the same parameters
    is skipped; a failed run writes ``error.json``, is reported on stderr and runs again on the next call.
    Writes ``results.csv`` and ``results.json`` in the sweep's output folder and returns the same table as a
    pandas DataFrame (one row per run, see the module docstring). The Dask dashboard's address is printed.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    plan = load_spec(spec, out_dir)
    options = {"kind": cluster} if isinstance(cluster, str) else dict(cluster or {})
    target = plan.cluster.with_options(**options, workers=workers)
    retries = plan.retries if retries is None else retries
    plan.out.mkdir(parents=True, exist_ok=True)
    folders = {run.name: plan.out / run.name for run in plan.runs}
    pending, cached = [], set()
    for run in plan.runs:
        done = folders[run.name] / "done.json"
        if _is_done(run, folders[run.name]):
            cached.add(run.name)
        else:
            if done.is_file():
                print(
                    f"sweep {plan.name}: {run.name} ran with other parameters; running it again",
                    file=sys.stderr,
                )
                done.unlink()
            (folders[run.name] / ATTEMPTS).unlink(missing_ok=True)  # each call gives a run its retries anew
            pending.append(run)
    failures = []
    with tqdm(total=len(plan.runs), initial=len(cached), desc=f"sweep {plan.name}", unit="run",
              disable=not progress) as bar:  # fmt: skip

        def finished(future, run):
            result = _outcome(future, run, folders[run.name])
            bar.update(1)
            if result["status"] == "failed":
                failures.append(result)
                bar.write(f"FAILED {result['run']}: {result['error'].splitlines()[0]}", file=sys.stderr)
            bar.set_postfix(failed=len(failures))

        if pending:
            # the scheduler's own bound is a backstop: _execute counts the attempts that ran (see there)
            with connect(target, len(pending), 2 * (retries + 1), plan.out / "dask-logs") as pool:
                bar.write(f"sweep {plan.name}: {len(pending)} run(s) on {pool.description}; Dask dashboard: "
                          f"{pool.client.dashboard_link}", file=sys.stderr)  # fmt: skip

                def start(run):
                    return pool.client.submit(
                        _execute, run, folders[run.name], plan.timeout, pool.threads, retries, retries=retries,
                        key=f"{run.name}-{uuid.uuid4().hex}", resources=pool.resources, pure=False,
                    )  # fmt: skip

                def unstarted(run, error):
                    _write_failure(run, folders[run.name], error)
                    failures.append({"run": run.name, "status": "failed", "error": error})
                    bar.update(1)
                    bar.write(f"FAILED {run.name}: {error.splitlines()[0]}", file=sys.stderr)

                _dispatch(pool, pending, start, finished, unstarted)
    rows = [_row(run, folders[run.name], run.name in cached) for run in plan.runs]
    table = pd.DataFrame(rows)
    table.to_csv(plan.out / "results.csv", index=False)
    clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
    write_json_atomic({"sweep": plan.name, "runs": clean}, plan.out / "results.json")
    if failures:
        print(
            f"sweep {plan.name}: {len(failures)} of {len(plan.runs)} runs failed (see error.json in each run "
            f"folder under {plan.out}); call the sweep again to retry them",
            file=sys.stderr,
        )
    return table


def _dispatch(pool, runs: list[SweepRun], start, finished, unstarted) -> None:
    """Start ``runs`` (``start(run)`` submits one) as workers free up, and hand each finished future to
    ``finished(future, run)``: never more runs in flight than the workers have room for (``pool.slots()``,
    polled each second as batch jobs come and go). A run waiting on a busy worker would share its fate (Dask
    counts a worker's death against every run it holds), and a batch job that starts first would take
    every run; Dask places each run submitted this way on a free worker.

    Each poll asks the cluster to replace the workers it lost (``pool.revive()``). With no worker at all, one
    run is submitted anyway, so that the scheduler's ``no-workers-timeout`` (set on a local cluster) bounds
    the wait: a run that Dask fails because no worker came back (``NoWorkerError``) ends the sweep's wait,
    and every run not started yet is handed to ``unstarted(run, error)`` instead of being started."""
    from distributed import TimeoutError, wait

    waiting, running = list(reversed(runs)), {}
    while waiting or running:
        pool.revive()
        room = pool.slots() - len(running)
        if waiting and not running and room <= 0:
            room = 1  # no worker yet or none left: held by the scheduler until one comes (or its timeout)
        for _ in range(min(len(waiting), room)):
            run = waiting.pop()
            running[start(run)] = run
        try:
            done = wait(list(running), timeout=1, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in done:
            no_workers = _no_workers(future)
            finished(future, running.pop(future))
            future.release()  # else a worker that dies later takes the result along: Dask would redo the run
            if no_workers:
                while waiting:
                    unstarted(waiting.pop(), f"not started: {no_workers}")


def _no_workers(future) -> str:
    """Why Dask failed ``future`` for want of any worker (its ``no-workers-timeout``); "" otherwise."""
    from distributed.scheduler import NoValidWorkerError, NoWorkerError

    if future.status != "error":
        return ""
    err = future.exception()
    return f"{type(err).__name__}: {err}" if isinstance(err, (NoWorkerError, NoValidWorkerError)) else ""


def _outcome(future, run: SweepRun, folder: Path) -> dict:
    """A finished future as ``{"run", "status", "error"}``. A run that Dask gave up on after its retries
    (``RunFailed``: its ``error.json`` is written), after its workers died too often (``KilledWorker``) or
    because no worker was left to run it (``NoWorkerError``; these two written here, since no worker lived
    to) is a failed run."""
    if future.status != "error":
        return future.result()
    err = future.exception()
    error = str(err) if isinstance(err, RunFailed) else f"{type(err).__name__}: {err}"
    if not isinstance(err, RunFailed):
        if _is_done(run, folder):  # finished by a worker that died before it could report
            return {"run": run.name, "status": "done", "error": ""}
        _write_failure(run, folder, error)
    return {"run": run.name, "status": "failed", "error": error}


def _write_failure(run: SweepRun, folder: Path, error: str) -> None:
    """``error.json`` of a run that failed outside any worker; a finished run's ``done.json`` is kept."""
    record = {"run": run.name, "notebook": run.notebook and str(run.notebook), "parameters": run.parameters,
              "seed": run.seed, "error": error, "own_code": False}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, folder / "error.json")


# ---------------------------------------------------------------------------------------------- outputs
def has_outputs(notebook: str | Path) -> bool:
    """True if any cell of ``notebook`` carries outputs or an execution count."""
    import nbformat

    nb = nbformat.read(Path(notebook), as_version=4)
    return any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells)


def strip_outputs(notebook: str | Path) -> bool:
    """Remove outputs, execution counts and execution metadata in place; returns True if the file changed."""
    import nbformat

    path = Path(notebook)
    before = path.read_text()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after)
    return after != before


# ---------------------------------------------------------------------------------------------- command line
def _cmd_run(args) -> None:
    params = parse_parameter_text(args.notebook, [tuple(p) for p in args.parameter])
    try:
        print(run_notebook(args.notebook, args.out, params, timeout=args.timeout, progress=not args.prepare_only,
                           prepare_only=args.prepare_only))  # fmt: skip
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def _cmd_sweep(args) -> None:
    cluster = {"kind": args.cluster, "scheduler": args.scheduler, "queue": args.queue, "cores": args.cores,
               "memory": args.memory, "walltime": args.walltime, "gpus": args.gpus}  # fmt: skip
    table = sweep(args.spec, workers=args.workers, out_dir=args.out, cluster=cluster, retries=args.retries)
    shown = [c for c in table.columns if c != "error" and not (c.startswith("metrics.") and "hd95" in c)]
    print(table[shown].to_string(index=False))
    if (table["status"] != "done").any():
        raise SystemExit(1)


def _cmd_strip(args) -> None:
    dirty = [nb for nb in args.notebooks if (has_outputs(nb) if args.check else strip_outputs(nb))]
    for nb in dirty:
        print(f"{nb}: {'has outputs' if args.check else 'stripped'}")
    if args.check and dirty:
        raise SystemExit(1)


def add_subcommands(sub) -> None:
    """Register ``run``, ``sweep`` and ``strip`` on an argparse sub-parsers object; each sets ``func``.

    ``mckd-lab`` wires them with ``add_subcommands(subparsers)`` then ``args.func(args)``. Bad input raises
    `ParameterError` / ValueError / FileNotFoundError (the caller prints it, exit 2); a failing notebook or
    sweep run prints its error and exits 1 (SystemExit).
    """
    run = sub.add_parser("run", help="execute a notebook with papermill (executed copy + run/ in --out)")
    run.add_argument("notebook", type=Path)
    run.add_argument("--out", type=Path, required=True, help="folder for the executed notebook and run/")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter of the notebook's parameters cell (repeatable)")  # fmt: skip
    run.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    run.add_argument("--prepare-only", action="store_true", help="inject the parameters, do not execute")
    run.set_defaults(func=_cmd_run)
    sw = sub.add_parser("sweep", help="run a grid of notebook or training runs from a YAML spec on Dask "
                        "(resumable; local by default, or a batch system, Kubernetes, a running scheduler)")  # fmt: skip
    sw.add_argument("spec", type=Path)
    sw.add_argument("--workers", type=int, default=None,
                    help="worker processes (local), batch jobs or pods; each holds one run at a time")  # fmt: skip
    sw.add_argument("--out", type=Path, default=None, help="output folder (default: the spec's 'out')")
    sw.add_argument("--retries", type=int, default=None,
                    help="restarts of a run after its worker died or its kernel failed (default: the spec's, 2)")  # fmt: skip
    where = sw.add_argument_group("where the runs execute (over the spec's 'cluster' section)")
    where.add_argument(
        "--cluster", choices=KINDS, default=None, help="default: local (an embedded LocalCluster)"
    )
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="join a running cluster")
    where.add_argument("--queue", default=None, help="batch queue / partition")
    where.add_argument("--cores", type=int, default=None, help="cores per job or pod (local: cores to use)")
    where.add_argument("--memory", default=None, help="memory per job or pod, e.g. 16GB")
    where.add_argument("--walltime", default=None, help="per job, e.g. 04:00:00")
    where.add_argument("--gpus", type=int, default=None, help="GPUs per job or pod")
    sw.set_defaults(func=_cmd_sweep)
    st = sub.add_parser("strip", help="remove outputs from notebooks in place")
    st.add_argument("notebooks", nargs="+", type=Path)
    st.add_argument("--check", action="store_true", help="only report notebooks with outputs; exit 1 if any")
    st.set_defaults(func=_cmd_strip)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mckd_lab.experiments", description=__doc__.split("\n")[0]
    )
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:  # ParameterError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
