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

Each thread owns whole rows of its program's tile (one position, BLOCK_B channels), so the value a row shares
is loaded by the thread itself and the inner loops need no shared memory and no barrier; the weights are
staged reduction-major and zero-padded, so their loads are unmasked vector loads.

Tested on the CPU under ``TRITON_INTERPRET=1`` against the float64 brute force, and compiled for sm_90 and
sm_80 without a GPU by :mod:`addernet.nn.kernels.aot` (registers, spills, grids, inner-loop instructions).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from addernet.nn.kernels import reference
from addernet.nn.kernels.geometry import Geometry

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Autotuning happens once per layer kind: the keys leave out the batch, so the last partial batch and the
# evaluation batches reuse the choice made for the first training batch.
LAYER_KEY = ["C", "H", "W", "Ho", "Wo", "Cg", "Og", "stride_h", "stride_w", "KH", "KW"]


def _configs(tiles):
    if INTERPRETED:  # the interpreter runs every config it is given: one small tile is enough
        return [triton.Config({"BLOCK_A": 16, "BLOCK_B": 8}, num_warps=1)]
    return [triton.Config({"BLOCK_A": a, "BLOCK_B": b}, num_warps=w, num_stages=1) for a, b, w in tiles]


# (BLOCK_A, BLOCK_B, warps). Kept: the tiles that `python src/bench.py --aot` finds spill-free on every
# registered model's layers with at least 80% floating-point instructions in the inner loop (see
# docs/benchmarks/kernels-aot.md); BLOCK_A is a multiple of 32 x warps, so each thread owns whole rows.
_FORWARD_TILES = [(512, 16, 4), (256, 32, 4), (512, 32, 8), (128, 64, 4), (256, 64, 8)]
_INPUT_GRAD_TILES = [(128, 32, 4), (256, 32, 8), (256, 64, 8)]
_SIGN_TILES = [(64, 32, 4), (32, 64, 4)]
MAX_BLOCK_B = 64  # the largest BLOCK_B: the weights' padding for unmasked loads


