"""Training on several processes (DDP, gloo on CPU, 2 ranks launched by torch's launcher; tiny balls).

Ranks stay identical (network, omega, LCKD teachers); 2 ranks at batch 1 train as 1 process at batch 2; a
distributed run resumed from its checkpoint equals an uninterrupted one; a rank that fails stops the run with
its error named and the last good checkpoint kept; a second process on a run directory is refused at once.

The jobs below are module-level so that the launcher's processes can import them.
"""

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from toydata import ToyBalls

from mckd_lab.config import RunConfig
from mckd_lab.distributed import DistributedRunFailed, describe_failure, launch
from mckd_lab.rundir import RunDir, RunDirLocked, load_checkpoint
from mckd_lab.tasks import make_task
from mckd_lab.train import train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")


def _config(**overrides):
    base = {
        "optim.iterations": 6, "optim.warmup_iterations": 2, "optim.batch_size": 1, "model.channels": [4, 8, 16],
        "data.crop": [16, 16, 16], "method.meta_every_warmup": 2, "method.meta_every_missing": 2,
        "method.meta_batches": 1, "method.elect_every": 2, "runtime.progress": False, "runtime.checkpoint_every": 3,
    }  # fmt: skip
    return RunConfig().with_overrides({**base, **overrides})


def _data(train_data=None):
    return {"train_data": train_data or ToyBalls(cases=6, size=16, seed=0),
            "heldout_data": ToyBalls(cases=2, size=16, seed=1)}  # fmt: skip


class Stop(Exception):
    pass


class FailAt(torch.utils.data.Dataset):
    """ToyBalls that raise once ``after`` items were read, on rank ``rank`` (None: on every rank)."""

    def __init__(self, after: int, rank: int | None, error=Stop):
        self.data, self.after, self.rank, self.error, self.reads = ToyBalls(cases=6, size=16, seed=0), after, rank, error, 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.after and self.rank in (None, int(os.environ.get("RANK", 0))):
            raise self.error(f"rank {os.environ.get('RANK')} lost its data at read {self.reads}")
        return self.data[i]


def _ranks_job(root):
    """On each rank: the warm-up-only run (all modalities: comparable with one process), an MCKD run with
    missing modalities, an LCKD run; returns this rank's network, omega and teachers of each."""
    dist.init_process_group("gloo")
    out = {}
    for name, config in {
        "warmup": _config(**{"optim.iterations": 4, "optim.warmup_iterations": 4}),
        "mckd": _config(),
        "lckd": _config(**{"method.name": "lckd"}),
    }.items():
        train(config, root / name, **_data())
        dist.barrier()
        state = RunDir(root / name).weights()
        out[name] = {"model": state["model"], "strategy": state["strategy"]}
    dist.destroy_process_group()
    return out


def _resume_job(root):
    """Uninterrupted run, and the same run stopped on every rank at iteration 4 (after the checkpoint at 3)
    then resumed; returns rank 0's histories."""
    dist.init_process_group("gloo")
    config = _config()
    train(config, root / "full", **_data())
    with pytest.raises(Stop):
        train(config, root / "resumed", **_data(FailAt(after=4, rank=None)))  # batch 1: 4 reads = iterations 0-3
    checkpoint = load_checkpoint(root / "resumed" / "checkpoint.pt")["iteration"]
    train(config, root / "resumed", resume=True, **_data())
    dist.destroy_process_group()
    return checkpoint


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _distance(a: dict, b: dict) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5)


