"""The CPU path: adder kernels as fused loops compiled by TorchInductor's C++ backend, im2col included.

Eager PyTorch has to materialise |X - W| (and the unfolded input) before summing; here each kernel is one
expression over strided *window views* of a channels-last input, which Inductor turns into a single
vectorised, multi-threaded loop nest: no unfolded copy, no (rows x O x K) temporary.

- forward: y[n,i,j,o] = -sum_{u,v,c} |x_pad[n, i*s + u*d, j*s + v*d, c] - w[o,u,v,c]|
- input gradient of stride-1 layers, as a gather: the output gradient is padded so that input position
  (h, w) sees, through windows of stride 1, every output position whose window covered it; with the filters
  flipped, gx[n,h,w,c] = sum_{o,u,v} HT(w'[o,u,v,c] - x[n,h,w,c]) * gy_win[n,h,w,o,u,v]. Strided layers use
  unfolded rows and fold them back (a gather would need a zero-dilated gradient, wasting stride^2 of the work).
- weight gradient, ``full``: sum (X - W) G = (a convolution's weight gradient) - W * sum(G) (oneDNN).
- weight gradient, ``sign``: a compiled reduction over the output positions.

Each kernel is compiled once per process with dynamic shapes (Inductor also caches the code on disk across
processes); this needs a C++ compiler, as ``torch.compile`` does. Without one, a warning is given once and the
reference kernels run instead.
"""

from __future__ import annotations

import functools
import logging
import types
import warnings

import torch
import torch.nn.functional as F

from addernet.nn.kernels import reference
from addernet.nn.kernels.geometry import Geometry
from addernet.nn.kernels.reference import compute_dtype, full_weight_grad

log = logging.getLogger(__name__)


def _windows(t: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int]):
    """(N, H, W, ...) -> (N, Ho, Wo, ..., kh, kw) strided view of the sliding windows."""
    (sh, sw), (dh, dw) = stride, dilation
    win = t.unfold(1, (kh - 1) * dh + 1, sh).unfold(2, (kw - 1) * dw + 1, sw)
    return win[..., ::dh, ::dw]


def _forward(xp, w, stride: tuple[int, int], dilation: tuple[int, int]):
    # xp (N, Hp, Wp, G, Cg) padded channels-last; w (G, Og, kh, kw, Cg) -> (G, Og, N, Ho, Wo): with the output
    # channel outermost, one filter stays in cache while the loop sweeps all output positions
    win = _windows(xp, w.shape[2], w.shape[3], stride, dilation)  # (N, Ho, Wo, G, Cg, kh, kw)
    win = win.permute(3, 0, 1, 2, 5, 6, 4)[:, None]  # (G, 1, N, Ho, Wo, kh, kw, Cg)
    return -(win - w[:, :, None, None, None]).abs().sum((5, 6, 7))


def _input_grad(x, gyp, w_flipped, dilation: tuple[int, int]):
    # x (N, H, W, G, Cg); gyp (N, Hq, Wq, G, Og) dilated + padded output gradient; w_flipped (G, Og, kh, kw, Cg)
    win = _windows(gyp, w_flipped.shape[2], w_flipped.shape[3], (1, 1), dilation)  # (N, H, W, G, Og, kh, kw)
    clipped = (w_flipped[None, None, None] - x[:, :, :, :, None, None, None]).clamp(-1, 1)
    return (clipped * win[..., None]).sum((4, 5, 6))  # (N, H, W, G, Cg)


def _clipped_input_grad_rows(x, w, g):
    # unfolded rows x (M, K), w (O, K), output gradient g (M, O) -> (M, K); for strided layers
    return ((w[None] - x[:, None, :]).clamp(-1, 1) * g[:, :, None]).sum(1)


