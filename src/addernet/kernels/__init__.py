"""Adder kernels and the choice between them.

Every backend offers ``forward(x, w, geo)`` and
``backward(grad_y, x, w, geo, weight_grad, need_input, need_weight)`` with the semantics documented in
:mod:`addernet.kernels.unfolded`; the reference backend is the oracle the others are tested against.

``auto`` picks the CPU kernels on the CPU and the reference elsewhere (XLA, MPS, ...).
"""

from __future__ import annotations

import torch

BACKENDS = ("auto", "reference", "cpu")
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
        return "cpu" if device.type == "cpu" else "reference"
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"adder backend 'cpu' cannot run tensors on {device}; use 'auto' or 'reference'")
    return name


def resolve(name: str, device: torch.device):
    """The kernels that run ``name`` on ``device``."""
    choice = choose(name, device)
    if choice == "cpu":
        from addernet.kernels.cpu import KERNELS
    else:
        from addernet.kernels.reference import KERNELS
    return KERNELS
