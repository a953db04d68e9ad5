"""One ResNet definition for the adder networks and their CNN twins: they differ only in the layer factory.

Structure as the AdderNet authors built them: the stem convolution and the classifier stay multiplicative;
every adder (or conv) layer is followed by BatchNorm; the downsampling shortcut is a 1x1 layer + BatchNorm;
the classifier is a 1x1 convolution followed by BatchNorm on the logits. The CNN twins use the same head,
so that twins have the same parameters and differ only in how the body layers compute.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from addernet.models.init import init_weights
from addernet.models.interface import ClassifierNet, conv_head
from addernet.nn.layer import Adder2d

# (in_channels, out_channels, kernel_size, stride, padding) -> module
LayerFactory = Callable[[int, int, int, int, int], nn.Module]


def layer_factory(kind: str, **adder_options) -> LayerFactory:
    """The body layer of a ResNet: ``"adder"`` (options: ``weight_grad``, ``backend``) or ``"conv"``."""
    if kind == "adder":
        return partial(Adder2d, bias=False, **adder_options)
    if kind == "conv":
        if adder_options:
            raise TypeError(f"options {sorted(adder_options)} apply to adder layers only, not to a CNN")
        return partial(nn.Conv2d, bias=False)
    raise ValueError(f"unknown layer kind {kind!r}; choose 'adder' or 'conv'")


def _shortcut(layer: LayerFactory, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(layer(in_ch, out_ch, 1, stride, 0), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int, layer: LayerFactory):
        super().__init__()
        self.conv1, self.bn1 = layer(in_ch, planes, 3, stride, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = layer(planes, planes, 3, 1, 1), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(layer, in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, layer: LayerFactory):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = layer(in_ch, planes, 1, 1, 0), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = layer(planes, planes, 3, stride, 1), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = layer(planes, out_ch, 1, 1, 0), nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(layer, in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    if kind == "cifar":  # 3x3, stride 1, for 32x32 images
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True))
    if kind == "imagenet":  # 7x7 stride 2 + max-pool, for 224x224 images
        return nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    raise ValueError(f"unknown stem {kind!r}; choose 'cifar' or 'imagenet'")


class ResNet(ClassifierNet):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int], widths: Sequence[int],
                 stem: str, layer: LayerFactory, num_classes: int, in_channels: int = 3, init: str = "kaiming"):
        super().__init__()
        self.stem = _stem(stem, in_channels, widths[0])
        stages, in_ch = [], widths[0]
        for i, (depth, planes) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(in_ch, planes, 2 if (i > 0 and j == 0) else 1, layer))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self._build_head(in_ch, num_classes, conv_head)
        self.init_scheme = init
        init_weights(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after global pooling), shape (N, num_features)."""
        return self.pool(self.stages(self.stem(x))).flatten(1)
