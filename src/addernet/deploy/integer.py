"""Adder networks as integer programs: what the C runtime runs, and its exact twin in PyTorch.

A trained network becomes a list of layers on 8-bit activation maps. Every map has one grid (real value =
``scale * (q - zero_point)``) that all its readers share; each layer reads uint8 codes and writes the next
map's codes directly, so nothing between layers is float:

- ``lut``: a raw uint8 image -> the first map, through a 256-entry table per channel (normalisation and
  quantisation in one lookup, computed here once).
- ``conv``: a multiplicative convolution (a ResNet's stem), int8 filters, int32 sums of
  ``w * (x - zero_point)``.
- ``adder``: ``sum |x - w|`` over the window, uint8 filters on the input's grid (the sum is exact; filter
  values beyond the grid are clipped and the clipped amount moved into the bias, as in
  :meth:`addernet.deploy.quantized.Int8Adder2d.from_float`).
- ``maxpool``: the largest code of each window (quantisation is monotonic).
- ``head``: global average pooling and a multiplicative classifier: int32 sums, then float logits.

A layer's integer sum ``s`` becomes the output code as ``v = float(s) * m[o] + c[o]``, then
``+ float(r - zr) * k`` for a residual input ``r``, ``max(v, 0)`` for a ReLU, and
``round_half_even(clamp(v, 0, 255))``: float32 operations on single elements, each rounded once, in that
order, so the C runtime (compiled without contraction into fused multiply-adds) and :func:`run` agree to the
bit. The last layer writes float32 logits ``float(s) * m[o] + c[o]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from addernet.deploy.quantized import DEFAULT_PERCENTILE, Int8Adder2d, grid_for, write_export
from addernet.errors import ConfigError
from addernet.models import BasicBlock, Bottleneck
from addernet.models.lenet import LeNet5BN
from addernet.models.resnet import ResNet
from addernet.nn.kernels import int8
from addernet.nn.layer import Adder2d


@dataclass
class Map:
    """An activation map: shape (C, H, W) and its 8-bit grid."""
    shape: tuple[int, int, int]
    scale: float = 1.0
    zero_point: int = 0


LAYER_KINDS = ("lut", "conv", "adder", "maxpool", "head")


@dataclass
class Layer:
    kind: str  # one of LAYER_KINDS
    src: int  # index of the map read (-1: the image)
    dst: int  # index of the map written (-1: the logits)
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    relu: bool = False
    residual: int | None = None  # a map added before the ReLU
    weight: torch.Tensor | None = None  # lut (C, 256) uint8; conv (O, kh, kw, C) int8; adder same, uint8; head (K, C)
    m: torch.Tensor | None = None  # float32 per output channel
    c: torch.Tensor | None = None
    k: float = 0.0  # the residual's factor
    float_module: object = field(default=None, repr=False)  # what it was made from (calibration only)


@dataclass
class Program:
    """An integer network: its maps and layers, the image it reads and what it is."""
    image_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    maps: list[Map]
    layers: list[Layer]
    num_classes: int
    model_name: str = ""


# ---- from a trained network ----------------------------------------------------------------------------------

def trace(net: nn.Module, image_shape: tuple[int, int, int]) -> Program:
    """The layers of a trained adder ResNet or LeNet-5-BN (eval mode), before any grid is set."""
    if isinstance(net, ResNet):
        return _trace_resnet(net, image_shape)
    if isinstance(net, LeNet5BN) and isinstance(net.conv1, Adder2d):
        return _trace_lenet(net, image_shape)
    raise ConfigError(f"format=c exports adder ResNets and adder LeNet-5-BN; got {type(net).__name__}")


class _Builder:
    def __init__(self, image_shape):
        self.maps: list[Map] = [Map(tuple(image_shape))]
        self.layers: list[Layer] = [Layer("lut", -1, 0)]

    def add(self, kind, src, shape, module=None, **kw) -> int:
        self.maps.append(Map(shape))
        self.layers.append(Layer(kind, src, len(self.maps) - 1, float_module=module, **kw))
        return len(self.maps) - 1


def _out_hw(shape, kernel, stride, padding):
    return tuple((s + 2 * padding - kernel) // stride + 1 for s in shape[1:])


def _add_layer(b: _Builder, src: int, conv: nn.Module, bn: nn.Module | None, relu: bool,
               residual: int | None = None) -> int:
    kind = "adder" if isinstance(conv, Adder2d) else "conv"
    if kind == "conv" and conv.bias is not None:
        raise ConfigError(f"format=c supports multiplicative layers without bias; got {conv}")
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError(f"format=c supports square, ungrouped, undilated layers; got {conv}")
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    shape = (conv.out_channels, *_out_hw(b.maps[src].shape, k, s, p))
    return b.add(kind, src, shape, module=(conv, bn), kernel=k, stride=s, padding=p, relu=relu, residual=residual)


def _trace_resnet(net: ResNet, image_shape) -> Program:
    b = _Builder(image_shape)
    stem = list(net.stem)
    if len(stem) != 3 or any(isinstance(m, Bottleneck) for m in net.modules()):
        raise ConfigError("format=c supports the CIFAR ResNets (3x3 stem, basic blocks: adder_resnet20, "
                          "adder_resnet32) and adder_lenet5_bn; the ImageNet ResNets are not supported yet")
    x = _add_layer(b, 0, stem[0], stem[1], relu=True)
    for block in (m for m in net.stages.modules() if isinstance(m, BasicBlock)):
        identity = x if block.downsample is None else _add_layer(b, x, block.downsample[0], block.downsample[1], False)
        out = _add_layer(b, x, block.conv1, block.bn1, relu=True)
        x = _add_layer(b, out, block.conv2, block.bn2, relu=True, residual=identity)
    b.layers.append(Layer("head", x, -1, float_module=(net.fc, net.bn_logits)))
    return Program(tuple(image_shape), b.maps, b.layers, net.num_classes)


def _trace_lenet(net: LeNet5BN, image_shape) -> Program:
    b = _Builder(image_shape)
    x = _add_layer(b, 0, net.conv1, net.bn1, relu=True)
    x = b.add("maxpool", x, (b.maps[x].shape[0], *_out_hw(b.maps[x].shape, 2, 2, 0)), kernel=2, stride=2)
    x = _add_layer(b, x, net.conv2, net.bn2, relu=True)
    x = b.add("maxpool", x, (b.maps[x].shape[0], *_out_hw(b.maps[x].shape, 2, 2, 0)), kernel=2, stride=2)
    # fc1 reads the flattened (C, H, W) map: the same as a valid convolution as large as the map
    c, h, w = b.maps[x].shape
    fc1 = Adder2d(c, net.fc1.out_channels, h, 1, 0, bias=net.fc1.bias is not None)
    fc1.weight.data = net.fc1.weight.detach().reshape(-1, c, h, w).clone()
    if net.fc1.bias is not None:
        fc1.bias.data = net.fc1.bias.detach().clone()
    x = _add_layer(b, x, fc1, net.bn3, relu=True)
    x = _add_layer(b, x, net.fc2, net.bn4, relu=True)
    logits = _add_layer(b, x, net.fc, net.bn_logits, relu=False)
    b.layers[-1].dst, b.maps = -1, b.maps[:logits]
    return Program(tuple(image_shape), b.maps, b.layers, net.num_classes)


@torch.no_grad()
def _float_maps(program: Program, images: torch.Tensor, mean, std) -> list[torch.Tensor]:
    """The float network's value of every map for uint8 ``images`` (N, C, H, W)."""
    x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    values = [x]
    for layer in program.layers[1:]:
        src = values[layer.src]
        if layer.kind == "maxpool":
            y = F.max_pool2d(src, layer.kernel, layer.stride)
        elif layer.kind == "head":
            fc, bn = layer.float_module
            y = bn(fc(src.mean((2, 3), keepdim=True))).flatten(1)
        else:
            conv, bn = layer.float_module
            y = bn(conv(src)) if bn is not None else conv(src)
            if layer.residual is not None:
                y = y + values[layer.residual]
            y = y.relu() if layer.relu else y
        values.append(y)
    return values


