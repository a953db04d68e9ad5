import pytest
import torch
from torch import nn

from addernet import Adder2d
from addernet.models import BasicBlock, Bottleneck, create_model, is_adder_model, list_models

ADDER = [n for n in list_models() if is_adder_model(n)]
INPUT = {"resnet20": (3, 32), "resnet32": (3, 32), "resnet18": (3, 32), "resnet50": (3, 32), "lenet5_bn": (1, 28),
         "vgg_small": (3, 32)}
RESNETS = [n for n in list_models() if "resnet" in n]


def test_registry_has_the_paper_models():
    assert {"adder_resnet20", "adder_resnet32", "adder_resnet18", "adder_resnet50", "adder_lenet5_bn",
            "adder_vgg_small", "resnet20", "resnet32", "resnet18", "resnet50", "lenet5_bn", "vgg_small"
            } <= set(list_models())


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="known models: adder_lenet5_bn, adder_resnet18"):
        create_model("adder_resnet21")


@pytest.mark.parametrize("name", list_models())
def test_model_runs_forward_and_backward(name):
    model = create_model(name, num_classes=7)
    channels, size = INPUT[name.removeprefix("adder_")]
    x = torch.randn(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ADDER)
def test_adder_model_has_the_parameters_of_its_cnn_twin(name):
    adder, cnn = create_model(name), create_model(name.removeprefix("adder_"))
    assert [p.shape for p in adder.parameters()] == [p.shape for p in cnn.parameters()]


@pytest.mark.parametrize("name", RESNETS)
def test_layer_placement(name):
    model = create_model(name)
    body = Adder2d if is_adder_model(name) else nn.Conv2d
    # stem and classifier stay multiplicative
    assert type(model.stem[0]) is nn.Conv2d and type(model.fc) is nn.Conv2d
    assert isinstance(model.bn_logits, nn.BatchNorm2d)
    blocks = [b for stage in model.stages for b in stage]
    assert blocks
    for block in blocks:
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            pairs.append((block.conv3, block.bn3))
        else:
            assert isinstance(block, BasicBlock)
        if block.downsample is not None:
            pairs.append(tuple(block.downsample))
            assert block.downsample[0].kernel_size == (1, 1)
        for layer, bn in pairs:
            assert type(layer) is body
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == layer.out_channels
    adders = [m for m in model.modules() if isinstance(m, Adder2d)]
    assert (len(adders) > 0) == is_adder_model(name)


def test_cifar_and_imagenet_structure():
    r20, r32 = create_model("adder_resnet20"), create_model("adder_resnet32")
    assert [len(s) for s in r20.stages] == [3, 3, 3] and [len(s) for s in r32.stages] == [5, 5, 5]
    assert [s[0].conv1.out_channels for s in r20.stages] == [16, 32, 64]
    assert r20.stem[0].kernel_size == (3, 3)
    r18, r50 = create_model("adder_resnet18"), create_model("adder_resnet50")
    assert r18.stem[0].kernel_size == (7, 7) and r18.stem[0].stride == (2, 2)
    assert isinstance(r18.stem[-1], nn.MaxPool2d)
    assert [len(s) for s in r50.stages] == [3, 4, 6, 3] and isinstance(r50.stages[0][0], Bottleneck)
    assert r50.fc.in_channels == 2048 and r18.fc.out_channels == 1000


def test_init_follows_the_authors():
    model = create_model("adder_resnet20")
    w = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, Adder2d)])
    assert abs(w.std().item() - 1) < 0.02
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_weight_grad_option_reaches_every_adder_layer():
    model = create_model("adder_resnet20", weight_grad="sign")
    assert {m.weight_grad for m in model.modules() if isinstance(m, Adder2d)} == {"sign"}
    with pytest.raises(TypeError, match="adder layers only"):
        create_model("resnet20", weight_grad="sign")


def test_whole_adder_network_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = create_model("adder_resnet20").eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, model(x))
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_lenet5_bn_is_all_adder_with_batchnorm_after_every_layer():
    adder, cnn = create_model("adder_lenet5_bn"), create_model("lenet5_bn")
    layers = ["conv1", "conv2", "fc1", "fc2", "fc"]
    assert all(type(getattr(adder, n)) is Adder2d for n in layers)  # the paper counts no multiplications
    assert all(type(getattr(cnn, n)) is nn.Conv2d for n in layers)
    for layer, bn in zip(layers, ["bn1", "bn2", "bn3", "bn4", "bn_logits"]):
        assert getattr(adder, bn).num_features == getattr(adder, layer).out_channels
    assert cnn.forward_features(torch.randn(3, 1, 28, 28)).shape == (3, 84)


def test_vgg_small_structure():
    model = create_model("adder_vgg_small", num_classes=100)
    adders = [m for m in model.modules() if isinstance(m, Adder2d)]
    assert [m.out_channels for m in adders] == [128, 256, 256, 512, 512]
    assert type(model.stem[0]) is nn.Conv2d and type(model.fc) is nn.Conv2d  # first layer and classifier multiply
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    cnn = create_model("vgg_small", num_classes=100)  # shapes (the adder twin runs in the test above)
    assert cnn.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 512 * 4 * 4)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["adder_resnet20", "resnet20", "adder_vgg_small", "lenet5_bn"])
def test_init_pytorch_leaves_convolutions_at_pytorchs_default_kaiming_draws_them(name):
    torch.manual_seed(0)
    ours = create_model(name)
    torch.manual_seed(0)
    authors = create_model(name, init="pytorch")
    convs = [(n, m.weight) for n, m in authors.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for n, w in convs:  # PyTorch's default: uniform within 1/sqrt(fan_in)
        assert w.abs().max() <= 1 / w[0].numel() ** 0.5
    adders = {n: m.weight for n, m in ours.named_modules() if isinstance(m, Adder2d)}
    assert all(torch.equal(adders[n], m.weight) for n, m in authors.named_modules() if isinstance(m, Adder2d))
    if name == "adder_resnet20":  # the classifier, 64 -> 10: Kaiming's (fan-out) weights are ~6x larger
        ratio = ours.fc.weight.std() / authors.fc.weight.std()
        assert 4.5 < ratio < 8
    with pytest.raises(ValueError, match="unknown init 'xavier'; choose one of kaiming, pytorch"):
        create_model(name, init="xavier")


SMALL_MODELS = {"adder_resnet20": (3, 16, 16), "resnet20": (3, 16, 16), "adder_vgg_small": (3, 32, 32),
                "adder_lenet5_bn": (1, 28, 28), "lenet5_bn": (1, 28, 28)}


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_every_model_has_the_written_down_interface(name):
    """forward = forward_head(forward_features); the classifier's input is the features; reset_classifier
    gives a head of the same kind for another number of classes."""
    from addernet.models.interface import ClassifierNet

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    assert isinstance(model, ClassifierNet)
    x = torch.randn(2, *SMALL_MODELS[name])
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features)
        torch.testing.assert_close(model(x), model.forward_head(features), rtol=0, atol=0)
        seen = []
        hook = model.get_classifier().register_forward_pre_hook(lambda m, args: seen.append(args[0].flatten(1)))
        model(x)
        hook.remove()
        torch.testing.assert_close(seen[0], features, rtol=0, atol=0)
    kind = type(model.get_classifier())
    model.reset_classifier(3)
    assert model.num_classes == 3 and type(model.get_classifier()) is kind and model(x).shape == (2, 3)
