"""Noticing an oversubscribed CPU: iterations that slow down several-fold after the first ones.

On a CPU shared with other busy processes, torch's default of one thread per core makes small 3D convolutions
many times slower (the threads of one operation wait on each other at every barrier; measured up to 40x in
benchmarks/README.md, "Threads"). A run does not crash, it crawls. ``SlowdownMonitor`` watches the seconds of
each iteration and, the first time the recent ones are ``factor`` times slower than the first ones, returns one
message naming the fix (``OMP_NUM_THREADS=1`` or ``--threads 1``), which the trainer shows in its progress line
and writes to the run's history. Pure bookkeeping on numbers handed in: no clock, no torch.
"""

from __future__ import annotations

import statistics


class SlowdownMonitor:
    """Compare recent iteration times with the first ones; report a several-fold slowdown once.

    The reference is the median of iterations ``skip`` .. ``skip + reference - 1`` (the very first ones pay
    for allocation and caches); the current speed is the median of the last ``window`` iterations, so an
    occasional long iteration (a meta round, a checkpoint) does not count as a slowdown.

    Args:
        factor: how many times slower the recent median must be than the reference.
        reference, window, skip: iteration counts (see above).
        threads: the torch threads of the run, named in the message (``torch.get_num_threads()``).
        min_seconds: iterations faster than this are never reported (a run of milliseconds per iteration,
            a test, does not crawl; and its timings jitter several-fold).
    """

    def __init__(self, factor: float = 3.0, reference: int = 5, window: int = 5, skip: int = 1,
                 threads: int | None = None, min_seconds: float = 0.25):  # fmt: skip
        if factor <= 1 or reference < 1 or window < 1 or skip < 0:
            raise ValueError("factor must exceed 1; reference and window must be >= 1, skip >= 0")
        self.factor, self.reference, self.window, self.skip, self.threads = (
            factor,
            reference,
            window,
            skip,
            threads,
        )
        self.min_seconds = min_seconds
        self._seen: list[float] = []
        self._base: float | None = None
        self.message: str | None = None  # set once, when the slowdown is first seen

    def observe(self, seconds: float) -> str | None:
        """Record one iteration's seconds; returns the message the first time a slowdown is seen, else None."""
        self._seen.append(float(seconds))
        n = len(self._seen)
        if self._base is None:
            if n < self.skip + self.reference:
                return None
            self._base = statistics.median(self._seen[self.skip : self.skip + self.reference])
            return None
        if self.message is not None or n < self.skip + self.reference + self.window:
            return None
        recent = statistics.median(self._seen[-self.window :])
        if self._base > 0 and recent >= max(self.factor * self._base, self.min_seconds):
            self.message = self._explain(recent)
            return self.message
        return None

    @property
    def hint(self) -> str | None:
        """A few words for a progress line once the slowdown was seen (None before)."""
        if self.message is None:
            return None
        one = self.threads is not None and self.threads <= 1
        return "slow: CPU busy" if one else "slow: try OMP_NUM_THREADS=1 / --threads 1"

    def _explain(self, recent: float) -> str:
        slower = f"iterations slowed {recent / self._base:.0f}x ({recent:.2f} s vs {self._base:.2f} s at the start)"
        if self.threads is not None and self.threads <= 1:
            return f"{slower}: other processes are busy on this CPU (this run already uses 1 torch thread)"
        threads = f"{self.threads} torch threads" if self.threads else "torch's threads"
        return (f"{slower}: the CPU looks shared with other busy processes, and {threads} wait on each other; "
                "set OMP_NUM_THREADS=1 (or pass --threads 1 to mckd-lab; torch.set_num_threads(1) in Python)")  # fmt: skip