def _sign_weight_grad(xp, w, gy, stride: tuple[int, int], dilation: tuple[int, int]):
    # xp (N, Hp, Wp, G, Cg); w (G, Og, kh, kw, Cg); gy (N, Ho, Wo, G, Og) -> (G, Og, kh, kw, Cg)
    win = _windows(xp, w.shape[2], w.shape[3], stride, dilation).permute(0, 1, 2, 3, 5, 6, 4)
    signs = (win[:, :, :, :, None] - w[None, None, None]).sign()  # (N, Ho, Wo, G, Og, kh, kw, Cg)
    return (signs * gy[..., None, None, None]).sum((0, 1, 2))


# Inductor's loops slow down several-fold once a reduction passes about 4096 terms (measured: 9 x 384 channels
# fast, 9 x 512 slow), so long channel reductions run in chunks whose partial sums are added.
CHANNEL_CHUNK = 256


def _channel_chunks(channels: int):
    return [slice(start, min(channels, start + CHANNEL_CHUNK)) for start in range(0, channels, CHANNEL_CHUNK)]


@functools.cache
def _compiled(fn, config: tuple):
    """``fn`` compiled for one static configuration (stride, dilation, dtype), with dynamic sizes.

    Each configuration gets its own copy of the code object, hence its own Dynamo cache and recompile budget:
    a process that meets many layer geometries never exhausts one shared budget (past which Dynamo would run
    the expression eagerly, materialising the whole broadcast).
    """
    if not _compiled.cache_info().currsize:
        log.info("compiling the CPU adder kernels: once per process and layer kind, about 15 s the first time "
                 "on a small machine; the code is cached on disk, so later runs start faster")
    name = f"{fn.__name__}_{abs(hash(config))}"
    own = types.FunctionType(fn.__code__.replace(co_name=name), fn.__globals__, name, fn.__defaults__,
                             fn.__closure__)
    return torch.compile(own, dynamic=True)


_unavailable: set = set()  # configurations whose compiled kernel failed: they use the reference


