"""Adder kernels in Triton for CUDA GPUs: the im2col gather happens inside the kernels.

Each program owns a register tile of outputs and walks the reduction axis one element at a time, adding a
rank-1 update |x[:, None] - w[None, :]| (the formulation that measured fastest in the project's probes); the
input patches are gathered straight from the NCHW input with zero padding by masking, so no unfolded copy of
the input exists. Arithmetic is float32 whatever the input dtype.

- forward: tile (output positions x output channels of a group), reduction over C/groups * kh * kw.
- input gradient: tile (input positions x input channels of a group), reduction over the output channels
  and the kernel offsets that reach each input position; HT(W - X) * G.
- weight gradient, ``full``: sum_m (X - W) G = (the weight gradient of a convolution) - W * sum(G), done by
  ``torch.nn.grad.conv2d_weight`` (cuDNN, implicit GEMM).
- weight gradient, ``sign``: tile (output channels x reduction elements), the long sum over output
  positions split across programs and the partial sums added afterwards.

Tested on the CPU under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError

from addernet.kernels import reference
from addernet.kernels.geometry import Geometry

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _configs(pairs):
    if INTERPRETED:  # the interpreter runs every config it is given: one small tile is enough
        return [triton.Config({"BLOCK_A": 16, "BLOCK_B": 8}, num_warps=1)]
    return [triton.Config({"BLOCK_A": a, "BLOCK_B": b}, num_warps=w, num_stages=s) for a, b, w, s in pairs]


_TILES = [(64, 16, 4, 2), (128, 16, 4, 2), (64, 32, 4, 2), (128, 32, 4, 2), (128, 64, 8, 2), (256, 32, 8, 2)]


@triton.autotune(configs=_configs(_TILES), key=["M", "Og", "Cg", "KH", "KW"])
@triton.jit
def _forward_kernel(x_ptr, wt_ptr, y_ptr, M, C, H, W, Ho, Wo, Cg, Og,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                    KH: tl.constexpr, KW: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """y[n, g*Og + o, ho, wo] = -sum_{c,u,v} |x_pad[...] - w[g*Og + o, c, u, v]|; wt is (G, Cg*KH*KW, Og)."""
    pid_m, pid_o, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_o = pid_o * BLOCK_B + tl.arange(0, BLOCK_B)
    m_ok, o_ok = offs_m < M, offs_o < Og
    hw_out = Ho * Wo
    n = (offs_m // hw_out).to(tl.int64)
    r = offs_m % hw_out
    h0 = (r // Wo) * stride_h - pad_h
    w0 = (r % Wo) * stride_w - pad_w
    x_rows = x_ptr + (n * C + g * Cg) * H * W
    w_group = wt_ptr + g.to(tl.int64) * Cg * KH * KW * Og
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for c in range(0, Cg):
        for u in tl.static_range(KH):
            h = h0 + u * dil_h
            row_ok = m_ok & (h >= 0) & (h < H)
            for v in tl.static_range(KW):
                col = w0 + v * dil_w
                ok = row_ok & (col >= 0) & (col < W)
                x = tl.load(x_rows + c * H * W + h * W + col, mask=ok, other=0.0).to(tl.float32)
                k = (c * KH + u) * KW + v
                w = tl.load(w_group + k * Og + offs_o, mask=o_ok, other=0.0).to(tl.float32)
                acc += tl.abs(x[:, None] - w[None, :])
    out = y_ptr + (n[:, None] * (Og * tl.num_programs(2)) + g * Og + offs_o[None, :]) * hw_out + r[:, None]
    tl.store(out, (-acc).to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & o_ok[None, :])


@triton.autotune(configs=_configs(_TILES), key=["P", "Og", "Cg", "KH", "KW"])
@triton.jit
def _input_grad_kernel(x_ptr, wt_ptr, gy_ptr, gx_ptr, P, C, H, W, Ho, Wo, Cg, Og,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       KH: tl.constexpr, KW: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """gx[n, g*Cg + c, h, w] = sum over (o, u, v) reaching (h, w) of HT(w - x) * gy; wt is (G, KH, KW, Og, Cg)."""
    pid_p, pid_c, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p = pid_p * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_c = pid_c * BLOCK_B + tl.arange(0, BLOCK_B)
    p_ok, c_ok = offs_p < P, offs_c < Cg
    n = (offs_p // (H * W)).to(tl.int64)
    r = offs_p % (H * W)
    h, w = r // W, r % W
    tile = (n[:, None] * C + g * Cg + offs_c[None, :]) * H * W + r[:, None]
    tile_ok = p_ok[:, None] & c_ok[None, :]
    x = tl.load(x_ptr + tile, mask=tile_ok, other=0.0).to(tl.float32)
    out_channels = Og * tl.num_programs(2)
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for u in tl.static_range(KH):
        i_s = h + pad_h - u * dil_h  # = i * stride_h when output row i reads this input row at offset u
        i_ok = (i_s >= 0) & (i_s % stride_h == 0) & (i_s < Ho * stride_h)
        for v in tl.static_range(KW):
            j_s = w + pad_w - v * dil_w
            ok = p_ok & i_ok & (j_s >= 0) & (j_s % stride_w == 0) & (j_s < Wo * stride_w)
            gy_rows = gy_ptr + (n * out_channels + g * Og) * Ho * Wo + (i_s // stride_h) * Wo + j_s // stride_w
            w_uv = wt_ptr + ((g * KH + u) * KW + v).to(tl.int64) * Og * Cg
            for o in range(0, Og):
                gy = tl.load(gy_rows + o * Ho * Wo, mask=ok, other=0.0).to(tl.float32)
                wv = tl.load(w_uv + o * Cg + offs_c, mask=c_ok, other=0.0).to(tl.float32)
                acc += tl.minimum(tl.maximum(wv[None, :] - x, -1.0), 1.0) * gy[:, None]
    tl.store(gx_ptr + tile, acc.to(gx_ptr.dtype.element_ty), mask=tile_ok)


@triton.autotune(configs=_configs([(32, 32, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2)]),
                 key=["Og", "Cg", "KH", "KW"], reset_to_zero=["part_ptr"])
@triton.jit
def _sign_weight_grad_kernel(x_ptr, w_ptr, gy_ptr, part_ptr, M, C, H, W, Ho, Wo, Cg, Og, rows_per_split,
                             stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             KH: tl.constexpr, KW: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """part[split, g*Og + o, k] = sum over this split's output positions m of sign(x[m, k] - w[o, k]) * gy[m, o]."""
    pid_o, pid_k, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    groups = C // Cg
    g, split = pid_gs % groups, pid_gs // groups
    K = Cg * KH * KW
    offs_o = pid_o * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_k = pid_k * BLOCK_B + tl.arange(0, BLOCK_B)
    o_ok, k_ok = offs_o < Og, offs_k < K
    c, uv = offs_k // (KH * KW), offs_k % (KH * KW)
    du, dv = (uv // KW) * dil_h, (uv % KW) * dil_w
    wt = tl.load(w_ptr + (g * Og + offs_o[:, None]) * K + offs_k[None, :], mask=o_ok[:, None] & k_ok[None, :],
                 other=0.0).to(tl.float32)
    out_channels = Og * groups
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    first = split * rows_per_split
    for m in range(first, tl.minimum(first + rows_per_split, M)):
        n = m // (Ho * Wo)
        r = m % (Ho * Wo)
        h = (r // Wo) * stride_h - pad_h + du
        col = (r % Wo) * stride_w - pad_w + dv
        ok = k_ok & (h >= 0) & (h < H) & (col >= 0) & (col < W)
        x = tl.load(x_ptr + ((n.to(tl.int64) * C + g * Cg + c) * H + h) * W + col, mask=ok, other=0.0)
        gy = tl.load(gy_ptr + (n.to(tl.int64) * out_channels + g * Og + offs_o) * Ho * Wo + r, mask=o_ok, other=0.0)
        diff = x.to(tl.float32)[None, :] - wt
        sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        acc += sign * gy.to(tl.float32)[:, None]
    out = part_ptr + (split.to(tl.int64) * out_channels + g * Og + offs_o[:, None]) * K + offs_k[None, :]
    tl.store(out, acc, mask=o_ok[:, None] & k_ok[None, :])


def _geometry_args(geo: Geometry) -> tuple:
    return (*geo.stride, *geo.padding, *geo.dilation)


def _group_sizes(geo: Geometry) -> tuple[int, int]:
    return geo.channels // geo.groups, geo.out_channels // geo.groups


_compile_failed = False


def _or_reference(kernel):
    """If Triton cannot compile a kernel for this GPU, warn once and use the reference kernels from then on."""
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        global _compile_failed
        if not _compile_failed:
            try:
                return kernel(*args, **kwargs)
            except CompilationError as err:
                warnings.warn(f"Triton could not compile the adder kernels ({err}); using the reference kernels")
                _compile_failed = True
        return getattr(reference, kernel.__name__)(*args, **kwargs)
    return run


@_or_reference
def forward(x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    m = geo.batch * ho * wo
    wt = w.reshape(geo.groups, og, cg * kh * kw).transpose(1, 2).contiguous()  # k-major: (G, K, Og)
    y = torch.empty(geo.output_shape, device=x.device, dtype=x.dtype)

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_A"]), triton.cdiv(og, meta["BLOCK_B"]), geo.groups

    _forward_kernel[grid](x, wt, y, m, geo.channels, *geo.input_hw, ho, wo, cg, og, *_geometry_args(geo),
                          KH=kh, KW=kw)
    return y


@_or_reference
def backward(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry, weight_grad: str,
             need_input: bool, need_weight: bool):
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    grad_x = grad_w = None
    if need_input:
        wt = w.reshape(geo.groups, og, cg, kh, kw).permute(0, 3, 4, 1, 2).contiguous()  # (G, KH, KW, Og, Cg)
        grad_x = torch.empty_like(x)
        p = geo.batch * geo.input_hw[0] * geo.input_hw[1]

        def grid(meta):
            return triton.cdiv(p, meta["BLOCK_A"]), triton.cdiv(cg, meta["BLOCK_B"]), geo.groups

        _input_grad_kernel[grid](x, wt, grad_y, grad_x, p, geo.channels, *geo.input_hw, ho, wo, cg, og,
                                 *_geometry_args(geo), KH=kh, KW=kw)
    if need_weight:
        if weight_grad == "full":  # cuDNN's implicit GEMM, in the input dtype (accumulating in float32)
            grad_w = reference.full_weight_grad(grad_y, x, w, geo, x.dtype)
        else:
            grad_w = _sign_weight_grad(grad_y, x, w, geo)
        grad_w = grad_w.to(w.dtype)
    return grad_x, grad_w


def _sign_weight_grad(grad_y, x, w, geo: Geometry) -> torch.Tensor:
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    m = geo.batch * ho * wo
    k = cg * kh * kw
    splits = max(1, min(256, m // 512))
    rows_per_split = triton.cdiv(m, splits)
    partial = torch.zeros(splits, geo.out_channels, k, device=x.device, dtype=torch.float32)

    def grid(meta):
        return triton.cdiv(og, meta["BLOCK_A"]), triton.cdiv(k, meta["BLOCK_B"]), geo.groups * splits

    _sign_weight_grad_kernel[grid](x, w.contiguous(), grad_y, partial, m, geo.channels, *geo.input_hw, ho, wo,
                                   cg, og, rows_per_split, *_geometry_args(geo), KH=kh, KW=kw)
    return partial.sum(0).view(w.shape)
