"""The registered models, each as adder network and CNN twin: ResNets for CIFAR (20, 32) and ImageNet (18,
50), VGG-small for CIFAR and LeNet-5-BN for MNIST."""

from __future__ import annotations

from addernet.models.lenet import LeNet5BN
from addernet.models.registry import register_model
from addernet.models.resnet import BasicBlock, Bottleneck, ResNet, layer_factory
from addernet.models.vgg import VGGSmall

_ARCHS = {
    # name: (block, depths, widths, stem, default classes)
    "resnet20": (BasicBlock, (3, 3, 3), (16, 32, 64), "cifar", 10),
    "resnet32": (BasicBlock, (5, 5, 5), (16, 32, 64), "cifar", 10),
    "resnet18": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), "imagenet", 1000),
    "resnet50": (Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", 1000),
}


def _register(name: str, kind: str) -> None:
    block, depths, widths, stem, default_classes = _ARCHS[name]

    def build(num_classes: int = default_classes, in_channels: int = 3, init: str = "kaiming",
              **layer_options) -> ResNet:
        return ResNet(block, depths, widths, stem, layer_factory(kind, **layer_options), num_classes, in_channels,
                      init)

    build.__doc__ = f"{name} ({'adder body' if kind == 'adder' else 'CNN'}), {default_classes} classes by default"
    register_model(("adder_" if kind == "adder" else "") + name)(build)


for _name in _ARCHS:
    _register(_name, "adder")
    _register(_name, "conv")


def _register_plain(name: str, cls, in_channels: int, kind: str, about: str) -> None:
    def build(num_classes: int = 10, in_channels: int = in_channels, init: str = "kaiming", **layer_options):
        return cls(layer_factory(kind, **layer_options), num_classes, in_channels, init)

    build.__doc__ = f"{name} ({'adder network' if kind == 'adder' else 'CNN'}), {about}"
    register_model(("adder_" if kind == "adder" else "") + name)(build)


for _kind in ("adder", "conv"):
    _register_plain("lenet5_bn", LeNet5BN, 1, _kind, "for 28x28 grayscale images (MNIST)")
    _register_plain("vgg_small", VGGSmall, 3, _kind, "for 32x32 images (CIFAR)")
