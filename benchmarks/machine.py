"""What every benchmark records beside its numbers: the machine, its load, and the library versions."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine() -> dict:
    """Platform, CPU model, cores, the ISA level torch dispatches to, torch threads, 1-minute load average
    (other jobs slow every number down), the git commit, the ISA/thread variables set, and the versions of the
    scientific libraries already imported by the benchmark. Call it again at the end for the load after."""
    info = {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["isa"] = torch.backends.cpu.get_cpu_capability()
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
