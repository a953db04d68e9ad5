"""A ResNet's int8 stages as one kernel call (sad_body) against the same layers called one by one."""

import os
import subprocess
import sys

import pytest
import torch

from addernet.deploy.quantized import Int8Adder2d, Int8Body, calibrate, quantize_model
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


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_body_gives_the_layers_results_bit_for_bit(threads, batch):
    """Images one at a time through the layers (batch >= threads: threads take whole images) or all images
    through each layer (fewer images than threads), residual blocks with and without a 1x1 shortcut, maps
    of every stage: the same floats as each layer called alone, and a second call the same as the first (the
    buffers kept between calls)."""
    net = quantized_resnet()
    assert isinstance(net.stages, Int8Body)
    x = torch.randn(batch, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            features = net.stem(x)
            one_call = net.stages(features)
            again = net.stages(features)
            layers = net.stages.forward_layers(features)
    finally:
        torch.set_num_threads(previous)
    assert one_call.is_contiguous(memory_format=torch.channels_last)
    assert (one_call > 0).float().mean() > 0.2  # a map of values, not of zeros
    torch.testing.assert_close(one_call, layers, rtol=0, atol=0)
    torch.testing.assert_close(again, layers, rtol=0, atol=0)


@needs_kernel
def test_the_body_plans_bottlenecks_and_the_portable_path():
    """A bottleneck ResNet (three layers a block), on the portable C++ path in a process of its own."""
    code = ("import torch, sys; sys.path.insert(0, 'tests/deploy'); from test_int8_body import quantized_resnet; "
            "from addernet.nn.kernels import int8; net = quantized_resnet('adder_resnet50', 8); "
            "x = torch.randn(2, 3, 8, 8); f = net.stem(x.contiguous(memory_format=torch.channels_last)); "
            "print(int8.instruction_set(), len(net.stages.plan().packed), "
            "bool(torch.equal(net.stages(f), net.stages.forward_layers(f))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ADDERNET_SAD_ISA": "portable"},
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    isa, layers, equal = out.stdout.split()
    assert (isa, layers, equal) == ("portable", "52", "True")  # 16 blocks x 3 layers + 4 shortcuts


@needs_kernel
def test_the_body_keeps_the_state_dict_and_plans_again_after_loading():
    net = quantized_resnet()
    keys = set(net.state_dict())
    assert "stages.0.0.conv1.qweight" in keys and "stages.1.0.downsample.0.qweight" in keys
    with torch.no_grad():
        features = net.stem(torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last))
        before = net.stages(features)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        state["stages.2.2.conv2.b"] += 1.0  # the last layer's bias: every output moves
        net.load_state_dict(state)
        after = net.stages(features)
        assert not torch.equal(before, after)  # the loaded values are used, not the plan made before
        torch.testing.assert_close(after, net.stages.forward_layers(features), rtol=0, atol=0)


@needs_kernel
def test_a_plan_that_reads_a_map_not_yet_written_is_refused():
    layer = Int8Adder2d(4, 4, 3, 1, 1, 0.1, 3)
    plan = int8.BodyPlan()
    plan.add(layer, 0, None, relu=True)
    plan.add(layer, 3, None, relu=True)
    with pytest.raises(RuntimeError, match="reads a map not yet written"):
        int8.sad_body(torch.randn(1, 4, 5, 5), plan)
    plan = int8.BodyPlan()
    plan.add(Int8Adder2d(4, 8, 3, 2, 1, 0.1, 3), 0, 0, relu=True)  # a residual of another shape
    with pytest.raises(RuntimeError, match="residual must have its output's shape"):
        int8.sad_body(torch.randn(1, 4, 6, 6), plan)
