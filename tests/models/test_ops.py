import pytest
import torch
from torch import nn

from addernet import Adder2d
from addernet.models import ENERGY_PJ, count_ops, create_model


@pytest.mark.parametrize("name, mul, add", [
    ("resnet20", 41.17e6, 41.17e6),       # the paper's Table 1
    ("adder_resnet20", 0.45e6, 81.89e6),
])
def test_resnet20_counts_are_near_the_paper(name, mul, add):
    ops = count_ops(create_model(name), (3, 32, 32))
    assert ops.multiplications == pytest.approx(mul, rel=0.02)
    assert ops.additions == pytest.approx(add, rel=0.02)


def test_lenet5_bn_counts_are_near_the_paper():
    """The paper: CNN 435K multiplications and 435K additions, AdderNet 870K additions. Counted here: 416,520
    multiply-accumulates (conv 117,600 + 240,000, fully connected 48,000 + 10,080 + 840), 4.3% fewer; the
    paper does not say what it counts beyond them."""
    cnn, adder = count_ops(create_model("lenet5_bn"), (1, 28, 28)), count_ops(create_model("adder_lenet5_bn"),
                                                                             (1, 28, 28))
    assert cnn.multiplications == 416_520 and adder.multiplications == 0
    assert cnn.multiplications == pytest.approx(435e3, rel=0.05)
    assert adder.additions == 2 * 416_520 == pytest.approx(870e3, rel=0.05)


def test_counting_conventions_on_a_tiny_network():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=True), Adder2d(4, 5, 1), nn.Flatten(),
                          nn.Linear(5 * 8 * 8, 2))
    ops = count_ops(model, (3, 8, 8))
    conv_macs, adder_macs, linear_macs = 64 * 4 * 27, 64 * 5 * 4, 320 * 2
    assert ops.multiplications == conv_macs + linear_macs
    assert ops.additions == conv_macs + 64 * 4 + 2 * adder_macs + linear_macs + 2  # biases add once per output
    assert ops.energy_pj == pytest.approx(ops.multiplications * ENERGY_PJ["mul"] + ops.additions * ENERGY_PJ["add"])


def test_counting_leaves_the_model_alone():
    model = create_model("adder_resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_ops(model, (3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"
