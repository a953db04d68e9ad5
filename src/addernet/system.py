"""What a run ran on, for benchmarks and logs."""

from __future__ import annotations

import platform

import torch


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
