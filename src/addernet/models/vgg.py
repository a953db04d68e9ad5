"""VGG-small, the CIFAR network of the AdderNet paper's Table 1 (from the binary-network literature): six 3x3
layers of 128, 128, 256, 256, 512, 512 channels with BatchNorm and ReLU, a 2x2 max-pool after every second
one, and a classifier on the flattened 512 x 4 x 4 features. As in the ResNets, the first layer and the
classifier stay multiplicative and the adder network and its CNN twin share their parameter shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from addernet.models.init import init_weights
from addernet.models.interface import ClassifierNet, conv_head
from addernet.models.resnet import LayerFactory

WIDTHS = (128, 128, 256, 256, 512, 512)


class VGGSmall(ClassifierNet):
    def __init__(self, layer: LayerFactory, num_classes: int = 10, in_channels: int = 3, init: str = "kaiming"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]),
                                  nn.ReLU(inplace=True))
        body: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:]), start=1):
            body += [layer(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i % 2 == 1:  # after the 2nd, 4th and 6th layer (the stem is the 1st)
                body.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*body)
        self._build_head(WIDTHS[-1] * 4 * 4, num_classes, conv_head)  # 512 x 4 x 4 for 32x32 images, flattened
        self.init_scheme = init
        init_weights(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x)).flatten(1)
