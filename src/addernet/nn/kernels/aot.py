"""The Triton kernels compiled ahead of time for GPUs that are not here: what can be proven without one.

Triton compiles for a CUDA target without a GPU or a driver (TTIR -> TTGIR -> PTX -> ``ptxas`` -> cubin, with
the ``ptxas`` and ``cuobjdump`` Triton ships). This module records the launches the project's own wrappers
make for a layer (the wrappers run on empty CPU tensors with the kernel launch intercepted: the arguments,
their specialisation and the grid are exactly what a GPU run would see), compiles them for every autotune
config, and reads back what the hardware would be given:

- registers, spill (local memory and stack) and shared memory per program (``cuobjdump --dump-resource-usage``);
- the grid against CUDA's limits (2^31 - 1 programs on axis 0, 65,535 on axes 1 and 2);
- the instruction mix of the hottest inner loop in the SASS: the innermost loop with the most floating-point
  instructions, its floating-point share, and its global loads, shared loads and barriers per iteration.

``python src/bench.py --aot`` runs it over every registered model's adder layers; ``tests/nn/kernels`` runs a
subset and fails on any compile error, spill or grid over the limits.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from addernet.nn.kernels.geometry import Geometry

GRID_LIMITS = (2**31 - 1, 65535, 65535)
ARCHS = {"sm_90": 90, "sm_80": 80}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KERNELS = ("forward", "input_grad", "sign_weight_grad")
# the data arithmetic of the adder kernels (|x - w|, clipping, sign, accumulation), in float32 or half pairs
FP_OPCODES = {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FSET", "HADD2", "HMUL2", "HFMA2", "HMNMX2",
              "HSETP2"}


class AOTUnavailable(RuntimeError):
    """Why the check cannot run here (the Triton interpreter is on, or Triton lacks its CUDA tools)."""


@dataclass(frozen=True)
class Layer:
    """One adder layer as the kernels see it: a label (model and module) and its geometry."""
    label: str
    geo: Geometry


@dataclass
class Launch:
    kernel: str  # one of KERNELS
    autotuner: object
    grid: object  # the wrapper's grid function of the config's meta-parameters
    args: tuple
    kwargs: dict


@dataclass
class LoopMix:
    instructions: int = 0
    fp: int = 0
    global_loads: int = 0
    shared_loads: int = 0
    barriers: int = 0

    @property
    def fp_share(self) -> float:
        return self.fp / self.instructions if self.instructions else 0.0


@dataclass
class Result:
    kernel: str
    layer: str
    dtype: str
    arch: str
    config: str
    grid: tuple[int, int, int] = (0, 0, 0)
    registers: int = 0
    spill_bytes: int = 0
    shared_bytes: int = 0
    loop: LoopMix = field(default_factory=LoopMix)
    error: str = ""

    @property
    def grid_ok(self) -> bool:
        return all(0 < g <= limit for g, limit in zip(self.grid, GRID_LIMITS))

    @property
    def problems(self) -> list[str]:
        found = [f"does not compile: {self.error}"] if self.error else []
        if self.spill_bytes:
            found.append(f"spills {self.spill_bytes} bytes")
        if not self.error and not self.grid_ok:
            found.append(f"grid {self.grid} beyond CUDA's limits {GRID_LIMITS}")
        return found

    def as_dict(self) -> dict:
        return {**asdict(self), "fp_share": round(self.loop.fp_share, 3), "grid_ok": self.grid_ok,
                "problems": self.problems}


def _tools() -> Path:
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "cuobjdump").is_file():
        raise AOTUnavailable(f"Triton's CUDA tools are missing ({bin_dir}/cuobjdump): install triton for CUDA")
    return bin_dir


def _kernels():
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise AOTUnavailable("TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled; unset it")
    from addernet.nn.kernels import triton_kernels

    return triton_kernels


# --- the layers --------------------------------------------------------------------------------------------

def model_layers(model_name: str, batch: int, image: int | None = None) -> list[Layer]:
    """The distinct adder-layer geometries of a registered model at ``batch`` (first module of each kind),
    found by a shape-only pass on the meta device."""
    from addernet.models import create_model
    from addernet.nn.layer import Adder2d

    with torch.device("meta"):
        model = create_model(model_name)
    channels = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, Adder2d))).in_channels
    size = image or (28 if "lenet" in model_name else 224 if model_name.endswith(("18", "50")) else 32)
    found: dict[Geometry, str] = {}

    def record(module, inputs):
        x = inputs[0]
        geo = Geometry(batch, x.shape[1], tuple(x.shape[2:]), module.out_channels, module.kernel_size,
                       module.stride, module.padding, module.dilation, module.groups)
        found.setdefault(geo, f"{model_name}.{names[module]}")

    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Adder2d)]
    with torch.no_grad():
        model.eval()(torch.empty(batch, channels, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return [Layer(label, geo) for geo, label in found.items()]


def depthwise_layer(batch: int = 256, channels: int = 256, size: int = 28) -> Layer:
    """A depthwise layer whose sign weight gradient needs many programs (the grid-limit case)."""
    return Layer(f"depthwise{channels}@{size}", Geometry(batch, channels, (size, size), channels, (3, 3), (1, 1),
                                                          (1, 1), (1, 1), channels))


# --- the launches ------------------------------------------------------------------------------------------

class _Recorder:
    def __init__(self, kernel: str, autotuner, launches: list[Launch]):
        self.kernel, self.autotuner, self.launches = kernel, autotuner, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(Launch(self.kernel, self.autotuner, grid, args, kwargs))
        return launch


def record_launches(geo: Geometry, dtype: torch.dtype) -> list[Launch]:
    """The launches the wrappers make for this layer: forward, input gradient, sign weight gradient. The
    tensors are empty CPU tensors (never read; their memory is not touched)."""
    tk = _kernels()
    x = torch.empty(geo.batch, geo.channels, *geo.input_hw, dtype=dtype)
    w = torch.empty(geo.out_channels, geo.channels // geo.groups, *geo.kernel, dtype=dtype)
    grad_y = torch.empty(geo.output_shape, dtype=dtype)
    launches: list[Launch] = []
    names = {"forward": "_forward_kernel", "input_grad": "_input_grad_kernel",
             "sign_weight_grad": "_sign_weight_grad_kernel"}
    originals = {kernel: getattr(tk, name) for kernel, name in names.items()}
    try:
        for kernel, name in names.items():
            setattr(tk, name, _Recorder(kernel, originals[kernel], launches))
        tk.launch_forward(x, w, geo)
        tk.launch_input_grad(grad_y, x, w, geo)
        tk.launch_sign_weight_grad(grad_y, x, w, geo)
    finally:
        for kernel, name in names.items():
            setattr(tk, name, originals[kernel])
    return launches


# --- compiling and reading the binary ----------------------------------------------------------------------

def _config_name(config) -> str:
    return (",".join(f"{k}={v}" for k, v in config.kwargs.items())
            + f",warps={config.num_warps},stages={config.num_stages}")


@functools.cache
def _binder(jit, arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    return target, backend, create_function_from_signature(jit.signature, jit.params, backend)


def _bind(launch: Launch, config, arch: str):
    """The launch's arguments bound as Triton's JIT binds them at launch, for one config and architecture:
    (target, backend, kwargs, bound arguments, specialisation, options)."""
    target, backend, binder = _binder(launch.autotuner.fn, ARCHS[arch])
    kwargs = {**launch.kwargs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    return (target, backend, kwargs, *binder(*launch.args, **kwargs))


def compile_launch(launch: Launch, config, arch: str) -> tuple[bytes, int]:
    """The cubin of one launch with one config, and its shared memory in bytes."""
    import triton
    from triton.compiler import ASTSource

    jit = launch.autotuner.fn
    target, backend, kwargs, bound, specialization, options = _bind(launch, config, arch)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target, options=options.__dict__)
    return compiled.asm["cubin"], int(compiled.metadata.shared)


def resource_usage(cubin_path: Path) -> tuple[int, int]:
    """(registers, spill bytes: local memory + stack) from ``cuobjdump --dump-resource-usage``."""
    text = subprocess.run([str(_tools() / "cuobjdump"), "--dump-resource-usage", str(cubin_path)],
                          capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return int(usage.get("REG", 0)), int(usage.get("STACK", 0)) + int(usage.get("LOCAL", 0))


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def inner_loop_mix(sass: str) -> LoopMix:
    """The hottest inner loop of a kernel's SASS: among the loops (backward branches) that contain no other
    loop, the one with the most floating-point instructions; its instruction mix per iteration."""
    instructions = [(int(a, 16), op, rest) for a, op, rest in _INSTRUCTION.findall(sass)]
    loops = []
    for address, op, rest in instructions:
        target = re.search(r"0x([0-9a-f]+)", rest)
        if op.split(".")[0] == "BRA" and target and int(target.group(1), 16) <= address:
            loops.append((int(target.group(1), 16), address))
    innermost = [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]
    best = LoopMix()
    for start, end in innermost:
        mix = LoopMix()
        for address, op, _ in instructions:
            if start <= address <= end:
                base = op.split(".")[0]
                mix.instructions += 1
                mix.fp += base in FP_OPCODES
                mix.global_loads += base == "LDG"
                mix.shared_loads += base in ("LDS", "LDSM")
                mix.barriers += base == "BAR"
        if mix.fp > best.fp:
            best = mix
    return best


def _compile_stats(launch: Launch, config, arch: str) -> dict:
    """Registers, spill, shared memory and the inner-loop mix of one launch compiled with one config."""
    try:
        cubin, shared = compile_launch(launch, config, arch)
    except Exception as err:  # noqa: BLE001  (any compiler or ptxas failure is a finding)
        message = str(err).strip()
        return {"error": f"{type(err).__name__}: {message.splitlines()[-1] if message else ''}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        registers, spill = resource_usage(path)
        sass = subprocess.run([str(_tools() / "cuobjdump"), "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    return {"registers": registers, "spill_bytes": spill, "shared_bytes": shared, "loop": inner_loop_mix(sass)}


def _compile_job(job) -> dict:
    """In a worker process: record the layer's launches again (cheap) and compile one of them."""
    layer, dtype, arch, kernel, config_index = job
    launch = next(launch for launch in record_launches(layer.geo, DTYPES[dtype]) if launch.kernel == kernel)
    return _compile_stats(launch, launch.autotuner.configs[config_index], arch)


