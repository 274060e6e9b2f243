"""Seconds per phantom at 64^3 and 128^3 (rendering in memory; writing cases as .nii.gz end to end), and how
visible each region is on each sequence.

Run: ``python benchmarks/bench_phantoms.py [--cases N] [--sizes 64 128] [--contrast-cases N]``. Records
wall-clock and CPU seconds (the CPU time tells contention on a shared machine apart from work) with the
machine's description in ``benchmarks/results/phantoms.json``. The one-off cost of building the anatomy for a
size (nilearn import, template load, resampling; cached per process) is reported apart from the per-case
times. Visibility: ``region_contrast`` over HGG-like cases at 64^3, median and range per region and sequence.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import machine

from mckd_lab.data.phantoms import (
    generate_phantoms,
    make_phantom,
    mni_anatomy,
    region_contrast,
    render_phantom,
    sample_phantom_params,
)

RESULTS = Path(__file__).parent / "results" / "phantoms.json"


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_size(size: int, cases: int) -> dict:
    anatomy_wall, anatomy_cpu = timed(mni_anatomy, size)
    params = [sample_phantom_params(seed) for seed in range(cases)]
    render = [timed(render_phantom, p, size) for p in params]
    with tempfile.TemporaryDirectory() as folder:
        write_wall, write_cpu = timed(generate_phantoms, Path(folder) / "ph", cases=cases, size=size, seed=0)
    return {
        "size": size,
        "spacing_mm": 192 / size,
        "cases": cases,
        "anatomy_first_use_s": {"wall": anatomy_wall, "cpu": anatomy_cpu},
        "render_s_per_case": {
            "wall_median": statistics.median(w for w, _ in render),
            "wall_max": max(w for w, _ in render),
            "cpu_median": statistics.median(c for _, c in render),
        },
        "generate_and_write_s_per_case": {"wall": write_wall / cases, "cpu": write_cpu / cases},
    }


def contrast_summary(cases: int, size: int = 64) -> dict:
    """{region: {modality: {median, min, max}}} of ``region_contrast`` over ``cases`` HGG-like phantoms."""
    values = [
        region_contrast(p.image, p.label)
        for p in (make_phantom(size, s, enhancing=True) for s in range(cases))
    ]
    return {
        "size": size,
        "cases": cases,
        "measure": "region_contrast: (mean region - mean of the 2-voxel shell around) / pooled std",
        "regions": {
            region: {
                modality: {
                    "median": statistics.median(v[region][modality] for v in values),
                    "min": min(v[region][modality] for v in values),
                    "max": max(v[region][modality] for v in values),
                }
                for modality in values[0][region]
            }
            for region in values[0]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--contrast-cases", type=int, default=24)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    record = {
        "benchmark": "phantom generation (mckd_lab.data.phantoms)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": [bench_size(size, args.cases) for size in args.sizes],
        "contrast": contrast_summary(args.contrast_cases),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for r in record["results"]:
        print(
            f"{r['size']}^3: render {r['render_s_per_case']['wall_median']:.3f} s/case "
            f"(cpu {r['render_s_per_case']['cpu_median']:.3f}), generate+write "
            f"{r['generate_and_write_s_per_case']['wall']:.3f} s/case; anatomy once "
            f"{r['anatomy_first_use_s']['wall']:.2f} s"
        )
    for region, by_modality in record["contrast"]["regions"].items():
        print(region, "  ".join(f"{m} {s['median']:+.2f}" for m, s in by_modality.items()))
    print(f"recorded in {args.out}")


if __name__ == "__main__":
    main()
