"""Adder kernels and the choice between them.

Every backend offers ``forward(x, w, geo)`` and
``backward(grad_y, x, w, geo, weight_grad, need_input, need_weight)`` with the semantics documented in
:mod:`addernet.nn.kernels.reference`; the reference backend is the oracle the others are tested against.

``auto`` picks the Triton kernels on CUDA, the CPU kernels on the CPU, and the reference elsewhere (XLA, MPS).
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "cpu", "triton")
_default_backend = "auto"


def set_backend(name: str) -> None:
    """Set the backend used by layers and calls that ask for ``"auto"`` (also ``adder_backend`` in configs)."""
    global _default_backend
    check_backend(name)
    _default_backend = name


def get_backend() -> str:
    return _default_backend


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown adder backend {name!r}; choose one of {', '.join(BACKENDS)}")


def choose(name: str, device: torch.device) -> str:
    """The concrete backend that ``name`` means on ``device``."""
    check_backend(name)
    if name == "auto":
        name = _default_backend
    if name == "auto":
        if device.type == "cuda" and triton_available():
            return "triton"
        return "cpu" if device.type == "cpu" else "reference"
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"adder backend 'cpu' cannot run tensors on {device}; use 'auto' or 'reference'")
    if name == "triton" and not (device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())):
        raise ValueError(f"adder backend 'triton' runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
                         f"not on {device}; use 'auto' or 'reference'")
    if name == "triton" and not triton_available():
        raise ValueError("adder backend 'triton' needs the triton package (pip install triton)")
    return name


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(name: str, device: torch.device):
    """The kernel module (``forward``, ``backward``) that runs ``name`` on ``device``."""
    choice = choose(name, device)
    if choice == "cpu":
        from addernet.nn.kernels import cpu as kernels
    elif choice == "triton":
        from addernet.nn.kernels import triton_kernels as kernels
    else:
        from addernet.nn.kernels import reference as kernels
    return kernels