def _specialization(launch: Launch, config, arch: str) -> str:
    """What the compiled binary depends on: the arguments' types and specialisation, constexprs, config."""
    specialization = _bind(launch, config, arch)[4]
    return repr((launch.kernel, arch, _config_name(config), specialization))


def check(layers: list[Layer], dtypes=("float32",), archs=("sm_90",), kernels=KERNELS, all_configs: bool = True,
          workers: int | None = None) -> list[Result]:
    """Compile every kernel x config x layer x dtype x arch (each distinct binary once, in ``workers``
    processes, one per core by default) and report each combination with its own grid."""
    rows, jobs = [], {}
    for layer in layers:
        for dtype in dtypes:
            for launch in record_launches(layer.geo, DTYPES[dtype]):
                if launch.kernel not in kernels:
                    continue
                configs = launch.autotuner.configs if all_configs else launch.autotuner.configs[:1]
                for arch in archs:
                    for i, config in enumerate(configs):
                        key = _specialization(launch, config, arch)
                        grid = launch.grid(config.kwargs)
                        rows.append((Result(launch.kernel, layer.label, dtype, arch, _config_name(config),
                                            tuple(int(g) for g in (*grid, 1, 1)[:3])), key))
                        jobs.setdefault(key, (layer, dtype, arch, launch.kernel, i))
    workers = min(workers or os.cpu_count() or 1, len(jobs)) or 1
    if workers == 1:
        stats = [_compile_job(job) for job in jobs.values()]
    else:
        # spawned, not forked: a fork of a process that has run torch's thread pools can hang
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            stats = list(pool.map(_compile_job, jobs.values()))
    by_key = dict(zip(jobs, stats))
    for result, key in rows:
        for name, value in by_key[key].items():
            setattr(result, name, value)
    return [result for result, _ in rows]


