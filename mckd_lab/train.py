"""The trainer: one loop, readable top to bottom (METHOD.md "Training recipe").

    train(config, run_dir)  ->  Run

Stage 1 (``optim.warmup_iterations``): every available modality present. Stage 2: one subset per batch from
the strategy's sampler, intersected with each sample's real availability. Loss = task (Dice + BCE) +
``method.kd_weight`` * pairwise KD with the strategy's pair weights; SGD (momentum 0.99, Nesterov) with the
reference's two-stage poly schedule (``config.poly_lr``: stage 2 restarts at ``lr (1 - W/T)^0.9``). After each step the strategy may update itself (MCKD's meta step on the held-out split,
LCKD's election) and returns a history record.

Every random choice of iteration t (batch, crops, subset, held-out batches) is seeded from (seed, t) (and the
rank, in a distributed run: ``mckd_lab.distributed``), so a run resumed from ``checkpoint.pt`` continues
exactly as an uninterrupted one.

The run directory's layout, its guards (a fresh start never overwrites a run; a resume must match its
config), the history and the atomic checkpoints are ``mckd_lab.rundir``'s; what differs between tasks (data,
splits, model, loss) is the task's (``Task.setup``, ``Task.build_model``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from mckd_lab import distributed
from mckd_lab.config import RunConfig, poly_lr
from mckd_lab.data.missing import restrict_present, subset_name
from mckd_lab.method.kd import pairwise_kd_loss
from mckd_lab.method.strategies import StepContext, make_strategy
from mckd_lab.rundir import CHECKPOINT, RunDir, load_checkpoint, save_checkpoint
from mckd_lab.runs import Run, load_run
from mckd_lab.slowdown import SlowdownMonitor
from mckd_lab.tasks import make_task, validate_config

__all__ = ["Run", "TrainingDiverged", "load_checkpoint", "load_run", "save_checkpoint", "train"]

Callback = Callable[[dict], None]


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN/inf; the run directory keeps the last good checkpoint."""


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    train_data: torch.utils.data.Dataset | None = None,
    heldout_data: torch.utils.data.Dataset | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> Run:
    """Train a model as ``config`` says and write the run directory; returns ``load_run(run_dir)``.

    train_data / heldout_data: datasets of batch-contract items (``image`` (M, D, H, W), ``present`` (M,),
    ``target``) used instead of ``config.data`` (e.g. in-memory tensors; without heldout_data the training
    data also serves as the held-out split). callbacks: called with every history
    record as it is written (a notebook can plot live). resume: continue from ``run_dir/checkpoint.pt``.
    Started by torch's launcher (torchrun, ``mckd-lab train --nproc``), it trains with DDP on every rank
    (``mckd_lab.distributed`` says how the work is shared); rank 0 alone writes, calls the callbacks and
    returns the Run (the other ranks return None).
    """
    validate_config(config)
    folder, ddp = RunDir(run_dir), distributed.setup(config.runtime.device)
    with folder.lock() if ddp.main else nullcontext():  # a second process on the folder is refused here
        _train(config, folder, ddp, train_data, heldout_data, callbacks, resume)
    ddp.barrier()  # a failed rank never gets here: the launcher stops the others
    ddp.close()
    return load_run(folder.path) if ddp.main else None