def test_ranks_stay_identical_and_two_ranks_at_batch_1_train_as_one_process_at_batch_2(tmp_path):
    """Rank 0 and rank 1 end with the same network, omega (and its Adam state) and LCKD teachers, bit for bit
    (DDP averages the gradients; omega and the teachers are rank 0's, broadcast).

    Against one process at batch 2 (warm-up only, so every modality is present on both sides): the losses are
    per-sample means (Dice per sample, BCE, KD) and instance norm normalises per sample, so the two compute the
    same sums in another order (one conv over 2 samples vs two over 1, then the all-reduce). Float32 rounds
    each operation to u = 2**-24 ~ 6e-8; a sum of n terms reordered differs by at most ~ n u sum|terms|, and
    the largest sums here are the conv weight gradients over B * 16**3 = 8192 voxels: n u ~ 5e-4. Four SGD
    steps add such gradients up linearly (lr 1e-2, no growth to first order), so the bound stated is: the two
    parameter vectors differ by at most 1e-3 of the distance either moved from the start, and likewise omega.
    """
    results = launch(2, _ranks_job, (tmp_path,))
    for name in ("warmup", "mckd", "lckd"):
        r0, r1 = results[0][name], results[1][name]
        for key, value in r0["model"].items():
            assert torch.equal(value, r1["model"][key]), (name, key)
        assert repr(r0["strategy"]) == repr(r1["strategy"]), name  # omega, Adam moments, teachers
    assert not torch.equal(results[0]["mckd"]["strategy"]["omega"], torch.zeros(4))  # omega did move
    assert "teachers" in results[0]["lckd"]["strategy"]

    one = train(_config(**{"optim.iterations": 4, "optim.warmup_iterations": 4, "optim.batch_size": 2}),
                tmp_path / "one", **_data())  # fmt: skip
    torch.manual_seed(999)  # the trainer builds the network after seeding with runtime.seed
    initial = make_task("brats").build_model(_config().model).state_dict()
    two = results[0]["warmup"]
    moved = _distance(one.model.state_dict(), initial)
    assert moved > 0
    assert _distance(two["model"], one.model.state_dict()) <= 1e-3 * moved
    omega_one = RunDir(tmp_path / "one").weights()["strategy"]["omega"]
    omega_two = two["strategy"]["omega"]
    assert (omega_two - omega_one).norm() <= 1e-3 * omega_one.norm() + 1e-6
    losses_one = [r["loss"] for r in one.history if r["kind"] == "train"]
    losses_two = [r["loss"] for r in RunDir(tmp_path / "warmup").history() if r["kind"] == "train"]
    assert losses_two == pytest.approx(losses_one, rel=1e-3)


def test_a_distributed_run_resumed_from_its_checkpoint_equals_an_uninterrupted_one(tmp_path):
    assert launch(2, _resume_job, (tmp_path,))[0] == 3
    full, resumed = RunDir(tmp_path / "full"), RunDir(tmp_path / "resumed")
    assert _strip(resumed.history()) == _strip(full.history())
    a, b = full.weights(), resumed.weights()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert torch.equal(a["strategy"]["omega"], b["strategy"]["omega"])


def _train_job(config, folder, data):
    train(config, folder, **data)


def test_a_failing_rank_stops_the_run_with_its_error_and_the_last_good_checkpoint_kept(tmp_path):
    tic = time.perf_counter()
    with pytest.raises(DistributedRunFailed, match=r"rank 1 .*lost its data at read 5"):
        launch(2, _train_job, (_config(), tmp_path / "run", _data(FailAt(after=4, rank=1, error=OSError))))
    assert time.perf_counter() - tic < 120  # not left waiting for the collective's 30-minute timeout
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["iteration"] == 3 and state["world_size"] == 2
    assert not (tmp_path / "run" / "model.pt").exists()
    assert max(r["iteration"] for r in RunDir(tmp_path / "run").history()) == 3  # rank 0 never logged 4


def test_the_failure_named_is_the_cause_not_a_peer_that_lost_it():
    """Rank 1 dies; rank 0's next all-reduce fails within the same second (error files stamp whole seconds)
    with gloo's "Connection reset by peer"; the launcher may report only rank 0 (``launch`` adds every rank's
    error file). The message names rank 1 and its error, in either order (a clean-clone run named rank 0's
    echo before this rule)."""
    def failure(pid, message, timestamp=1796246753):
        return SimpleNamespace(pid=pid, exitcode=1, timestamp=timestamp, message={"message": message})

    echo = failure(10, "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:45767: "
                       "Connection reset by peer. This is typically caused by a remote worker hanging")
    cause = failure(11, "Traceback ...\nOSError: rank 1 lost its data at read 5")
    for failures in ({0: echo, 1: cause}, {1: cause, 0: echo}):
        text = describe_failure(failures)
        assert text.startswith("rank 1 (pid 11) failed with exit code 1") and text.endswith(
            "OSError: rank 1 lost its data at read 5"), text
    # two real causes: the earlier one, then the lower rank
    later = failure(12, "ValueError: late", timestamp=1796246754)
    assert describe_failure({0: later, 1: cause}).startswith("rank 1 (pid 11)")


def test_a_second_process_on_a_run_directory_is_refused_at_once_and_nothing_is_overwritten(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mckd_lab.rundir import RunDir\n"
         "with RunDir(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(600)", str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        (folder / "history.jsonl").write_text("precious\n")
        tic = time.perf_counter()
        with pytest.raises(RunDirLocked, match=rf"{folder} is in use by another process \(pid {holder.pid}"):
            train(_config(), folder, resume=False, **_data())
        assert time.perf_counter() - tic < 5
        assert (folder / "history.jsonl").read_text() == "precious\n"
        assert sorted(p.name for p in folder.iterdir()) == [".lock", "history.jsonl"]
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the killed holder's lock: no stale lock to clean by hand
    with RunDir(folder).lock():
        assert (folder / ".lock").read_text().strip() == str(os.getpid())
