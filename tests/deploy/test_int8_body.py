"""A ResNet's int8 stages as one kernel call (sad_body) against the same layers called one by one."""

import os
import subprocess
import sys

import pytest
import torch

from addernet.deploy.quantized import Int8Adder2d, Int8Body
from addernet.nn.kernels import int8
from int8_networks import needs_kernel, quantized_resnet


@needs_kernel
@pytest.mark.parametrize("threads, batch, size",
                         [(1, 1, 12), (1, 3, 12), (2, 1, 12), (2, 3, 12), (2, 7, 12), (4, 3, 32)])
def test_the_body_gives_the_layers_results_bit_for_bit(threads, batch, size):
    """Images one at a time through the layers (batch >= threads: threads take whole images, each the next one not
    yet taken) or all images through each layer (fewer images than threads; at 32 x 32 the first stage's layers are
    large enough for their positions to be split among the threads), residual blocks with and without a 1x1
    shortcut, maps of every stage: the same floats as each layer called alone; then a smaller call after the larger
    one (the buffers kept between calls) the same as its layers too."""
    net = quantized_resnet(size=size)
    assert isinstance(net.stages, Int8Body)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            features = net.stem(x)
            one_call = net.stages(features)
            layers = net.stages.forward_layers(features)
            smaller = features[:1, :, :size // 2, :size // 2].contiguous(memory_format=torch.channels_last)
            again, again_layers = net.stages(smaller), net.stages.forward_layers(smaller)
    finally:
        torch.set_num_threads(previous)
    assert one_call.is_contiguous(memory_format=torch.channels_last)
    assert (one_call > 0).float().mean() > 0.2  # a map of values, not of zeros
    torch.testing.assert_close(one_call, layers, rtol=0, atol=0)
    torch.testing.assert_close(again, again_layers, rtol=0, atol=0)


def adder(c_in: int, c_out: int, k: int, stride: int, seed: int) -> Int8Adder2d:
    torch.manual_seed(seed)
    layer = Int8Adder2d(c_in, c_out, k, stride, k // 2, 0.05, 7)
    layer.qweight.copy_(torch.randint(0, 256, layer.qweight.shape, dtype=torch.uint8))
    layer.a.copy_(-torch.rand(c_out) / 200)
    layer.b.copy_(torch.rand(c_out) * 4)
    return layer


@needs_kernel
def test_a_map_read_several_layers_later_keeps_its_buffer():
    """A hand-made chain whose residuals reach back 3 and 4 layers (the buffers of the maps in between are
    reused meanwhile) against the same layers called one by one."""
    layers = [adder(8, 8, 3, 1, seed) for seed in range(5)]
    plan = int8.BodyPlan()
    plan.add(layers[0], 0, None, relu=True)    # map 1
    plan.add(layers[1], 1, None, relu=True)    # map 2
    plan.add(layers[2], 2, None, relu=True)    # map 3
    plan.add(layers[3], 3, 0, relu=True)       # map 4 = f(map 3) + map 0 (the input)
    plan.add(layers[4], 4, 1, relu=False)      # map 5 = f(map 4) + map 1
    x = torch.rand(3, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    m1 = layers[0](x, None, True)
    m3 = layers[2](layers[1](m1, None, True), None, True)
    expected = layers[4](layers[3](m3, x, True), m1, False)
    torch.testing.assert_close(int8.sad_body(x, plan), expected, rtol=0, atol=0)


def check_a_chain_against_its_layers() -> None:
    """A hand-made chain, each layer on its own grid (scale, zero point) and padding, with maps read by the next
    layer only, as a residual too, and two layers later; filter counts of partial groups (12, 20), a 1x1
    layer and a stride: its output against the same layers called one by one, bit for bit (values clamped at
    both ends of the grids among them)."""
    torch.manual_seed(3)
    shapes = [(8, 12, 3, 1, 1), (12, 12, 1, 1, 0), (12, 20, 3, 2, 1), (20, 20, 3, 1, 1), (20, 20, 3, 1, 1),
              (20, 20, 3, 1, 1)]
    layers = []
    for i, (c_in, c_out, k, stride, padding) in enumerate(shapes):
        layer = Int8Adder2d(c_in, c_out, k, stride, padding, 0.04 + 0.01 * i, 3 + 29 * i)
        layer.qweight.copy_(torch.randint(0, 256, layer.qweight.shape, dtype=torch.uint8))
        terms = c_in * k * k
        layer.a.copy_(-(1 + torch.rand(c_out)) / (8 * terms))  # sums of about 85 a term: y in about [-1, 15]
        layer.b.copy_(20 + 5 * torch.rand(c_out))
        layers.append(layer)
    plan = int8.BodyPlan()
    plan.add(layers[0], 0, None, relu=True)   # map 1: read by the next layer only
    plan.add(layers[1], 1, None, relu=False)  # map 2: the same, negative values among them
    plan.add(layers[2], 2, None, relu=True)   # map 3: read by the next layer and as a residual
    plan.add(layers[3], 3, None, relu=True)   # map 4: read by the next layer and the one after it
    plan.add(layers[4], 4, 3, relu=True)      # map 5: a residual only
    plan.add(layers[5], 4, 5, relu=False)     # map 6, the output
    x = (torch.rand(2, 8, 9, 9) * 12).contiguous(memory_format=torch.channels_last)
    m3 = layers[2](layers[1](layers[0](x, None, True), None, False), None, True)
    m4 = layers[3](m3, None, True)
    expected = layers[5](m4, layers[4](m4, m3, True), False)
    torch.testing.assert_close(int8.sad_body(x, plan), expected, rtol=0, atol=0)


@needs_kernel
def test_a_chain_of_grids_paddings_and_readers():
    check_a_chain_against_its_layers()


@needs_kernel
@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_a_chain_of_grids_paddings_and_readers_on_every_path(isa):
    """The same chain on the slower paths, each in a process of its own (the path is chosen once)."""
    code = ("import sys; sys.path[:0] = ['tests', 'tests/deploy']; from test_int8_body import "
            "check_a_chain_against_its_layers; from addernet.nn.kernels import int8; "
            "check_a_chain_against_its_layers(); print(int8.instruction_set())")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ADDERNET_SAD_ISA": isa},
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] in (isa, "portable")  # portable where the CPU lacks AVX2


@needs_kernel
def test_the_body_plans_bottlenecks_and_the_portable_path():
    """A bottleneck ResNet (three layers a block), on the portable C++ path in a process of its own."""
    code = ("import torch, sys; sys.path.insert(0, 'tests'); from int8_networks import quantized_resnet; "
            "from addernet.nn.kernels import int8; net = quantized_resnet('adder_resnet50', 8); "
            "x = torch.randn(2, 3, 8, 8); f = net.stem(x.contiguous(memory_format=torch.channels_last)); "
            "print(int8.instruction_set(), len(net.stages.plan().layers), "
            "bool(torch.equal(net.stages(f), net.stages.forward_layers(f))))")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ADDERNET_SAD_ISA": "portable"},
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    isa, layers, equal = out.stdout.split()
    assert (isa, layers, equal) == ("portable", "52", "True")  # 16 blocks x 3 layers + 4 shortcuts


def packed_afresh(net: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The stages layer by layer with every layer's filters packed anew: a reference that trusts no cache."""
    for layer in net.modules():
        if isinstance(layer, Int8Adder2d):
            layer._packed = None
    return net.stages.forward_layers(features)


@needs_kernel
def test_the_body_keeps_the_state_dict_and_uses_filters_loaded_changed_or_replaced_later():
    net = quantized_resnet()
    keys = set(net.state_dict())
    assert "stages.0.0.conv1.qweight" in keys and "stages.1.0.downsample.0.qweight" in keys
    layer = net.stages[2][2].conv2
    with torch.no_grad():
        features = net.stem(torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last))
        results = [net.stages(features)]
        kept = net.stages.kernel_layers()
        assert net.stages.kernel_layers() is kept  # one kernel object, kept between calls
        state = {k: v.clone() for k, v in net.state_dict().items()}
        # the filters reordered (random ones would leave a map of zeros after the ReLU: no change to see)
        state["stages.2.2.conv2.qweight"] = layer.qweight.flip(0)
        changes = [lambda: net.load_state_dict(state),  # copies into the layers' tensors
                   lambda: layer.qweight.copy_(layer.qweight.roll(1, dims=1)),  # filters changed in place
                   lambda: setattr(layer, "qweight", layer.qweight.flip(0).clone()),  # a tensor replaced
                   lambda: layer.a.mul_(2.0),  # the output map's scale changed in place
                   lambda: setattr(layer, "b", layer.b + 1.0)]
        for change in changes:
            change()
            results.append(net.stages(features))
            assert (results[-1] > 0).any()
            assert not torch.equal(results[-2], results[-1])  # the change is used, not what the plan saw before
            torch.testing.assert_close(results[-1], packed_afresh(net, features), rtol=0, atol=0)
    assert isinstance(net.stages[1:], Int8Body)  # slicing keeps the class (nn.Sequential builds a new one)


@needs_kernel
def test_a_network_made_and_run_under_inference_mode():
    """Tensors made under torch.inference_mode have no version counter: the body, and the whole network's
    kernel object, run on identities there; the stem's filters (a small copy) are made afresh at every call,
    so values written into them in place are used."""
    with torch.inference_mode():
        net = quantized_resnet()
        x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
        features = net.stem(x)
        torch.testing.assert_close(net.stages(features), packed_afresh(net, features), rtol=0, atol=0)
        before = net(x)
        torch.testing.assert_close(before, net.model(x), rtol=1e-5, atol=1e-5)
        net.stem[0].weight.copy_(net.stem[0].weight.roll(1, dims=1))
        assert not torch.equal(net(x), before)
        torch.testing.assert_close(net(x), net.model(x), rtol=1e-5, atol=1e-5)


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
    plan = int8.BodyPlan()
    plan.add(Int8Adder2d(4, 8, 3, 1, 1, 0.1, 3), 0, None, relu=True)
    with pytest.raises(RuntimeError, match="takes 4 channels, its input map has 3"):
        int8.sad_body(torch.randn(1, 3, 6, 6), plan)
