"""Our reference backbone beside the authors' network (billhhh/MCKD): parameters and CPU seconds per step.

Parameters: ours is ``build_segmentation_network(..., backbone="reference")`` (shared ResNet-50 + ASPP
encoder, decoder) plus MCKD's 4 importance weights (omega); theirs, counted by
``benchmarks/authors_network.py`` from their ``DualNet`` (with their 4 KD weights, without the unused
attention block), is 43,656,676 (METHOD.md). Seconds per training step: batch 2 of random volumes ``--shape``
(32x64x64), all 4 modalities present, the same loss for both (mckd_lab's Dice + BCE, ``SegmentationLoss``, +
0.1 x the network's pairwise KD: ours ``pairwise_kd_loss`` with MCKD's weights at omega = 0, theirs the KD
term their forward returns), SGD (momentum 0.99, Nesterov, lr 1e-3), fp32, ``--threads`` torch threads. Both
networks live in this process and step alternately (ours, theirs, ours, ...) so a busy machine slows both
alike; the first ``--warmup`` steps of each are discarded, then ``--steps`` are timed; mean and best are
reported (the authors' code took 2.55 s per step here, METHOD.md). Their code is not part of mckd-lab:
``--authors DIR`` names a checkout; without it only ours is measured. Results go to ``--out`` (default
``benchmarks/results/reference.json``).

    .venv/bin/python benchmarks/bench_reference.py --authors ~/src/MCKD [--steps 5] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from mckd_lab.data.cards import load_card
from mckd_lab.losses import SegmentationLoss
from mckd_lab.method.importance import mckd_pair_weights
from mckd_lab.method.kd import pairwise_kd_loss
from mckd_lab.models import build_segmentation_network

RESULTS = Path(__file__).parent / "results" / "reference.json"
THEIRS_PARAMETERS = 43_656_676


def stepper(net, forward, context=contextlib.nullcontext):
    """A function doing one SGD step of ``net`` on (x, y) and returning its seconds; ``forward(x)`` gives
    (logits, kd)."""
    params = [p for n, p in net.named_parameters() if "kd_weights" not in n]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.99, nesterov=True)
    loss_fn = SegmentationLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        with context():
            opt.zero_grad(set_to_none=True)
            logits, kd = forward(x)
            loss = loss_fn(logits, y) + 0.1 * kd
            loss.backward()
            opt.step()
        if not torch.isfinite(loss):
            raise RuntimeError(f"{type(net).__name__}: the loss became {loss.item()}")
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, help="a checkout of billhhh/MCKD (DualNet.py)")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 step, no warm-up")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps = 0, 1  # 32x64x64 is the smallest the reference takes in training
    torch.set_num_threads(args.threads)
    from machine import finish, machine

    info = machine()
    torch.manual_seed(0)
    ours = build_segmentation_network(load_card("brats").modality_names, backbone="reference").train()
    present = torch.ones(2, 4, dtype=torch.bool)
    pair_weights = mckd_pair_weights(torch.zeros(4))

    def our_forward(x):
        out = ours(x, present)
        return out.logits, pairwise_kd_loss(out.features, present, pair_weights)

    nets = {"ours": stepper(ours, our_forward)}
    params = {"ours": sum(p.numel() for p in ours.parameters()) + 4}  # + omega (4 importance weights)
    params |= {
        "ours_encoder": sum(p.numel() for p in ours.encoders.parameters()),
        "ours_decoder": sum(p.numel() for p in ours.head.parameters()),
    }
    if args.authors:
        from authors_network import build_authors_network, count_parameters, cpu_shims

        theirs = build_authors_network(args.authors.expanduser())
        params["theirs"] = count_parameters(theirs)
        theirs.shared_enc.aspp.branch5_norm = torch.nn.Identity()  # see authors_network.py
        theirs.train()

        def their_forward(x):
            logits, _, kd = theirs(x, mode="0,1,2,3")
            return logits, kd

        nets["theirs"] = stepper(theirs, their_forward, cpu_shims)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *args.shape, generator=g)
    y = (torch.rand(2, 3, *args.shape, generator=g) > 0.9).float()
    times = {name: [] for name in nets}
    for i in range(args.warmup + args.steps):
        for name, step in nets.items():
            seconds = step(x, y)
            if i >= args.warmup:
                times[name].append(seconds)
    rows = [
        {"network": name, "s_per_step_mean": round(statistics.mean(t), 3),
         "s_per_step_best": round(min(t), 3), "steps": len(t)}
        for name, t in times.items()
    ]  # fmt: skip
    for row in rows:
        print(row)
    print("parameters:", params, f"(theirs per METHOD.md: {THEIRS_PARAMETERS:,})")
    result = {
        "benchmark": "reference backbone vs the authors' network: parameters, CPU seconds per training step",
        "settings": {
            "shape": args.shape,
            "batch_size": 2,
            "loss": "Dice + BCE (SegmentationLoss) + 0.1 KD",
            "optimizer": "sgd momentum 0.99 nesterov lr 1e-3",
            "precision": "fp32",
            "warmup_discarded": args.warmup,
            "timed_steps": args.steps,
            "order": "alternating",
            "authors": str(args.authors) if args.authors else None,
        },  # fmt: skip
        "parameters": params | {"theirs_method_md": THEIRS_PARAMETERS},
        "machine": finish(info),
        "rows": rows,
    }
    if len(rows) == 2:
        result["ratio_ours_over_theirs"] = round(rows[0]["s_per_step_mean"] / rows[1]["s_per_step_mean"], 3)
        print(f"ours / theirs = {result['ratio_ours_over_theirs']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
