"""The im2col driver shared by the reference and CPU kernels.

The input is unfolded into patch rows X (M = N*Ho*Wo rows of K = C/groups*kh*kw values) and each group is
an "L1 matrix product" with the filters W (O/groups rows of K), computed by three primitives:

    l1_distance          Y[m, o]  = -sum_k |X[m, k] - W[o, k]|
    clipped_input_grad   dX[m, k] =  sum_o HT(W[o, k] - X[m, k]) * G[m, o]      (HT clips to [-1, 1])
    sign_weight_grad     dW[o, k] =  sum_m sign(X[m, k] - W[o, k]) * G[m, o]

The full-precision weight gradient sum_m (X - W) * G = G^T X - W * colsum(G) is a plain matrix product.
Zero padding is part of the unfolded rows, so a padded position contributes -|w| to the output; folding
the input gradient back sums overlapping windows and drops padded positions. Arithmetic runs in float32
(float64 for float64 inputs) whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from addernet.kernels.geometry import Geometry

Tensor = torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def _nchw_to_output_rows(g: Tensor, groups: int) -> Tensor:
    n, o, ho, wo = g.shape
    return g.reshape(n, groups, o // groups, ho * wo).permute(1, 0, 3, 2).reshape(groups, n * ho * wo, o // groups)


@dataclass(frozen=True)
class UnfoldedKernels:
    """Adder kernels built from the three L1 primitives above, each taking (X, W[, G]) of one group."""

    l1_distance: Callable[[Tensor, Tensor], Tensor]
    clipped_input_grad: Callable[[Tensor, Tensor, Tensor], Tensor]
    sign_weight_grad: Callable[[Tensor, Tensor, Tensor], Tensor]

    @torch.no_grad()
    def forward(self, x: Tensor, w: Tensor, geo: Geometry) -> Tensor:
        ct = compute_dtype(x.dtype)
        xr = unfold_rows(x.to(ct), geo)
        wr = w.to(ct).reshape(geo.groups, geo.out_channels // geo.groups, -1)
        y = torch.stack([self.l1_distance(xr[g], wr[g]) for g in range(geo.groups)])
        return _output_rows_to_nchw(y, geo).to(x.dtype)

    @torch.no_grad()
    def backward(self, grad_y: Tensor, x: Tensor, w: Tensor, geo: Geometry, weight_grad: str,
                 need_input: bool, need_weight: bool) -> tuple[Tensor | None, Tensor | None]:
        ct = compute_dtype(x.dtype)
        xr = unfold_rows(x.to(ct), geo)
        wr = w.to(ct).reshape(geo.groups, geo.out_channels // geo.groups, -1)
        gr = _nchw_to_output_rows(grad_y.to(ct), geo.groups)
        grad_x = grad_w = None
        if need_input:
            rows = torch.stack([self.clipped_input_grad(xr[g], wr[g], gr[g]) for g in range(geo.groups)])
            grad_x = fold_rows(rows, geo).to(x.dtype)
        if need_weight:
            if weight_grad == "full":  # sum_m (X - W) G = G^T X - W * colsum(G)
                grad_w = torch.baddbmm(-wr * gr.sum(1)[:, :, None], gr.transpose(1, 2), xr)
            else:
                grad_w = torch.stack([self.sign_weight_grad(xr[g], wr[g], gr[g]) for g in range(geo.groups)])
            grad_w = grad_w.reshape(w.shape).to(w.dtype)
        return grad_x, grad_w
