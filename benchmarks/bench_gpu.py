"""The reference backbone on a CUDA GPU: seconds per training iteration (none, mckd) and peak GPU memory.

The reference backbone (ResNet-50 + ASPP encoder shared by the 4 modalities, METHOD.md) trains with
``mckd_lab.train.train`` at the reference crop 80x160x160, batch 2, bf16 autocast (``runtime.amp``), SGD, on
in-memory random volumes with a spherical tumour (the cost does not depend on the values; data move to the GPU
every iteration as in real training). Strategy ``none`` and ``mckd`` run one after the other in this process;
for each, ``--warmup`` iterations are discarded and the next ``--measure`` are timed by wall clock between the
history records of the first and last timed iteration (each record follows a ``loss.item()``, which waits for
the GPU). MCKD runs its meta rounds every ``--meta-every`` iterations with ``--meta-batches`` held-out batches
(default 50 and 4, as mckd_lab/demo.py), so its time includes them amortised; from the per-iteration history
the cost of one meta round is also derived and the amortised time at the reference cadence (every 500
iterations, 10 batches) reported. Peak memory: ``torch.cuda.max_memory_allocated`` per strategy (reset before
each). For comparison, the authors' network at this size takes 65.4 s per step on this project's CPU
(METHOD.md). On a machine without CUDA it says so and exits 0. Results go to ``--out`` (default
``benchmarks/results/gpu.json``).

With ``--ddp``, the DDP case instead: MCKD trained by 1 process on 1 GPU and by N processes on N GPUs
(``--gpus N``, default all; ``mckd_lab.distributed.launch``, NCCL, the same per-process batch of 2, so N GPUs
take N times the samples per iteration); s/iter is rank 0's wall clock between the first and last timed
iterations, and the scaling efficiency ``t_1 / t_N`` (1.0: N GPUs do N times the work in the same time).
It needs CUDA and at least 2 GPUs and says so otherwise. Results go to ``results/gpu_ddp.json``.

    .venv/bin/python benchmarks/bench_gpu.py [--quick] [--ddp [--gpus N]] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "gpu.json"
DDP_RESULTS = Path(__file__).parent / "results" / "gpu_ddp.json"


def volumes(n: int, shape: tuple[int, int, int]) -> list[dict]:
    """``n`` batch-contract items: random image (4, *shape), all present, target (3, *shape) spheres."""
    g = torch.Generator().manual_seed(0)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = sum(a**2 for a in axes).sqrt()
    target = torch.stack([r < 0.2, r < 0.5, r < 0.35]).float()  # ET, WT, TC
    return [{"image": torch.randn(4, *shape, generator=g), "present": torch.ones(4, dtype=torch.bool),
             "target": target} for _ in range(n)]  # fmt: skip


def timed(name: str, args, data: list[dict]) -> dict:
    from mckd_lab.config import RunConfig
    from mckd_lab.train import train

    iterations = args.warmup + args.measure
    config = RunConfig().with_overrides({
        "model.backbone": "reference", "data.crop": list(args.shape), "optim.batch_size": 2,
        "optim.iterations": iterations, "optim.warmup_iterations": iterations // 2, "method.name": name,
        "method.meta_every_warmup": args.meta_every, "method.meta_every_missing": args.meta_every,
        "method.meta_batches": args.meta_batches, "runtime.device": "cuda", "runtime.amp": True,
        "runtime.checkpoint_every": iterations, "runtime.progress": False,
    })  # fmt: skip
    stamps = {}

    def clock(record: dict) -> None:
        if record["kind"] == "train" and record["iteration"] in (args.warmup - 1, iterations - 1):
            stamps[record["iteration"]] = time.perf_counter()

    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        run = train(config, run_dir, train_data=data, callbacks=[clock])
    timed_its = [r for r in run.records("train") if r["iteration"] >= args.warmup]
    meta_its = {r["iteration"] for r in run.records("meta")}
    plain = [r["seconds"] for r in timed_its if r["iteration"] not in meta_its]
    row = {
        "strategy": name,
        "s_per_it": round((stamps[iterations - 1] - stamps[args.warmup - 1]) / args.measure, 4),
        "s_per_plain_it_median": round(statistics.median(plain), 4),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    rounds = [r["seconds"] for r in timed_its if r["iteration"] in meta_its]
    if rounds:
        meta_round = statistics.mean(rounds) - row["s_per_plain_it_median"]
        row["meta_round_s"] = round(meta_round, 4)
        row["s_per_it_reference_cadence"] = round(
            row["s_per_plain_it_median"] + meta_round * (10 / args.meta_batches) / 500, 4
        )
    return row


def ddp_job(settings: dict, run_dir: str) -> dict | None:
    """One rank of the DDP case: MCKD on the reference backbone; rank 0 returns its wall-clock stamps."""
    from mckd_lab.config import RunConfig
    from mckd_lab.train import train

    warmup, iterations = settings["warmup"], settings["warmup"] + settings["measure"]
    config = RunConfig().with_overrides({
        "model.backbone": "reference", "data.crop": list(settings["shape"]), "optim.batch_size": 2,
        "optim.iterations": iterations, "optim.warmup_iterations": iterations // 2, "method.name": "mckd",
        "method.meta_every_warmup": settings["meta_every"], "method.meta_every_missing": settings["meta_every"],
        "method.meta_batches": settings["meta_batches"], "runtime.device": "cuda", "runtime.amp": True,
        "runtime.checkpoint_every": iterations, "runtime.progress": False,
    })  # fmt: skip
    stamps = {}

    def clock(record: dict) -> None:
        if record["kind"] == "train" and record["iteration"] in (warmup - 1, iterations - 1):
            stamps[record["iteration"]] = time.perf_counter()

    run = train(config, run_dir, train_data=volumes(8, tuple(settings["shape"])), callbacks=[clock])
    if run is None:
        return None
    return {"s_per_it": (stamps[iterations - 1] - stamps[warmup - 1]) / settings["measure"],
            "peak_gpu_memory_gib_rank0": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def main_ddp(args) -> None:
    """1 GPU vs N GPUs (see the module docstring)."""
    from mckd_lab.distributed import launch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < 2:
        print(f"the DDP case needs CUDA and at least 2 GPUs ({gpus} here); nothing measured.")
        return
    n = args.gpus or gpus
    settings = {k: getattr(args, k) for k in ("shape", "warmup", "measure", "meta_every", "meta_batches")}
    rows = []
    for nproc in (1, n):
        with tempfile.TemporaryDirectory() as run_dir:
            rank0 = launch(nproc, ddp_job, (settings, run_dir))[0]
        rows.append({"gpus": nproc, "s_per_it": round(rank0["s_per_it"], 4),
                     "samples_per_s": round(2 * nproc / rank0["s_per_it"], 2),
                     "peak_gpu_memory_gib_rank0": round(rank0["peak_gpu_memory_gib_rank0"], 2)})  # fmt: skip
        print(rows[-1], flush=True)
    efficiency = round(rows[0]["s_per_it"] / rows[1]["s_per_it"], 3)
    print(f"scaling efficiency on {n} GPUs (t_1 / t_{n}) = {efficiency}")
    from machine import machine

    result = {
        "benchmark": "DDP: MCKD on the reference backbone, 1 GPU vs N GPUs, per-process batch 2 (weak scaling)",
        "settings": settings | {"amp": "bf16 autocast", "backend": "nccl", "per_process_batch": 2},
        "machine": machine() | {"gpu": torch.cuda.get_device_name(), "gpus": gpus, "cuda": torch.version.cuda},
        "rows": rows,
        "scaling_efficiency": efficiency,
    }
    out = args.out if args.out != RESULTS else DDP_RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[80, 160, 160])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--measure", type=int, default=100, help="timed iterations (multiple of meta-every)")
    parser.add_argument("--meta-every", type=int, default=50)
    parser.add_argument("--meta-batches", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke run: 32x64x64, 2 + 4 iterations")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--ddp", action="store_true", help="the DDP case: 1 GPU vs N GPUs (needs >= 2 GPUs)")
    parser.add_argument("--gpus", type=int, help="N of the DDP case (default: every GPU)")
    args = parser.parse_args()
    if args.quick:
        args.shape, args.warmup, args.measure, args.meta_every, args.meta_batches = [32, 64, 64], 2, 4, 2, 2
    if args.ddp:
        return main_ddp(args)
    if not torch.cuda.is_available():
        print("bench_gpu needs CUDA (torch.cuda.is_available() is False here); nothing measured.")
        return
    from machine import machine

    info = machine() | {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    data = volumes(4, tuple(args.shape))
    rows = [timed(name, args, data) for name in ("none", "mckd")]
    for row in rows:
        print(row, flush=True)
    ratio = round(rows[1]["s_per_it"] / rows[0]["s_per_it"], 3)
    print(f"mckd / none = {ratio}")
    result = {
        "benchmark": "reference backbone on CUDA: seconds per training iteration and peak GPU memory",
        "settings": {
            "shape": args.shape,
            "batch_size": 2,
            "amp": "bf16 autocast",
            "optimizer": "sgd",
            "warmup_discarded": args.warmup,
            "timed_iterations": args.measure,
            "meta_every": args.meta_every,
            "meta_batches": args.meta_batches,
            "data": "in-memory random volumes, 4 items",
        },  # fmt: skip
        "machine": info | {"load_average_after_1min": os.getloadavg()[0]},
        "rows": rows,
        "ratio_mckd_over_none": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
