"""What every model of :mod:`addernet.models` is, written down (in the manner of timm's models).

A model maps images (N, C, H, W) to logits (N, num_classes) in two parts:

- ``forward_features(x)``: the penultimate features, (N, num_features);
- the classifier head, ``get_classifier()``: a 1x1 layer ``fc`` (a convolution, or an adder layer where the
  whole network is adder layers) on the features seen as a 1x1 map, then BatchNorm on the logits
  (``bn_logits``), as the AdderNet authors built it; ``forward_head(features)`` runs it.

So that callbacks, distillation, recalibration and export need not know the families: the feature plot
reads the head's input (a pre-forward hook on ``get_classifier()``), checkpoints are read by the key
``net.bn_logits.weight`` for the number of classes, and ``reset_classifier(n)`` gives a new head of the same
kind for another number of classes (fine-tuning).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from addernet.models.init import init_weights

HeadLayer = Callable[[int, int], nn.Module]  # (features, classes) -> the 1x1 classifier layer


class ClassifierNet(nn.Module):
    """Base of every model: subclasses build their body, call :meth:`_build_head`, and define
    :meth:`forward_features`."""

    num_classes: int
    num_features: int
    init_scheme: str  # how its convolutions were initialised (see addernet.models.init)

    def _build_head(self, num_features: int, num_classes: int, head_layer: HeadLayer) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_features, self.num_classes, self._head_layer = num_features, num_classes, head_layer
        self.fc = head_layer(num_features, num_classes)
        self.bn_logits = nn.BatchNorm2d(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn_logits(self.fc(features[:, :, None, None])).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The head's first layer, whose input is the features."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new head for ``num_classes`` classes, initialised as the model's own was (``init_scheme``)."""
        device = self.fc.weight.device
        self._build_head(self.num_features, num_classes, self._head_layer)
        init_weights(self.fc, self.init_scheme)
        init_weights(self.bn_logits, self.init_scheme)
        self.fc.to(device)
        self.bn_logits.to(device)


def conv_head(num_features: int, num_classes: int) -> nn.Module:
    """The multiplicative 1x1 classifier of the ResNets and VGG-small (adder networks and CNN twins alike)."""
    return nn.Conv2d(num_features, num_classes, 1, bias=False)
