"""Where a training step and a meta round spend their time: torch.profiler's top operators, on the CPU.

The demo's recipe (``mckd_lab.demo.demo_config``: compact backbone, crop 32^3, batch 2, MCKD, a meta round of
``method.meta_batches`` one-crop Adam steps on omega) on ``--cases`` phantoms of 48^3 generated in a temporary
folder. The trainer's own pieces are used (task data and loss, ``_batch``, the strategy's ``update``); after
``--warmup`` unprofiled steps, ``--steps`` training steps (stage 2: one sampled subset per batch) and
``--rounds`` meta rounds are profiled separately. Prints both tables (self CPU time, top ``--top`` rows) and
the wall seconds per step and per round, and writes them with the machine to ``--out`` (default: print only).

    .venv/bin/python benchmarks/bench_profile.py [--threads 2] [--steps 10] [--rounds 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from machine import finish, machine
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mckd_lab.data.missing import restrict_present
    from mckd_lab.demo import demo_config
    from mckd_lab.method.kd import pairwise_kd_loss
    from mckd_lab.method.strategies import StepContext, make_strategy
    from mckd_lab.tasks import make_task
    from mckd_lab.train import _batch, _seed, poly_lr

    info = machine()
    config = demo_config().with_overrides({"data.phantom_cases": args.cases, "data.heldout_cases": 3})
    task = make_task("brats")
    with tempfile.TemporaryDirectory(prefix="bench_profile_") as tmp:
        setup = task.setup(config.data, tmp)
        torch.manual_seed(0)
        model = task.build_model(config.model).train()
        strategy = make_strategy("mckd", task.modalities, config.method, 0)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        loss_fn = setup.loss
        generator = torch.Generator().manual_seed(0)

        def train_step(it: int) -> None:
            batch = _batch(setup.train, 2, _seed(0, it, 3))
            drawn = strategy.sampler.sample(generator)
            present = restrict_present(batch["present"], drawn)
            out = model(batch["image"], present)
            loss = loss_fn(out.logits, batch["target"]) + 0.1 * pairwise_kd_loss(
                out.features, present, strategy.pair_weights()
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def meta_round(it: int) -> None:
            every = config.method.meta_every_missing
            ctx = StepContext(every * (it + 1) - 1, "missing", model, task, {}, poly_lr(0, config.optim), 0.1,
                              lambda k, size=None, it=it: _batch(setup.heldout, size or 2, _seed(0, it, 2, k)),
                              generator, loss_fn)  # fmt: skip
            assert strategy.update(ctx)["kind"] == "meta"

        for it in range(args.warmup):
            train_step(it)
        meta_round(0)
        result = {"benchmark": "profile of a training step and a meta round (demo recipe, CPU)",
                  "settings": {"crop": list(config.data.crop), "batch_size": 2,
                               "meta_batches": config.method.meta_batches,
                               "meta_batch_size": config.method.meta_batch_size},
                  "machine": info}  # fmt: skip
        for name, work, n in (
            ("train_step", train_step, args.steps),
            ("meta_round", meta_round, args.rounds),
        ):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                for i in range(n):
                    work(100 + i)
                seconds = (time.perf_counter() - start) / n
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
            print(
                f"== {name}: {seconds:.4f} s each (under the profiler), {n} profiled ==\n{table}", flush=True
            )
            rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            result[name] = {"seconds_each_profiled": round(seconds, 4), "top": [
                {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / n, 3),
                 "share": round(e.self_cpu_time_total / total, 3)} for e in rows]}  # fmt: skip
    result["machine"] = finish(result["machine"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
