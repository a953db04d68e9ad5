"""``adder2d``: the adder layer as a function, shaped like ``torch.nn.functional.conv2d``.

Forward: Y[n,o,i,j] = -sum_{c,u,v} |X_pad[n, c, i*s + u*d, j*s + v*d] - W[o,c,u,v]| (+ bias). Backward
is the paper's (Chen et al., CVPR 2020, eq. 5-7): a full-precision weight gradient (X - W) * dY, or the
true derivative sign(X - W) * dY with ``weight_grad="sign"``; an input gradient HT(W - X) * dY clipped to
[-1, 1]. The raw gradients are returned; the adaptive learning rate belongs to the training step.

The operator is registered as the torch custom ops ``addernet::adder2d`` and ``addernet::adder2d_backward``
with fake implementations, so ``torch.compile`` traces whole adder networks without graph breaks.
"""

from __future__ import annotations

from typing import Sequence

import torch

from addernet.nn import kernels
from addernet.nn.kernels.geometry import Geometry, check_geometry

WEIGHT_GRADS = ("full", "sign")


def _geometry(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> Geometry:
    n, c, h, wd = x.shape
    return Geometry(n, c, (h, wd), w.shape[0], (w.shape[2], w.shape[3]), tuple(stride), tuple(padding),
                    tuple(dilation), groups)


@torch.library.custom_op("addernet::adder2d", mutates_args=())
def _adder2d_op(x: torch.Tensor, w: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int],
                groups: int, weight_grad: str, backend: str) -> torch.Tensor:
    """Forward; ``weight_grad`` is unused here but recorded for the backward."""
    geo = _geometry(x, w, stride, padding, dilation, groups)
    return kernels.resolve(backend, x.device).forward(x.contiguous(), w.contiguous(), geo)


@_adder2d_op.register_fake
def _(x, w, stride, padding, dilation, groups, weight_grad, backend):
    return x.new_empty(_geometry(x, w, stride, padding, dilation, groups).output_shape)


@torch.library.custom_op("addernet::adder2d_backward", mutates_args=())
def _adder2d_backward_op(grad_y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: list[int],
                         padding: list[int], dilation: list[int], groups: int, weight_grad: str, backend: str,
                         need_input: bool, need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    geo = _geometry(x, w, stride, padding, dilation, groups)
    grad_x, grad_w = kernels.resolve(backend, x.device).backward(
        grad_y.contiguous(), x.contiguous(), w.contiguous(), geo, weight_grad, need_input, need_weight)
    # custom ops cannot return None: an empty tensor stands for "not needed"
    return (grad_x if grad_x is not None else x.new_empty(0),
            grad_w if grad_w is not None else w.new_empty(0))


@_adder2d_backward_op.register_fake
def _(grad_y, x, w, stride, padding, dilation, groups, weight_grad, backend, need_input, need_weight):
    return (torch.empty_like(x) if need_input else x.new_empty(0),
            torch.empty_like(w) if need_weight else w.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, w, *conf = inputs
    ctx.save_for_backward(x, w)
    ctx.conf = conf


def _backward(ctx, grad_y):
    x, w = ctx.saved_tensors
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_w = _adder2d_backward_op(grad_y, x, w, *ctx.conf, need_input, need_weight)
    return (grad_x if need_input else None, grad_w if need_weight else None) + (None,) * len(ctx.conf)


_adder2d_op.register_autograd(_backward, setup_context=_setup_context)


def _autocast(input, weight, bias):
    device = input.device.type if isinstance(input, torch.Tensor) else None
    if device is None or not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(device)
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(input), cast(weight), cast(bias)


def adder2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
            dilation: int | Sequence[int] = 1, groups: int = 1, weight_grad: str = "full",
            backend: str = "auto") -> torch.Tensor:
    """Adder layer: negative L1 distance between every filter and every input patch (see module doc).

    Under ``torch.autocast`` it follows convolution's policy: input, weight and bias are cast to the autocast
    dtype (the kernels still accumulate in float32).
    """
    input, weight, bias = _autocast(input, weight, bias)
    geo = check_geometry(input, weight, stride, padding, dilation, groups)
    if weight_grad not in WEIGHT_GRADS:
        raise ValueError(f"weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}")
    kernels.check_backend(backend)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (geo.out_channels,):
            raise ValueError(f"bias must be a tensor of shape ({geo.out_channels},), got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.device != input.device or bias.dtype != input.dtype:
            raise TypeError(f"bias is {bias.dtype} on {bias.device}; input is {input.dtype} on {input.device}")
    y = _adder2d_op(input, weight, list(geo.stride), list(geo.padding), list(geo.dilation), groups,
                    weight_grad, backend)
    return y if bias is None else y + bias.view(1, -1, 1, 1)
