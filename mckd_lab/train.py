"""The trainer: one loop, readable top to bottom (METHOD.md "Training recipe").

    train(config, run_dir)  ->  Run

Stage 1 (``optim.warmup_iterations``): every available modality present. Stage 2: one subset per batch from
the strategy's sampler, intersected with each sample's real availability. Loss = task (Dice + BCE) +
``method.kd_weight`` * pairwise KD with the strategy's pair weights; SGD (momentum 0.99, Nesterov) with poly
decay by default. After each step the strategy may update itself (MCKD's meta step on the held-out split,
LCKD's election) and returns a history record.

Every random choice of iteration t (batch, crops, subset, held-out batches) is seeded from (seed, t), so a run
resumed from ``checkpoint.pt`` continues exactly as an uninterrupted one.

Run directory: ``config.json`` (RunConfig.to_dict), ``splits.json`` (case ids per split, when data comes from
disk), ``history.jsonl`` (one JSON record per line, ``kind`` train | meta | elect), ``checkpoint.pt`` (last,
written atomically: model, optimiser, strategy, iteration, RNG states, config), ``model.pt`` (final) and,
written by evaluation, ``metrics.json``. Checkpoints hold tensors and plain values only and are loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from mckd_lab.config import RunConfig
from mckd_lab.data.missing import subset_name
from mckd_lab.method.kd import pairwise_kd_loss
from mckd_lab.method.strategies import StepContext, make_strategy
from mckd_lab.tasks import make_task

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
    """
    config.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, history_path = run_dir / "checkpoint.pt", run_dir / "history.jsonl"
    if not resume and (ckpt_path.exists() or history_path.exists()):
        raise FileExistsError(
            f"{run_dir} already holds a run: continue it with resume=True (mckd-lab train --resume), or use a new folder"
        )
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"cannot resume: {ckpt_path} does not exist (no checkpoint was written yet)")
    opt, rt, seed = config.optim, config.runtime, config.runtime.seed
    device = torch.device(rt.device)
    autocast = _autocast(device, rt.amp)

    # --- data, model, strategy, optimiser -------------------------------------------------------------------
    task = make_task(config.data.task)
    if train_data is None:
        splits = task.datasets(config.data, run_dir)
        train_data, heldout_data = splits.train, splits.heldout
        _write_json(run_dir / "splits.json", splits.cases)
    heldout_data = heldout_data if heldout_data is not None else train_data
    torch.manual_seed(seed)
    model = task.build_model(config.model).to(device)
    strategy = make_strategy(config.method.name, task.modalities, config.method).to(device)
    optimizer = _optimizer(model, opt)
    m = len(task.modalities)

    start = 0
    if resume:
        state = load_checkpoint(ckpt_path)
        if _without_progress(state["config"]) != _without_progress(config.to_dict()):
            raise ValueError(
                f"{ckpt_path} was written with another configuration; resume with its config.json "
                "(only runtime.progress may differ)"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        strategy.load_state_dict(state["strategy"])
        _set_rng_state(state["rng"])
        start = state["iteration"]
        _truncate_history(history_path, start)
    else:
        _write_json(run_dir / "config.json", config.to_dict())

    def log(record: dict) -> None:
        with history_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for callback in callbacks:
            callback(record)

    def heldout_batch(iteration: int, k: int) -> dict:
        return _to(_batch(heldout_data, opt.batch_size, _seed(seed, iteration, 2, k)), device)

    # --- the loop -----------------------------------------------------------------------------------------
    bar = tqdm(range(start, opt.iterations), initial=start, total=opt.iterations, disable=not rt.progress,
               desc=f"{config.method.name}", dynamic_ncols=True)  # fmt: skip
    for it in bar:
        tic = time.perf_counter()
        _seed_everything(_seed(seed, it, 0))
        generator = torch.Generator().manual_seed(_seed(seed, it, 1))
        stage = "warmup" if it < opt.warmup_iterations else "missing"
        batch = _to(_batch(train_data, opt.batch_size, _seed(seed, it, 3)), device)

        # one subset per batch (stage 2), intersected with what each sample really has
        available = batch["present"].bool()
        drawn = strategy.sampler.sample(generator) if stage == "missing" else (True,) * m
        present = available & torch.tensor(drawn, device=device)
        present = torch.where(present.any(1, keepdim=True), present, available)
        batch["present"] = present

        lr = opt.lr * (1 - it / opt.iterations) ** opt.poly_power
        for group in optimizer.param_groups:
            group["lr"] = lr

        model.train()
        with autocast():
            out = model(batch["image"], present)
        loss_task = task.loss(out.logits, batch["target"])
        loss_kd = pairwise_kd_loss(out.features.float(), present, strategy.pair_weights())
        loss = loss_task + config.method.kd_weight * loss_kd
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"iteration {it}: the loss is {loss.item()} (task {loss_task.item()}, KD {loss_kd.item()}); "
                f"training stopped. {ckpt_path} keeps the last good state; try a lower optim.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()

        ctx = StepContext(it, stage, model, task, batch, lr, config.method.kd_weight,
                          lambda k, it=it: heldout_batch(it, k), generator, autocast)  # fmt: skip
        update = strategy.update(ctx)
        log({"kind": "train", "iteration": it, "stage": stage, "lr": lr, "loss": loss.item(),
             "loss_task": loss_task.item(), "loss_kd": loss_kd.item(),
             "subset": subset_name(present.any(0).tolist(), task.modalities),
             "seconds": time.perf_counter() - tic})  # fmt: skip
        if update:
            log(update)
        bar.set_postfix_str(_postfix(loss.item(), strategy.importance(), task.modalities), refresh=False)

        if (it + 1) % rt.checkpoint_every == 0 or it + 1 == opt.iterations:
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                raise TrainingDiverged(
                    f"iteration {it}: the weights hold NaN/inf; {ckpt_path} keeps the last good state"
                )
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "strategy": strategy.state_dict(), "iteration": it + 1, "rng": _rng_state(),
                "config": config.to_dict(),
            })  # fmt: skip
    bar.close()
    final = {"model": model.state_dict(), "strategy": strategy.state_dict(), "iteration": opt.iterations,
             "config": config.to_dict()}  # fmt: skip
    save_checkpoint(run_dir / "model.pt", final)
    return load_run(run_dir)


