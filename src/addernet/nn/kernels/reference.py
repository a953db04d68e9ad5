"""Reference adder kernels in plain PyTorch: the oracle for the fast kernels, and the path on any device.

The input is unfolded into patch rows X (M = N*Ho*Wo rows of K = C/groups*kh*kw values) and each group is
an "L1 matrix product" with the filters W (O/groups rows of K):

    forward        Y[m, o]  = -sum_k |X[m, k] - W[o, k]|
    input grad     dX[m, k] =  sum_o HT(W[o, k] - X[m, k]) * G[m, o]      (HT clips to [-1, 1])
    weight grad    dW[o, k] =  sum_m (X[m, k] - W[o, k]) * G[m, o]         ("full": G^T X - W * colsum(G))
                   dW[o, k] =  sum_m sign(X[m, k] - W[o, k]) * G[m, o]     ("sign")

Zero padding is part of the unfolded rows, so a padded position contributes -|w| to the output; folding
the input gradient back sums overlapping windows and drops padded positions. Eager PyTorch cannot fuse
|X - W| with its sum, so the (rows x O x K) broadcast is built in chunks of at most ``CHUNK_ELEMENTS``
elements: the working memory stays bounded on any shape. Arithmetic runs in float32 (float64 for float64
inputs) whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from addernet.nn.kernels.geometry import Geometry

Tensor = torch.Tensor
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





def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def full_weight_grad(grad_y: Tensor, x: Tensor, w: Tensor, geo: Geometry, dtype: torch.dtype) -> Tensor:
    """sum_m (X - W) G = (a convolution's weight gradient, implicit GEMM in cuDNN/oneDNN) - W * sum(G).

    The fast backends use this; the reference computes the same sum on its own unfolded rows.
    """
    gy, acc = grad_y.to(dtype), compute_dtype(dtype)
    conv = torch.nn.grad.conv2d_weight(x.to(dtype), w.shape, gy, geo.stride, geo.padding, geo.dilation, geo.groups)
    return conv.to(acc) - w.to(acc) * gy.to(acc).sum((0, 2, 3)).view(-1, 1, 1, 1)


def unfold_rows(x: Tensor, geo: Geometry) -> Tensor:
    """(N, C, H, W) -> (groups, N*Ho*Wo, C/groups*kh*kw) patch rows, zero padding included."""
    cols = F.unfold(x, geo.kernel, dilation=geo.dilation, padding=geo.padding, stride=geo.stride)
    n, k, length = cols.shape
    cols = cols.view(n, geo.groups, k // geo.groups, length)
    return cols.permute(1, 0, 3, 2).reshape(geo.groups, n * length, k // geo.groups)


def fold_rows(rows: Tensor, geo: Geometry) -> Tensor:
    """Adjoint of :func:`unfold_rows`: sums overlapping windows back into (N, C, H, W)."""
    groups, m, kg = rows.shape
    n = geo.batch
    cols = rows.view(groups, n, m // n, kg).permute(1, 0, 3, 2).reshape(n, groups * kg, m // n)
    return F.fold(cols, geo.input_hw, geo.kernel, dilation=geo.dilation, padding=geo.padding,
                  stride=geo.stride)


def _output_rows_to_nchw(y: Tensor, geo: Geometry) -> Tensor:
    groups, _, og = y.shape
    ho, wo = geo.output_hw
    return y.view(groups, geo.batch, ho * wo, og).permute(1, 0, 3, 2).reshape(geo.batch, groups * og, ho, wo)


def output_rows(g: Tensor, groups: int) -> Tensor:
    n, o, ho, wo = g.shape
    return g.reshape(n, groups, o // groups, ho * wo).permute(1, 0, 3, 2).reshape(groups, n * ho * wo, o // groups)


@torch.no_grad()
def forward(x: Tensor, w: Tensor, geo: Geometry) -> Tensor:
    ct = compute_dtype(x.dtype)
    xr = unfold_rows(x.to(ct), geo)
    wr = w.to(ct).reshape(geo.groups, geo.out_channels // geo.groups, -1)
    y = torch.stack([l1_distance(xr[g], wr[g]) for g in range(geo.groups)])
    return _output_rows_to_nchw(y, geo).to(x.dtype)

@torch.no_grad()
def backward(grad_y: Tensor, x: Tensor, w: Tensor, geo: Geometry, weight_grad: str,
             need_input: bool, need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
    ct = compute_dtype(x.dtype)
    xr = unfold_rows(x.to(ct), geo)
    wr = w.to(ct).reshape(geo.groups, geo.out_channels // geo.groups, -1)
    gr = output_rows(grad_y.to(ct), geo.groups)
    grad_x = grad_w = None
    if need_input:
        rows = torch.stack([clipped_input_grad(xr[g], wr[g], gr[g]) for g in range(geo.groups)])
        grad_x = fold_rows(rows, geo).to(x.dtype)
    if need_weight:
        if weight_grad == "full":  # sum_m (X - W) G = G^T X - W * colsum(G)
            grad_w = torch.baddbmm(-wr * gr.sum(1)[:, :, None], gr.transpose(1, 2), xr)
        else:
            grad_w = torch.stack([sign_weight_grad(xr[g], wr[g], gr[g]) for g in range(geo.groups)])
        grad_w = grad_w.reshape(w.shape).to(w.dtype)
    return grad_x, grad_w
