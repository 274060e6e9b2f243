"""A run read back, and what is done with it through its task (L4): evaluate, predict, explain.

    run = load_run("runs/mckd")          # config, history, metrics, model (eval, CPU), strategy state
    evaluate_run(run)                    # the all-subsets table; written to <run>/metrics.json
    predict_run(run, case=..., out=...)  # BraTS: a case folder -> NIfTI; ADNI: predict_run(run, rid=2)
    explain_run(run, case=... | rid=...) # Shapley values per modality + Integrated Gradients

Every function takes a ``Run`` or its folder, and hands the work to ``make_task(run.config.data.task)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from mckd_lab.config import RunConfig
from mckd_lab.rundir import METRICS, RunDir, write_json_atomic
from mckd_lab.tasks import Task, make_task, task_of


@dataclass
class Run:
    """A run directory read back: ``config``, ``history`` (list of records), ``metrics`` (dict or None),
    ``model`` (eval mode, CPU; from model.pt, else the last checkpoint), ``strategy`` state (e.g. omega),
    ``iteration`` reached, and ``task`` (the run's ``Task``)."""

    run_dir: Path
    config: RunConfig
    history: list[dict]
    metrics: dict | None
    model: torch.nn.Module
    strategy: dict
    iteration: int
    task: Task

    @property
    def importance(self) -> dict[str, float] | None:
        """The final importance weights {modality: softmax(omega)} (None for strategies without omega)."""
        if "omega" not in self.strategy:
            return None
        w = torch.softmax(self.strategy["omega"].float(), 0).tolist()
        return dict(zip(self.model.modalities, w, strict=True))

    def records(self, kind: str) -> list[dict]:
        """History records of one kind (``train``, ``meta``, ``elect``, ``eval``)."""
        return [r for r in self.history if r.get("kind") == kind]


def load_run(run_dir: str | Path | Run) -> Run:
    """Read a run directory (layout: ``mckd_lab.rundir``); the model is rebuilt from ``config.json``. A
    ``Run`` is returned as it is."""
    if isinstance(run_dir, Run):
        return run_dir
    folder = RunDir(run_dir)
    saved = folder.read_config()
    if saved is None:
        raise FileNotFoundError(f"{folder.path} is not a run directory: it has no config.json")
    config = RunConfig.from_dict(saved)
    state = folder.weights()
    task = make_task(config.data.task)
    model = task.build_model(config.model)
    model.load_state_dict(state["model"])
    return Run(folder.path, config, folder.history(), folder.read_json(METRICS), model.eval(),
               state.get("strategy", {}), state["iteration"], task)  # fmt: skip


def evaluate_run(run: str | Path | Run, data: str | Path | None = None, **options) -> dict:
    """Evaluate a trained run over every subset of modalities and return the JSON-ready table.

    ``data`` None: the run's own data, test split; the result is also written to ``<run>/metrics.json``
    (atomically). ``data`` other data (a BraTS folder, an ADNIMERGE CSV): its cases that the run did not train
    or hold out on; nothing is written. ``options`` go to the task (BraTS: ``with_hd95``, ``progress``).
    """
    run = load_run(run)
    result = run.task.evaluate(run, data, **options)
    if data is None:
        write_json_atomic(result, run.run_dir / METRICS)
    return result


def render_table(result: dict, **options) -> str:
    """An evaluation result (``evaluate_run``, ``metrics.json``) as a text table, by the task that made it."""
    return task_of(result).render_table(result, **options)


def predict_run(run: str | Path | Run, **options):
    """Predict one case with a trained run: BraTS ``case=DIR, out=SEG.nii.gz, present="flair,t1ce"``
    (a ``Prediction``, the NIfTI written on the input's grid); ADNI ``rid=RID, data=CSV`` (a
    ``SubjectPrediction``)."""
    run = load_run(run)
    return run.task.predict(run, **options)


def explain_run(run: str | Path | Run, **options) -> dict:
    """Attributions of one case with a trained run: BraTS ``case=DIR, out=DIR, n_steps=32``; ADNI ``rid=RID,
    data=CSV, out=DIR``. Returns JSON-ready ``{"case" | "rid", "shapley", "baseline", "full", ...}``."""
    run = load_run(run)
    return run.task.explain(run, **options)


def load_results(path: str | Path):
    """The results table of a finished sweep: a sweep folder or its ``results.csv``, as a DataFrame."""
    path = Path(path)
    csv = path / "results.csv" if path.is_dir() else path
    if not csv.is_file():
        raise FileNotFoundError(f"no sweep results at {csv}; run `mckd-lab sweep SPEC.yaml` first")
    return pd.read_csv(csv)
