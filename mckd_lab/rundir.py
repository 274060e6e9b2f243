"""The run directory: its layout, the one atomic JSON writer, checkpoints and the history (L0).

A run directory holds::

    config.json      RunConfig.to_dict() plus ``mckd_lab_version``: rebuilds the run
    splits.json      case ids (or RIDs) per split, when data comes from disk
    scaler.json      tabular tasks: the feature scaler fitted on the training split
    history.jsonl    one JSON record per line, ``kind`` train | meta | elect
    checkpoint.pt    the last checkpoint (model, optimiser, strategy, iteration, RNG states, config)
    model.pt         the final model (model, strategy, iteration, config)
    metrics.json     the all-subsets table, written by evaluation

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves half a file; checkpoints hold tensors and plain values only and are loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from mckd_lab import __version__
from mckd_lab.config import VERSION_KEY

CONFIG, SPLITS, SCALER, HISTORY = "config.json", "splits.json", "scaler.json", "history.jsonl"
CHECKPOINT, MODEL, METRICS = "checkpoint.pt", "model.pt", "metrics.json"
RUN_FILES = (CONFIG, SPLITS, HISTORY, CHECKPOINT, MODEL, METRICS, SCALER)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and a rename (never half-written);
    values JSON does not know (paths, dates) are written as their text."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; one holding pickled Python objects is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds pickled Python objects, not only tensors and plain values; mckd-lab does not "
            "unpickle them (that can run arbitrary code). Save state dicts instead, e.g. "
            "{'model': model.state_dict()}"
            f" (loader said: {str(err).splitlines()[0]})"
        ) from None


class RunDir:
    """One run directory (see the module docstring): paths, guards, the history and the saved state."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- starting and resuming -------------------------------------------------------------------------------
    def start(self, config: dict, resume: bool) -> None:
        """Make the folder ready for training ``config`` (a RunConfig dict).

        A fresh start refuses a folder that already holds a run; ``resume`` needs a checkpoint written with
        the same configuration (``runtime.progress`` may differ). A fresh start writes ``config.json``.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        checkpoint = self / CHECKPOINT
        if not resume and (checkpoint.exists() or (self / HISTORY).exists()):
            raise FileExistsError(
                f"{self.path} already holds a run: continue it with resume=True (mckd-lab train --resume), "
                "or use a new folder"
            )
        if resume and not checkpoint.exists():
            raise FileNotFoundError(
                f"cannot resume: {checkpoint} does not exist (no checkpoint was written yet)"
            )
        if not resume:
            self.write_config(config)

    def resume_state(self, config: dict) -> dict:
        """The last checkpoint, checked against ``config``; history records after it are dropped (they were
        written after the checkpoint and will be written again)."""
        state = load_checkpoint(self / CHECKPOINT)
        if _without_progress(state["config"]) != _without_progress(config):
            raise ValueError(
                f"{self / CHECKPOINT} was written with another configuration; resume with its config.json "
                "(only runtime.progress may differ)"
            )
        self.truncate_history(state["iteration"])
        return state

    def clear(self) -> None:
        """Remove the run's files (not its data), e.g. before training another configuration there."""
        for name in RUN_FILES:
            (self / name).unlink(missing_ok=True)

    # --- config, splits, metrics ---------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json_atomic({**config, VERSION_KEY: __version__}, self / CONFIG)

    def read_config(self) -> dict | None:
        """The saved RunConfig dict (without the version), None when the folder has no config.json."""
        path = self / CONFIG
        if not path.is_file():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved.pop(VERSION_KEY, None)
        return saved

    def read_json(self, name: str) -> Any:
        path = self / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json_atomic(obj, self / name)

    # --- history ---------------------------------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Append one record to ``history.jsonl`` (one line, flushed with the file's close)."""
        with (self / HISTORY).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict]:
        path = self / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_history(self, start: int) -> None:
        """Keep the records of iterations before ``start``."""
        path = self / HISTORY
        if not path.exists():
            return
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln).get("iteration", -1) < start]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        os.replace(tmp, path)

    # --- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict, final: bool = False) -> None:
        save_checkpoint(self / (MODEL if final else CHECKPOINT), state)

    def weights(self) -> dict:
        """The final model's state (``model.pt``), else the last checkpoint's."""
        path = next((p for p in (self / MODEL, self / CHECKPOINT) if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{self.path} has no model.pt or checkpoint.pt yet: train it first")
        return load_checkpoint(path)

    @property
    def finished(self) -> bool:
        return (self / MODEL).is_file()


def _without_progress(config: dict) -> dict:
    return {**config, "runtime": {k: v for k, v in config["runtime"].items() if k != "progress"}}
