"""int8 adder inference on the CPU against the CNN twin, side by side, and where the adder network's time goes.

The methods of one table take turns in one loop (one timed call each, round after round, then the median of
each): a slow stretch of a shared or virtual machine falls on all of them alike, so the ratios hold better
than the absolute speeds when those drift (not always: a change of load within a table still moves them).
``python src/bench.py --int8`` prints:

- the machine: CPU model, the instruction sets the kernel and PyTorch use (oneDNN's in its own words), and the
  SAD instruction's limit measured on one core and on all the run's cores at once (its issue rate over
  independent register chains, and the clock), beside the rate of SAD with the addition the kernel needs after
  each one and, on a CPU with VNNI, of vpdpbusd, the int8 CNN's instruction: the rates each network is set
  against;
- per thread count and batch size: images per second of the int8 adder ResNet-20, its CNN twin in float32
  (channels last) and in PyTorch's int8 (FX post-training quantisation, the fastest engine here);
- where the int8 adder network's time goes: the whole network (one kernel call for stem, adder layers, pooling
  and classifier), then its parts each timed alone as their own calls: the adder layers (one call), the float
  stem, pooling and classifier, and the rest (the whole minus the parts: below zero by what the parts' own
  calls and Python between them cost, which the one call saves), and beside them the kernel alone (each adder
  layer's inner loop on its input in the network);
- the int8 adder layer alone on ResNet-20's shapes against fp32 convolution, and its inner loop as a share of
  the SAD limit;
- one against two threads on the same network, taking turns, each call followed by the SAD instruction on as
  many cores at once: what the machine's cores gave in the same moments (also in each round of the 2-thread
  profile);
- each of the int8 issue's goals, computed from the figures above, met or not; with ``--runs N``, the whole
  benchmark N times and then each goal's figure in every run and how many runs met it.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from addernet.deploy.quantized import Int8Adder2d, calibrate, prepare_float_layers, quantize_model
from addernet.experiments.benchmark import RESNET20_LAYERS, layer_elements
from addernet.models import create_model
from addernet.nn.kernels import get_backend, int8, set_backend
from addernet.system import device_name

IMAGE = (3, 32, 32)


def timings(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, the functions taking turns (see the module doc)."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def side_by_side(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions taking turns."""
    return {name: statistics.median(t) for name, t in timings(fns, warmup, repeats).items()}


# ---- the machine ---------------------------------------------------------------------------------------------

def cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())


@dataclass
class SadLimit:
    """Instruction rates on ``threads`` cores at once (all threads together), measured on register chains."""
    threads: int
    instructions_per_second: float  # SAD alone: its issue limit
    pairs_per_instruction: int
    clock_hz: float
    with_add_per_second: float = 0.0  # SAD each with the addition the kernel makes after it
    vnni_per_second: float = 0.0  # vpdpbusd, the int8 CNN's instruction on a CPU with VNNI (0 without)
    vnni_pairs: int = 0  # byte products per vpdpbusd

    @property
    def terms_per_second(self) -> float:
        return self.instructions_per_second * self.pairs_per_instruction

    @property
    def with_add_terms_per_second(self) -> float:
        return self.with_add_per_second * self.pairs_per_instruction

    @property
    def vnni_macs_per_second(self) -> float:
        return self.vnni_per_second * self.vnni_pairs

    def per_cycle(self, rate: float) -> float:
        """``rate`` (instructions/s, all threads) per cycle and core."""
        return rate / self.threads / self.clock_hz


def sad_limit(threads: int, tries: int = 7) -> SadLimit | None:
    """The SAD instruction's rate on ``threads`` cores at once, alone and with its addition, and vpdpbusd's
    where the CPU has VNNI, measured by the kernel (None without the kernel or its SIMD): the best of ``tries``
    each (a limit; slower tries met a busy or not yet clocked-up core)."""
    if not int8.extension_available():
        return None
    measured = [torch.ops.addernet_int8.sad_limit(threads) for _ in range(tries)]
    best = [max(m[i] for m in measured) for i in range(len(measured[0]))]
    sad, pairs, clock, with_add, vnni, vnni_pairs = best
    return SadLimit(threads, sad, int(pairs), clock, with_add, vnni, int(vnni_pairs)) if sad > 0 else None


def sad_throughput(threads: int, rounds: int) -> float:
    """SAD instructions a second of ``threads`` cores together, each running ``rounds`` rounds of 12 (the kernel's
    ``sad_throughput``: timed from the team's start to its last thread's end); 0 without the kernel or on its
    portable path."""
    return torch.ops.addernet_int8.sad_throughput(threads, rounds) if int8.extension_available() else 0.0


@functools.cache
def sad_rounds_per_second() -> float:
    """One core's SAD probe rounds a second, from a run of 1e5 (about 0.3 ms); 0 without the kernel's SIMD."""
    return sad_throughput(1, 100_000) / 12


def sad_throughput_timer(threads: int, seconds: float = 0.002) -> Callable[[], float] | None:
    """A function that runs the SAD instruction on ``threads`` cores at once for about ``seconds`` and returns
    their rate together (:func:`sad_throughput`, instructions/s); None without the kernel or its SIMD. Taking
    turns with a network's calls, it tells how much of ``threads`` cores the machine gave in those same moments:
    a VM's host may, for a while, run the VM's two cores on one core's two hardware threads or give one of them to
    another guest (on the Zen 4 VM, 2 threads once ran the network 1.03x as fast as one, minutes after the SAD
    limit had measured 1.97x on its two cores)."""
    per_second = sad_rounds_per_second()
    if per_second <= 0:
        return None
    rounds = max(1000, round(seconds * per_second))
    return lambda: sad_throughput(threads, rounds)


VNNI = ("avx512_vnni", "avx_vnni")


def cpu_identity() -> str:
    """The CPU model with its family and model numbers (a VM's model name alone can hide the generation)."""
    fields = cpuinfo()
    numbers = f" (family {fields['cpu family']}, model {fields['model']})" if "cpu family" in fields else ""
    return device_name("cpu") + numbers


@functools.cache  # oneDNN states its instruction set once per process
def onednn_int8_convolution() -> str:
    """What oneDNN (behind PyTorch's x86 and onednn int8 engines) runs an int8 convolution with, from its own
    verbose report: the instruction set it settled on and the implementation (how to check that
    ``ONEDNN_MAX_CPU_ISA`` holds it to AVX2). Empty where PyTorch has no oneDNN engine."""
    import tempfile

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "onednn" not in torch.backends.quantized.supported_engines:
        return ""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"
    x = torch.randn(1, 16, 8, 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FX quantisation's deprecation notices
            prepared = prepare_fx(torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1)).eval(),
                                  get_default_qconfig_mapping("onednn"), example_inputs=(x,))
            prepared(x)
            conv = convert_fx(prepared)
        with tempfile.TemporaryFile() as report:  # oneDNN writes to the process's standard output
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(report.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    conv(x)
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            report.seek(0)
            lines = report.read().decode(errors="replace").splitlines()
    finally:
        torch.backends.quantized.engine = previous
    isa = next((line.split("isa:", 1)[1] for line in lines if "isa:" in line), "not reported")
    impl = next((fields[fields.index("convolution") + 1] for fields in (line.split(",") for line in lines)
                 if "exec" in fields and "convolution" in fields[:-1]), "not reported")
    return f"oneDNN's int8 convolution: instruction set {isa}, implementation {impl}"


def machine_lines(limits: list[SadLimit]) -> list[str]:
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512bw", *VNNI, "amx_int8") if f in flags]
    lines = [f"CPU: {cpu_identity()}; SIMD: {', '.join(simd) or 'none of AVX2/AVX-512/VNNI'}; int8 adder kernel: "
             f"{int8.instruction_set()}; PyTorch: CPU capability {torch.backends.cpu.get_cpu_capability()}, "
             f"quantized engines {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')}"]
    if onednn := onednn_int8_convolution():
        lines.append(onednn + " (fbgemm, the other int8 engine, picks its instructions from the CPU's and reports "
                     "nothing)")
    for limit in limits:
        cores = f"{limit.threads} core{'s' * (limit.threads > 1)}"
        line = (f"SAD limit, measured on {cores} at once: {limit.instructions_per_second:.3g} instructions/s x "
                f"{limit.pairs_per_instruction} byte pairs = {limit.terms_per_second:.3g} terms/s "
                f"({limit.per_cycle(limit.instructions_per_second):.2f} per cycle and core at a "
                f"{limit.clock_hz / 1e9:.2f} GHz clock, timed by dependent additions); each SAD with the addition "
                f"the kernel makes after it: {limit.with_add_terms_per_second:.3g} terms/s "
                f"({limit.per_cycle(limit.with_add_per_second):.2f} per cycle and core)")
        if limit.vnni_per_second:
            line += (f"; vpdpbusd (VNNI, the int8 CNN's instruction, its accumulation included): "
                     f"{limit.vnni_per_second:.3g} instructions/s x {limit.vnni_pairs} byte products = "
                     f"{limit.vnni_macs_per_second:.3g} MAC/s ({limit.per_cycle(limit.vnni_per_second):.2f} per "
                     f"cycle and core)")
        lines.append(line)
    return lines


# ---- the models ----------------------------------------------------------------------------------------------

def int8_adder(name: str, x: torch.Tensor) -> torch.nn.Module:
    """The adder network quantised as ``src/export.py`` does (random weights: speed does not depend on them).
    Calibration runs the float layers on the plain-PyTorch backend: one forward, where compiling the fast
    CPU kernels would take longer than the rest of a short run."""
    net = create_model(f"adder_{name}", num_classes=10).eval()
    previous = get_backend()
    set_backend("reference")
    try:
        params = calibrate(net, [x])
    finally:
        set_backend(previous)
    return quantize_model(net, params)


def engines() -> tuple[str, ...]:
    """PyTorch's int8 engines the benchmark may run the CNN twin on (see :func:`int8_cnn`)."""
    return ("onednn",) if os.environ.get("ONEDNN_MAX_CPU_ISA") else ("x86", "onednn", "fbgemm")


def int8_cnn(name: str, x: torch.Tensor) -> tuple[torch.nn.Module, str]:
    """The CNN twin through PyTorch's own int8 quantisation (FX graph mode), on the fastest engine here; only on
    oneDNN's where ``ONEDNN_MAX_CPU_ISA`` holds that engine to an instruction set (fbgemm, and the x86 engine
    that routes to it, would not obey)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    best = None
    for engine in [e for e in engines() if e in torch.backends.quantized.supported_engines]:
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FX quantisation's deprecation notices
            prepared = prepare_fx(create_model(name, num_classes=10).eval(), get_default_qconfig_mapping(engine),
                                  example_inputs=(x,))
            with torch.no_grad():
                prepared(x)
            model = convert_fx(prepared)
        seconds = side_by_side({engine: lambda: model(x)}, 2, 5)[engine]
        if best is None or seconds < best[0]:
            best = (seconds, model, engine)
    if best is None:
        raise RuntimeError(f"none of PyTorch's int8 engines {', '.join(engines())} is in this build "
                           f"({', '.join(torch.backends.quantized.supported_engines)}): the int8 CNN twin cannot run")
    torch.backends.quantized.engine = best[2]
    return best[1], best[2]


@dataclass
class Cell:
    """One thread count and batch size: img/s of each method, and the adder network's profile."""
    threads: int
    batch: int
    img_per_s: dict[str, float]
    engine: str  # PyTorch's quantized engine the int8 CNN ran on (the fastest here)
    profile: dict[str, float] = field(default_factory=dict)  # seconds per batch
    terms: int = 0  # |x - w| terms of the adder layers per batch
    cores: float | None = None  # on more than one thread, what the cores gave while profiled (see profile)

    def ratio(self, method: str, baseline: str) -> float:
        return self.img_per_s[method] / self.img_per_s[baseline]


ADDER, CNN_FP32, CNN_INT8 = "int8 adder", "fp32 CNN (channels last, same stem and head)", "int8 CNN (PyTorch)"
ADDERS, REST = "adder layers (int8 kernel, one call)", "rest (the whole minus the parts)"
KERNEL_ALONE = "the kernel alone (inner loop), the adder layers summed"
BEST_WHOLE = "whole network, its best run of calls"
MEASURES = (KERNEL_ALONE, BEST_WHOLE)  # in a cell's profile beside the parts' seconds
CORES = "the cores: SAD on all of them at once against one, in the same rounds (median of the rounds' ratios)"


def measure_cell(name: str, batch: int, warmup: int, repeats: int) -> Cell:
    x = torch.randn(batch, *IMAGE).contiguous(memory_format=torch.channels_last)
    cnn8, engine = int8_cnn(name, x)
    adder = int8_adder(name, x)
    # float layers prepared as the int8 adder network's are (BatchNorms folded, as PyTorch's int8 CNN fuses them;
    # the same stem and head): the networks differ in their bodies, and in that the int8 adder network runs its
    # stem and head inside its one kernel call (Int8Network) where the CNN twin calls them from Python
    cnn = prepare_float_layers(create_model(name, num_classes=10).eval())
    methods = {ADDER: lambda: adder(x), CNN_FP32: lambda: cnn(x), CNN_INT8: lambda: cnn8(x)}
    seconds = side_by_side(methods, warmup, repeats)
    cell = Cell(torch.get_num_threads(), batch, {m: batch / s for m, s in seconds.items()}, engine)
    cell.profile, cell.terms, cell.cores = profile(adder, x, warmup, repeats)
    return cell


def thread_scaling(name: str, batch: int, threads: list[int], warmup: int,
                   repeats: int) -> tuple[dict[int, float], dict[int, float]]:
    """img/s of the int8 adder network by thread count, the thread counts taking turns call by call (so that the
    ratio holds when a shared machine's speed drifts; the switch itself is outside the timed call); and, after
    each call, the SAD instruction on as many cores at once (:func:`sad_throughput_timer`): its rate by thread count
    (medians; empty without the kernel's SIMD), what the cores themselves gave in the same rounds."""
    x = torch.randn(batch, *IMAGE).contiguous(memory_format=torch.channels_last)
    adder = int8_adder(name, x)
    probes = {n: sad_throughput_timer(n) for n in threads}
    previous = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in threads}
    rates: dict[int, list[float]] = {n: [] for n in threads}
    try:
        with torch.no_grad():
            for round_ in range(warmup + repeats):
                for n in threads:
                    torch.set_num_threads(n)
                    start = time.perf_counter()
                    adder(x)
                    if round_ >= warmup:
                        times[n].append(time.perf_counter() - start)
                        if probes[n]:
                            rates[n].append(probes[n]())
    finally:
        torch.set_num_threads(previous)
    return ({n: batch / statistics.median(t) for n, t in times.items()},
            {n: statistics.median(r) for n, r in rates.items() if r})


def profile(model: torch.nn.Module, x: torch.Tensor, warmup: int,
            repeats: int) -> tuple[dict[str, float], int, float | None]:
    """Seconds per batch of the whole network and of its parts, each part timed alone on the inputs it gets in
    the network: the adder layers (one call for all of a ResNet's stages), the float stem, pooling and
    classifier, and the rest, the whole minus the parts (medians): below zero where the whole network runs as
    one call and so saves the parts' own calls (Python, dispatch, a pass through memory), above it where
    Python runs between the parts.
    Also the kernel alone: each adder layer's inner loop (:func:`inner_loop_timer`, one thread) on its first
    image's input in the network, summed over the layers, times the images the busiest thread takes: the
    adder layers at the kernel's rate if every thread ran at one thread's rate on whole images (with fewer
    images than threads the network splits each layer's positions instead; at 2 threads the goal measured
    against it includes how well the threads scale). It is set against the whole network timed the same way,
    the two taking turns: runs of about 5 ms (the network called back to back after one untimed call, at least
    once: at batch 64 a call is longer; the loop's passes repeated in one call after one untimed pass), seconds
    per call or pass; the network's best run, and each layer's best run summed (each layer at its best,
    whichever round it came in: if anything, the share errs against the network). On more than one thread each
    round also runs the SAD instruction on all the threads' cores at once and on one
    (:func:`sad_throughput_timer`): the median of the rounds' ratios (returned last; None on one thread or
    without the kernel's SIMD) says whether the machine gave the cores the reference assumes."""
    calls: list[tuple[Int8Adder2d, torch.Tensor]] = []
    terms = 0  # each output value sums in_channels * k * k terms

    def keep(layer, args, out):
        nonlocal terms
        calls.append((layer, args[0]))
        terms += out.numel() * layer.in_channels * layer.kernel_size ** 2

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, Int8Adder2d)]
    with torch.no_grad():
        stem = model.stem(x)
        try:
            features = getattr(model.stages, "forward_layers", model.stages)(stem)
        finally:
            for h in hooks:
                h.remove()
    parts = {"whole network": lambda: model(x), ADDERS: lambda: model.stages(stem),
             "stem (float)": lambda: model.stem(x),
             "pooling + classifier (float)": lambda: model.forward_head(model.pool(features).flatten(1))}
    times = timings(parts, warmup, repeats)
    result = {part: statistics.median(t) for part, t in times.items()}
    result[REST] = result["whole network"] - sum(v for k, v in result.items() if k != "whole network")
    # the whole network against the kernel alone, taking turns so that both meet the same slow stretches; at least
    # 7 rounds (the loops' tries of the SAD limit's kind), more with more repeats (half as many: a round holds a
    # run of every layer's loop, about 0.1 s)
    loops = [inner_loop_timer(int8.quantize(inp[:1], layer.scale, layer.zero_point), layer.qweight, layer.stride,
                              layer.padding, layer.zero_point) for layer, inp in calls] \
        if int8.extension_available() else []
    whole = run_timer(lambda: model(x), result["whole network"])
    threads = torch.get_num_threads()
    probes = [sad_throughput_timer(threads), sad_throughput_timer(1)] if threads > 1 and loops else []
    probes = probes if all(probes) else []
    with torch.no_grad():
        rounds = [(whole(), [loop() for loop in loops], [probe() for probe in probes])
                  for _ in range(max(7, repeats // 2))]
    result[BEST_WHOLE] = min(seconds for seconds, _, _ in rounds)
    if loops:
        images_per_thread = -(-x.shape[0] // threads)
        result[KERNEL_ALONE] = images_per_thread * sum(map(min, zip(*(passes for _, passes, _ in rounds))))
    cores = statistics.median(all_cores / one for _, _, (all_cores, one) in rounds) if probes else None
    return result, terms, cores


def run_timer(fn: Callable[[], object], per_call: float, seconds: float = 0.005) -> Callable[[], float]:
    """A function that calls ``fn`` back to back for about ``seconds`` (as many calls as ``per_call``, an
    estimate of one call's seconds, gives; at least one) and returns the seconds per call. One call before the
    clock starts: the first after other work (the benchmark's loops, 0.1 s on one thread) waits for an idle
    core to wake and reloads the weights into the caches (on the Zen 4 VM 0.14-0.2 ms more at batch 8 on 2
    threads, where a call takes 1.3-1.6 ms); :func:`inner_loop_timer` makes one untimed pass likewise."""
    calls = max(1, round(seconds / per_call))

    def timed() -> float:
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return timed


def inner_loop_timer(qx: torch.Tensor, qw: torch.Tensor, stride: int, padding: int, zero_point: int,
                     seconds: float = 0.005) -> Callable[[], float]:
    """A function that runs the kernel's inner loop (:func:`int8.sad_sums`: the sums of an input quantised and
    padded already, into memory it reuses) on one thread, as the network runs it on each image, repeated in one
    call for about ``seconds``, and returns the seconds per pass. One pass before the clock starts, as
    :func:`run_timer` makes one call: both sides timed warm, back to back."""
    qx = F.pad(qx, (padding,) * 4, value=zero_point).contiguous(memory_format=torch.channels_last)
    packed = int8.pack_filters(qw)

    def timed(passes: int) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            int8.sad_sums(qx, qw, stride, packed, 1)
            start = time.perf_counter()
            int8.sad_sums(qx, qw, stride, packed, passes)
            return (time.perf_counter() - start) / passes
        finally:
            torch.set_num_threads(threads)

    passes = max(10, round(seconds / max(timed(10), 1e-12)))
    return lambda: timed(passes)


def inner_loop_seconds(qx: torch.Tensor, qw: torch.Tensor, stride: int, padding: int, zero_point: int,
                       tries: int = 7) -> float:
    """Seconds per pass of the kernel's inner loop (:func:`inner_loop_timer`), the best of ``tries`` runs (a rate
    to set beside the SAD limit, itself the best of its tries: slower runs met a core that something else
    used)."""
    timer = inner_loop_timer(qx, qw, stride, padding, zero_point)
    return min(timer() for _ in range(tries))


# ---- the layers alone ----------------------------------------------------------------------------------------

@dataclass
class LayerRate:
    threads: int
    layer: str
    adder_terms_per_s: float
    conv_terms_per_s: float
    sums_terms_per_s: float | None  # the inner loop alone (inner_loop_seconds: one image, one thread)


def measure_layers(batch: int, warmup: int, repeats: int, inner_loop: bool) -> list[LayerRate]:
    """The int8 adder layer alone (quantise and pad, sums, output map), its inner loop alone (the sums of an input
    quantised and padded already) and fp32 convolution, ResNet-20's shapes."""
    rates = []
    for name, cin, cout, size, k, s, p in RESNET20_LAYERS:
        x = torch.rand(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
        qw = int8.quantize(torch.rand(cout, cin, k, k), 1 / 255, 0)
        a, b, w = torch.ones(cout), torch.zeros(cout), torch.rand(cout, cin, k, k)
        packed = int8.pack_filters(qw) if int8.extension_available() else None
        seconds = side_by_side({"adder": lambda: int8.sad_forward(x, 1 / 255, 0, qw, s, p, a, b, packed),
                                "conv": lambda: F.conv2d(x, w, stride=s, padding=p)}, warmup, repeats)
        sums = inner_loop_seconds(int8.quantize(x[:1], 1 / 255, 0), qw, s, p, 0, tries=max(7, repeats)) \
            if packed is not None and inner_loop else None
        terms = layer_elements(batch, cin, cout, size, k, s, p)
        rates.append(LayerRate(torch.get_num_threads(), name, terms / seconds["adder"], terms / seconds["conv"],
                               terms / batch / sums if sums else None))
    return rates


# ---- the report ----------------------------------------------------------------------------------------------

@dataclass
class Report:
    machine: list[str]
    limits: dict[int, SadLimit]  # by thread count
    cells: list[Cell]
    layers: list[LayerRate]
    layer_batch: int
    vnni: bool
    adder_isa: str = ""  # the int8 adder kernel's instruction set
    avx512: bool = False  # whether the CPU has AVX-512 (then PyTorch must be held to AVX2 for the AVX2 goal)
    onednn: str = ""  # onednn_int8_convolution()
    scaling_batch: int = 0
    scaling: dict[int, float] = field(default_factory=dict)  # img/s by thread count, side by side
    core_scaling: dict[int, float] = field(default_factory=dict)  # SAD instructions/s on as many cores, same rounds
    pytorch_capability: str = ""  # torch.backends.cpu.get_cpu_capability()
    onednn_cap: str = ""  # ONEDNN_MAX_CPU_ISA, where set

    def as_dict(self) -> dict:
        return {"machine": self.machine, "sad_limits": [asdict(v) for v in self.limits.values()],
                "cells": [asdict(c) for c in self.cells], "layers": [asdict(r) for r in self.layers],
                "layer_batch": self.layer_batch, "vnni": self.vnni, "adder_isa": self.adder_isa,
                "avx512": self.avx512, "onednn": self.onednn, "scaling_batch": self.scaling_batch,
                "scaling": self.scaling, "core_scaling": self.core_scaling,
                "pytorch_capability": self.pytorch_capability,
                "onednn_cap": self.onednn_cap}


def run(name: str, threads: list[int], batches: list[int], layer_batch: int, warmup: int, repeats: int) -> Report:
    limits = {n: limit for n in threads if (limit := sad_limit(n))}
    cells, layers = [], []
    for n in threads:
        torch.set_num_threads(n)
        cells += [measure_cell(name, batch, warmup, repeats) for batch in batches]
        layers += measure_layers(layer_batch, warmup, repeats, inner_loop=n == threads[0])  # one thread anyway
    report = Report(machine_lines(list(limits.values())), limits, cells, layers, layer_batch,
                    any(f in cpu_flags() for f in VNNI), int8.instruction_set(), "avx512bw" in cpu_flags(),
                    onednn_int8_convolution(), pytorch_capability=torch.backends.cpu.get_cpu_capability(),
                    onednn_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", ""))
    if len(threads) > 1:
        report.scaling_batch = max(batches)
        report.scaling, report.core_scaling = thread_scaling(name, report.scaling_batch, threads, warmup, repeats)
    return report


def markdown(report: Report) -> str:
    out = ["\n".join(f"- {line}" for line in report.machine)]
    for n in sorted({c.threads for c in report.cells}):
        cells = [c for c in report.cells if c.threads == n]
        methods = list(cells[0].img_per_s)
        out.append(f"## ResNet-20 inference, {n} thread{'s' * (n > 1)}: img/s (x the fp32 CNN twin)\n\n"
                   f"| batch | {' | '.join(methods)} | int8 adder / PyTorch int8 CNN |\n"
                   f"|---|{'---|' * (len(methods) + 1)}\n" +
                   "\n".join(f"| {c.batch} | " + " | ".join(
                       f"{v:,.0f} ({c.ratio(m, CNN_FP32):.2f}x{f', {c.engine}' if m == CNN_INT8 else ''})"
                       for m, v in c.img_per_s.items()) + f" | {c.ratio(ADDER, CNN_INT8):.2f}x |" for c in cells))
        parts = [p for p in cells[0].profile if p not in MEASURES]
        cores_header = f" {CORES} |" if n > 1 else ""
        out.append(f"## Where the int8 adder network's time goes, {n} thread{'s' * (n > 1)}: ms per batch "
                   f"(share of the whole)\n\n"
                   f"| batch | {' | '.join(parts)} | adder terms/s in the network | {BEST_WHOLE} | {KERNEL_ALONE} | "
                   f"the network at, of the kernel's rate (best run against best run, taking turns) |{cores_header}\n"
                   f"|---|{'---|' * (len(parts) + 4 + (n > 1))}\n" +
                   "\n".join(f"| {c.batch} | {1000 * c.profile[parts[0]]:.3f} | " + " | ".join(
                       f"{1000 * c.profile[p]:.3f} ({c.profile[p] / c.profile[parts[0]]:.0%})" for p in parts[1:]) +
                             f" | {c.terms / c.profile[parts[0]]:.3g} | {1000 * c.profile[BEST_WHOLE]:.3f} | "
                             f"{1000 * c.profile.get(KERNEL_ALONE, float('nan')):.3f} | {network_share(c):.0%} |" +
                             (f" {cores_figure(c)} |" if n > 1 else "") for c in cells))
        rates = [r for r in report.layers if r.threads == n]
        limit = report.limits[n].terms_per_second if n in report.limits else None
        core = core_limit(report)
        out.append(f"## The int8 adder layer alone, batch {report.layer_batch}, {n} thread{'s' * (n > 1)}: "
                   f"terms/s\n\n"
                   "| layer | int8 adder | fp32 conv2d (channels last) | adder / conv | share of the SAD limit | "
                   "inner loop alone (one image, one thread) | its share of one core's SAD limit |\n"
                   "|---|---|---|---|---|---|---|\n" +
                   "\n".join(f"| {r.layer} | {r.adder_terms_per_s:.3g} | {r.conv_terms_per_s:.3g} | "
                             f"{r.adder_terms_per_s / r.conv_terms_per_s:.2f}x | "
                             f"{f'{r.adder_terms_per_s / limit:.0%}' if limit else 'n/a'} | "
                             + (f"{r.sums_terms_per_s:.3g} | {f'{r.sums_terms_per_s / core:.0%}' if core else 'n/a'} |"
                                if r.sums_terms_per_s is not None else "(measured once, in the first table) | |")
                             for r in rates))
    if report.scaling:
        base, sad_by_threads = min(report.scaling), report.core_scaling

        def core_line(n: int) -> str:
            if n not in sad_by_threads or base not in sad_by_threads:
                return ""
            return (f"; the SAD instruction on {n} core{'s' * (n > 1)} at once, after each call: "
                    f"{sad_by_threads[n]:.3g}/s ({sad_by_threads[n] / sad_by_threads[base]:.2f}x)")
        out.append(f"## Threads, batch {report.scaling_batch}, the thread counts taking turns call by call\n\n" +
                   "\n".join(f"- {n} thread{'s' * (n > 1)}: {v:,.0f} img/s ({v / report.scaling[base]:.2f}x)"
                             f"{core_line(n)}" for n, v in report.scaling.items()))
    out.append("## Against the goals\n\n" + "\n".join(f"- {line}" for line in goals(report)))
    return "\n\n".join(out)


def core_limit(report: Report) -> float | None:
    """The SAD limit of one core (terms/s): the best per-core rate of the limits measured."""
    return max((v.terms_per_second / v.threads for v in report.limits.values()), default=None)


def network_share(cell: Cell) -> float:
    """The whole network's rate as a share of its adder layers' summed kernel rate (NaN without the kernel), each
    its best run of about 5 ms, the two taking turns (:func:`profile`; the best, as the SAD limit is the best of
    its tries: a median against it would count every slow stretch of a shared machine against the network)."""
    return cell.profile.get(KERNEL_ALONE, float("nan")) / cell.profile[BEST_WHOLE]


def cores_figure(cell: Cell) -> str:
    """How much of its threads' cores the machine gave while the cell's network and kernel took turns (the SAD
    instruction on all of them at once against one core, :func:`profile`), or "-" where not measured."""
    return f"{cell.cores:.2f}x" if cell.cores is not None else "-"


def instruction_shares(report: Report) -> str:
    """At the cell where the int8 adder network is furthest behind PyTorch's int8 CNN: the ratio of the two
    instructions' rates (SAD with its addition against vpdpbusd, on as many cores as the cell's threads) and
    each network's rate as a share of its own instruction's (the int8 CNN's products counted as the adder's
    terms: its convolutions have the adder layers' shapes). Empty without a vpdpbusd rate."""
    low = min(report.cells, key=lambda c: c.ratio(ADDER, CNN_INT8))
    limit = report.limits.get(low.threads)
    if not (limit and limit.vnni_per_second and low.terms):
        return ""
    per_image = low.terms / low.batch
    adder = low.img_per_s[ADDER] * per_image / limit.with_add_terms_per_second
    cnn = low.img_per_s[CNN_INT8] * per_image / limit.vnni_macs_per_second
    return (f"; the two instructions' rates (SAD with its addition against vpdpbusd) are in the ratio "
            f"{limit.with_add_terms_per_second / limit.vnni_macs_per_second:.2f}x, and there ({low.threads} "
            f"thread{'s' * (low.threads > 1)}, batch {low.batch}) the adder network runs at {adder:.0%} of its "
            f"instruction's rate, the int8 CNN at {cnn:.0%} of its ({per_image / 1e6:.1f}M terms or products an "
            f"image)")


@dataclass
class Goal:
    """One goal of the int8 work as judged from one run: its name, the run's figure for it, the full line (the
    figures it rests on) and whether it was met (None: not judged on this run's paths)."""
    name: str
    figure: str
    line: str
    met: bool | None


def goal_results(report: Report) -> list[Goal]:
    """Each goal of the int8 work, computed from this run's figures."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    cells = report.cells
    low_fp32, low = min(c.ratio(ADDER, CNN_FP32) for c in cells), min(c.ratio(ADDER, CNN_INT8) for c in cells)
    vs_fp32, vs_int8 = f"lowest {low_fp32:.2f}x", f"lowest {low:.2f}x"
    lowest = min(cells, key=network_share)
    share = network_share(lowest)
    vs_kernel = f"lowest {share:.0%}"
    where = f"{lowest.threads} thread{'s' * (lowest.threads > 1)}, batch {lowest.batch}"
    if lowest.cores is not None:
        where += (f"; there the SAD instruction on its {lowest.threads} cores at once ran {cores_figure(lowest)} "
                  f"one core's rate, in the same rounds")
    results = [Goal(">= 2x the fp32 CNN twin", vs_fp32, f"int8 adder >= 2x the fp32 CNN twin at every batch and "
                                                        f"thread count: {vs_fp32}, {verdict(low_fp32 >= 2)}",
                    low_fp32 >= 2),
               Goal("whole network >= 80% of its kernel's rate",
                    vs_kernel + (f" (cores {cores_figure(lowest)})" if lowest.cores is not None else ""),
                    f"whole network >= 80% of its adder layers' summed kernel rate (the inner loop alone): "
                    f"{vs_kernel} ({where}), {verdict(share >= 0.8)}", share >= 0.8)]
    core = core_limit(report)
    loops = {r.layer: r.sums_terms_per_s / core for r in report.layers if core and r.sums_terms_per_s}
    if loops:
        ok = min(loops.values()) >= 0.7
        results.append(Goal("inner loop >= 70% of the SAD limit, every shape",
                            ", ".join(f"{v:.0%}" for v in loops.values()),
                            "the inner loop (the sums alone, one thread) >= 70% of one core's SAD limit on every "
                            "layer shape: " + ", ".join(f"{v:.0%} {name}" for name, v in loops.items()) +
                            f"; {sum(v >= 0.7 for v in loops.values())} of {len(loops)} shapes at 70% or more, "
                            f"{verdict(ok)}", ok))
    if 1 in report.scaling and 2 in report.scaling:
        scaling = report.scaling[2] / report.scaling[1]
        figure, cores_note = f"{scaling:.2f}x", ""
        if 1 in report.core_scaling and 2 in report.core_scaling:
            machine = report.core_scaling[2] / report.core_scaling[1]
            figure += f" (cores {machine:.2f}x)"
            cores_note = f"; the SAD instruction on 2 cores at once, after each call, {machine:.2f}x one core's rate"
        results.append(Goal(f"2 threads >= 1.8x one thread, batch {report.scaling_batch}", figure,
                            f"2 threads >= 1.8x one thread at batch {report.scaling_batch} (side by side): "
                            f"{scaling:.2f}x{cores_note}, {verdict(scaling >= 1.8)}", scaling >= 1.8))
    if report.vnni and not report.onednn_cap:
        results.append(Goal("equal to PyTorch's int8 CNN (VNNI; the moonshot)", vs_int8,
                            f"int8 adder vs PyTorch's int8 CNN twin on a CPU with VNNI: {vs_int8} (goal: as close as "
                            f"the instruction rates allow; equal is the moonshot){instruction_shares(report)}; "
                            f"{verdict(low >= 1)} for equal", low >= 1))
    else:
        # both at AVX2: the adder kernel's path, and PyTorch's: ATen's capability, and its int8 libraries held by
        # the CPU itself (neither AVX-512 nor VNNI) or by ONEDNN_MAX_CPU_ISA with oneDNN's own report (fbgemm
        # does not obey it, so no cell may have run there)
        newer = ("512", "DL Boost", "VNNI", "AMX")
        by_cpu = not report.avx512 and not report.vnni
        by_cap = all(c.engine == "onednn" for c in cells) and "AVX2" in report.onednn and \
            not any(word in report.onednn for word in newer)
        pytorch_avx2 = report.pytorch_capability == "AVX2" and (by_cpu or by_cap)
        judged = report.adder_isa == "avx2" and pytorch_avx2
        held = "by the CPU (neither AVX-512 nor VNNI)" if by_cpu else f"by ONEDNN_MAX_CPU_ISA: {report.onednn}" \
            if by_cap else "not held"
        results.append(Goal(">= PyTorch's int8 CNN, both on AVX2", vs_int8,
                            f"int8 adder >= PyTorch's int8 CNN twin at every batch and thread count, both on AVX2: "
                            f"{vs_int8}; adder kernel {report.adder_isa}, PyTorch capability "
                            f"{report.pytorch_capability or 'unknown'}, its int8 libraries {held}; " +
                            (verdict(low >= 1) if judged else
                             "not judged (not both on AVX2: run with ADDERNET_SAD_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 "
                             "ONEDNN_MAX_CPU_ISA=AVX2)"), low >= 1 if judged else None))
    return results


def goals(report: Report) -> list[str]:
    """Each goal's line for one run (:func:`goal_results`)."""
    return [goal.line for goal in goal_results(report)]


def goals_over_runs(reports: list[Report]) -> str:
    """A table of each goal over several runs of the benchmark (each run side by side in itself): every run's
    figure ("-" where a run did not judge it), and in how many of the runs that judged it it was met. On a
    shared or virtual machine whose speed moves within minutes, one run's verdict says little; the runs
    together say how often the code meets each goal there."""
    by_run = [{goal.name: goal for goal in goal_results(report)} for report in reports]
    # in the order of the run that judged most of them, then any other run's
    names = list(dict.fromkeys(name for run in sorted(by_run, key=len, reverse=True) for name in run))
    rows = []
    for name in names:
        verdicts = [run[name].met for run in by_run if name in run and run[name].met is not None]
        met = f"{sum(verdicts)} of {len(verdicts)}" if verdicts else "not judged"
        rows.append(f"| {name} | " + " | ".join(run[name].figure if name in run else "-" for run in by_run) +
                    f" | {met} |")
    header = " | ".join(f"run {i + 1}" for i in range(len(reports)))
    return (f"## Against the goals, {len(reports)} runs\n\n| goal | {header} | met in |\n"
            f"|---|{'---|' * (len(reports) + 1)}\n" + "\n".join(rows))
