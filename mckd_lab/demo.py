"""The main job (``make demo``): BraTS-like phantoms -> train MCKD -> the 15-subset Dice table.

Sized for a laptop: it must finish in a few minutes on 2 CPU cores within 2 GB. The phantoms are generated
into the run directory, MCKD trains with the reference recipe's structure (full-modality warm-up, then random
missing subsets with the reference sampler, meta steps on held-out cases), and the trained model is evaluated
on held-out test phantoms over all 15 subsets of modalities; the table is printed and saved in
``<out>/metrics.json`` (and as text in ``<out>/table.md``).
"""

from __future__ import annotations

import time
from pathlib import Path

from mckd_lab.config import RunConfig, warmup_for
from mckd_lab.recipes import train_or_reuse
from mckd_lab.runs import evaluate_run, render_table
from mckd_lab.tasks import validate_config

# Fewer, better iterations (issue 14): 600 instead of 1,500 under the two-stage schedule, crops centred on
# the tumour 3 times in 4 (0.5 before), a meta round every 25 iterations (24 rounds; 30 before). The whole
# command timed side by side with the code before (benchmarks/bench_demo.py, results/demo.json): 0.46-0.50 of its
# wall time (two 2-core EPYCs), all four sequences Dice ET 54.2 / TC 85.7 / WT 89.8 against 56.7 / 86.3 / 89.4 on the demo's 8
# test phantoms (benchmarks/README.md, "Demo").
DEMO = {
    "data.phantom_cases": 32,
    "data.phantom_size": 48,
    "data.crop": [32, 32, 32],
    "data.heldout_cases": 3,
    "data.test_fraction": 0.25,
    "data.foreground_prob": 0.75,
    "optim.iterations": 600,
    "optim.warmup_iterations": warmup_for(600),
    "method.meta_every_warmup": 25,
    "method.meta_every_missing": 25,
    "method.meta_batches": 4,
    # Half the reference rate: at 1e-2 this short CPU recipe spiked from iteration ~470 (loss up to 42,
    # contained only by gradient clipping); at 5e-3 it trains cleanly and reaches a better model.
    "optim.lr": 5e-3,
}


def demo_config(iterations: int | None = None, seed: int = 999) -> RunConfig:
    """The demo's RunConfig: :data:`DEMO` over the defaults (MCKD, compact backbone)."""
    overrides = dict(DEMO, **{"runtime.seed": seed})
    if iterations is not None:
        overrides["optim.iterations"] = iterations
        overrides["optim.warmup_iterations"] = warmup_for(iterations)
    return validate_config(RunConfig().with_overrides(overrides))


def run_demo(out: str | Path = "runs/demo", iterations: int | None = None, seed: int = 999) -> dict:
    """Generate phantoms, train MCKD (resuming an interrupted demo), evaluate over every subset; print the
    table and return it."""
    out = Path(out)
    config = demo_config(iterations, seed)
    start = time.perf_counter()
    run = train_or_reuse(config, out)
    trained = time.perf_counter() - start
    # Dice only: the printed table shows no HD95, which took half of the evaluation's CPU time (issue 14)
    table = evaluate_run(run, with_hd95=False)
    text = render_table(table)
    (out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print("\n" + summary(table))
    if run.importance:
        print("importance weights (softmax of omega): "
              + ", ".join(f"{m} {w:.3f}" for m, w in run.importance.items()))  # fmt: skip
    print(f"trained in {trained:.0f} s, evaluated in {time.perf_counter() - start - trained:.0f} s; "
          f"run directory {out} (metrics.json, table.md, history.jsonl)")  # fmt: skip
    return table


def summary(table: dict) -> str:
    """The full-modality Dice, and why ET can read low: BraTS scores a case without enhancing tumour 0 for ET
    as soon as one voxel is predicted ET (1 when none is)."""
    full = next(row for row in table["subsets"] if all(row["present"].values()))
    lines = [
        "all modalities: Dice " + ", ".join(f"{r} {100 * full['dice'][r]:.1f}" for r in table["regions"])
    ]
    per_case = full.get("per_case", {}).get("dice", {}).get("ET")
    if per_case:
        scores = ", ".join(f"{case} {100 * v:.0f}" for case, v in zip(table["cases"], per_case, strict=True))
        lines.append(f"ET per test case (a case without enhancing tumour scores 0 or 100): {scores}")
    return "\n".join(lines)
