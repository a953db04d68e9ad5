"""The int8 adder layer on the CPU: ``csrc/adder_sad.cpp`` (the SAD instruction), built on first use.

``sad_forward(x, scale, zero_point, qw, stride, padding, a, b)`` computes, for a float input ``x``
(N, C, H, W) quantised with one ``scale`` and ``zero_point`` shared with the filters,
``y[n, o, i, j] = a[o] * sum_{c,u,v} |qx_pad[n, c, i*s+u, j*s+v] - qw[o, c, u, v]| + b[o]`` exactly in integers
before the final affine map (which folds the adder's -scale and the BatchNorm after it). Input and output
are channels-last in memory (NCHW shapes), so consecutive layers need no copies. :func:`layers` makes a kernel
object that runs a chain of such layers (a ResNet's stages, :class:`BodyPlan`) in one call with the same
arithmetic, :func:`network` one for a whole ResNet (float stem, such a chain, pooling and classifier);
:func:`sad_sums` is the sums alone (the benchmark's inner loop).

The C++ extension is compiled once with the machine's compiler and cached (PyTorch's extension cache,
``TORCH_EXTENSIONS_DIR``); without a compiler a warning is given once and :func:`sad_forward_reference`, the
same integer arithmetic in plain PyTorch (much slower), runs instead.
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "adder_sad.cpp"


@functools.cache
def extension():
    """The C++ kernel's Python module (built, or loaded from the cache, on first use); None, with a warning,
    where that fails. Its operators are ``torch.ops.addernet_int8``'s; its classes (``Layers``, ``Network``,
    ``Places``) the module's own."""
    try:
        from torch.utils.cpp_extension import load

        log.info("building the int8 SAD kernel (once; cached): about a minute on a small machine")
        # the SRA limit lets GCC keep the kernel's block of accumulators in registers (at its default it
        # stored them after every instruction, 4x slower)
        return load(name="addernet_int8", sources=[str(SOURCE)], is_python_module=True, verbose=False,
                    extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off",  # a * sum + b rounded as PyTorch does
                                  "--param=sra-max-scalarization-size-Ospeed=4096"],
                    extra_ldflags=["-fopenmp"])
    except Exception as err:  # noqa: BLE001  (compiler missing, headers missing, build errors)
        warnings.warn(f"the int8 SAD kernel could not be built ({type(err).__name__}: {str(err)[:300]}); int8 adder "
                      f"layers run a slow plain-PyTorch version of the same arithmetic. Install a C++ compiler "
                      f"(g++) to get the fast kernel.")
        return None


def extension_available() -> bool:
    """Whether the C++ kernel is built (:func:`extension`)."""
    return extension() is not None


def instruction_set() -> str:
    """``avx512bw``, ``avx2`` or ``portable``: what the kernel runs on this CPU (``reference`` without it)."""
    return torch.ops.addernet_int8.sad_isa() if extension_available() else "reference"


