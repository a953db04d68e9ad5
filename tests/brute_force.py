"""A float64 adder layer written with loops over output positions and explicit window gathering.

Deliberately unlike the library's unfold-and-chunk implementation, so that the two can check each other.
"""

from __future__ import annotations

import torch


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(x_pad, kh, kw, stride, dilation, ho, wo):
    """Yield (i, j, rows, cols, window) with window = x_pad[:, :, rows, cols] of shape (N, C, kh, kw)."""
    (sh, sw), (dh, dw) = stride, dilation
    for i in range(ho):
        for j in range(wo):
            rows = slice(i * sh, i * sh + dh * (kh - 1) + 1, dh)
            cols = slice(j * sw, j * sw + dw * (kw - 1) + 1, dw)
            yield i, j, rows, cols, x_pad[:, :, rows, cols]


def adder2d_brute(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, grad_y=None, weight_grad="full"):
    """Return (y, grad_x, grad_w, grad_b); the gradients only when ``grad_y`` is given."""
    x, w = x.double(), w.double()
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    ph, pw = padding
    x_pad = torch.zeros(n, c, h + 2 * ph, wd + 2 * pw, dtype=torch.float64)
    x_pad[:, :, ph:ph + h, pw:pw + wd] = x
    ho = (h + 2 * ph - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    y = torch.zeros(n, o, ho, wo, dtype=torch.float64)
    gx_pad, gw = torch.zeros_like(x_pad), torch.zeros_like(w)
    for i, j, rows, cols, win in _windows(x_pad, kh, kw, stride, dilation, ho, wo):
        for g in range(groups):
            xs = win[:, g * cg:(g + 1) * cg]  # (N, cg, kh, kw)
            ws = w[g * og:(g + 1) * og]  # (og, cg, kh, kw)
            diff = xs[:, None] - ws[None]  # (N, og, cg, kh, kw)
            y[:, g * og:(g + 1) * og, i, j] = -diff.abs().sum((2, 3, 4))
            if grad_y is None:
                continue
            gy = grad_y.double()[:, g * og:(g + 1) * og, i, j][:, :, None, None, None]
            gx_pad[:, g * cg:(g + 1) * cg, rows, cols] += ((-diff).clamp(-1, 1) * gy).sum(1)
            dw = diff if weight_grad == "full" else diff.sign()
            gw[g * og:(g + 1) * og] += (dw * gy).sum(0)
    if bias is not None:
        y += bias.double().view(1, -1, 1, 1)
    if grad_y is None:
        return y, None, None, None
    grad_b = grad_y.double().sum((0, 2, 3)) if bias is not None else None
    return y, gx_pad[:, :, ph:ph + h, pw:pw + wd], gw, grad_b
