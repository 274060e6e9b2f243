"""Modality drop explorer latency: how long one checkbox toggle takes on a 48^3 case on the CPU.

A phantom at ``--size`` (default 48, so the case is exactly size^3; intensities normalised like the loader's)
and the default compact network (widths 16, 32, 64; untrained: the cost does not depend on the weights).
It times
- ``build``: the explorer's construction (encode every modality once, the zero response, the first decode);
- ``toggle``: one checkbox change through the widget (decode with the cached encodings, threshold, Dice, the
  three-plane figure rebuilt and synced into the FigureWidget; no browser attached, so the comm messages
  are not sent);
- ``decode``: ``explorer.predict`` alone, and ``forward``: the uncached alternative ``model(image * S, S)``.
Toggles drop and restore each modality in turn (``--rounds`` times), with the explorer's default of 1 torch
thread and with torch's default (all cores): on a shared, loaded machine one thread is much faster.
Wall and CPU seconds go to ``benchmarks/results/widgets.json`` with the machine and its load.

    .venv/bin/python benchmarks/bench_widgets.py [--size 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from mckd_lab.data.brats import label_to_regions, normalise_intensity
from mckd_lab.data.cards import load_card
from mckd_lab.data.phantoms import make_phantom
from mckd_lab.models import build_segmentation_network
from widgets import ModalityDropExplorer
from widgets.drop import limit_threads

RESULTS = Path(__file__).parent / "results" / "widgets.json"


def summary(wall: list[float], cpu: list[float]) -> dict:
    """Median / 90th percentile / max wall seconds, and the median CPU seconds of this process."""
    return {
        "median_s": round(float(np.median(wall)), 4),
        "p90_s": round(float(np.percentile(wall, 90)), 4),
        "max_s": round(float(np.max(wall)), 4),
        "median_cpu_s": round(float(np.median(cpu)), 4),
        "n": len(wall),
    }


def timed(fn, wall: list[float], cpu: list[float]) -> None:
    tic, cpu_tic = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - tic)
    cpu.append(time.process_time() - cpu_tic)


def measure(model, image, target, card, rounds: int, threads: int | None) -> dict:
    """Build the explorer with ``threads`` and toggle each modality off and on ``rounds`` times."""
    build, toggle, decode, forward = ([], []), ([], []), ([], []), ([], [])
    explorers = []
    timed(
        lambda: explorers.append(ModalityDropExplorer(model, image, target, card=card, threads=threads)),
        *build,
    )
    explorer = explorers[0]
    explorer.widget  # noqa: B018 - the live controls, as in a notebook
    for _ in range(rounds):
        for name in card.modality_names:
            for value in (False, True):
                timed(lambda n=name, v=value: setattr(explorer.checkboxes[n], "value", v), *toggle)
        with limit_threads(threads):
            for present in [tuple(i != j for i in range(len(card.modality_names))) for j in range(4)]:
                timed(lambda p=present: explorer.predict(p), *decode)
                keep = torch.tensor([present])
                x = torch.as_tensor(image)[None] * keep[..., None, None, None]
                with torch.inference_mode():
                    timed(lambda x=x, keep=keep: model(x, keep), *forward)
    return {
        "explorer_threads": threads if threads is not None else f"torch default ({torch.get_num_threads()})",
        "build_s": round(build[0][0], 4),
        "toggle": summary(*toggle),
        "decode": summary(*decode),
        "forward_uncached": summary(*forward),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    card = load_card("brats")
    phantom = make_phantom(args.size, rng=0)
    image = np.stack([normalise_intensity(v) for v in phantom.image]).astype(np.float32)
    target = label_to_regions(phantom.label, card)
    torch.manual_seed(0)
    model = build_segmentation_network(card.modality_names).eval()
    runs = [measure(model, image, target, card, args.rounds, threads) for threads in (1, None)]
    result = {
        "benchmark": "bench_widgets",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine slow every number
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "case": {
            "size": [args.size] * 3,
            "modalities": list(card.modality_names),
            "model": "compact 16,32,64",
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
