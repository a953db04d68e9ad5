"""Reference adder kernels in plain PyTorch: the oracle for the fast kernels, and the path on any device.

Eager PyTorch cannot fuse |X - W| with its sum, so the (rows x O x K) broadcast is built in chunks of at
most ``CHUNK_ELEMENTS`` elements: the working memory stays bounded on any shape (see
:mod:`addernet.kernels.unfolded` for the formulas).
"""

from __future__ import annotations

import torch

from addernet.kernels.unfolded import UnfoldedKernels

CHUNK_ELEMENTS = 1 << 22  # largest temporary: 16 MiB in float32


def _row_chunks(rows: int, per_row: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_row))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def l1_distance(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    y = x.new_empty(x.shape[0], w.shape[0])
    for rows in _row_chunks(x.shape[0], w.numel()):
        y[rows] = (x[rows, None, :] - w[None]).abs_().sum(-1).neg_()
    return y


def clipped_input_grad(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    grad = torch.empty_like(x)
    for rows in _row_chunks(x.shape[0], w.numel()):
        clipped = (w[None] - x[rows, None, :]).clamp_(-1, 1)  # (rows, O, K)
        grad[rows] = torch.bmm(g[rows, None, :], clipped).squeeze(1)
    return grad


def sign_weight_grad(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    grad = torch.zeros_like(w)
    for rows in _row_chunks(x.shape[0], w.numel()):
        grad += torch.einsum("mo,mok->ok", g[rows], (x[rows, None, :] - w[None]).sign_())
    return grad


KERNELS = UnfoldedKernels(l1_distance, clipped_input_grad, sign_weight_grad)
