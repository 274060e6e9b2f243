"""The all-subsets table of one case: encode once (per window) and decode 15 times, vs 15 independent passes.

For each volume side it times, on one case of random intensities (the cost does not depend on the values):
- ``encode_once``: ``mckd_lab.infer.predict_subsets`` over the 15 subsets (one sliding-window pass; per window
  the encoder runs once on the 4 modalities, the zero response is cached, the decoder sees the 15 subsets);
- ``independent``: 15 sliding-window passes of ``model(image * S, S)``, one per subset (what a plain
  evaluation loop does).
Both with the package's settings (window = ``--roi``, overlap 1/3, 4 windows per call), the compact backbone
with the default widths, random weights, eval mode, ``torch.inference_mode``; ``--reference`` adds the
reference backbone (ResNet-50 + ASPP) on one 32x64x64 window. The ways alternate ``--repeats`` times; the
ratio is the median of the pairwise ratios (load drifting on a shared machine does not bias it), times are
the best. Goals: encode_once <= 0.40 of independent at 96^3, <= 0.25 for one window (issue 14; 1/3 in issue 3); the bound is
(E + 15 D) / (15 (E + D)) for encoder and decoder costs E, D per window, so it is reached when D < 0.4 E.
Results with the machine go to ``benchmarks/results/evaluate.json``.

    .venv/bin/python benchmarks/bench_evaluate.py [--sizes 48 96] [--roi 48] [--repeats 3] [--reference]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import finish, machine

from mckd_lab.data.cards import load_card
from mckd_lab.data.missing import all_subsets
from mckd_lab.infer import predict_subsets, sliding_window
from mckd_lab.models import build_segmentation_network

RESULTS = Path(__file__).parent / "results" / "evaluate.json"


def best_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.inference_mode()
def independent_passes(model, image: torch.Tensor, subsets, roi) -> list[torch.Tensor]:
    """One sliding-window pass of the full model per subset: (S,) of (1, 3, D, H, W)."""
    out = []
    for subset in subsets:
        present = torch.tensor(subset)

        def forward(w, present=present):
            return torch.sigmoid(model(w, present.expand(w.shape[0], -1)).logits)

        out.append(sliding_window(forward, image[None], roi, sw_batch_size=4))
    return out


def time_case(model, shape, roi, repeats: int, layouts: bool = False) -> dict:
    """Both ways on one random case of ``shape`` (D, H, W); the outputs are checked to agree. The ways run in
    turn (once, independent, once, ...), and the ratio is the median of the ratios pair by pair, so load that
    drifts on a shared machine does not bias it; ``best`` times are kept beside. ``layouts``: also time the
    encode-once pass with 1 window per encoder call and its 15 subsets in one decoder call (the issue-14
    proposal; the default is 4 windows x 1 subset) in the same alternation."""
    subsets = all_subsets(4)
    image = torch.randn(4, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    once = predict_subsets(model, image, subsets, roi)  # warm-up, and the check that both agree
    max_diff = float((once - torch.cat(independent_passes(model, image, subsets, roi))).abs().max())
    ways = {"encode_once": lambda: predict_subsets(model, image, subsets, roi),
            "independent": lambda: independent_passes(model, image, subsets, roi)}  # fmt: skip
    if layouts:
        ways["encode_once_1x15"] = lambda: predict_subsets(
            model, image, subsets, roi, sw_batch_size=1, decode_batch=16
        )
    times = {name: [] for name in ways}
    for _ in range(repeats):
        for name, work in ways.items():
            times[name].append(best_seconds(work, 1))
    ratios = [a / b for a, b in zip(times["encode_once"], times["independent"], strict=True)]
    row = {"shape": list(shape), "roi": list(roi), "encode_once_s": round(min(times["encode_once"]), 3),
           "independent_s": round(min(times["independent"]), 3), "ratio": round(statistics.median(ratios), 3),
           "ratios_pairwise": [round(r, 3) for r in ratios], "max_abs_difference": max_diff}  # fmt: skip
    if layouts:
        pair = [a / b for a, b in zip(times["encode_once_1x15"], times["encode_once"], strict=True)]
        row |= {"encode_once_1x15_s": round(min(times["encode_once_1x15"]), 3),
                "ratio_1x15_over_4x1_pairwise": [round(r, 3) for r in pair]}  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96])
    parser.add_argument("--roi", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", action="store_true", help="add the reference backbone, 32x64x64")
    parser.add_argument("--layouts", action="store_true", help="also time 1 window x 15 subsets per call")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    names, rows = load_card("brats").modality_names, []
    torch.manual_seed(0)
    compact = build_segmentation_network(names).eval()
    for size in args.sizes:
        rows.append(
            {"backbone": "compact (16, 32, 64)"}
            | time_case(compact, (size,) * 3, (args.roi,) * 3, args.repeats, args.layouts)
        )
        print(rows[-1], flush=True)
    if args.reference:
        reference = build_segmentation_network(names, backbone="reference").eval()
        rows.append(
            {"backbone": "reference"} | time_case(reference, (32, 64, 64), (32, 64, 64), args.repeats)
        )
        print(rows[-1], flush=True)
    result = {
        "benchmark": "all-subsets inference of one case: encode once vs 15 independent passes",
        "settings": {
            "overlap": "1/3",
            "sw_batch_size": "predict_subsets default (4)",
            "decode_batch": "predict_subsets default (4)",
            "order": "alternating, ratio = median of pairwise ratios",
            "weights": "random",
            "repeats": args.repeats,
        },  # fmt: skip
        "goal": "ratio <= 1/3",
        "machine": finish(info),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
