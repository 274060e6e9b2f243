"""Aggregate benchmarks/study.py's recorded runs (stub)."""


def report(results, runs):
    print("report: not written yet")
