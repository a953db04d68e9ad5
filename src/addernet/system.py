"""What a run ran on, for benchmarks and logs."""

from __future__ import annotations

import os
import platform

import torch
from addernet.errors import ConfigError


def device_name(device: torch.device | str | None = None) -> str:
    """The GPU's name on CUDA, else the CPU model (from /proc/cpuinfo where there is one)."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                              else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "cpu"


def busy_cores() -> int:
    """Cores that other programs keep busy now: the 1-minute load average, rounded (0 where unknown)."""
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(setting: int | str | None, processes: int = 1) -> int:
    """Set the CPU threads of this process (PyTorch's intra-op pool, which the compiled kernels use too).

    ``auto``: the cores not already busy, shared among the ``processes`` this machine runs for the job, at
    least 1. It matters: OpenMP threads wait for each other at every parallel loop, so one thread that loses
    its core to another program stalls all of them (measured on a 2-core machine: a run 6-7x slower with 2
    threads than with 1 while the other core was busy). An explicit number is taken as it is;
    ``OMP_NUM_THREADS`` set in the environment counts as explicit.
    """
    if setting in (None, "auto"):
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(os.environ["OMP_NUM_THREADS"])
        else:
            threads = max(1, (available_cores() - busy_cores()) // max(1, processes))
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        threads = setting
    else:
        raise ConfigError(f"threads must be a positive integer or auto, got {setting!r}: fix the override threads=...")
    torch.set_num_threads(threads)
    return threads
