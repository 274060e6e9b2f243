"""SlowdownMonitor on synthetic iteration times (no clock, no timing)."""

import pytest

from mckd_lab.slowdown import SlowdownMonitor


def feed(monitor, times):
    return [monitor.observe(t) for t in times]


def test_a_several_fold_slowdown_is_reported_once_with_the_fix():
    monitor = SlowdownMonitor(factor=3, reference=5, window=5, skip=1, threads=2)
    said = feed(monitor, [2.0] + [0.1] * 10 + [0.5] * 10)  # a slow first step, then 5x slower later
    messages = [m for m in said if m]
    assert len(messages) == 1  # once, not on every iteration after
    assert "5x" in messages[0] and "OMP_NUM_THREADS=1" in messages[0] and "--threads 1" in messages[0]
    assert "2 torch threads" in messages[0]
    assert said.index(messages[0]) == 11 + 2  # the third slow iteration makes the median of 5 slow
    assert monitor.message == messages[0] and "--threads 1" in monitor.hint


def test_steady_runs_spikes_and_a_slow_first_step_say_nothing():
    spikes = [0.1] * 30
    for i in range(10, 30, 7):
        spikes[i] = 1.5  # a meta round or a checkpoint now and then
    for times in ([0.1] * 40, [5.0] + [0.1] * 40, spikes, [0.1] * 10 + [0.25] * 20):
        monitor = SlowdownMonitor(factor=3, threads=2)
        assert not any(feed(monitor, times)), times


def test_a_run_with_one_thread_is_told_the_cpu_is_busy_not_to_lower_threads():
    monitor = SlowdownMonitor(factor=3, threads=1)
    message = next(m for m in feed(monitor, [0.1] * 6 + [1.0] * 6) if m)
    assert "already uses 1 torch thread" in message and "OMP_NUM_THREADS" not in message
    assert monitor.hint == "slow: CPU busy"


def test_fast_iterations_are_never_reported():
    """A run of milliseconds per iteration (a test, a tiny model) jitters several-fold and does not crawl."""
    assert not any(feed(SlowdownMonitor(threads=2), [0.01] * 6 + [0.1] * 20))


def test_too_few_iterations_say_nothing_and_bad_settings_are_refused():
    assert not any(feed(SlowdownMonitor(), [0.1] * 6 + [9.0] * 4))  # the window of 5 is not full yet
    with pytest.raises(ValueError):
        SlowdownMonitor(factor=1)


def test_every_command_that_computes_takes_threads(monkeypatch):
    """The fix the warning names exists: ``--threads N`` on each such command sets torch's threads and the
    OMP variable that kernels and workers started from the command inherit."""
    import os

    import torch

    from mckd_lab.cli import THREADED, build_parser, set_threads

    parser = build_parser()
    assert {"train", "evaluate", "predict", "explain", "demo", "run", "sweep"} <= set(THREADED)
    for name in THREADED:
        action = next(a for a in parser._subparsers._group_actions[0].choices[name]._actions
                      if "--threads" in a.option_strings)  # fmt: skip
        assert action.type is int
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        set_threads(0)
