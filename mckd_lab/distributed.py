"""Several processes, one run: the process group, the collectives the trainer needs, and the launcher.

A run is distributed when torch's launcher started it (``torchrun --nproc_per_node N -m mckd_lab.cli train``,
or ``mckd-lab train --nproc N``, which calls the same launcher: ``torch.distributed.launcher.api``); the
launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) says so. Backend:
NCCL when the run's device is CUDA (rank r on ``cuda:LOCAL_RANK``), gloo on CPU. Without the launcher a run is
one process and none of this does anything (``Distributed.single``).

What the trainer does with it (``mckd_lab.train``):

- the network is wrapped in ``DistributedDataParallel``: gradients averaged over the ranks every step;
- rank r trains on positions ``r*B .. r*B+B-1`` of the iteration's global draw of ``N*B`` items (B =
  ``optim.batch_size`` per rank; each item's random crop is seeded by its global position), so N ranks at
  batch B see what one process at batch N*B sees; the missing-modality subset and the random streams are
  drawn per rank (rank 0's are a single process's);
- the strategy's update (MCKD's meta round, LCKD's election) runs on rank 0 alone and its new state (omega
  with its Adam moments, or the teachers) is broadcast, see ``Distributed.sync_strategy``;
- rank 0 alone holds the run directory's lock and writes the history and the checkpoints; a resume reads the
  checkpoint on rank 0 and broadcasts it (the other ranks need not see the folder).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class DistributedRunFailed(RuntimeError):
    """A rank of a launched run failed; the launcher stopped the others."""


@dataclass
class Distributed:
    """This process's place in the run: rank, world size and its device; ``owns_group``: this object
    created the process group (and destroys it in ``close``)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> Distributed:
        return cls(device=torch.device(device))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def seed_keys(self) -> tuple[int, ...]:
        """Extra keys of a per-rank random stream: none on rank 0 (its draws are a single process's)."""
        return (self.rank,) if self.rank else ()

    # --- collectives (no-ops in one process) --------------------------------------------------------------
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over the ranks of a float tensor (a copy; NaN on one rank makes it NaN everywhere)."""
        if not self.active:
            return values
        total = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(total)
        return (total / self.world_size).cpu()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled over the process group: in memory, never a file)."""
        if not self.active:
            return obj
        box = [_to_cpu(obj) if self.main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def sync_strategy(self, strategy, update: Callable[[], dict]) -> dict:
        """Run ``update`` (the strategy's ``update(ctx)``) on rank 0 and give every rank its new state.

        Omega is stepped on rank 0 alone and broadcast (with the strategy's whole state: omega, Adam's moments
        and step, or LCKD's teachers), rather than every rank computing the round on its own held-out batches
        and all-reducing omega's gradients: the reference's meta round is ``meta_batches`` *sequential* Adam
        steps, each on one held-out crop at batch 1, so splitting it over the ranks would turn it into fewer
        steps on larger batches, a different algorithm, while on rank 0 it is the same round a single process
        takes (same held-out crops, same network: DDP keeps the parameters identical). It costs the other
        ranks a wait the length of the round, as long as computing it everywhere would take, and a broadcast
        of a few numbers; the state after it is rank 0's bit for bit on every rank, whatever the kernels'
        non-determinism. The same holds for the LCKD election. Returns the update's history record ({} when
        the strategy did nothing this step), on every rank.
        """
        if not self.active:
            return update()
        record = update() if self.main else None
        record, state = self.broadcast((record, strategy.state_dict() if self.main and record else None))
        if state is not None and not self.main:
            strategy.load_state_dict(state)
        return record

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` in a distributed run (``find_unused_parameters``: a rank whose
        subset misses a modality leaves that modality's own encoder without gradient), else ``model``."""
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str) -> Distributed:
    """This process's ``Distributed``: from the launcher's environment (creating the process group when
    nobody has), else a single process on ``device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed.single(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.cuda.device_count() <= local:
            raise ValueError(f"rank {rank}: local rank {local} needs GPU {local}; this node has "
                             f"{torch.cuda.device_count()} (start at most that many processes per node)")  # fmt: skip
        chosen = torch.device("cuda", local)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores, as torchrun's OMP_NUM_THREADS=1 means to
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen, owns_group=owns)


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# --- launching ------------------------------------------------------------------------------------------------


def launch(nproc: int, entrypoint: Callable | str, args: Sequence[Any] = (), *, monitor_interval: float = 0.1
           ) -> dict[int, Any]:  # fmt: skip
    """Run ``entrypoint(*args)`` (a function, pickled to spawned processes) or the program ``entrypoint``
    with ``args`` in ``nproc`` processes on this machine with torch's elastic launcher, as ``torchrun
    --standalone --nproc_per_node nproc`` does (a fresh rendezvous on a free port, no restarts: a rank that
    fails stops the others). Returns each rank's return value (None for programs). A failed rank raises
    ``DistributedRunFailed`` naming it, its exit code and its error."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=monitor_interval, start_method="forkserver")  # fmt: skip
    if callable(entrypoint):
        # forked from a server that imported the function's module once (a fresh interpreter per rank would
        # import torch and the library again, every launch); the server never ran torch, so forking is safe
        multiprocessing.get_context("forkserver").set_forkserver_preload(
            sorted({"mckd_lab.train", entrypoint.__module__} - {"__main__"}))
        entrypoint, args = _recorded, (entrypoint, *args)
    with tempfile.TemporaryDirectory(prefix="mckd-launch-") as logs:  # each rank's error file lands here
        config.logs_specs = DefaultLogsSpecs(log_dir=logs)
        try:
            return elastic_launch(config, entrypoint)(*args)
        except ChildFailedError as err:
            raise DistributedRunFailed(describe_failure(_all_failures(err, Path(logs)))) from None


def _all_failures(err, logs: Path) -> dict:
    """Every rank that wrote an error file, with the launcher's failures: the launcher reports the first rank
    it saw exit, which can be a rank whose collective failed because the real culprit had died (one node:
    local rank = rank)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failures = dict(err.failures)
    for path in logs.glob("*/attempt_*/*/error.json"):
        rank = int(path.parent.name)
        if rank not in failures:
            failures[rank] = ProcessFailure(local_rank=rank, pid=0, exitcode=1, error_file=str(path))
    return failures


# What a rank's collective raises when a peer died: an echo of another rank's failure, not a cause
PEER_LOST = re.compile(r"Connection (reset|closed) by peer|Broken pipe|NCCL communicator was aborted|"
                       r"remote process exited or there was a network error", re.I)  # fmt: skip


def describe_failure(failures: dict) -> str:
    """One paragraph for failed ranks ({rank: ``ProcessFailure``}): the rank whose failure caused the others,
    its exit code and error. When a rank dies, the others fail in their next collective within the same second
    (the error files' timestamps are whole seconds), so the cause is the earliest failure not of a lost peer."""
    rank, failure = min(failures.items(),
                        key=lambda kv: (bool(PEER_LOST.search(_error_text(kv[1]))), kv[1].timestamp, kv[0]))  # fmt: skip
    error = _error_text(failure) or "printed in that rank's output above"
    pid = f" (pid {failure.pid})" if failure.pid else ""  # 0: known from its error file only
    return (f"rank {rank}{pid} failed with exit code {failure.exitcode}; the launcher stopped "
            f"the other ranks. Its error: {error}")  # fmt: skip


def _error_text(failure) -> str:
    """The last line of a ``ProcessFailure``'s error (its error file: {"message": "Error: text", ...})."""
    message = failure.message
    while isinstance(message, dict):
        message = message.get("message", "")
    lines = [ln for ln in str(message).strip().splitlines() if "To enable traceback" not in ln]
    return lines[-1] if lines else ""


def _recorded(fn: Callable, *args) -> Any:
    """``fn(*args)`` with its exception written to the launcher's error file (``@record``), so the parent can
    name it."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)(*args)


def cli_train(nproc: int, argv: Sequence[str]) -> None:
    """``mckd-lab train --nproc N ...``: the same command (``argv`` without ``--nproc``) in ``nproc`` processes
    through torch's launcher, as ``torchrun --standalone --nproc_per_node N -m mckd_lab.cli train ...``."""
    launch(nproc, sys.executable, ["-m", "mckd_lab.cli", *argv])


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out