def summary(results: list[Result]) -> str:
    """Per kernel and config, over every layer, dtype and arch: the worst of each measure."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.kernel, r.config), []).append(r)
    lines = ["| kernel | config | compiled | max regs | max spill B | max smem B | inner-loop FP share (min-max) | "
             "LDG/iter (max) | LDS/iter (max) | BAR/iter (max) | largest grid | problems |", "|" + "---|" * 12]
    for (kernel, config), rs in groups.items():
        ok = [r for r in rs if not r.error]
        shares = [r.loop.fp_share for r in ok] or [0.0]
        problems = sorted({p for r in rs for p in r.problems})
        largest = max(rs, key=lambda r: r.grid[0] * r.grid[1] * r.grid[2]).grid
        lines.append(f"| {kernel} | {config} | {len(ok)}/{len(rs)} | {max((r.registers for r in ok), default=0)} | "
                     f"{max((r.spill_bytes for r in ok), default=0)} | {max((r.shared_bytes for r in ok), default=0)} "
                     f"| {100 * min(shares):.0f}-{100 * max(shares):.0f}% | "
                     f"{max((r.loop.global_loads for r in ok), default=0)} | "
                     f"{max((r.loop.shared_loads for r in ok), default=0)} | "
                     f"{max((r.loop.barriers for r in ok), default=0)} | {'x'.join(map(str, largest))} | "
                     f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''} |")
    return "\n".join(lines)


def markdown(results: list[Result]) -> str:
    lines = ["| kernel | layer | dtype | arch | config | grid | regs | spill B | smem B | loop instr | FP share | "
             "LDG/iter | LDS/iter | BAR/iter | problems |", "|" + "---|" * 15]
    for r in results:
        lines.append(f"| {r.kernel} | {r.layer} | {r.dtype} | {r.arch} | {r.config} | {'x'.join(map(str, r.grid))} "
                     f"| {r.registers} | {r.spill_bytes} | {r.shared_bytes} | {r.loop.instructions} | "
                     f"{100 * r.loop.fp_share:.0f}% | {r.loop.global_loads} | {r.loop.shared_loads} | "
                     f"{r.loop.barriers} | {'; '.join(r.problems)} |")
    return "\n".join(lines)