@triton.autotune(configs=_configs(_FORWARD_TILES), key=LAYER_KEY)
@triton.jit
def _forward_kernel(x_ptr, wt_ptr, y_ptr, M, C, H, W, Ho, Wo, Cg, Og, OgP,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                    KH: tl.constexpr, KW: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_A: tl.constexpr,
                    BLOCK_B: tl.constexpr):
    """y[n, g*Og + o, ho, wo] = -sum_{u,v,c} |x_pad[...] - w[g*Og + o, c, u, v]|; wt is (G, KH, KW, Cg, OgP),
    the output channels zero-padded to OgP (a multiple of every BLOCK_B), so its loads need no mask.

    Each thread owns whole rows of the tile (an output position, BLOCK_B output channels): its x value is
    loaded by itself, not shared through shared memory, and reused across the row; the channel loop is one
    masked load of x per row, BLOCK_B / 4 vector loads of w and the |x - w| updates. The kernel offsets
    (u, v) are a runtime loop, so one tap's addresses and masks are live at a time."""
    m_blocks = tl.cdiv(M, BLOCK_A)
    g, pid_m = tl.program_id(0) // m_blocks, tl.program_id(0) % m_blocks
    offs_m = pid_m * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_o = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    m_ok = offs_m < M
    hw_out = Ho * Wo
    n = offs_m // hw_out
    if INDEX_64:
        n = n.to(tl.int64)
    r = offs_m % hw_out
    h0 = (r // Wo) * stride_h - pad_h
    w0 = (r % Wo) * stride_w - pad_w
    x_group = (n * C + g * Cg) * H * W
    w_group = wt_ptr + g.to(tl.int64) * KH * KW * Cg * OgP + offs_o[None, :]
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for uv in range(0, KH * KW):
        u, v = uv // KW, uv % KW
        h = h0 + u * dil_h
        col = w0 + v * dil_w
        x_ok = (m_ok & (h >= 0) & (h < H) & (col >= 0) & (col < W))[:, None]
        x_ptrs = x_ptr + (x_group + h * W + col)[:, None]
        w_ptrs = w_group + uv * Cg * OgP
        for c in range(0, Cg):
            x = tl.load(x_ptrs + c * H * W, mask=x_ok, other=0.0).to(tl.float32)
            w = tl.load(w_ptrs + c * OgP).to(tl.float32)
            acc += tl.abs(x - w)
    out = (n * (Og * (C // Cg)) * hw_out + r)[:, None] + ((g * Og + offs_o) * hw_out)[None, :]
    tl.store(y_ptr + out, (-acc).to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_o < Og)[None, :])


@triton.jit
def _row_columns(ptrs, first, count, step, row_ok, WIDTH: tl.constexpr):
    """A (rows, WIDTH) tile of ``ptrs[row] + (first + j) * step``, j < WIDTH, zero where row_ok is false or
    first + j >= count, built from one-dimensional loads joined along a new axis: each row stays in one
    thread, the layout of the loops that use it (no shared-memory exchange)."""
    if WIDTH == 1:
        x = tl.load(ptrs + first * step, mask=row_ok & (first < count), other=0.0).to(tl.float32)
        return tl.reshape(x, (x.shape[0], 1))
    else:
        left = _row_columns(ptrs, first, count, step, row_ok, WIDTH // 2)
        right = _row_columns(ptrs, first + WIDTH // 2, count, step, row_ok, WIDTH // 2)
        both = tl.permute(tl.join(left, right), (0, 2, 1))  # (rows, 2, WIDTH / 2): left's columns, then right's
        return tl.reshape(both, (left.shape[0], WIDTH))


@triton.autotune(configs=_configs(_INPUT_GRAD_TILES), key=LAYER_KEY)
@triton.jit
def _input_grad_kernel(x_ptr, wt_ptr, gy_ptr, gx_ptr, P, C, H, W, Ho, Wo, Cg, Og, CgP,
                       stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                       KH: tl.constexpr, KW: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_A: tl.constexpr,
                       BLOCK_B: tl.constexpr):
    """gx[n, g*Cg + c, h, w] = sum over (o, u, v) reaching (h, w) of HT(w - x) * gy; wt is (G, KH, KW, Og, CgP),
    the input channels zero-padded to CgP, so its loads need no mask.

    As in the forward kernel, each thread owns whole rows of the tile (an input position, BLOCK_B input
    channels): per output channel one masked load of gy per row, BLOCK_B / 4 vector loads of w, and the
    clipped updates; the kernel offsets are a runtime loop. The x tile is gathered row by row
    (:func:`_row_columns`), so it has that layout too: a plain 2-D load would be laid out for coalescing and
    cost a shared-memory exchange with two barriers per reduction step."""
    p_blocks = tl.cdiv(P, BLOCK_A)
    g, pid_p = tl.program_id(0) // p_blocks, tl.program_id(0) % p_blocks
    offs_p = pid_p * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_c = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    p_ok, c_ok = offs_p < P, offs_c < Cg
    n = offs_p // (H * W)
    if INDEX_64:
        n = n.to(tl.int64)
    r = offs_p % (H * W)
    h, w = r // W, r % W
    x_rows = x_ptr + n * C * H * W + h * W + w + (g * Cg + tl.program_id(1) * BLOCK_B) * H * W
    x = _row_columns(x_rows, 0, Cg - tl.program_id(1) * BLOCK_B, H * W, p_ok, BLOCK_B)
    out_channels = Og * (C // Cg)
    gy_image = (n * out_channels + g * Og) * Ho * Wo
    w_group = wt_ptr + g.to(tl.int64) * KH * KW * Og * CgP + offs_c[None, :]
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for uv in range(0, KH * KW):
        u, v = uv // KW, uv % KW
        i_s = h + pad_h - u * dil_h  # = i * stride_h when output row i reads this input row at offset u
        j_s = w + pad_w - v * dil_w
        ok = (p_ok & (i_s >= 0) & (i_s % stride_h == 0) & (i_s < Ho * stride_h) & (j_s >= 0)
              & (j_s % stride_w == 0) & (j_s < Wo * stride_w))[:, None]
        gy_ptrs = gy_ptr + (gy_image + (i_s // stride_h) * Wo + j_s // stride_w)[:, None]
        w_ptrs = w_group + uv * Og * CgP
        for o in range(0, Og):
            gy = tl.load(gy_ptrs + o * Ho * Wo, mask=ok, other=0.0).to(tl.float32)
            wv = tl.load(w_ptrs + o * CgP).to(tl.float32)
            acc += tl.minimum(tl.maximum(wv - x, -1.0), 1.0) * gy
    tile = (n * C * H * W + r)[:, None] + ((g * Cg + offs_c) * H * W)[None, :]
    tl.store(gx_ptr + tile, acc.to(gx_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.autotune(configs=_configs(_SIGN_TILES), key=LAYER_KEY)
@triton.jit
def _sign_weight_grad_kernel(x_ptr, w_ptr, gy_ptr, part_ptr, N, C, H, W, Ho, Wo, Cg, Og, rows_per_split,
                             stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             KH: tl.constexpr, KW: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """part[split, g*Og + o, k] = sum over this split's output rows (n, ho) and all wo of
    sign(x[n, c, h, col] - w[o, k]) * gy[n, o, ho, wo], k = (c, u, v).

    A split is a run of output rows: the row's input row and bounds are computed once per row, and the step
    along wo only advances the addresses by the stride."""
    groups = C // Cg
    g, split = tl.program_id(0) % groups, tl.program_id(0) // groups
    K = Cg * KH * KW
    offs_o = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_k = tl.program_id(2) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_ok, k_ok = offs_o < Og, offs_k < K
    c, uv = offs_k // (KH * KW), offs_k % (KH * KW)
    du, dv = (uv // KW) * dil_h, (uv % KW) * dil_w - pad_w
    wt = tl.load(w_ptr + (g * Og + offs_o[:, None]) * K + offs_k[None, :], mask=o_ok[:, None] & k_ok[None, :],
                 other=0.0).to(tl.float32)
    out_channels = Og * groups
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    first = split * rows_per_split
    for row in range(first, tl.minimum(first + rows_per_split, N * Ho)):
        n = (row // Ho).to(tl.int64)
        ho = row % Ho
        h = ho * stride_h - pad_h + du
        row_ok = k_ok & (h >= 0) & (h < H)
        x_row = x_ptr + ((n * C + g * Cg + c) * H + h) * W
        gy_row = gy_ptr + (n * out_channels + g * Og + offs_o) * Ho * Wo + ho * Wo
        for wo in range(0, Wo):
            col = wo * stride_w + dv
            x = tl.load(x_row + col, mask=row_ok & (col >= 0) & (col < W), other=0.0).to(tl.float32)
            gy = tl.load(gy_row + wo, mask=o_ok, other=0.0).to(tl.float32)
            diff = x[None, :] - wt
            acc += tl.where(diff > 0, gy[:, None], tl.where(diff < 0, -gy[:, None], 0.0))
    out = part_ptr + (split.to(tl.int64) * out_channels + g * Og + offs_o[:, None]) * K + offs_k[None, :]
    tl.store(out, acc, mask=o_ok[:, None] & k_ok[None, :])


def _geometry_args(geo: Geometry) -> tuple:
    return (*geo.stride, *geo.padding, *geo.dilation)


def _group_sizes(geo: Geometry) -> tuple[int, int]:
    return geo.channels // geo.groups, geo.out_channels // geo.groups


def describe(geo: Geometry) -> str:
    """An adder layer in words, for messages."""
    kh, kw = geo.kernel
    return (f"{geo.channels}->{geo.out_channels} channels, {kh}x{kw} kernel, stride {geo.stride}, padding "
            f"{geo.padding}, dilation {geo.dilation}, groups {geo.groups}, on {geo.input_hw[0]}x{geo.input_hw[1]}")


_failed: dict[tuple, str] = {}  # layer kind -> why the Triton kernels failed on it


def _or_reference(kernel):
    """Run ``kernel``; if it fails to compile or launch for a layer (a Triton or ptxas error, too few
    registers or too little shared memory, a launch error), warn once naming the layer and run that kind of
    layer on the reference kernels from then on. Running out of GPU memory is not a kernel failure: it is
    raised."""
    @functools.wraps(kernel)
    def run(*args, **kwargs):
        geo = next(a for a in args if isinstance(a, Geometry))
        key = (kernel.__name__, geo.channels, geo.out_channels, geo.input_hw, geo.kernel, geo.stride, geo.padding,
               geo.dilation, geo.groups, args[0].dtype)
        if key not in _failed:
            try:
                return kernel(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # noqa: BLE001  (every way a kernel can fail to compile or launch)
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
                _failed[key] = reason
                warnings.warn(f"the Triton adder kernel ({kernel.__name__}) failed on the adder layer "
                              f"{describe(geo)} ({reason}); that layer uses the reference kernels from now on")
        return getattr(reference, kernel.__name__)(*args, **kwargs)
    return run


def _index_64(*tensors: torch.Tensor) -> bool:
    """Whether element offsets can pass 2^31 - 1 (then the kernels compute them in 64 bits)."""
    return any(t.numel() >= 2**31 for t in tensors)


def launch_forward(x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    m = geo.batch * ho * wo
    og_padded = triton.cdiv(og, MAX_BLOCK_B) * MAX_BLOCK_B
    wt = w.new_zeros(geo.groups, kh, kw, cg, og_padded)  # (G, KH, KW, Cg, OgP): k-major, zero-padded
    wt[..., :og] = w.reshape(geo.groups, og, cg, kh, kw).permute(0, 3, 4, 2, 1)
    y = torch.empty(geo.output_shape, device=x.device, dtype=x.dtype)

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_A"]) * geo.groups, triton.cdiv(og, meta["BLOCK_B"])

    _forward_kernel[grid](x, wt, y, m, geo.channels, *geo.input_hw, ho, wo, cg, og, og_padded,
                          *_geometry_args(geo), KH=kh, KW=kw, INDEX_64=_index_64(x, y))
    return y


def launch_input_grad(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    cg_padded = triton.cdiv(cg, MAX_BLOCK_B) * MAX_BLOCK_B
    wt = w.new_zeros(geo.groups, kh, kw, og, cg_padded)  # (G, KH, KW, Og, CgP), zero-padded
    wt[..., :cg] = w.reshape(geo.groups, og, cg, kh, kw).permute(0, 3, 4, 1, 2)
    grad_x = torch.empty_like(x)
    p = geo.batch * geo.input_hw[0] * geo.input_hw[1]

    def grid(meta):
        return triton.cdiv(p, meta["BLOCK_A"]) * geo.groups, triton.cdiv(cg, meta["BLOCK_B"])

    _input_grad_kernel[grid](x, wt, grad_y, grad_x, p, geo.channels, *geo.input_hw, ho, wo, cg, og, cg_padded,
                             *_geometry_args(geo), KH=kh, KW=kw, INDEX_64=_index_64(x, grad_y))
    return grad_x


def launch_sign_weight_grad(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Partial sums (splits, O, K) of the sign weight gradient; every element is written."""
    cg, og = _group_sizes(geo)
    kh, kw = geo.kernel
    ho, wo = geo.output_hw
    k = cg * kh * kw
    rows = geo.batch * ho
    splits = max(1, min(256, rows * wo // 512, rows))
    rows_per_split = triton.cdiv(rows, splits)
    partial = torch.empty(splits, geo.out_channels, k, device=x.device, dtype=torch.float32)

    def grid(meta):
        return geo.groups * splits, triton.cdiv(og, meta["BLOCK_A"]), triton.cdiv(k, meta["BLOCK_B"])

    _sign_weight_grad_kernel[grid](x, w.contiguous(), grad_y, partial, geo.batch, geo.channels, *geo.input_hw, ho,
                                   wo, cg, og, rows_per_split, *_geometry_args(geo), KH=kh, KW=kw)
    return partial


@_or_reference
def forward(x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    return launch_forward(x, w, geo)


@_or_reference
def backward(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry, weight_grad: str,
             need_input: bool, need_weight: bool):
    grad_x = launch_input_grad(grad_y, x, w, geo) if need_input else None
    grad_w = None
    if need_weight:
        if weight_grad == "full":  # cuDNN's implicit GEMM, in the input dtype (accumulating in float32)
            grad_w = reference.full_weight_grad(grad_y, x, w, geo, x.dtype)
        else:
            grad_w = launch_sign_weight_grad(grad_y, x, w, geo).sum(0).view(w.shape)
        grad_w = grad_w.to(w.dtype)
    return grad_x, grad_w
