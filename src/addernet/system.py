"""What a run ran on, for benchmarks and logs."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

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


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, SLURM's binding), capped by its cgroup's CPU
    quota (a container's or a job's ``--cpus``), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def cgroup_cpu_quota() -> int | None:
    """The CPU quota of this process's cgroup in whole cores (rounded up), or None where there is none."""
    for path in _cgroup_cpu_files():
        try:
            fields = Path(path).read_text().split()
        except OSError:
            continue
        if len(fields) == 2 and fields[0] != "max":  # cgroup v2: "<quota> <period>" or "max <period>"
            return math.ceil(int(fields[0]) / int(fields[1]))
        if len(fields) == 1 and int(fields[0]) > 0:  # cgroup v1: cpu.cfs_quota_us (-1: none)
            period = int(Path(path).with_name("cpu.cfs_period_us").read_text())
            return math.ceil(int(fields[0]) / period)
    return None


def _cgroup_cpu_files() -> list[str]:
    files = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            number, controllers, group = line.split(":", 2)
            if number == "0" and not controllers:  # cgroup v2: the process's own group (then the root, below)
                files.append(f"/sys/fs/cgroup{group.rstrip('/')}/cpu.max")
            elif "cpu" in controllers.split(","):  # cgroup v1
                files.append(f"/sys/fs/cgroup/{controllers}{group.rstrip('/')}/cpu.cfs_quota_us")
    except OSError:
        pass
    return files + ["/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"]


def configure_threads(setting: int | str | None, processes: int = 1) -> int:
    """Set the CPU threads of this process (PyTorch's intra-op pool, which the compiled kernels use too).

    ``auto``: every core this process may use (:func:`available_cores`), shared among the ``processes`` that
    the job runs on one computer, at least 1. Not fewer on a busy machine: OpenMP threads sleep while they
    wait (see :mod:`addernet`), so a thread that loses its core to another program delays the others without
    taking their time, and a run with every core is about as fast as one with the free cores only (``python
    src/bench.py --thread-policy`` measures both). An explicit number is taken as it is; ``OMP_NUM_THREADS``
    set in the environment counts as explicit.
    """
    if setting in (None, "auto"):
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = int(os.environ["OMP_NUM_THREADS"])
        else:
            threads = max(1, available_cores() // max(1, processes))
    elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        threads = setting
    else:
        raise ConfigError(f"threads must be a positive integer or auto, got {setting!r}: fix the override threads=...")
    torch.set_num_threads(threads)
    return threads
