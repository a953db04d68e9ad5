"""A quantised ResNet as one kernel call (stem, int8 stages, pooling and classifier: int8.network) against its
modules one by one."""

import copy
import pickle

import pytest
import torch

from addernet.deploy.quantized import Int8Network, PointwiseLinear, _skeleton, calibrate, quantize_model
from addernet.models import create_model
from addernet.nn.kernels import get_backend, int8, set_backend

from int8_networks import needs_kernel, quantized_resnet


def head_as_the_kernel_computes_it(last_map: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The global mean and the classifier in float32 with the kernel's order of operations: the positions added
    one after another, a division, then per class the bias plus each channel's product in turn."""
    n, c, h, w = last_map.shape
    positions = last_map.permute(0, 2, 3, 1).reshape(n, h * w, c)
    mean = torch.zeros(n, c)
    for at in range(h * w):
        mean = mean + positions[:, at]
    mean = mean / torch.tensor(float(h * w))
    logits = bias.expand(n, -1).clone()
    for channel in range(c):
        logits = logits + weight[:, channel] * mean[:, channel:channel + 1]
    return logits


@needs_kernel
@pytest.mark.parametrize("threads, batch, size", [(1, 1, 12), (1, 3, 12), (2, 3, 12), (4, 3, 32)])
def test_the_network_in_one_call_gives_its_modules_results(threads, batch, size):
    """Whole images per thread (batch >= threads) and images together (fewer than threads; at 32 x 32 the
    first stage's layers are large enough for their positions to be split among the threads): the stem and the
    int8 stages inside the call give their own calls' maps bit for bit (the head computed from those maps with
    the kernel's order of float operations matches exactly), and the logits match the modules' (PyTorch's mean
    and linear add in another order) to float rounding."""
    net = quantized_resnet(size=size)
    assert isinstance(net, Int8Network)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.no_grad():
            logits = net(x)
            modules = net.model(x)
            last_map = net.stages(net.stem(x))
    finally:
        torch.set_num_threads(previous)
    assert logits.shape == (batch, 10) and modules.abs().max() > 0.1  # live logits, not zeros
    expected = head_as_the_kernel_computes_it(last_map, net.fc.weight.flatten(1), net.fc.bias)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, modules, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_the_network_keeps_the_models_state_dict_and_interface():
    """The file format: a plain skeleton's state dict loads into the network and back; copies run alike; the
    model's interface answers through it, a part assigned anew is the model's too, and nothing else is
    delegated."""
    net = quantized_resnet()
    assert not net.training and net.num_classes == 10 and net.get_classifier() is net.fc
    skeleton = _skeleton("adder_resnet20", 10, {name: {"in_channels": m.in_channels, "out_channels": m.out_channels,
                                                       "kernel_size": m.kernel_size, "stride": m.stride,
                                                       "padding": m.padding, "scale": m.scale,
                                                       "zero_point": m.zero_point}
                                                for name, m in net.named_modules() if hasattr(m, "qweight")})
    assert isinstance(skeleton, Int8Network)
    skeleton.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(skeleton(x), expected) and torch.equal(copy.deepcopy(net)(x), expected)
        assert torch.equal(net.forward_features(x), net.model.forward_features(x))
        net.fc = PointwiseLinear.from_conv(torch.nn.Conv2d(64, 10, 1))
        assert net.model.fc is net.fc and net.get_classifier() is net.fc
        torch.testing.assert_close(net(x), net.model(x), rtol=1e-5, atol=1e-5)
        assert not torch.equal(net(x), expected)
    with pytest.raises(AttributeError, match="reset_classifier"):
        net.reset_classifier(3)


@needs_kernel
def test_the_network_uses_tensors_loaded_changed_or_replaced_after_its_first_call():
    """The kernel object is made once and kept: values written into the tensors it holds (in place, or through
    ``.data``, which changes no version), filters changed in place (packed again), and tensors, settings or
    modules replaced in the model are all used, each result equal to the parts' own calls one by one."""
    net = quantized_resnet()
    layer, stem = net.stages[2][2].conv2, net.stem[0]
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["stages.2.2.conv2.qweight"] = layer.qweight.flip(0)
    changes = [lambda: stem.weight.copy_(stem.weight.roll(1, dims=1)),  # colour channels swapped
               lambda: setattr(stem.weight, "data", stem.weight.data.roll(1, dims=1).clone()),
               lambda: setattr(stem, "bias", torch.nn.Parameter(stem.bias.flip(0))),
               lambda: setattr(stem, "padding", (0, 0)),  # a smaller map through every layer
               lambda: net.fc.weight.mul_(-1.0),
               lambda: net.load_state_dict(state),
               lambda: layer.qweight.copy_(layer.qweight.roll(1, dims=1)),
               lambda: setattr(layer.qweight, "data", layer.qweight.data.roll(1, dims=1).clone()),
               lambda: setattr(layer, "qweight", layer.qweight.flip(0).clone()),
               lambda: layer.a.mul_(1.1),
               lambda: setattr(layer, "b", layer.b + 0.1),
               # a view of the same storage at the same address, of the same sizes: only its strides tell
               lambda: setattr(stem.weight, "data", stem.weight.data.transpose(2, 3)),
               lambda: net.stem.__setitem__(0, type(stem).from_conv(torch.nn.Conv2d(3, 16, 3, padding=1), relu=True))]
    with torch.no_grad():
        results = [net(x)]
        made = net._kernel_network()
        for change in changes:
            change()
            assert isinstance(net._kernel_network(), int8.extension().Network)  # still the one call, not the parts
            results.append(net(x))
            assert not torch.equal(results[-2], results[-1])  # the change is used, not what was seen before
            torch.testing.assert_close(results[-1], net.model(x), rtol=1e-5, atol=1e-5)
        assert net._kernel_network() is not made  # made again for the replaced tensors, settings and module
        kept = net._kernel_network()
        layer.a.mul_(0.5)
        net.stem[0].bias.data = net.stem[0].bias.data + 1.0
        assert net._kernel_network() is kept  # values written into its tensors need no new object


@needs_kernel
def test_a_stem_changed_through_data_to_the_wrong_shape_is_refused():
    """An assignment to ``.data`` changes neither the tensor's identity nor its version: the call checks the
    tensors as they are (the stem's copy made again from filters of new sizes), and refuses a bias that no
    longer fits its filters, rather than reading past either's end."""
    x = torch.randn(1, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net = quantized_resnet()
        net(x)
        net.stem[0].bias.data = torch.zeros(8)
        with pytest.raises(RuntimeError, match="the stem needs 16 float32 biases"):
            net(x)
        net = quantized_resnet()
        net(x)
        net.stem[0].weight.data = net.stem[0].weight.data[:8]  # the same address: only its sizes changed
        with pytest.raises(RuntimeError, match="the stem needs 8 float32 biases"):
            net(x)


@needs_kernel
def test_an_adder_layers_affine_map_changed_through_data_is_used_or_refused():
    """The layers' ``a`` and ``b`` are read as they are at each call, after the object was made: new values at
    a new address are used; a size that no longer fits the filters, or a layout that is not contiguous, is
    refused (not read past)."""
    x = torch.randn(1, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net = quantized_resnet()
        layer = net.stages[1][0].conv1
        before = net(x)
        layer.a.data = layer.a.data * 2.0  # the same sizes, new storage
        after = net(x)
        assert not torch.equal(before, after)
        torch.testing.assert_close(after, net.model(x), rtol=1e-5, atol=1e-5)
        layer.b.data = torch.zeros(layer.b.numel() + 1)
        with pytest.raises(RuntimeError, match="one float32 value per filter"):
            net(x)
        layer.b.data = torch.zeros(2 * layer.b.numel())[::2]  # the right size, not contiguous
        with pytest.raises(RuntimeError, match="one float32 value per filter"):
            net(x)


@needs_kernel
def test_a_network_pickled_after_its_first_call_runs_alike():
    """The kernel object is not pickled (nor copied): a copy makes its own."""
    net = quantized_resnet()
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = net(x)
        for copy_of in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
            assert torch.equal(copy_of(x), expected)
            assert copy_of._kernel_network() is not net._kernel_network()


@needs_kernel
def test_hooks_on_the_parts_run():
    """A forward hook on a part (the feature plot's on the classifier), added after the kernel object was made,
    makes the network run part by part; removed, the one call again."""
    net = quantized_resnet()
    seen = []
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = net(x)
        assert net._kernel_network() is not None
        handle = net.get_classifier().register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
        with_hook = net(x)
        assert net._kernel_network() is None
        handle.remove()
        without = net(x)
        assert isinstance(net._kernel_network(), int8.extension().Network)
    assert seen == [(2, 64, 1, 1)]
    torch.testing.assert_close(with_hook, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(without, before)


@needs_kernel
def test_a_module_added_to_the_stem_after_the_first_call_is_run():
    """A module appended to the stem (so that it is no longer one convolution) after the kernel object was made:
    the network runs part by part, the new module included."""
    net = quantized_resnet()
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        before = net(x)
        net.stem.append(torch.nn.Hardtanh(0.0, 0.5))  # the stem's map clipped: another result
        after = net(x)
        assert net._kernel_network() is None
        assert not torch.equal(before, after)


@needs_kernel
def test_a_hook_dictionary_replaced_after_the_first_call_is_seen():
    """A part's hook dictionary assigned anew (not through ``register_forward_hook``) holding a hook: its hook
    runs, the network part by part."""
    from collections import OrderedDict

    net = quantized_resnet()
    seen = []
    x = torch.randn(1, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net(x)
        net.fc._forward_hooks = OrderedDict({0: lambda module, args, out: seen.append(out.shape)})
        net(x)
    assert seen == [(1, 10, 1, 1)]


@needs_kernel
def test_a_network_held_by_its_own_hook_is_collected():
    """The kernel object's check holds the parts' hook dictionaries; a hook whose closure holds the network makes
    a cycle through it, which Python's cycle collector must still see and free."""
    import gc
    import weakref

    net = quantized_resnet()
    x = torch.randn(1, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        net(x)  # the kernel object made and kept, watching the classifier's (empty) hook dictionary
        net.fc.register_forward_hook(lambda module, args, out, net=net: None)
        net(x)
    collected = weakref.ref(net)
    del net
    gc.collect()
    assert collected() is None


@needs_kernel
def test_without_the_kernel_an_unpickled_network_runs_part_by_part(monkeypatch):
    """Where the kernel cannot be built, a network saved where it could runs its parts on the plain-PyTorch
    fallback: the same integer sums, the float stem and head in PyTorch's rounding."""
    net = quantized_resnet()
    x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = net(x)
        saved = pickle.dumps(net)
        monkeypatch.setattr(int8, "extension", lambda: None)
        copy_of = pickle.loads(saved)
        torch.testing.assert_close(copy_of(x), expected, rtol=1e-4, atol=1e-4)
        assert copy_of._kernel_network() is None and "_kernel_object" not in copy_of.__dict__


@needs_kernel
def test_networks_whose_parts_do_not_fit_stay_as_they_are():
    """An ImageNet stem (a max-pool after the convolution) and a network without stages keep their modules."""
    previous = get_backend()
    set_backend("reference")
    try:
        for name, size in (("adder_resnet18", 32), ("adder_lenet5_bn", 28)):
            torch.manual_seed(0)
            channels = 1 if "lenet" in name else 3
            net = create_model(name, num_classes=10, **({"in_channels": 1} if channels == 1 else {})).eval()
            x = torch.randn(2, channels, size, size)
            quantized = quantize_model(net, calibrate(net, [x]))
            assert not isinstance(quantized, Int8Network), name
    finally:
        set_backend(previous)


@needs_kernel
def test_a_head_of_the_wrong_width_is_refused():
    net = quantized_resnet()
    stem = net.stem[0]
    with pytest.raises(RuntimeError, match=r"the head's weight must be float32 \(classes, 64\)"):
        int8.network(stem, net.stages.kernel_layers(), torch.randn(10, 32), torch.randn(10)).forward(
            torch.randn(1, 3, 12, 12))
