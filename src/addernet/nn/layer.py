"""``Adder2d``: the adder layer as a module, a drop-in for ``torch.nn.Conv2d``."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from addernet.nn import kernels
from addernet.nn.functional import WEIGHT_GRADS, adder2d
from addernet.nn.kernels.geometry import to_pair


class Adder2d(nn.Module):
    """Negative-L1 "convolution"; weights start N(0, 1) as in the paper's code (BatchNorm follows it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = False,
                 weight_grad: str = "full", backend: str = "auto"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if weight_grad not in WEIGHT_GRADS:
            raise ValueError(f"weight_grad must be one of {WEIGHT_GRADS}, got {weight_grad!r}")
        kernels.check_backend(backend)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = to_pair(kernel_size, "kernel_size")
        self.stride, self.padding = to_pair(stride, "stride"), to_pair(padding, "padding")
        self.dilation = to_pair(dilation, "dilation")
        self.weight_grad, self.backend = weight_grad, backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight[0].numel()), 1 / math.sqrt(self.weight[0].numel()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adder2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                       self.weight_grad, self.backend)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}, weight_grad={self.weight_grad!r}"
