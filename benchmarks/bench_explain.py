"""Attribution costs on one 48^3 case, and (with ``--run``) the modality ranking sanity check on phantoms.

Timings (compact backbone, default widths; random weights unless ``--run`` gives a trained run):
- ``evaluation``: one all-subsets evaluation of the case (15 subset predictions from one encode-once pass,
  then the Dice of each);
- ``shapley_exact``: ``ExactModalityShapley`` (value = region Dice): the same pass plus the empty set, then
  the Shapley sums (goal, issue 7: <= 2x the evaluation);
- ``shapley_captum_sampling``: ``CaptumModalityShapley`` with Captum's ``ShapleyValueSampling``,
  ``--captum-samples`` permutations per region (no reuse of encodings: one subset prediction per
  evaluation), for scale;
- ``integrated_gradients``: one region, ``--steps`` steps, with the package's path sampling (``path_power``
  10) and with plain Captum steps (``path_power`` 1); the convergence delta of each, relative to f(x) - f(0).
Ranking sanity (``--run RUN``, a trained BraTS run on phantoms): for every case of its phantoms, the
modality with the largest Shapley value for each region (value = Dice); the fraction of cases where T1ce ranks
first for ET (phantoms draw the enhancing rim on T1ce only). Results: ``benchmarks/results/explain.json``.

    .venv/bin/python benchmarks/bench_explain.py [--size 48] [--steps 32] [--repeats 2] [--run RUN]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from bench_evaluate import best_seconds
from captum.attr import ShapleyValueSampling
from machine import machine

from mckd_lab.data.brats import load_case, scan_folder
from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets
from mckd_lab.evaluate import dice
from mckd_lab.explain import (
    CaptumModalityShapley,
    ExactModalityShapley,
    RegionLogit,
    VoxelIntegratedGradients,
)
from mckd_lab.infer import predict_subsets
from mckd_lab.models import build_segmentation_network
from mckd_lab.train import load_run

RESULTS = Path(__file__).parent / "results" / "explain.json"
CARD = load_card("brats")


def timings(model, size: int, steps: int, repeats: int, captum_samples: int) -> dict:
    gen = torch.Generator().manual_seed(size)
    image = torch.randn(4, size, size, size, generator=gen)
    target = (torch.rand(3, size, size, size, generator=gen) < 0.1).numpy()
    roi, regions, subsets = (size,) * 3, CARD.region_names, all_subsets(4)
    present = (True,) * 4

    def evaluation():
        probs = predict_subsets(model, image, subsets, roi).numpy()
        return [dice(p > 0.5, target) for p in probs]

    def exact():
        return ExactModalityShapley(model, outputs=regions, value="dice").attribute(
            image, present, target, roi
        )

    evaluation()  # warm-up
    out = {
        "size": size,
        "evaluation_s": best_seconds(evaluation, repeats),
        "shapley_exact_s": best_seconds(exact, repeats),
    }
    out["shapley_over_evaluation"] = out["shapley_exact_s"] / out["evaluation_s"]
    start = time.perf_counter()
    CaptumModalityShapley(
        model, outputs=regions, value="dice", algorithm=ShapleyValueSampling, n_samples=captum_samples
    ).attribute(image, target=target, roi=roi)
    out["shapley_captum_sampling_s"] = time.perf_counter() - start
    out["captum_samples"] = captum_samples
    forward = RegionLogit(model, present, regions.index("WT"), roi)
    with torch.no_grad():
        gain = float(forward(image[None]) - forward(torch.zeros_like(image)[None]))
    for power in (10.0, 1.0):
        start = time.perf_counter()
        ig = VoxelIntegratedGradients(model, outputs=regions, n_steps=steps, path_power=power).attribute(
            image, present, "WT", roi
        )
        out[f"integrated_gradients_p{power:g}_s"] = time.perf_counter() - start
        out[f"integrated_gradients_p{power:g}_relative_delta"] = ig.delta / gain
    out["integrated_gradients_steps"] = steps
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def ranking(run_dir: Path) -> dict:
    """Top modality per region over every phantom case of the run (value: Dice), and T1ce-first for ET."""
    run = load_run(run_dir)
    root = run.task.prepare_data(run.config.data, run_dir)
    splits = json.loads((run_dir / "splits.json").read_text())
    tops = {r: Counter() for r in CARD.region_names}
    shapley = ExactModalityShapley(run.model, outputs=CARD.region_names, value="dice")
    per_case, test_t1ce = [], []
    for case_dir in scan_folder(root, CARD)[1]:
        case = load_case(case_dir, card=CARD)
        result = shapley.attribute(case.image, case.present, case.target, run.config.data.crop)
        first = {r: result.ranking(r)[0] for r in CARD.region_names}
        for r, m in first.items():
            tops[r][m] += 1
        et_present = bool(case.target[0].any())
        et_shapley = {
            m: round(float(v), 4) for m, v in zip(CARD.modality_names, result.values[0], strict=True)
        }
        per_case.append(
            {"case": case.case_id, "first": first, "has_et": et_present, "et_shapley": et_shapley}
        )
        if case.case_id in splits["test"] and et_present:
            test_t1ce.append(first["ET"] == "t1ce")
    with_et = [c for c in per_case if c["has_et"]]
    return {
        "run": str(run_dir),
        "method": run.config.method.name,
        "iterations": run.iteration,
        "cases": len(per_case),
        "cases_with_et": len(with_et),
        "t1ce_first_for_et_fraction": float(np.mean([c["first"]["ET"] == "t1ce" for c in with_et]))
        if with_et
        else None,
        "t1ce_first_for_et_fraction_test_split": float(np.mean(test_t1ce)) if test_t1ce else None,
        "first_counts": {r: dict(c) for r, c in tops.items()},
        "per_case": per_case,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--captum-samples", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--run", type=Path, help="a trained BraTS run on phantoms: adds the ranking sanity check"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_run(args.run).model if args.run else build_segmentation_network(CARD.modality_names).eval()
    result = {
        "benchmark": "attribution costs on one case; modality ranking on phantoms",
        "weights": f"trained run {args.run}" if args.run else "random",
        "machine": machine(),
        "timings": timings(model, args.size, args.steps, args.repeats, args.captum_samples),
    }
    print(json.dumps(result["timings"], indent=2), flush=True)
    if args.run:
        result["ranking"] = ranking(args.run)
        print({k: v for k, v in result["ranking"].items() if k != "per_case"})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
