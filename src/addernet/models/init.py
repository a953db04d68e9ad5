"""How the multiplicative layers of a network start: the choice between our default and the authors'.

Adder layers keep their own N(0, 1) start and BatchNorm starts at (1, 0) in both schemes. ``kaiming`` draws
every convolution (the stem, the 1x1 classifier and, in a CNN twin, the body) from Kaiming's normal
distribution for ReLU (fan-out); ``pytorch`` leaves PyTorch's default (uniform, bound 1/sqrt(fan-in)), which is
what the AdderNet authors' code does. For ResNet-20's classifier (64 -> 10) Kaiming's weights are about 6x
larger (std 0.45 vs 0.07).
"""

from __future__ import annotations

from torch import nn

INIT_SCHEMES = ("kaiming", "pytorch")


def init_weights(model: nn.Module, scheme: str) -> None:
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and scheme == "kaiming":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
