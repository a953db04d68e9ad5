"""Reference adder kernels in plain PyTorch: the oracle for the fast kernels, and the path on any device.

The input is unfolded into patch rows X (M = N*Ho*Wo rows of K = C/groups*kh*kw values) and each group
is an "L1 matrix product" with the filters W (O/groups rows of K):

    forward        Y[m, o]  = -sum_k |X[m, k] - W[o, k]|
    input grad     dX[m, k] =  sum_o HT(W[o, k] - X[m, k]) * G[m, o]      (HT clips to [-1, 1])
    weight grad    dW[o, k] =  sum_m (X[m, k] - W[o, k]) * G[m, o]         ("full": a matrix product)
                   dW[o, k] =  sum_m sign(X[m, k] - W[o, k]) * G[m, o]     ("sign")

Zero padding is part of the unfolded rows, so a padded position contributes -|w| to the output; folding
the input gradient back drops the padded positions. The (rows x O x K) broadcast is never built whole:
rows are processed in chunks of at most ``CHUNK_ELEMENTS`` elements. Arithmetic runs in float32 (float64
for float64 inputs), whatever the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from addernet.kernels.geometry import Geometry

CHUNK_ELEMENTS = 1 << 22  # largest temporary: 16 MiB in float32


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_chunks(rows: int, per_row: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_row))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def unfold_rows(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(N, C, H, W) -> (groups, N*Ho*Wo, C/groups*kh*kw) patch rows, zero padding included."""
    cols = F.unfold(x, geo.kernel, dilation=geo.dilation, padding=geo.padding, stride=geo.stride)
    n, k, length = cols.shape
    cols = cols.view(n, geo.groups, k // geo.groups, length)
    return cols.permute(1, 0, 3, 2).reshape(geo.groups, n * length, k // geo.groups)


def fold_rows(rows: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Inverse layout of :func:`unfold_rows`, summing overlapping windows (adjoint of unfold)."""
    groups, m, kg = rows.shape
    n = geo.batch
    cols = rows.view(groups, n, m // n, kg).permute(1, 0, 3, 2).reshape(n, groups * kg, m // n)
    return F.fold(cols, geo.input_hw, geo.kernel, dilation=geo.dilation, padding=geo.padding,
                  stride=geo.stride)


def _weight_rows(w: torch.Tensor, groups: int) -> torch.Tensor:
    return w.reshape(groups, w.shape[0] // groups, -1)


def _output_rows_to_nchw(y: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(groups, N*Ho*Wo, O/groups) -> (N, O, Ho, Wo)."""
    groups, _, og = y.shape
    ho, wo = geo.output_hw
    return y.view(groups, geo.batch, ho * wo, og).permute(1, 0, 3, 2).reshape(geo.batch, groups * og, ho, wo)


def _nchw_to_output_rows(g: torch.Tensor, groups: int) -> torch.Tensor:
    n, o, ho, wo = g.shape
    return g.reshape(n, groups, o // groups, ho * wo).permute(1, 0, 3, 2).reshape(groups, n * ho * wo, o // groups)


def forward(x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    ct = compute_dtype(x.dtype)
    xr = unfold_rows(x.to(ct), geo)
    wr = _weight_rows(w.to(ct), geo.groups)
    groups, m, kg = xr.shape
    y = xr.new_empty(groups, m, wr.shape[1])
    for g in range(groups):
        for rows in _row_chunks(m, wr.shape[1] * kg):
            y[g, rows] = (xr[g, rows, None, :] - wr[g, None]).abs_().sum(-1).neg_()
    return _output_rows_to_nchw(y, geo).to(x.dtype)


def backward(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry, weight_grad: str,
             need_input: bool, need_weight: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    ct = compute_dtype(x.dtype)
    xr = unfold_rows(x.to(ct), geo)
    wr = _weight_rows(w.to(ct), geo.groups)
    gr = _nchw_to_output_rows(grad_y.to(ct), geo.groups)
    groups, m, kg = xr.shape
    og = wr.shape[1]
    grad_x_rows = torch.zeros_like(xr) if need_input else None
    grad_w = torch.zeros_like(wr) if need_weight else None
    for g in range(groups):
        if need_weight and weight_grad == "full":
            # sum_m (X - W) G = G^T X - W * colsum(G): a plain matrix product
            grad_w[g] = gr[g].T @ xr[g] - wr[g] * gr[g].sum(0)[:, None]
        for rows in _row_chunks(m, og * kg):
            if need_input:
                clipped = (wr[g, None] - xr[g, rows, None, :]).clamp_(-1, 1)  # (rows, O, K)
                grad_x_rows[g, rows] = torch.bmm(gr[g, rows, None, :], clipped).squeeze(1)
            if need_weight and weight_grad == "sign":
                signs = (xr[g, rows, None, :] - wr[g, None]).sign_()
                grad_w[g] += torch.einsum("mo,mok->ok", gr[g, rows], signs)
    grad_x = fold_rows(grad_x_rows, geo).to(x.dtype) if need_input else None
    if need_weight:
        grad_w = grad_w.reshape(w.shape).to(w.dtype)
    return grad_x, grad_w
