"""Adder kernels and the choice between them.

Every backend module offers ``forward(x, w, geo)`` and
``backward(grad_y, x, w, geo, weight_grad, need_input, need_weight)`` with the semantics documented in
:mod:`addernet.kernels.reference`, which is the oracle the others are tested against.
"""

from __future__ import annotations

from types import ModuleType

import torch

from addernet.kernels import reference

BACKENDS = ("auto", "reference")
_default_backend = "auto"


def set_backend(name: str) -> None:
    """Set the backend that ``backend="auto"`` calls resolve to when no backend is given per call."""
    global _default_backend
    check_backend(name)
    _default_backend = name


def get_backend() -> str:
    return _default_backend


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown adder backend {name!r}; choose one of {', '.join(BACKENDS)}")


def resolve(name: str, device: torch.device) -> ModuleType:
    """The kernel module that runs ``name`` on ``device`` ("auto": the fastest one that works there)."""
    check_backend(name)
    if name == "auto":
        name = _default_backend
    return reference