def _train(config, folder, ddp, train_data, heldout_data, callbacks, resume) -> None:
    task = make_task(config.data.task)
    if ddp.main:
        folder.start(config.to_dict(), resume)
    opt, rt, seed, rank = config.optim, config.runtime, config.runtime.seed, ddp.seed_keys()
    device = ddp.device
    autocast = _autocast(device, rt.amp)

    # --- data, model, strategy, optimiser -------------------------------------------------------------------
    if train_data is None:
        for turn in ("main", "others"):  # rank 0 first: it may generate the data, and writes the split
            if ddp.main == (turn == "main"):
                setup = task.setup(config.data, folder.path)
            ddp.barrier()
        train_data, heldout_data, task_loss = setup.train, setup.heldout, setup.loss
        for name, obj in {"splits.json": setup.cases, **setup.files}.items():
            if ddp.main:
                folder.write_json(name, obj)
    else:
        task_loss = task.make_loss()
    heldout_data = heldout_data if heldout_data is not None else train_data
    torch.manual_seed(seed)
    model = task.build_model(config.model).to(device)
    strategy = make_strategy(config.method.name, task.modalities, config.method, seed).to(device)
    optimizer = _optimizer(model, opt)
    m = len(task.modalities)

    start = 0
    if resume:
        state = ddp.broadcast(folder.resume_state(config.to_dict()) if ddp.main else None)
        if state.get("world_size", 1) != ddp.world_size:
            raise ValueError(
                f"{folder / CHECKPOINT} was written by a run on {state.get('world_size', 1)} process(es); "
                f"resume it on as many (it was started on {ddp.world_size}): the global batch depends on it"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        strategy.load_state_dict(state["strategy"])
        _set_rng_state(state["rng"])
        start = state["iteration"]
    net = ddp.wrap(model)  # DDP in a distributed run (the strategies use the bare model: no collectives)

    def log(record: dict) -> None:
        if ddp.main:
            folder.append(record)
            for callback in callbacks:
                callback(record)

    def heldout_batch(iteration: int, k: int, batch_size: int | None = None) -> dict:
        return _to(_batch(heldout_data, batch_size or opt.batch_size, _seed(seed, iteration, 2, k)), device)

    # --- the loop -----------------------------------------------------------------------------------------
    bar = tqdm(range(start, opt.iterations), initial=start, total=opt.iterations,
               disable=not (rt.progress and ddp.main), desc=f"{config.method.name}", dynamic_ncols=True)  # fmt: skip
    slow = SlowdownMonitor(threads=torch.get_num_threads())  # an oversubscribed CPU is said once, with the fix
    for it in bar:
        tic = time.perf_counter()
        _seed_everything(_seed(seed, it, 0, *rank))
        generator = torch.Generator().manual_seed(_seed(seed, it, 1, *rank))
        stage = "warmup" if it < opt.warmup_iterations else "missing"
        batch = _to(_batch(train_data, opt.batch_size, _seed(seed, it, 3), ddp.rank, ddp.world_size), device)

        # one subset per batch (stage 2), within what each sample really has
        drawn = strategy.sampler.sample(generator) if stage == "missing" else (True,) * m
        present = batch["present"] = restrict_present(batch["present"], drawn)

        lr = poly_lr(it, opt)
        for group in optimizer.param_groups:
            group["lr"] = lr

        model.train()
        with autocast():
            out = net(batch["image"], present)
        loss_task = task_loss(out.logits, batch["target"])
        loss_kd = pairwise_kd_loss(out.features.float(), present, strategy.pair_weights())
        loss = loss_task + config.method.kd_weight * loss_kd
        mean_loss, mean_task, mean_kd = ddp.mean(torch.stack([loss, loss_task, loss_kd])).tolist()
        if not math.isfinite(mean_loss):  # on every rank at once (a NaN anywhere makes the mean NaN)
            raise TrainingDiverged(
                f"iteration {it}: the loss is {mean_loss} (task {mean_task}, KD {mean_kd}); "
                f"training stopped. {folder / CHECKPOINT} keeps the last good state; try a lower optim.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()

        ctx = StepContext(it, stage, model, task, batch, lr, config.method.kd_weight,
                          lambda k, size=None, it=it: heldout_batch(it, k, size), generator, task_loss,
                          autocast)  # fmt: skip
        update = ddp.sync_strategy(strategy, lambda ctx=ctx: strategy.update(ctx))
        log({"kind": "train", "iteration": it, "stage": stage, "lr": lr, "loss": mean_loss,
             "loss_task": mean_task, "loss_kd": mean_kd,
             "subset": subset_name(present.any(0).tolist(), task.modalities),
             "seconds": (seconds := time.perf_counter() - tic)})  # fmt: skip
        if update:
            log(update)
        if warning := slow.observe(seconds):
            log({"kind": "warning", "iteration": it, "message": warning})
            bar.write(f"warning: {warning}")
        postfix = _postfix(mean_loss, strategy.importance(), task.modalities)
        bar.set_postfix_str(postfix + (f" | {slow.hint}" if slow.hint else ""), refresh=False)

        if (it + 1) % rt.checkpoint_every == 0 or it + 1 == opt.iterations:
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise TrainingDiverged(
                    f"iteration {it}: the weights hold NaN/inf; {folder / CHECKPOINT} keeps the last good state"
                )
            if ddp.main:
                folder.save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "strategy": strategy.state_dict(), "iteration": it + 1, "rng": _rng_state(),
                    "config": config.to_dict(), "world_size": ddp.world_size,
                })  # fmt: skip
    bar.close()
    if ddp.main:
        folder.save_checkpoint({"model": model.state_dict(), "strategy": strategy.state_dict(),
                                "iteration": opt.iterations, "config": config.to_dict()}, final=True)  # fmt: skip


# --- helpers ------------------------------------------------------------------------------------------------


def _optimizer(model: torch.nn.Module, opt) -> torch.optim.Optimizer:
    if opt.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                           weight_decay=opt.weight_decay)  # fmt: skip


def _autocast(device: torch.device, amp: bool) -> Callable:
    """bf16 autocast on CUDA when asked; nothing on CPU."""
    if amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def _seed(*keys: int) -> int:
    """A 32-bit seed derived from integer keys (e.g. run seed, iteration, stream)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _batch(dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> dict:
    """``batch_size`` items drawn with replacement; a dataset with a MONAI ``transform`` is reseeded per item
    so its random crops are a function of ``seed``. Of ``world_size`` ranks, ``rank`` takes its share of one
    global draw of ``batch_size * world_size`` items (so N ranks see one process's batch of N times the size)."""
    g = torch.Generator().manual_seed(seed)
    drawn = torch.randint(len(dataset), (batch_size * world_size,), generator=g).tolist()
    items = []
    for j in range(rank * batch_size, (rank + 1) * batch_size):
        i, transform = drawn[j], getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=_seed(seed, j))
        items.append(dataset[i])
    return default_collate(items)


def _to(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device) if torch.is_tensor(batch) else batch


def _postfix(loss: float, importance: torch.Tensor | None, modalities: Sequence[str]) -> str:
    text = f"loss {loss:.4f}"
    if importance is not None:
        text += " | w " + " ".join(
            f"{m} {w:.2f}" for m, w in zip(modalities, importance.tolist(), strict=True)
        )
    return text


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
