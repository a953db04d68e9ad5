"""The shape arithmetic of a 2-D sliding-window layer, checked once and shared by every kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Pair = tuple[int, int]


def to_pair(value: int | Sequence[int], name: str) -> Pair:
    """Accept an int or a pair of ints, as ``torch.nn.functional.conv2d`` does."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class Geometry:
    batch: int
    channels: int
    input_hw: Pair
    out_channels: int
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int

    @property
    def output_hw(self) -> Pair:
        return tuple(  # type: ignore[return-value]
            (self.input_hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
            // self.stride[i] + 1
            for i in range(2)
        )

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, *self.output_hw)


def check_geometry(input: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups) -> Geometry:
    """Validate the arguments of an adder layer and return its geometry; errors say what to change."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32, float64, bfloat16 or float16), "
                            f"got {t.dtype}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (batch, channels, height, width), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    if input.device != weight.device:
        raise ValueError(f"input is on {input.device} but weight is on {weight.device}: move both to one device")
    if input.dtype != weight.dtype:
        raise TypeError(f"input is {input.dtype} but weight is {weight.dtype}: cast one to the other's dtype")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride, padding, dilation = (to_pair(stride, "stride"), to_pair(padding, "padding"),
                                 to_pair(dilation, "dilation"))
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be positive, got stride={stride}, dilation={dilation}")
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    n, c, h, w = input.shape
    out_channels, in_per_group, kh, kw = weight.shape
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
    if c != in_per_group * groups:
        raise ValueError(f"input has {c} channels but weight expects in_channels/groups * groups = "
                         f"{in_per_group} * {groups} = {in_per_group * groups}")
    geo = Geometry(n, c, (h, w), out_channels, (kh, kw), stride, padding, dilation, groups)
    if min(geo.output_hw) < 1:
        raise ValueError(f"kernel {geo.kernel} with dilation {dilation} is larger than the padded input "
                         f"{(h + 2 * padding[0], w + 2 * padding[1])}: use a smaller kernel or more padding")
    return geo
