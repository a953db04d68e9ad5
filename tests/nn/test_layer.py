import pytest
import torch
from torch import nn

from addernet import Adder2d, adder2d


def test_layer_matches_functional_and_conv2d_shapes():
    layer = Adder2d(4, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=2, bias=True)
    conv = nn.Conv2d(4, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=2, bias=True)
    assert layer.weight.shape == conv.weight.shape and layer.bias.shape == conv.bias.shape
    x = torch.randn(2, 4, 9, 5)
    y = layer(x)
    assert y.shape == conv(x).shape
    torch.testing.assert_close(y, adder2d(x, layer.weight, layer.bias, (2, 1), (1, 0), 1, 2))


def test_weights_start_standard_normal():
    w = Adder2d(64, 64, 3).weight.detach()
    assert abs(w.mean().item()) < 0.02 and abs(w.std().item() - 1) < 0.02


def test_layer_carries_weight_grad_mode():
    x = torch.full((1, 1, 1, 1), 3.0)
    layer = Adder2d(1, 1, 1, weight_grad="sign")
    nn.init.zeros_(layer.weight)
    layer(x).sum().backward()
    assert layer.weight.grad.item() == pytest.approx(1.0)
    assert "weight_grad='sign'" in repr(layer)


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "divisible by groups"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, weight_grad="ste"), "weight_grad must be one of"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, backend="nope"), "unknown adder backend"),
])
def test_bad_layer_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Adder2d(**kwargs)
