"""Quantised ResNets of random filters for the int8 kernel's tests."""

import pytest
import torch

from addernet.deploy.quantized import calibrate, quantize_model
from addernet.models import create_model
from addernet.nn.kernels import get_backend, int8, set_backend

needs_kernel = pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")


def quantized_resnet(name: str = "adder_resnet20", size: int = 12) -> torch.nn.Module:
    """A quantised ResNet of random filters whose maps stay alive; its float passes on the plain-PyTorch adder
    layers (compiling the fast float kernels would take longer than the test)."""
    previous = get_backend()
    set_backend("reference")
    try:
        return _quantized_resnet(name, size)
    finally:
        set_backend(previous)


def _quantized_resnet(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model(name, num_classes=10).eval()
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # the statistics of the one batch below exactly: maps alive through every layer
    with torch.no_grad():
        net.train()
        net(torch.randn(16, 3, size, size))
        net.eval()
    return quantize_model(net, calibrate(net, [torch.randn(16, 3, size, size)]))
