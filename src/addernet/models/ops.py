"""Counting multiplications and additions per image, and the energy they would cost.

Conventions (the AdderNet paper's): a multiply-accumulate of a convolution or linear layer counts as one
multiplication and one addition; an adder "MAC" |x - w| accumulated counts as two additions (subtraction and
accumulation); a bias counts one addition per output. BatchNorm, activations, pooling and the residual
additions are not counted. Energy uses the 45 nm figures of the AdderNet literature (Horowitz, 2014).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from addernet.nn.layer import Adder2d

ENERGY_PJ = {"mul": 3.7, "add": 0.9}  # 32-bit float multiply and add, 45 nm


@dataclass(frozen=True)
class OpCount:
    multiplications: int
    additions: int

    @property
    def energy_pj(self) -> float:
        return self.multiplications * ENERGY_PJ["mul"] + self.additions * ENERGY_PJ["add"]


def count_ops(model: nn.Module, input_size: tuple[int, int, int]) -> OpCount:
    """Operations for one image of shape ``input_size`` = (channels, height, width).

    Runs a shape-only forward of a copy of the model on the meta device: nothing is computed and the
    model itself is left untouched.
    """
    counts = {"mul": 0, "add": 0}

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        outputs = output[0].numel()  # one image
        if isinstance(module, (nn.Conv2d, Adder2d)):
            per_output = module.weight[0].numel()
        else:  # nn.Linear
            per_output = module.in_features
        if isinstance(module, Adder2d):
            counts["add"] += 2 * outputs * per_output
        else:
            counts["mul"] += outputs * per_output
            counts["add"] += outputs * per_output
        if module.bias is not None:
            counts["add"] += outputs

    shadow = copy.deepcopy(model).to("meta").eval()
    for m in shadow.modules():
        if isinstance(m, (nn.Conv2d, Adder2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        shadow(torch.empty(1, *input_size, device="meta"))
    return OpCount(counts["mul"], counts["add"])
