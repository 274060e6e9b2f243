"""The run directory: its layout, the one atomic JSON writer, checkpoints and the history (L0).

A run directory holds::

    config.json      RunConfig.to_dict() plus ``mckd_lab_version``: rebuilds the run
    splits.json      case ids (or RIDs) per split, when data comes from disk
    scaler.json      tabular tasks: the feature scaler fitted on the training split
    history.jsonl    one JSON record per line, ``kind`` train | meta | elect
    checkpoint.pt    the last checkpoint (model, optimiser, strategy, iteration, RNG states, config)
    checkpoint.prev.pt  the one before it, kept so that a damaged checkpoint.pt costs one interval, not the run
    model.pt         the final model (model, strategy, iteration, config)
    metrics.json     the all-subsets table, written by evaluation

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a crash never
leaves half a file; checkpoints hold tensors and plain values only and are loaded with
``torch.load(weights_only=True)``. A checkpoint carries the SHA-256 of its contents (``torch.load`` reads a
flipped byte in tensor data without complaint), so a damaged one is named and the previous one used instead.
A process training in a folder holds its lock (``.lock``, ``flock``): a second one is refused at once.
A full disk is reported as ``DiskFull`` naming the file; what was there before stays loadable.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mckd_lab import __version__
from mckd_lab.config import VERSION_KEY

CONFIG, SPLITS, SCALER, HISTORY = "config.json", "splits.json", "scaler.json", "history.jsonl"
CHECKPOINT, MODEL, METRICS = "checkpoint.pt", "model.pt", "metrics.json"
PREVIOUS, LOCK = "checkpoint.prev.pt", ".lock"
RUN_FILES = (CONFIG, SPLITS, HISTORY, CHECKPOINT, PREVIOUS, MODEL, METRICS, SCALER)
DIGEST = "sha256"  # the key of a checkpoint's digest of its own contents


class RunDirLocked(FileExistsError):
    """Another process is training in this run directory."""


class CheckpointCorrupt(ValueError):
    """A checkpoint file that cannot be read, or whose contents do not match its digest."""


class DiskFull(OSError):
    """No space left while writing a run file; the file's previous version is untouched."""


