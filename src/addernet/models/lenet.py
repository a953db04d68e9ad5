"""LeNet-5 with BatchNorm after every layer (LeNet-5-BN), the network of the AdderNet paper's MNIST
experiments and ablation, as adder network and CNN twin from one definition.

Every layer of the adder network is an adder layer, the first and the classifier too: the paper counts
870K additions and no multiplications for it (435K multiplications and 435K additions for the CNN). The
fully connected layers are 1x1 layers on a 1x1 map, so twins share their parameter shapes.
Input: 28x28 images (the first layer pads by 2, as LeNet's 32x32 input did).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from addernet.models.init import init_weights
from addernet.models.interface import ClassifierNet
from addernet.models.resnet import LayerFactory


class LeNet5BN(ClassifierNet):
    def __init__(self, layer: LayerFactory, num_classes: int = 10, in_channels: int = 1, init: str = "kaiming"):
        super().__init__()
        self.conv1, self.bn1 = layer(in_channels, 6, 5, 1, 2), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = layer(6, 16, 5, 1, 0), nn.BatchNorm2d(16)
        self.fc1, self.bn3 = layer(16 * 5 * 5, 120, 1, 1, 0), nn.BatchNorm2d(120)
        self.fc2, self.bn4 = layer(120, 84, 1, 1, 0), nn.BatchNorm2d(84)
        self._build_head(84, num_classes, partial(_one_by_one, layer))  # an adder layer in the adder network
        self.relu, self.max_pool = nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.init_scheme = init
        init_weights(self, init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max_pool(self.relu(self.bn1(self.conv1(x))))
        x = self.max_pool(self.relu(self.bn2(self.conv2(x))))
        x = x.flatten(1)[:, :, None, None]
        x = self.relu(self.bn3(self.fc1(x)))
        return self.relu(self.bn4(self.fc2(x))).flatten(1)


def _one_by_one(layer: LayerFactory, num_features: int, num_classes: int) -> nn.Module:
    return layer(num_features, num_classes, 1, 1, 0)
