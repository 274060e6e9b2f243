"""Notebook helpers (L5): each a notebook cell's one call, so that notebooks hold narrative and calls only.

- ``brats_config`` / ``adni_config``: a validated RunConfig of the task's CPU-sized recipe from a notebook's
  parameters (``Task.config``).
- ``prepare_run``: the run folder ready for a config (a run of another config found there is cleared, and
  said so) and its data found or generated, once.
- ``train_or_reuse``: running a notebook again reuses its finished run, continues an interrupted one, or
  trains; ``load_or_train``: notebooks 3 and 4 reuse notebook 1's run or train the one it would.
- ``split_cases``: the cases of one split of a run, as views take them (``Task.cases``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mckd_lab.config import RunConfig
from mckd_lab.rundir import CHECKPOINT, RunDir
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


def train_or_reuse(config: RunConfig, run_dir: str | Path, **train_kwargs) -> Run:
    """Train ``config`` into ``run_dir`` so that running a notebook again just works; returns the ``Run``.

    The folder is prepared (``prepare_run``); a finished run of the same config is reused at once, an
    interrupted one continues from its checkpoint. ``train_kwargs`` go to ``mckd_lab.train.train`` (e.g.
    ``callbacks``).
    """
    prepare_run(config, run_dir)
    folder = RunDir(run_dir)
    if folder.finished:
        return load_run(folder.path)
    if (folder / CHECKPOINT).is_file():
        return train(config, folder.path, resume=True, **train_kwargs)
    folder.clear()  # stopped before its first checkpoint: start again
    return train(config, folder.path, **train_kwargs)


def load_or_train(source_run: str | Path, config: RunConfig) -> Run:
    """The finished run at ``source_run``; if there is none yet (no ``model.pt``), ``config`` is trained there
    first (``train_or_reuse``). Notebooks 3 and 4 point at notebook 1's run folder this way: they reuse its
    run, or train the one notebook 1 would, where notebook 1 will find it."""
    return load_run(source_run) if RunDir(source_run).finished else train_or_reuse(config, source_run)


def split_cases(run: Run, split: str = "test") -> list:
    """The cases of one split of a run (``splits.json``), read from the run's data: BraTS ``Case`` objects,
    ADNI ``Subject`` objects (``Task.cases``)."""
    return run.task.cases(run, split)
