"""The run directory under faults: damaged checkpoints, a full disk, a cut-short history line, its lock."""

import errno
import json

import pytest
import torch

from mckd_lab.rundir import (
    CHECKPOINT,
    PREVIOUS,
    CheckpointCorrupt,
    DiskFull,
    RunDir,
    RunDirLocked,
    load_checkpoint,
)  # fmt: skip


def _state(iteration: int) -> dict:
    g = torch.Generator().manual_seed(iteration)
    return {"model": {"w": torch.randn(64, generator=g)}, "iteration": iteration, "config": {"a": 1}}


def _two_checkpoints(tmp_path) -> RunDir:
    folder = RunDir(tmp_path)
    folder.save_checkpoint(_state(3))
    folder.save_checkpoint(_state(6))
    return folder


def _flip_in_tensor_data(path, tensor: torch.Tensor) -> None:
    """Flip one byte inside the tensor's stored bytes (torch.load alone reads such a file without error)."""
    data = bytearray(path.read_bytes())
    at = bytes(data).find(tensor.numpy().tobytes()[:16])
    assert at > 0
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_previous_checkpoint_is_kept_beside_the_last(tmp_path):
    folder = _two_checkpoints(tmp_path)
    assert load_checkpoint(folder / CHECKPOINT)["iteration"] == 6
    assert load_checkpoint(folder / PREVIOUS)["iteration"] == 3


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty", "missing"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(tmp_path, damage):
    folder = _two_checkpoints(tmp_path)
    path = folder / CHECKPOINT
    if damage == "flipped byte":
        _flip_in_tensor_data(path, _state(6)["model"]["w"])
        assert torch.load(path, weights_only=True)["iteration"] == 6  # torch alone does not see it
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    if damage != "missing":
        with pytest.raises(CheckpointCorrupt, match=rf"{path} is damaged"):
            load_checkpoint(path)
    with pytest.warns(UserWarning, match=rf"using the previous checkpoint {folder / PREVIOUS} \(iteration 3\)"):
        state = folder.last_checkpoint()
    assert state["iteration"] == 3 and torch.equal(state["model"]["w"], _state(3)["model"]["w"])


def test_both_checkpoints_damaged_is_a_clear_error_naming_both(tmp_path):
    folder = _two_checkpoints(tmp_path)
    for name in (CHECKPOINT, PREVIOUS):
        (folder / name).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointCorrupt, match=rf"{folder / CHECKPOINT} is damaged.*{folder / PREVIOUS} is damaged"):
        folder.last_checkpoint()


def test_a_damaged_checkpoint_is_not_kept_as_the_previous_one(tmp_path):
    folder = _two_checkpoints(tmp_path)
    (folder / CHECKPOINT).write_bytes(b"garbage")
    folder.save_checkpoint(_state(9))
    assert load_checkpoint(folder / PREVIOUS)["iteration"] == 3  # the good one stays
    assert load_checkpoint(folder / CHECKPOINT)["iteration"] == 9


def test_a_full_disk_is_a_clear_error_and_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    folder = _two_checkpoints(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull, match=rf"no space left on the device writing {folder / CHECKPOINT}"):
        folder.save_checkpoint(_state(9))
    monkeypatch.undo()
    assert load_checkpoint(folder / CHECKPOINT)["iteration"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT, PREVIOUS])  # no temporary file left


def test_a_history_line_cut_short_is_skipped_and_truncated_away(tmp_path):
    folder = RunDir(tmp_path)
    for it in range(3):
        folder.append({"kind": "train", "iteration": it})
    with (folder / "history.jsonl").open("a") as f:
        f.write('{"kind": "train", "itera')  # a kill in the middle of a write
    assert [r["iteration"] for r in folder.history()] == [0, 1, 2]
    folder.truncate_history(2)
    assert [json.loads(ln)["iteration"] for ln in (folder / "history.jsonl").read_text().splitlines()] == [0, 1]


def test_the_lock_refuses_a_second_holder_and_is_free_after(tmp_path):
    folder = RunDir(tmp_path / "run")
    with folder.lock():
        with pytest.raises(RunDirLocked, match=rf"{folder.path} is in use by another process \(pid \d+"):
            with RunDir(tmp_path / "run").lock():
                pass
    with RunDir(tmp_path / "run").lock():
        pass