def calibrate(program: Program, images: torch.Tensor, mean, std, percentile: float = DEFAULT_PERCENTILE) -> None:
    """Set every map's grid from the float network's values on ``images``, then every layer's integer
    parameters (in place)."""
    values = _float_maps(program, images, mean, std)
    for i, m in enumerate(program.maps):
        m.scale, m.zero_point = grid_for(values[i].flatten(), percentile)
    for layer in program.layers:  # pooling picks codes: its map is on its input's grid
        if layer.kind == "maxpool":
            program.maps[layer.dst].scale = program.maps[layer.src].scale
            program.maps[layer.dst].zero_point = program.maps[layer.src].zero_point
    for i, m in enumerate(program.maps):
        relu = any(layer.dst == i and layer.relu for layer in program.layers)
        if relu and m.zero_point != 0:  # the runtime's ReLU is max(v, 0) in the output's units
            raise ConfigError(f"map {i} follows a ReLU but its grid's zero point is {m.zero_point}, not 0")
    first = program.maps[0]
    codes = torch.arange(256, dtype=torch.float32)
    lut = [(codes / 255 - mu) / sd for mu, sd in zip(mean, std)]
    program.layers[0].weight = torch.stack([int8.quantize(v, first.scale, first.zero_point) for v in lut])
    for layer in program.layers[1:]:
        _integer_parameters(program, layer)