@contextmanager
def _space_checked(path: Path) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT while writing ``path`` into ``DiskFull`` naming it."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFull):
            raise
        raise DiskFull(err.errno, f"no space left on the device writing {path}; its previous version (if any) "
                       "is intact: free space and continue with resume (mckd-lab train --resume)") from err


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and a rename (never half-written);
    values JSON does not know (paths, dates) are written as their text."""
    path = Path(path)
    with _space_checked(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's contents: every tensor's dtype, shape and bytes and every plain value, in a
    fixed order (dict keys sorted by their text)."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if torch.is_tensor(obj):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(b"{")
            for key in sorted(obj, key=str):
                h.update(repr(key).encode())
                feed(obj[key])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    feed(state)
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict, keep_previous: bool = False) -> None:
    """``torch.save`` (with the contents' digest) to a temporary file in the same folder, flushed to disk,
    then ``os.replace``: ``path`` always holds a whole checkpoint, old or new. ``keep_previous``: the file
    being replaced stays as ``checkpoint.prev.pt`` (hard-linked, else copied, before the replace)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with _space_checked(path):
        try:
            with open(tmp, "wb") as f:
                torch.save({**state, DIGEST: state_digest(state)}, f)
                f.flush()
                os.fsync(f.fileno())
            if keep_previous and path.exists():
                _keep_previous(path, path.with_name(PREVIOUS))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _keep_previous(path: Path, previous: Path) -> None:
    """``previous`` becomes a copy of ``path`` atomically (a hard link renamed into place; a copy where the
    file system has no links); a damaged ``path`` is not kept over a good ``previous``."""
    try:
        load_checkpoint(path)
    except CheckpointCorrupt:
        return
    staged = previous.with_name(f".{previous.name}.tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:
        shutil.copyfile(path, staged)
    os.replace(staged, previous)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; one holding pickled Python objects is refused
    (``CheckpointCorrupt``, a ``ValueError``: a flipped byte can look like one too), one that cannot be read or whose digest does not match raises ``CheckpointCorrupt``
    naming it. Checkpoints written before digests existed load unchecked."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # not torch's archive: bytes the legacy unpickler choked on
            raise CheckpointCorrupt(f"{path} is damaged and cannot be read (not a torch checkpoint archive)") from None
        raise CheckpointCorrupt(
            f"{path} holds pickled Python objects, not only tensors and plain values; mckd-lab does not "
            "unpickle them (that can run arbitrary code). Save state dicts instead, e.g. "
            "{'model': model.state_dict()}"
            f" (loader said: {str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, UnicodeDecodeError, ValueError, KeyError, IndexError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointCorrupt(f"{path} is damaged and cannot be read ({message})") from None
    if not isinstance(state, dict):
        raise CheckpointCorrupt(f"{path} does not hold a checkpoint dict (found {type(state).__name__})")
    digest = state.pop(DIGEST, None)
    if digest is not None and digest != state_digest(state):
        raise CheckpointCorrupt(f"{path} is damaged: its contents do not match the digest written with them")
    return state


class RunDir:
    """One run directory (see the module docstring): paths, guards, the history and the saved state."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- the lock --------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock (``flock`` on ``.lock``, which holds the owner's pid) for the block; a folder
        locked by another process raises ``RunDirLocked`` naming the folder and that pid, at once. The kernel
        drops the lock when its process ends however it ends (no stale lock after a kill); the file stays."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirLocked(
                f"{self.path} is in use by another process (pid {holder}, lock {self / LOCK}): one process "
                "trains in a run directory at a time; wait for it to finish or stop it, or use another folder"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the flock

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
        if resume and not checkpoint.exists() and not (self / PREVIOUS).exists():
            raise FileNotFoundError(
                f"cannot resume: {checkpoint} does not exist (no checkpoint was written yet)"
            )
        if not resume:
            self.write_config(config)

    def resume_state(self, config: dict) -> dict:
        """The last good checkpoint (``checkpoint.pt``, else ``checkpoint.prev.pt`` with a warning naming the
        damaged one), checked against ``config``; history records after it are dropped (they were written
        after the checkpoint and will be written again)."""
        state = self.last_checkpoint()
        if _without_progress(state["config"]) != _without_progress(config):
            raise ValueError(
                f"{self / CHECKPOINT} was written with another configuration; resume with its config.json "
                "(only runtime.progress may differ)"
            )
        self.truncate_history(state["iteration"])
        return state

    def last_checkpoint(self) -> dict:
        """``checkpoint.pt``, or when it is damaged (or missing after a crash) ``checkpoint.prev.pt``; a
        warning names the damaged file. Raises ``CheckpointCorrupt`` naming both when neither loads."""
        current, previous = self / CHECKPOINT, self / PREVIOUS
        try:
            return load_checkpoint(current)
        except (CheckpointCorrupt, FileNotFoundError) as err:
            if not previous.exists():
                raise
            problem = err
        try:
            state = load_checkpoint(previous)
        except CheckpointCorrupt as err:
            raise CheckpointCorrupt(f"{problem}; the previous checkpoint is damaged too: {err}") from None
        warnings.warn(f"{problem}; using the previous checkpoint {previous} (iteration {state['iteration']})",
                      stacklevel=2)  # fmt: skip
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
        with _space_checked(self / HISTORY), (self / HISTORY).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def history(self) -> list[dict]:
        """The records; a last line cut short (a process killed, or a disk full, while appending it) is
        skipped: it was written after the last checkpoint and a resume writes it again."""
        return [json.loads(line) for line in self._history_lines()]

    def _history_lines(self) -> list[str]:
        path = self / HISTORY
        if not path.exists():
            return []
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if lines:
            try:
                json.loads(lines[-1])
            except json.JSONDecodeError:
                lines.pop()
        return lines

    def truncate_history(self, start: int) -> None:
        """Keep the records of iterations before ``start``."""
        path = self / HISTORY
        if not path.exists():
            return
        kept = [ln for ln in self._history_lines() if json.loads(ln).get("iteration", -1) < start]
        tmp = path.with_name(f".{path.name}.tmp")
        with _space_checked(path):
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            os.replace(tmp, path)

    # --- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict, final: bool = False) -> None:
        """``model.pt`` (final) or ``checkpoint.pt``, the one it replaces kept as ``checkpoint.prev.pt``."""
        save_checkpoint(self / (MODEL if final else CHECKPOINT), state, keep_previous=not final)

    def weights(self) -> dict:
        """The final model's state (``model.pt``), else the last good checkpoint's."""
        if (self / MODEL).exists():
            return load_checkpoint(self / MODEL)
        if not (self / CHECKPOINT).exists() and not (self / PREVIOUS).exists():
            raise FileNotFoundError(f"{self.path} has no model.pt or checkpoint.pt yet: train it first")
        return self.last_checkpoint()

    @property
    def finished(self) -> bool:
        return (self / MODEL).is_file()


def _without_progress(config: dict) -> dict:
    return {**config, "runtime": {k: v for k, v in config["runtime"].items() if k != "progress"}}
