import math

import pytest
import torch
from torch import nn

from addernet import Adder2d
from addernet.training.adalr import AdaptiveLR


def net_with_grads(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), Adder2d(4, 6, 3), nn.BatchNorm2d(6), Adder2d(6, 2, 1))
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return net


def grads(net):
    return [p.grad.clone() for p in net.parameters()]


def test_on_rescales_each_adder_layer_to_eta_sqrt_k():
    net = net_with_grads()
    before = grads(net)
    stats = AdaptiveLR(mode="on", eta=0.3).apply(net)
    for adder in (net[2], net[4]):
        g = adder.weight.grad
        assert g.norm().item() == pytest.approx(0.3 * math.sqrt(g.numel()), rel=1e-5)
    # direction kept, other layers untouched
    torch.testing.assert_close(net[2].weight.grad / net[2].weight.grad.norm(), before[4] / before[4].norm())
    for i in (0, 1, 2, 3):  # conv weight, conv bias, BN weight, BN bias
        assert torch.equal(list(net.parameters())[i].grad, before[i])
    assert stats.names == ["2", "4"]
    torch.testing.assert_close(stats.grad_norms, torch.stack([before[4].norm(), before[7].norm()]))
    torch.testing.assert_close(stats.alphas[0], 0.3 * math.sqrt(before[4].numel()) / before[4].norm())


def test_off_changes_nothing_and_ilr_multiplies():
    net = net_with_grads()
    before = grads(net)
    assert AdaptiveLR(mode="off").apply(net) is None
    assert all(torch.equal(a, p.grad) for a, p in zip(before, net.parameters()))
    AdaptiveLR(mode="ilr", ilr_factor=100).apply(net)
    torch.testing.assert_close(net[2].weight.grad, before[4] * 100)
    assert torch.equal(net[0].weight.grad, before[0])


def test_all_zero_gradient_stays_zero():
    net = net_with_grads()
    net[2].weight.grad.zero_()
    AdaptiveLR().apply(net)
    assert torch.equal(net[2].weight.grad, torch.zeros_like(net[2].weight))


def test_loss_scale_is_kept_so_unscaling_gives_the_float32_result():
    plain, scaled = net_with_grads(), net_with_grads()
    raw_norm = plain[2].weight.grad.norm().item()
    for p in scaled.parameters():
        p.grad.mul_(1024.0)
    AdaptiveLR().apply(plain)
    stats = AdaptiveLR().apply(scaled, grad_scale=1024.0)
    torch.testing.assert_close(scaled[2].weight.grad / 1024.0, plain[2].weight.grad)
    assert stats.grad_norms[0].item() == pytest.approx(raw_norm, rel=1e-5)  # reported unscaled


@pytest.mark.parametrize("kwargs", [dict(mode="adaptive"), dict(eta=0), dict(mode="ilr", ilr_factor=-1)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        AdaptiveLR(**kwargs)