def quantize(t: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``clamp(round(t * (1/scale) + zero_point), 0, 255)`` as uint8, in float32 and rounding half to even:
    the kernel's own arithmetic, step for step."""
    inv = torch.tensor(1.0 / scale, dtype=torch.float32)
    return torch.round(t.float() * inv + float(zero_point)).clamp_(0, 255).to(torch.uint8)


def pack_filters(qw: torch.Tensor) -> torch.Tensor:
    """uint8 filters (O, C, kh, kw) -> the kernel's layout (see ``csrc/adder_sad.cpp``); needs the extension."""
    if not extension_available():
        raise RuntimeError("the int8 SAD kernel is not built (see the warning above); pack_filters needs it "
                           "(sad_forward runs without it)")
    return torch.ops.addernet_int8.sad_pack(qw.contiguous())


def sad_forward(x: torch.Tensor, scale: float, zero_point: int, qw: torch.Tensor, stride: int, padding: int,
                a: torch.Tensor, b: torch.Tensor, packed: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """The int8 adder layer (module doc); ``qw`` uint8 filters (O, C, kh, kw), ``packed`` their
    :func:`pack_filters` layout if already made. ``residual`` (the output's shape) is added and ``relu``
    applied in the same pass: a residual block's ending costs no extra trip through memory."""
    if not extension_available():
        return sad_forward_reference(x, scale, zero_point, qw, stride, padding, a, b, residual, relu)
    packed = pack_filters(qw) if packed is None else packed
    kh, kw = qw.shape[2:]
    return torch.ops.addernet_int8.sad_forward(x, 1.0 / scale, zero_point, packed, kh, kw, stride, padding, a, b,
                                               residual, relu)


def sad_sums(qx: torch.Tensor, qw: torch.Tensor, stride: int, packed: torch.Tensor | None = None,
             repeats: int = 1) -> torch.Tensor:
    """The kernel's sums alone (needs the extension): for uint8 ``qx`` (N, C, Hp, Wp), padded already, and uint8
    filters ``qw`` (O, C, kh, kw), int32 (N, O, Ho, Wo) of ``sum |qx - qw|`` over each window, exactly; no
    quantisation and no output map. The benchmark times it as the inner loop, ``repeats`` times over in one
    call (into the same memory)."""
    if not extension_available():
        raise RuntimeError("the int8 SAD kernel is not built (see the warning above); sad_sums needs it")
    packed = pack_filters(qw) if packed is None else packed
    return torch.ops.addernet_int8.sad_sums(qx, packed, qw.shape[0], qw.shape[2], qw.shape[3], stride, repeats)


def version(t: torch.Tensor) -> int | None:
    """``t``'s version counter (bumped by every in-place change), None for a tensor made under
    ``torch.inference_mode`` (it has none; then only its identity tells a change)."""
    try:
        return t._version
    except RuntimeError:
        return None


class BodyPlan:
    """Int8 adder layers in the order :func:`layers` runs them, each reading maps written before it. Their
    geometry, scale and zero point are taken once, when added; their tensors (``qweight``, ``a``, ``b``) are
    the kernel object's to hold (values written into them in place are used, filters packed again when their
    version changes)."""

    SPEC = 9  # integers per layer (csrc/adder_sad.cpp's kSpec)

    def __init__(self):
        self.layers: list = []
        self.spec: list[int] = []
        self.inv_scale: list[float] = []

    def add(self, layer, input_map: int, residual_map: int | None, relu: bool) -> int:
        """Append an :class:`~addernet.deploy.quantized.Int8Adder2d` reading map ``input_map`` (0: the body's input),
        ``residual_map`` added before ``relu``; returns the number of the map it writes."""
        self.layers.append(layer)
        self.spec += [layer.kernel_size, layer.kernel_size, layer.stride, layer.padding, layer.zero_point,
                      layer.in_channels, input_map, -1 if residual_map is None else residual_map, int(relu)]
        self.inv_scale.append(1.0 / layer.scale)
        return len(self.layers)

    def tensors(self) -> list[tuple[dict, str]]:
        """Where the layers' tensors are: (the layer's buffer dictionary, name) for each layer's ``qweight``, ``a``
        and ``b`` in turn (read there directly: a module's attribute lookup costs about a microsecond)."""
        return [(layer._buffers, name) for layer in self.layers for name in ("qweight", "a", "b")]


def layers(plan: BodyPlan):
    """The layers of ``plan`` as one kernel object (needs the extension): ``layers(plan).forward(x)`` gives the same
    result as :func:`sad_forward` layer by layer, bit for bit, with images taken one at a time through all of them
    (threads take whole images, each the next one not yet taken) and the maps between layers in per-thread buffers
    kept between calls (as large as the largest call needed, until the process ends); returns the last layer's map.
    The object holds the layers' tensors (values written into them, in place or through ``.data``, are used: filters
    are packed again when their version, storage or sizes change; a tensor replaced in a layer needs a new object):
    made once, a call passes one tensor, where passing ResNet-20's 60 at every call cost more than its stem and
    classifier together."""
    if not extension_available():
        raise RuntimeError("the int8 SAD kernel is not built (see the warning above); the body needs it")
    tensors = [place[name] for place, name in plan.tensors()]
    return extension().Layers(tensors[0::3], tensors[1::3], tensors[2::3], plan.spec, plan.inv_scale)


def sad_body(x: torch.Tensor, plan: BodyPlan) -> torch.Tensor:
    """The layers of ``plan`` on ``x`` once (:func:`layers`, its object made for this call)."""
    return layers(plan).forward(x)


def network(stem, body, head_weight: torch.Tensor, head_bias: torch.Tensor):
    """A whole network as one kernel object (needs the extension): ``network(...).forward(x)`` runs ``stem`` (a
    convolution with ``relu``, as :func:`small_conv` runs it) on the images ``x``, ``body`` (a :func:`layers`
    object) on its map, then the global mean of the last map and ``logits = mean @ head_weight.T + head_bias``
    (``head_weight`` (classes, channels), or a 1x1 convolution's (classes, channels, 1, 1), float32) and returns
    the logits (N, classes): the stem and the body as their own calls compute them, bit for bit; the mean and
    the classifier in float with another order of additions than PyTorch's (the last bits differ). Like
    :func:`layers`, it holds the tensors given."""
    if not extension_available():
        raise RuntimeError("the int8 SAD kernel is not built (see the warning above); the network needs it")
    return extension().Network(body, stem.weight, stem.bias, stem.stride[0], stem.padding[0], stem.relu,
                               head_weight, head_bias)


def small_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int,
               relu: bool) -> torch.Tensor:
    """A float convolution with few input channels (a stem), + bias, optional ReLU, channels-last output: the
    kernel's direct loop (PyTorch's convolution takes a slow path for 3 channels at small batches); needs the
    extension (callers check :func:`small_conv_is_fast`)."""
    if not extension_available():
        raise RuntimeError("the int8 SAD kernel is not built (see the warning above); small_conv runs without it")
    return torch.ops.addernet_int8.small_conv(x, weight, bias, stride, padding, relu)


def small_conv_is_fast(filters: int) -> bool:
    """Whether :func:`small_conv` has a vector path for this many filters here (else PyTorch's is faster)."""
    return extension_available() and torch.ops.addernet_int8.small_conv_is_fast(filters)


def sad_forward_reference(x, scale, zero_point, qw, stride, padding, a, b, residual=None, relu=False) -> torch.Tensor:
    """The kernel's arithmetic in plain PyTorch: exact integer sums, then the affine map."""
    qx = F.pad(quantize(x, scale, zero_point).float(), (padding,) * 4, value=zero_point)
    kh, kw = qw.shape[2:]
    n, _, hp, wp = qx.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = F.unfold(qx, (kh, kw), stride=stride).to(torch.int32)  # (N, C*kh*kw, L); bytes are exact in float
    sums = torch.stack([(cols - w.reshape(-1, 1)).abs().sum(1) for w in qw.to(torch.int32)], 1)  # (N, O, L)
    y = (a.view(1, -1, 1) * sums.float() + b.view(1, -1, 1)).reshape(n, -1, ho, wo)
    if residual is not None:
        y = y + residual
    return (y.relu() if relu else y).contiguous(memory_format=torch.channels_last)
