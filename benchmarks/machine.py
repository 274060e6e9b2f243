"""What every benchmark records beside its numbers: the machine, its load, and the library versions."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def machine() -> dict:
    """Platform, CPUs, torch threads, 1-minute load average (other jobs slow every number down) and the
    versions of the scientific libraries already imported by the benchmark."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    for name in ("torch", "monai", "numpy", "scipy", "nibabel"):
        if name in sys.modules:
            info[name] = sys.modules[name].__version__
    return info


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM (Linux; unlike ru_maxrss it does not carry the parent's peak
    across fork + exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