# --- a finished (or running) run ----------------------------------------------------------------------------


@dataclass
class Run:
    """A run directory read back: ``config``, ``history`` (list of records), ``metrics`` (dict or None),
    ``model`` (eval mode, CPU; from model.pt, else the last checkpoint), ``strategy`` state (e.g. omega)."""

    run_dir: Path
    config: RunConfig
    history: list[dict]
    metrics: dict | None
    model: torch.nn.Module
    strategy: dict
    iteration: int

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


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (see the module docstring); the model is rebuilt from ``config.json``."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    config = RunConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    weights = next((p for p in (run_dir / "model.pt", run_dir / "checkpoint.pt") if p.exists()), None)
    if weights is None:
        raise FileNotFoundError(f"{run_dir} has no model.pt or checkpoint.pt yet: train it first")
    state = load_checkpoint(weights)
    model = make_task(config.data.task).build_model(config.model)
    model.load_state_dict(state["model"])
    history_path, metrics_path = run_dir / "history.jsonl", run_dir / "metrics.json"
    history = (
        [json.loads(line) for line in history_path.read_text().splitlines() if line.strip()]
        if history_path.exists()
        else []
    )
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    return Run(run_dir, config, history, metrics, model.eval(), state.get("strategy", {}), state["iteration"])


# --- checkpoints --------------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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


def _batch(dataset, batch_size: int, seed: int) -> dict:
    """``batch_size`` items drawn with replacement; a dataset with a MONAI ``transform`` is reseeded per item
    so its random crops are a function of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for j, i in enumerate(torch.randint(len(dataset), (batch_size,), generator=g).tolist()):
        transform = getattr(dataset, "transform", None)
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


def _truncate_history(path: Path, start: int) -> None:
    """Keep the records of iterations before ``start`` (later ones were written after the last checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("iteration", -1) < start]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
    os.replace(tmp, path)


def _without_progress(config: dict) -> dict:
    return {**config, "runtime": {k: v for k, v in config["runtime"].items() if k != "progress"}}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    os.replace(tmp, path)