def _compiled_or_none(fn, *args):
    """Run the compiled kernel; if it cannot be compiled, warn once and return None (the caller falls back)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    config = (fn.__name__, tensors[0].dtype, *(a for a in args if not isinstance(a, torch.Tensor)))
    if config in _unavailable:
        return None
    # detached: whether an argument requires grad is guarded on, and a process that mixes training and
    # evaluation (or thread counts) would otherwise spend its recompile budget on it and lose the kernel
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=32):  # never eager
            return _compiled(fn, config)(*args)
    except Exception as err:  # noqa: BLE001  (Inductor raises many kinds of build errors)
        warnings.warn(f"the compiled CPU adder kernel {config} is unavailable ({type(err).__name__}: {err}); "
                      f"using the slower reference kernels. Without a C++ compiler (g++), install one.")
        _unavailable.add(config)
        return None


def _channels_last(t: torch.Tensor, groups: int, padding: tuple[int, ...] = (0, 0, 0, 0)) -> torch.Tensor:
    """(N, C, H, W) -> (N, H', W', G, C/G) in the compute dtype; ``padding`` = (left, right, top, bottom),
    negative amounts crop."""
    t = t.to(compute_dtype(t.dtype)).permute(0, 2, 3, 1)
    t = F.pad(t, (0, 0, *padding)) if any(padding) else t
    return t.reshape(*t.shape[:3], groups, -1).contiguous()


def _same_padding(geo: Geometry) -> tuple[int, int, int, int]:
    return (geo.padding[1], geo.padding[1], geo.padding[0], geo.padding[0])


def _filters(w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(O, Cg, kh, kw) -> (G, Og, kh, kw, Cg)."""
    o, cg, kh, kw = w.shape
    w = w.to(compute_dtype(w.dtype)).reshape(geo.groups, o // geo.groups, cg, kh, kw)
    return w.permute(0, 1, 3, 4, 2).contiguous()


def _output_gradient_for_gather(grad_y: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Pad the output gradient of a stride-1 layer so that stride-1 windows gather it at every input position."""
    (kh, kw), (dh, dw), (ph, pw) = geo.kernel, geo.dilation, geo.padding
    top, left = (kh - 1) * dh - ph, (kw - 1) * dw - pw
    bottom = geo.input_hw[0] + (kh - 1) * dh - top - grad_y.shape[2]
    right = geo.input_hw[1] + (kw - 1) * dw - left - grad_y.shape[3]
    return _channels_last(grad_y, geo.groups, (left, right, top, bottom))


def _to_nchw(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, G, Cg) -> contiguous (N, G*Cg, H, W)."""
    n, h, w = t.shape[:3]
    return t.reshape(n, h, w, -1).permute(0, 3, 1, 2).contiguous().to(dtype)


def _chunked_sum(fn, chunks, args_of_chunk):
    """Sum of the compiled ``fn`` over chunks; None when the compiled kernels are unavailable."""
    total = None
    for chunk in chunks:
        part = _compiled_or_none(fn, *args_of_chunk(chunk))
        if part is None:
            return None
        total = part if total is None else total.add_(part)
    return total


@torch.no_grad()
def forward(x: torch.Tensor, w: torch.Tensor, geo: Geometry) -> torch.Tensor:
    xp, wf = _channels_last(x, geo.groups, _same_padding(geo)), _filters(w, geo)
    y = _chunked_sum(_forward, _channel_chunks(wf.shape[-1]),
                     lambda c: (xp[..., c], wf[..., c], geo.stride, geo.dilation))
    if y is None:
        return reference.forward(x, w, geo)
    g, og, n, ho, wo = y.shape
    return y.reshape(g * og, n, ho, wo).transpose(0, 1).contiguous().to(x.dtype)


@torch.no_grad()
def backward(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, geo: Geometry, weight_grad: str,
             need_input: bool, need_weight: bool):
    grad_x = grad_w = None
    if need_input:
        grad_x = (_input_grad_gather(grad_y, x, w, geo) if geo.stride == (1, 1)
                  else _input_grad_rows(grad_y, x, w, geo))
    if need_weight:
        if weight_grad == "full":
            grad_w = full_weight_grad(grad_y, x, w, geo, compute_dtype(x.dtype))
        else:
            gw = _compiled_or_none(_sign_weight_grad, _channels_last(x, geo.groups, _same_padding(geo)),
                                   _filters(w, geo), _channels_last(grad_y, geo.groups), geo.stride, geo.dilation)
            if gw is not None:  # (G, Og, kh, kw, Cg) -> (O, Cg, kh, kw)
                grad_w = gw.permute(0, 1, 4, 2, 3).reshape(w.shape)
        grad_w = grad_w.to(w.dtype) if grad_w is not None else None
    if (need_input and grad_x is None) or (need_weight and grad_w is None):
        return reference.backward(grad_y, x, w, geo, weight_grad, need_input, need_weight)
    return grad_x, grad_w


def _input_grad_gather(grad_y, x, w, geo: Geometry) -> torch.Tensor | None:
    """Stride 1: gather the output gradient through stride-1 windows (no unfolded copy)."""
    xl, gyp, wf = _channels_last(x, geo.groups), _output_gradient_for_gather(grad_y, geo), _filters(w, geo)
    wf = wf.flip(2, 3)
    gx = _chunked_sum(_input_grad, _channel_chunks(wf.shape[1]),
                      lambda o: (xl, gyp[..., o], wf[:, o], geo.dilation))
    return _to_nchw(gx, x.dtype) if gx is not None else None


def _input_grad_rows(grad_y, x, w, geo: Geometry) -> torch.Tensor | None:
    """Strided layers: on unfolded rows, folded back (a zero-dilated gather would waste stride^2 of its work)."""
    ct = compute_dtype(x.dtype)
    xr = reference.unfold_rows(x.to(ct), geo)
    wr = w.to(ct).reshape(geo.groups, geo.out_channels // geo.groups, -1)
    gr = reference.output_rows(grad_y.to(ct), geo.groups)
    rows = []
    for g in range(geo.groups):
        part = _chunked_sum(_clipped_input_grad_rows, _channel_chunks(wr.shape[1]),
                            lambda o: (xr[g], wr[g, o], gr[g][:, o]))
        if part is None:
            return None
        rows.append(part)
    return reference.fold_rows(torch.stack(rows), geo).to(x.dtype)
