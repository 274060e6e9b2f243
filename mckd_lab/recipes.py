"""Notebook helpers (L5): each a notebook cell's one call, so that notebooks hold narrative and calls only.

- ``brats_config`` / ``adni_config``: a validated RunConfig of the task's CPU-sized recipe from a notebook's
  parameters (``Task.config``).
- ``prepare_run``: the run folder ready for a config (a run of another config found there is cleared, and
  said so) and its data found or generated, once.
- ``train_or_reuse``: running a notebook again reuses its finished run, continues an interrupted one, or
  trains; ``load_or_train``: notebooks 3 and 4 reuse notebook 1's run or train the one it would.
- ``split_cases``: the cases of one split of a run, as views take them (``Task.cases``).
- ``describe_config``: a run configuration in a few lines (what differs from ``RunConfig``'s defaults).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mckd_lab.config import RunConfig
from mckd_lab.rundir import CHECKPOINT, RunDir, load_checkpoint
from mckd_lab.runs import Run, load_run
from mckd_lab.tasks import make_task
from mckd_lab.train import train


def brats_config(data: str | Path | None = None, **options) -> RunConfig:
    """The BraTS recipe (notebook 01's parameters): ``make_task("brats").config(data, **options)``; see
    ``SegmentationTask.config`` for the options (method, iterations, seed, cases, size, device, dotted
    overrides)."""
    return make_task("brats").config(data, **options)


def adni_config(data: str | Path | None = None, *, task: str = "adni", **options) -> RunConfig:
    """An ADNI recipe (``task``: adni, adni-cognitive or adni-t1): ``make_task(task).config(data, **options)``;
    see ``ClassificationTask.config`` for the options (method, epochs, seed, subjects, batch_size, ...)."""
    return make_task(task).config(data, **options)


def prepare_run(config: RunConfig, run_dir: str | Path) -> Path:
    """Make ``run_dir`` ready for ``config`` and return its data (a BraTS folder, an ADNIMERGE CSV).

    A run of another configuration found there is removed (its run files; generated data too when the data
    section changed), and said so, so that running a notebook again with new parameters just works. Generated
    data is made on first use (``Task.prepare_data``), where training will find it.
    """
    folder = RunDir(run_dir)
    old = folder.read_config()
    if old is not None and old != config.to_dict():
        print(f"{folder.path} held a run with another configuration: starting it again", file=sys.stderr)
        folder.clear()
        if old.get("data") != config.to_dict()["data"]:
            for generated in ("phantoms", "cohort"):
                shutil.rmtree(folder / generated, ignore_errors=True)
    elif old is None and not folder.finished:
        folder.clear()  # a run stopped before its config was written (or stray files): start clean
    folder.path.mkdir(parents=True, exist_ok=True)
    return make_task(config.data.task).prepare_data(config.data, folder.path)


def train_or_reuse(
    config: RunConfig, run_dir: str | Path, *, callbacks: Sequence[Callable[[dict], None]] = (), **train_kwargs
) -> Run:
    """Train ``config`` into ``run_dir`` so that running a notebook again just works; returns the ``Run``.

    The folder is prepared (``prepare_run``); a finished run of the same config is reused at once, an
    interrupted one continues from its checkpoint. ``callbacks`` see every history record of the run in order,
    whichever way it came: a reused run's records are replayed to them from ``history.jsonl``, and a continued
    run's records before its checkpoint, so that a live view (``ImportanceWeightsView.append``) draws the same
    figure for a reused run as for a fresh one. ``train_kwargs`` go to ``mckd_lab.train.train``.
    """
    prepare_run(config, run_dir)
    folder = RunDir(run_dir)
    if folder.finished:
        run = load_run(folder.path)
        replay(run.history, callbacks)
        return run
    if (folder / CHECKPOINT).is_file():
        start = load_checkpoint(folder / CHECKPOINT)["iteration"]
        replay((r for r in folder.history() if r.get("iteration", -1) < start), callbacks)
        return train(config, folder.path, resume=True, callbacks=callbacks, **train_kwargs)
    folder.clear()  # stopped before its first checkpoint: start again
    return train(config, folder.path, callbacks=callbacks, **train_kwargs)


def replay(records: Iterable[dict], callbacks: Sequence[Callable[[dict], None]]) -> None:
    """Hand each history record to every callback, in order (as ``train`` does while it writes them)."""
    callbacks = list(callbacks)
    if callbacks:
        for record in records:
            for callback in callbacks:
                callback(record)


def load_or_train(source_run: str | Path, config: RunConfig) -> Run:
    """The finished run at ``source_run``; if there is none yet (no ``model.pt``), ``config`` is trained there
    first (``train_or_reuse``). Notebooks 3 and 4 point at notebook 1's run folder this way: they reuse its
    run, or train the one notebook 1 would, where notebook 1 will find it."""
    return load_run(source_run) if RunDir(source_run).finished else train_or_reuse(config, source_run)


def split_cases(run: Run, split: str = "test") -> list:
    """The cases of one split of a run (``splits.json``), read from the run's data: BraTS ``Case`` objects,
    ADNI ``Subject`` objects (``Task.cases``)."""
    return run.task.cases(run, split)


def describe_config(config: RunConfig) -> str:
    """A run configuration in a few lines: per section, the fields that differ from ``RunConfig()``'s
    defaults (the task and the method always), then where the whole of it is. For a notebook's first cell,
    instead of the dataclass's one long line."""
    given, default = config.to_dict(), RunConfig().to_dict()
    always = {"data": ("task",), "method": ("name",), "optim": ("iterations",)}
    lines = []
    for section, fields in given.items():
        if not isinstance(fields, dict):
            continue
        shown = [
            f"{key}={_plain(value)}"
            for key, value in fields.items()
            if key in always.get(section, ()) or value != default.get(section, {}).get(key)
        ]
        if shown:
            lines.append(f"{section:<8} " + ", ".join(shown))
    lines.append("(every other field at RunConfig's default; all of it: config.to_dict(), or config.json in the run)")
    return "\n".join(lines)


def _plain(value) -> str:
    """A config value as written in a summary: sizes as 32×32×32, None as none, the rest as str."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, int) for v in value):
        return "×".join(str(v) for v in value)
    return "none" if value is None else str(value)