def _integer_parameters(program: Program, layer: Layer) -> None:
    """m, c (and k) so that ``float(sum) * m + c (+ float(r - zr) * k)`` is the output in its grid's units."""
    src = program.maps[layer.src]
    out = program.maps[layer.dst] if layer.dst >= 0 else Map((0, 0, 0), 1.0, 0)
    if layer.kind == "maxpool":
        return
    if layer.kind == "adder":
        conv, bn = layer.float_module
        q = Int8Adder2d.from_float(conv, bn, src.scale, src.zero_point)  # y = a * sum + b, clipping exact
        layer.weight = q.qweight.permute(0, 2, 3, 1).contiguous()
        a, b = q.a.double(), q.b.double()
    else:
        conv, bn = layer.float_module
        w = conv.weight.detach().double().flatten(1)
        w_scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
        wq = torch.round(w / w_scale[:, None]).clamp(-127, 127)
        shape = conv.weight.shape
        layer.weight = wq.reshape(shape).permute(0, 2, 3, 1).to(torch.int8).contiguous() if layer.kind == "conv" \
            else wq.reshape(shape[0], shape[1]).to(torch.int8).contiguous()
        a, b = w_scale * src.scale, torch.zeros(shape[0], dtype=torch.float64)
        if layer.kind == "head":
            h, w_ = src.shape[1:]
            a = a / (h * w_)  # the sum over the map, and the mean's division folded in
        if bn is not None:
            factor = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            a, b = a * factor, (b - bn.running_mean.double()) * factor + bn.bias.detach().double()
    c_in, (kh, kw) = src.shape[0], (layer.kernel, layer.kernel) if layer.kind != "head" else src.shape[1:]
    largest = 255 * c_in * kh * kw * (1 if layer.kind == "adder" else 128)  # |a sum| can reach this
    if largest >= 2**31:
        raise ConfigError(f"a {layer.kind} layer over {c_in}x{kh}x{kw} inputs could overflow the runtime's 32-bit "
                          f"sums; format=c does not support it")
    layer.m = (a / out.scale).float()
    layer.c = (b / out.scale + out.zero_point).float()
    if not (torch.isfinite(layer.m).all() and torch.isfinite(layer.c).all()):
        raise ConfigError("the network has non-finite parameters (or a BatchNorm variance of 0): it cannot be "
                          "exported")
    if layer.residual is not None:
        layer.k = program.maps[layer.residual].scale / out.scale


# ---- running it exactly ---------------------------------------------------------------------------------------

