"""Post-training int8 quantisation of adder networks, and the self-contained file that deploys them.

Each adder layer gets one 8-bit affine quantisation (scale s, zero point z) shared by its input and its
filters: the SAD instruction needs both operands on one grid, and then |x - w| = s * |qx - qw| exactly, the
zero point cancelling. The range is the union of the filters' full range (min/max: a filter value is
never clipped) and the input's central ``percentile`` range over calibration images (99.99% by default:
post-ReLU activations have long tails, and clipping the rare largest ones buys resolution for all others).
The AdderNet quantisation literature (Nie et al., NeurIPS 2022, "Redistribution of weights and activations
for AdderNet quantization") observes exactly this conflict, weights and activations of very different
ranges sharing one scale, and clips outliers of both; we clip the activations only and keep min/max for
the weights, which the shared-scale kernel tolerates because adder filters live on the scale of their
inputs (their L1 distance is what is learned). The BatchNorm after each adder layer is folded into the
kernel's output map (a, b); ReLUs and residual additions happen in the kernel's output pass. The
multiplicative stem and classifier and the pooling stay in float32 (under 1% of an adder ResNet-20's
operations), each with its BatchNorm folded into it (one operation less each: at batch 1 every operation
costs microseconds); a stem of few input channels runs with its ReLU in the kernel's direct loop. A ResNet
whose stages are all int8 runs them as one kernel call (:class:`Int8Body`), and with its stem and head as one
call for the whole network where they fit (:class:`Int8Network`).

``python src/export.py ckpt_path=... quantize=int8`` writes :data:`FORMAT` files; :func:`load_exported` reads
them back without the training code's config (the model is rebuilt from its registry name). ``format=c`` writes
one beside its C project that holds the integer program instead (:mod:`addernet.deploy.integer`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from addernet.errors import ConfigError, first_line
from addernet.nn.kernels import int8
from addernet.nn.layer import Adder2d
from addernet.models import create_model

FORMAT = "addernet-int8"
VERSION = 2  # 2: the float stem's and classifier's BatchNorms folded into their convolutions
DEFAULT_PERCENTILE = 99.99


class Int8Adder2d(nn.Module):
    """An adder layer and the BatchNorm after it, run by the int8 SAD kernel (see :mod:`addernet.nn.kernels.int8`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 scale: float = 1.0, zero_point: int = 0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.register_buffer("qweight", torch.zeros(out_channels, in_channels, kernel_size, kernel_size,
                                                    dtype=torch.uint8))
        self.register_buffer("a", torch.ones(out_channels))
        self.register_buffer("b", torch.zeros(out_channels))
        self._packed: torch.Tensor | None = None  # the kernel's layout of qweight, made on first use
        self._packed_from: tuple = ()  # (the qweight tensor packed, its version): a new or changed one packs again

    @classmethod
    def from_float(cls, adder: Adder2d, bn: nn.BatchNorm2d | None, scale: float, zero_point: int) -> Int8Adder2d:
        if adder.groups != 1 or adder.dilation != (1, 1) or adder.kernel_size[0] != adder.kernel_size[1] or \
                adder.stride[0] != adder.stride[1] or adder.padding[0] != adder.padding[1]:
            raise ConfigError(f"int8 export supports square, ungrouped, undilated adder layers; got {adder}")
        layer = cls(adder.in_channels, adder.out_channels, adder.kernel_size[0], adder.stride[0], adder.padding[0],
                    scale, zero_point)
        # Filter values outside the grid [lo, hi] are clipped to its edge, exactly: for an input x on the grid
        # and w < lo, |x - w| = |x - lo| + (lo - w) (likewise above hi), so the clipped amount is a constant
        # per output channel, moved into the bias. Adder filters range far wider than their inputs (here up
        # to 47 against inputs under 5); without this one grid for both would be 10x coarser for the inputs.
        lo, hi = -zero_point * scale, (255 - zero_point) * scale
        w = adder.weight.detach().float()
        clipped = w.clamp(lo, hi)
        layer.qweight.copy_(int8.quantize(clipped, scale, zero_point))
        a = torch.full((adder.out_channels,), -scale)  # y = -s * sum |qx - qw| - (what clipping removed) + bias
        b = adder.bias.detach().clone() if adder.bias is not None else torch.zeros(adder.out_channels)
        b = b - (w - clipped).abs().sum((1, 2, 3))
        if bn is not None:  # BatchNorm in eval mode: gamma * (y - mean) / sqrt(var + eps) + beta
            factor = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            a, b = a * factor, (b - bn.running_mean) * factor + bn.bias.detach()
        layer.a.copy_(a)
        layer.b.copy_(b)
        return layer

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
        """The layer and its BatchNorm; ``residual`` added and ``relu`` applied in the same pass."""
        packed = self.packed_filters() if int8.extension_available() else None
        return int8.sad_forward(x, self.scale, self.zero_point, self.qweight, self.stride, self.padding, self.a,
                                self.b, packed, residual, relu)

    def packed_filters(self) -> torch.Tensor:
        """``qweight`` in the kernel's layout (:func:`addernet.nn.kernels.int8.pack_filters`), packed again when the
        filters changed: loaded, written in place, replaced, or given other storage through ``.data`` (which
        changes no version: the storage packed from is held, so its address cannot come back with other data)."""
        w = self._buffers["qweight"]
        before = self._packed_from
        if self._packed is None or not before or before[0] is not w or before[1] != int8.version(w) \
                or before[2].data_ptr() != w.data_ptr() or before[2].shape != w.shape \
                or before[2].stride() != w.stride():
            self._packed = int8.pack_filters(w)
            self._packed_from = (w, int8.version(w), w.detach())  # w.detach(): the same storage, held
        return self._packed

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, scale={self.scale:.4g}, zero_point={self.zero_point}")


class Int8ResidualBlock(nn.Module):
    """A ResNet block (basic or bottleneck) whose layers all run in int8: each layer's BatchNorm is folded in,
    the ReLUs and the residual addition happen in the kernel's output pass. Same attribute names as the float
    block, so the state dict reads the same."""

    def __init__(self, layers: list[Int8Adder2d], downsample: nn.Module | None):
        super().__init__()
        for i, layer in enumerate(layers, 1):
            setattr(self, f"conv{i}", layer)
        self.downsample = downsample
        # for forward: looking the layers up by name each call costs more than a small layer at batch 1; the
        # layers are fixed at construction (to change one, build a new block)
        self._layers = tuple(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for layer in self._layers[:-1]:
            out = layer(out, None, True)  # (residual, relu): positional, no keyword dict per call
        return self._layers[-1](out, identity, True)


def only_layer(sequence: nn.Module | None) -> nn.Module | None:
    """The one layer of an nn.Sequential besides its nn.Identity placeholders (what folding and fusing leave);
    None where there are none or several."""
    layers = [m for m in sequence.children() if not isinstance(m, nn.Identity)] \
        if isinstance(sequence, nn.Sequential) else []
    return layers[0] if len(layers) == 1 else None


class KeepsKernelObject:
    """For a module that runs as one kernel object (:func:`addernet.nn.kernels.int8.layers`, ``network``): the
    object is made on first use and kept with the places of what it was made from: (dictionary, key) pairs such
    as a module's ``_buffers`` and a name for its tensors, settings and modules, and dictionaries whose sizes
    must stay the same (a module's children, its hooks). It is made again where any place holds another object
    than when it was made, or such a dictionary has grown or shrunk: at every call a check of about 80 places
    for ResNet-20, in C++ (``Places``: 1-1.7 us on AMD Zen 4, 6-8 us in Python). Values written into the
    tensors, in place or through ``.data``, need no new object (it holds the tensors themselves and makes its
    derived copies, such as packed filters, again when their version, storage or sizes change). Not seen:
    modules replaced inside an :class:`Int8Body`'s stages (its blocks and layers are fixed when it is made) and
    parametrized weights. A copy or an unpickled module makes its own."""

    def kept(self, make: Callable[[], tuple[object, list[tuple[dict, str]], list[dict]]]):
        """The kept object (None: the module runs part by part), or the one ``make()`` returns with the places
        of what it holds and the dictionaries whose sizes it depends on, where those have changed since it was
        made."""
        kept = self.__dict__.get("_kernel_object")
        if kept is not None and kept[1].unchanged():
            return kept[0]
        made, places, sized = make()
        if int8.extension_available():
            self.__dict__["_kernel_object"] = (made, int8.extension().Places(places, sized))
        return made

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop("_kernel_object", None)
        return state


class Int8Body(KeepsKernelObject, nn.Sequential):
    """A ResNet's stages whose blocks are all int8 (:class:`Int8ResidualBlock`), run as one kernel object's call
    (:func:`addernet.nn.kernels.int8.layers`: one image at a time through every layer, threads taking whole
    images, maps in buffers kept between calls; the object kept, see :class:`KeepsKernelObject`), with the
    same arithmetic as the blocks one by one. The stages stay its children under their names, so the state dict
    reads the same; without the compiled kernel it runs them one by one."""

    def __init__(self, stages: nn.Sequential | OrderedDict):
        super().__init__(OrderedDict(stages._modules) if isinstance(stages, nn.Module) else stages)
        self._plan: int8.BodyPlan | None = None  # made on first use

    @staticmethod
    def fits(stages: nn.Module) -> bool:
        blocks = [b for stage in stages.children() for b in stage.children()] \
            if isinstance(stages, nn.Sequential) and all(isinstance(s, nn.Sequential) for s in stages) else []
        return bool(blocks) and all(isinstance(b, Int8ResidualBlock) and Int8Body._shortcut(b) is not False
                                    for b in blocks)

    @staticmethod
    def _shortcut(block: Int8ResidualBlock) -> Int8Adder2d | None | bool:
        """The block's int8 shortcut layer, None for the identity, False for anything else."""
        if block.downsample is None:
            return None
        layer = only_layer(block.downsample)
        return layer if isinstance(layer, Int8Adder2d) else False

    def plan(self) -> int8.BodyPlan:
        """The blocks as :func:`addernet.nn.kernels.int8.layers`' steps: map 0 the input, each layer's output the
        next map."""
        if self._plan is None:
            plan = int8.BodyPlan()
            current = 0
            for block in (b for stage in self for b in stage):
                shortcut = self._shortcut(block)
                identity = current if shortcut is None else plan.add(shortcut, current, None, relu=False)
                out = current
                for layer in block._layers[:-1]:
                    out = plan.add(layer, out, None, relu=True)
                current = plan.add(block._layers[-1], out, identity, relu=True)
            self._plan = plan
        return self._plan

    def kernel_layers(self):
        """The kernel object of the layers (:func:`addernet.nn.kernels.int8.layers`), kept between calls."""
        plan = self.plan()
        return self.kept(lambda: (int8.layers(plan), plan.tensors(), []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not int8.extension_available():
            return super().forward(x)
        return self.kernel_layers().forward(x)

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks one by one, each layer its own kernel call (the same result)."""
        return super().forward(x)


def fuse_body(model: nn.Module) -> nn.Module:
    """A model's ``stages`` as one :class:`Int8Body` where every block in them runs in int8."""
    if Int8Body.fits(getattr(model, "stages", None)):
        model.stages = Int8Body(model.stages)
    return model


def fuse_blocks(model: nn.Module) -> nn.Module:
    """Replace every ResNet block whose layers are all int8 by an :class:`Int8ResidualBlock`."""
    from addernet.models import BasicBlock, Bottleneck

    for parent in list(model.modules()):
        for name, block in list(parent._modules.items()):
            if not isinstance(block, (BasicBlock, Bottleneck)):
                continue
            layers = [getattr(block, f"conv{i}") for i in range(1, 4) if hasattr(block, f"conv{i}")]
            if all(isinstance(layer, Int8Adder2d) for layer in layers):
                parent._modules[name] = Int8ResidualBlock(layers, block.downsample)
    return model


class SmallConv2d(nn.Conv2d):
    """A float convolution with few input channels (a stem) and its ReLU, run by the int8 kernel's direct loop
    (:func:`addernet.nn.kernels.int8.small_conv`): same parameters and state dict as the nn.Conv2d it replaces;
    PyTorch's convolution where the kernel is not built."""

    def __init__(self, *args, relu: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = relu

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        """A plain convolution the direct loop runs faster than PyTorch here (few inputs, a vector path)."""
        return (type(conv) is nn.Conv2d and conv.in_channels <= 4 and conv.groups == 1 and conv.bias is not None
                and int8.small_conv_is_fast(conv.out_channels)
                and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
                and len({*conv.kernel_size}) == len({*conv.stride}) == len({*conv.padding}) == 1)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool) -> SmallConv2d:
        small = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, relu=relu)
        small.load_state_dict(conv.state_dict())
        return small.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not int8.extension_available():  # a module saved where the kernel was built, loaded where it is not
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
            return y.relu() if self.relu else y
        return int8.small_conv(x, self.weight, self.bias, self.stride[0], self.padding[0], self.relu)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", relu=True" * self.relu


class GlobalMean(nn.Module):
    """Global average pooling to (N, C, 1, 1) as one ``mean`` (AdaptiveAvgPool2d(1) does the same, slower)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class PointwiseLinear(nn.Conv2d):
    """A 1x1 convolution (a classifier on pooled features) that runs as ``F.linear`` when the map is 1 x 1
    (a third of the convolution's time at batch 1); same parameters and state dict as the nn.Conv2d."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseLinear:
        linear = cls(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
        linear.load_state_dict(conv.state_dict())
        return linear.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (1, 1):
            return super().forward(x)
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]


class Int8Network(KeepsKernelObject, nn.Module):
    """A ResNet whose float stem (a :class:`SmallConv2d`), int8 stages (an :class:`Int8Body`) and head (a
    :class:`GlobalMean`, then a :class:`PointwiseLinear` classifier with its BatchNorm folded) run as one kernel
    object's call (:func:`addernet.nn.kernels.int8.network`, kept: see :class:`KeepsKernelObject`; it depends on
    the parts, their hooks, the stem's modules, the stem's and the classifier's parameters and settings and the
    stages' tensors): at batch 1 the parts' own calls, the Python between them and the passage of the layers'
    tensors at each call cost about a fifth of the network's time. The model's parts stay its children under
    their own names (the same state dict; a part assigned anew is the model's too), and the model answers for
    its interface (``forward_features``, ``forward_head``, ``get_classifier``, ``num_classes``,
    ``num_features``). Where a part has forward hooks (a feature plot's on the classifier), the network runs
    part by part, so they run."""

    DELEGATED = ("forward_features", "forward_head", "get_classifier", "num_classes", "num_features")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["model"] = model  # not a child: its children are this module's already
        for name, child in model.named_children():
            self.add_module(name, child)
        self.train(model.training)

    @staticmethod
    def fits(model: nn.Module) -> bool:
        return int8.extension_available() and Int8Network._stem(model._modules) is not None

    @staticmethod
    def _stem(parts: dict) -> SmallConv2d | None:
        """The stem's convolution where the parts (a module's children) fit the one call; else None."""
        stem, fc = only_layer(parts.get("stem")), parts.get("fc")
        fit = (isinstance(stem, SmallConv2d) and stem.bias is not None and isinstance(parts.get("stages"), Int8Body)
               and isinstance(parts.get("pool"), GlobalMean) and isinstance(fc, PointwiseLinear)
               and fc.bias is not None and isinstance(parts.get("bn_logits"), nn.Identity))
        return stem if fit else None

    def __getattr__(self, name: str):
        if name in Int8Network.DELEGATED:
            return getattr(self.__dict__["model"], name)
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) and "model" in self.__dict__:
            setattr(self.model, name, value)

    def _kernel_network(self):
        """The kernel object for the parts as they are now; None where they do not fit one call or a part has
        forward hooks (the feature plot's on the classifier: the parts then run one by one, so the hooks run)."""
        return self.kept(self._make_kernel_network)

    def _make_kernel_network(self) -> tuple[object, list[tuple[dict, str]], list[dict]]:
        """The kernel object (or None) and what it depends on (:meth:`KeepsKernelObject.kept`): the parts, the
        stem's modules (a new one changes what :func:`only_layer` finds), the parts' hook dictionaries (their
        sizes, and the dictionaries themselves), the stem's and the classifier's parameters and settings, and the
        body's own tensors (its object is made again for them)."""
        parts = self._modules
        stem_modules = getattr(parts.get("stem"), "_modules", {})
        modules = [m for m in parts.values() if m is not None]
        hooks = ("_forward_hooks", "_forward_pre_hooks")
        sized = [parts, stem_modules, *(getattr(m, name) for m in modules for name in hooks)]
        places = [(parts, name) for name in dict.fromkeys(("stem", "stages", "pool", "fc", "bn_logits", *parts))]
        places += [(stem_modules, name) for name in stem_modules]
        places += [(m.__dict__, name) for m in modules for name in (*hooks, "_modules")]
        stem, fc, stages = Int8Network._stem(parts), parts.get("fc"), parts.get("stages")
        if stem is None or any(sized[2:]) or not int8.extension_available():
            return None, places, sized
        places += [(m._parameters, name) for m in (stem, fc) for name in ("weight", "bias")]
        places += [(stem.__dict__, name) for name in ("stride", "padding", "relu")]
        places += stages.plan().tensors()
        body = stages.kernel_layers()
        return int8.network(stem, body, fc.weight, fc.bias), places, sized

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        network = self._kernel_network()
        return self.model(x) if network is None else network.forward(x)


def fuse_network(model: nn.Module) -> nn.Module:
    """The model as one :class:`Int8Network` call where its stem, stages and head fit one; else as it is."""
    return Int8Network(model) if Int8Network.fits(model) else model


def fold_float_batchnorms(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm that follows a float convolution (a ResNet's stem, the classifier's 1x1 convolution
    and its ``bn_logits``) into that convolution, in place, with PyTorch's own ``fuse_conv_bn_eval``; the
    BatchNorm becomes an ``nn.Identity``. Eval mode only (running statistics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = parent._modules[conv_name], parent._modules[bn_name]
        if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
            parent._modules[conv_name] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            parent._modules[bn_name] = nn.Identity()

    for parent in list(model.modules()):
        names = list(parent._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            fold(parent, conv_name, bn_name)
    return model


def fuse_stems(model: nn.Module) -> nn.Module:
    """In each nn.Sequential, replace a float convolution with few input channels that is followed by a
    folded BatchNorm and a ReLU (a stem) by a :class:`SmallConv2d` with the ReLU fused in, where the direct
    loop has a vector path for its filter count; the ReLU becomes an ``nn.Identity``."""
    for parent in [m for m in model.modules() if isinstance(m, nn.Sequential)]:  # order = data flow there
        names = list(parent._modules)
        for conv_name, bn_name, relu_name in zip(names, names[1:], names[2:]):
            conv, bn, relu = (parent._modules[n] for n in (conv_name, bn_name, relu_name))
            if SmallConv2d.fits(conv) and isinstance(bn, nn.Identity) and isinstance(relu, nn.ReLU):
                parent._modules[conv_name] = SmallConv2d.from_conv(conv, relu=True)
                parent._modules[relu_name] = nn.Identity()
    return model


def lighten_head(model: nn.Module) -> nn.Module:
    """A classifier net's global pooling as one mean and its 1x1 classifier as a linear layer (same results,
    fewer and cheaper operations: the head was a tenth of the int8 ResNet-20's time at batch 1)."""
    if isinstance(getattr(model, "pool", None), nn.AdaptiveAvgPool2d) and model.pool.output_size in (1, (1, 1)):
        model.pool = GlobalMean()
    fc = getattr(model, "fc", None)
    if type(fc) is nn.Conv2d and fc.kernel_size == (1, 1) and fc.groups == 1 and fc.stride == (1, 1) \
            and fc.padding == (0, 0):
        model.fc = PointwiseLinear.from_conv(fc)
    return model


def adder_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str | None]]:
    """(parent, adder attribute, BatchNorm attribute or None) for every adder layer: the BatchNorm registered
    right after it in the same parent (how the ResNets, and nn.Sequential, are written)."""
    pairs = []
    for parent in model.modules():
        names = list(parent._modules)
        for i, name in enumerate(names):
            if isinstance(parent._modules[name], Adder2d):
                nxt = names[i + 1] if i + 1 < len(names) else None
                bn = nxt if nxt is not None and isinstance(parent._modules[nxt], nn.BatchNorm2d) else None
                pairs.append((parent, name, bn))
    return pairs


@torch.no_grad()
def calibrate(model: nn.Module, batches, percentile: float = DEFAULT_PERCENTILE,
              samples_per_layer: int = 2_000_000) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every adder layer: its inputs' central ``percentile`` range on ``batches`` (float
    tensors), with 0; filter values outside it are clipped exactly (see :meth:`Int8Adder2d.from_float`)."""
    if not 50 < percentile <= 100:
        raise ConfigError(f"calibration percentile must be in (50, 100], got {percentile}")
    adders = {name: m for name, m in model.named_modules() if isinstance(m, Adder2d)}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in adders}
    generator = torch.Generator().manual_seed(0)

    def keep(name):
        def hook(module, args):
            values = args[0].detach().flatten().float()
            take = min(values.numel(), samples_per_layer // 8)
            seen[name].append(values[torch.randint(values.numel(), (take,), generator=generator)])
        return hook

    hooks = [m.register_forward_pre_hook(keep(name)) for name, m in adders.items()]
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    params = {}
    for name, adder in adders.items():
        if not seen[name]:
            raise ConfigError("calibration saw no images: pass at least one batch")
        params[name] = grid_for(torch.cat(seen[name])[:samples_per_layer], percentile)
    return params


def grid_for(values: torch.Tensor, percentile: float = DEFAULT_PERCENTILE, samples: int = 2_000_000
             ) -> tuple[float, int]:
    """(scale, zero point) of the 8-bit grid over the central ``percentile`` range of ``values``, widened to
    hold 0 (padding, and ReLU's floor, fall on the grid)."""
    values = values.flatten().float()
    if values.numel() > samples:  # torch.quantile's limit, and enough for a percentile
        values = values[torch.randint(values.numel(), (samples,), generator=torch.Generator().manual_seed(0))]
    q = torch.tensor([(100 - percentile) / 100, percentile / 100])
    x_lo, x_hi = torch.quantile(values, q).tolist()
    lo, hi = min(x_lo, 0.0), max(x_hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return scale, int(min(255, max(0, round(-lo / scale))))


def quantize_model(model: nn.Module, params: dict[str, tuple[float, int]]) -> nn.Module:
    """A copy of ``model`` whose adder layers (with their BatchNorm) run in int8; the rest stays float."""
    quantized = copy.deepcopy(model).eval()
    names = {id(m): name for name, m in quantized.named_modules()}
    for parent, adder_name, bn_name in adder_bn_pairs(quantized):
        adder = parent._modules[adder_name]
        bn = parent._modules[bn_name] if bn_name else None
        scale, zero_point = params[names[id(adder)]]
        parent._modules[adder_name] = Int8Adder2d.from_float(adder, bn, scale, zero_point)
        if bn_name:
            parent._modules[bn_name] = nn.Identity()
    return fuse_network(prepare_float_layers(fuse_body(fuse_blocks(quantized))))


def prepare_float_layers(model: nn.Module) -> nn.Module:
    """The float layers left beside the int8 ones, made cheap to run: BatchNorms folded, the stem's ReLU fused,
    the head lightened; channels-last memory (the int8 kernel's layout)."""
    return lighten_head(fuse_stems(fold_float_batchnorms(model))).to(memory_format=torch.channels_last)


def _skeleton(model_name: str, num_classes: int, layers: dict[str, dict]) -> nn.Module:
    """The float model's structure with every quantised adder layer (and its BatchNorm) replaced, unfilled."""
    net = create_model(model_name, num_classes=num_classes).eval()
    names = {id(m): name for name, m in net.named_modules()}
    for parent, adder_name, bn_name in adder_bn_pairs(net):
        meta = layers[names[id(parent._modules[adder_name])]]
        parent._modules[adder_name] = Int8Adder2d(**meta)
        if bn_name:
            parent._modules[bn_name] = nn.Identity()
    return fuse_network(prepare_float_layers(fuse_body(fuse_blocks(net))))


def export(quantized: nn.Module, path: Path, *, model_name: str, num_classes: int, class_names: list[str] | None,
           input_size: tuple[int, int, int], mean, std, metadata: dict) -> None:
    """Write the quantised model as one file (tensors and plain values only: ``torch.load(weights_only=True)``)."""
    layers = {name: {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": m.kernel_size,
                     "stride": m.stride, "padding": m.padding, "scale": m.scale, "zero_point": m.zero_point}
              for name, m in quantized.named_modules() if isinstance(m, Int8Adder2d)}
    write_export(path, model_name=model_name, num_classes=num_classes, class_names=class_names,
                 input_size=input_size, mean=mean, std=std, metadata=metadata, layers=layers,
                 state_dict=quantized.state_dict())


def write_export(path: Path, *, model_name: str, num_classes: int, class_names: list[str] | None,
                 input_size: tuple[int, int, int], mean, std, metadata: dict, **network) -> None:
    """Write a :data:`FORMAT` file: what inference needs around the network, and the network itself
    (``layers`` and ``state_dict`` for int8 adder layers in a float model; ``program`` for an integer program,
    :func:`addernet.deploy.integer.save`). Written to a temporary name first: an existing file is replaced
    whole or not at all."""
    payload = {"format": FORMAT, "version": VERSION, "model": model_name, "num_classes": num_classes,
               "class_names": list(class_names) if class_names else None, "input_size": list(input_size),
               "mean": [float(v) for v in mean], "std": [float(v) for v in std], "metadata": metadata, **network}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


class DeployedModel(nn.Module):
    """An exported model with what inference needs: normalisation, class names, input size."""

    def __init__(self, net: nn.Module, info: dict):
        super().__init__()
        self.net, self.info = net, info
        self.num_classes = info["num_classes"]
        self.register_buffer("mean", torch.tensor(info["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info["std"]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images (as the data modules serve them)."""
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images -> the network's input."""
        return (images.float() / 255 - self.mean) / self.std


def load_exported(path: str | Path) -> DeployedModel:
    """Read a file written by :func:`export` or :func:`addernet.deploy.integer.save`; a clear ``ConfigError`` for
    anything else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (write one with python src/export.py ckpt_path=... quantize=int8)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (truncated or corrupted files raise many kinds)
        raise ConfigError(f"{path} cannot be read as an exported model ({type(err).__name__}: "
                          f"{first_line(err)}): the file is damaged or is not an export; export it again") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an {FORMAT} export (a training checkpoint? evaluate those with "
                          f"ckpt_path=, or export them with src/export.py)")
    if payload.get("version") != VERSION:
        raise ConfigError(f"{path} is {FORMAT} version {payload.get('version')}, this code reads version "
                          f"{VERSION}: export the checkpoint again with this version")
    try:
        if "program" in payload:  # written with a C project (format=c): the C program's arithmetic
            from addernet.deploy import integer  # (integer builds on this module)

            net = integer.IntegerNet(integer.from_payload(payload["program"]), payload["mean"], payload["std"])
        else:
            net = _skeleton(payload["model"], payload["num_classes"], payload["layers"])
            net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise ConfigError(f"{path}: its layers do not fit the model it names ({payload.get('model')}: "
                          f"{type(err).__name__}: {first_line(err)}): the file was edited or damaged; "
                          f"export it again") from None
    info = {k: v for k, v in payload.items() if k not in ("state_dict", "program")}
    return DeployedModel(net, info).eval()


def is_export(path: str | Path) -> bool:
    """Whether ``path`` looks like an export (by its first bytes there is no telling; by name and content)."""
    try:
        payload = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT
