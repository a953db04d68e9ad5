"""Speed and memory of the adder kernels against convolution, measured side by side in one run.

Timing: warm-up calls first (they also compile the kernels), then the median of repeated measurements; on
CUDA each measurement is bracketed by CUDA events after a synchronisation. Peak memory is the CUDA caching
allocator's peak above what was allocated before the measured call; it is not measured on the CPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from addernet import adder2d, set_backend
from addernet.models import create_model

# (name, in_channels, out_channels, input size, kernel, stride, padding)
RESNET20_LAYERS = [
    ("resnet20 stage1 3x3", 16, 16, 32, 3, 1, 1),
    ("resnet20 stage2 3x3", 32, 32, 16, 3, 1, 1),
    ("resnet20 stage3 3x3", 64, 64, 8, 3, 1, 1),
    ("resnet20 stage3 in 3x3/2", 32, 64, 16, 3, 2, 1),
]
RESNET18_LAYERS = [
    ("resnet18 stage1 3x3", 64, 64, 56, 3, 1, 1),
    ("resnet18 stage2 3x3", 128, 128, 28, 3, 1, 1),
    ("resnet18 stage3 3x3", 256, 256, 14, 3, 1, 1),
    ("resnet18 stage4 3x3", 512, 512, 7, 3, 1, 1),
]


@dataclass
class Measurement:
    what: str
    method: str
    seconds: float
    peak_mib: float | None
    per_second: float  # elements per second (layers) or images per second (models)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``fn()`` and its peak extra memory in MiB (CUDA only)."""
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    times = []
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else None
    return statistics.median(times), peak


def layer_elements(batch, cin, cout, size, k, s, p) -> int:
    out = (size + 2 * p - k) // s + 1
    return cout * cin * k * k * batch * out * out


def bench_layers(layers, batch: int, backends: list[str], device, dtype, warmup: int, repeats: int,
                 backward: bool) -> list[Measurement]:
    results = []
    for name, cin, cout, size, k, s, p in layers:
        x = torch.randn(batch, cin, size, size, device=device, dtype=dtype, requires_grad=backward)
        w = torch.randn(cout, cin, k, k, device=device, dtype=dtype, requires_grad=backward)
        elements = layer_elements(batch, cin, cout, size, k, s, p)
        methods = {f"adder/{b}": (lambda b=b: adder2d(x, w, stride=s, padding=p, backend=b)) for b in backends}
        methods["conv2d"] = lambda: F.conv2d(x, w, stride=s, padding=p)
        for method, op in methods.items():
            if backward:
                grad = torch.randn_like(op())

                def run(op=op, grad=grad):
                    x.grad = w.grad = None
                    op().backward(grad)
            else:
                def run(op=op):
                    with torch.no_grad():
                        op()
            seconds, peak = timed(run, device, warmup, repeats)
            results.append(Measurement(name, method, seconds, peak, elements / seconds))
    return results


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool) -> Callable[[], None]:
    if not train:
        return lambda: model(x)  # called under no_grad below
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def bench_model(name: str, backends: list[str], batch: int, image: int, device, dtype, warmup: int,
                repeats: int, train: bool) -> list[Measurement]:
    """Whole-network training steps (forward, backward, SGD) or inference, in images per second."""
    results = []
    x = torch.randn(batch, 3, image, image, device=device, dtype=dtype)
    y = torch.randint(0, 10, (batch,), device=device)
    runs = [(f"adder_{name}", f"adder/{b}", b) for b in backends] + [(name, "cnn (conv2d)", None)]
    for model_name, method, backend in runs:
        if backend:
            set_backend(backend)
        model = create_model(model_name, num_classes=10).to(device, dtype).train(train)
        with torch.set_grad_enabled(train):
            seconds, peak = timed(_step(model, x, y, train), device, warmup, repeats)
        results.append(Measurement(f"{model_name} {'train' if train else 'inference'} bs{batch}", method,
                                   seconds, peak, batch / seconds))
        set_backend("auto")
    return results


def _same_workload(r: Measurement) -> str:
    return r.what.removeprefix("adder_")  # an adder model and its CNN twin do the same job


def markdown(results: list[Measurement], unit: str, baseline: str) -> str:
    """A table with each speed relative to the ``baseline`` method on the same shape or model."""
    base = {_same_workload(r): r.per_second for r in results if r.method.startswith(baseline)}
    lines = [f"| shape / model | method | time (ms) | {unit} | vs {baseline} | peak memory (MiB) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ratio = r.per_second / base[_same_workload(r)] if _same_workload(r) in base else None
        lines.append(f"| {r.what} | {r.method} | {1000 * r.seconds:.2f} | {r.per_second:.3g} | "
                     f"{f'{ratio:.2f}x' if ratio is not None else '-'} | "
                     f"{f'{r.peak_mib:.1f}' if r.peak_mib is not None else 'n/a'} |")
    return "\n".join(lines)


def as_dicts(results: list[Measurement]) -> list[dict]:
    return [asdict(r) for r in results]