def _requantize(v: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Codes of the output map (a ReLU's map has zero point 0: its values are >= 0, and 0 is on every grid)."""
    v = v.relu() if layer.relu else v
    return torch.round(v.clamp(0, 255)).to(torch.uint8).contiguous()


def _products(x: torch.Tensor, layer: Layer, zero_point: int) -> torch.Tensor:
    """(N, O, Ho, Wo) int64 sums of ``w * (x - zero_point)`` of a multiplicative layer over uint8 codes ``x``
    (N, C, H, W), padding adding 0: products of bytes summed in float64, exact below 2**53."""
    xi = F.pad(x.double() - zero_point, (layer.padding,) * 4)
    return F.conv2d(xi, layer.weight.permute(0, 3, 1, 2).double(), stride=layer.stride).round().long()


@torch.no_grad()
def run(program: Program, images: torch.Tensor) -> torch.Tensor:
    """float32 logits (N, classes) of uint8 ``images`` (N, C, H, W): the C runtime's arithmetic, step for step."""
    lut = program.layers[0].weight
    codes = [torch.stack([lut[c][images[:, c].long()] for c in range(images.shape[1])], 1)]
    for layer in program.layers[1:]:
        x, src = codes[layer.src], program.maps[layer.src]
        if layer.kind == "maxpool":
            codes.append(F.max_pool2d(x.float(), layer.kernel, layer.stride).to(torch.uint8))
            continue
        if layer.kind == "head":
            sums = x.long().sum((2, 3)) - src.shape[1] * src.shape[2] * src.zero_point  # (N, C)
            acc = sums.double() @ layer.weight.double().T  # exact integers
            return acc.long().to(torch.int32).float() * layer.m + layer.c
        residual = None
        if layer.residual is not None:
            r = codes[layer.residual].int() - program.maps[layer.residual].zero_point
            residual = r.float() * torch.tensor(layer.k, dtype=torch.float32)
        if layer.kind == "adder":
            # the int8 layer's sums are exact and its output pass is this module's: (m * s + c) + residual
            # (its plain-PyTorch fallback too); fed (q - z) with scale 1 and zero point z, it quantises back
            # to q and pads with z
            v = int8.sad_forward(x.float() - src.zero_point, 1.0, src.zero_point,
                                 layer.weight.permute(0, 3, 1, 2).contiguous(), layer.stride, layer.padding,
                                 layer.m, layer.c, residual=residual)
        else:
            s = _products(x, layer, src.zero_point).to(torch.int32).float()
            v = s * layer.m.view(1, -1, 1, 1) + layer.c.view(1, -1, 1, 1)
            v = v if residual is None else v + residual
        if layer.dst < 0:
            return v.flatten(1)
        codes.append(_requantize(v, layer))
    raise ConfigError("the program has no output layer")


# ---- as a file that src/eval.py and src/predict.py read -------------------------------------------------------

def to_payload(program: Program) -> dict:
    """The program as tensors and plain values (``torch.load(weights_only=True)`` reads them)."""
    return {"image_shape": list(program.image_shape), "num_classes": program.num_classes,
            "model_name": program.model_name,
            "maps": [{"shape": list(m.shape), "scale": m.scale, "zero_point": m.zero_point} for m in program.maps],
            "layers": [{f.name: getattr(layer, f.name) for f in fields(Layer) if f.name != "float_module"}
                       for layer in program.layers]}


def from_payload(payload: dict) -> Program:
    """The program of :func:`to_payload`'s dict; ``ValueError`` where it cannot be one (an edited file)."""
    maps = [Map(tuple(m["shape"]), m["scale"], m["zero_point"]) for m in payload["maps"]]
    program = Program(tuple(payload["image_shape"]), maps, [Layer(**layer) for layer in payload["layers"]],
                      payload["num_classes"], payload["model_name"])
    kinds = [layer.kind for layer in program.layers]
    if not kinds or kinds[0] != "lut" or any(kind not in LAYER_KINDS for kind in kinds):
        raise ValueError(f"layers {kinds}: a program starts with a lut layer, then {', '.join(LAYER_KINDS[1:])}")
    run(program, torch.zeros((1, *program.image_shape), dtype=torch.uint8))  # every index and shape fits
    return program


def save(program: Program, path: Path, *, class_names: list[str] | None, mean: list[float], std: list[float],
         metadata: dict) -> None:
    """Write the program as an ``addernet-int8`` file (:func:`addernet.deploy.quantized.load_exported` reads it
    as an :class:`IntegerNet`): src/eval.py's accuracy for it is the C program's."""
    write_export(path, model_name=program.model_name, num_classes=program.num_classes, class_names=class_names,
                 input_size=program.image_shape, mean=mean, std=std, metadata=metadata,
                 program=to_payload(program))


class IntegerNet(nn.Module):
    """The program as a module of normalised images, as the data modules serve them: each image is turned back
    into the uint8 pixels it was normalised from, then run as the C program runs it (:func:`run`)."""

    def __init__(self, program: Program, mean, std):
        super().__init__()
        self.program = program
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run(self.program, self.pixels(x)).to(x.device)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 pixels (on the CPU, where :func:`run` computes) that ``x`` was normalised from."""
        pixels = (x.float() * self.std + self.mean) * 255
        codes = pixels.round()
        # the round trip is exact to about 1e-5 for pixels normalised with this mean and std; anything farther
        # from whole numbers was not such a pixel
        if not ((pixels - codes).abs().amax() < 1e-2 and 0 <= codes.amin() and codes.amax() <= 255):
            raise ConfigError("the integer program reads uint8 images: pass images normalised from uint8 pixels "
                              "with the data's mean and std, and not augmented")
        return codes.to("cpu", torch.uint8)
