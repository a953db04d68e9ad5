"""Benchmark the adder kernels against convolution: ``python src/bench.py [--device cuda] [--json out.json]``.

Prints per-layer tables (forward, forward+backward: time, elements per second, peak memory) for ResNet-20 and
ResNet-18 layer shapes, then whole-model ResNet-20 training and inference throughput, adder vs CNN twin,
all measured side by side in one run.

``--int8``: the int8 adder CPU kernels against PyTorch's CNNs (``--runs N``: N times, then each goal over the
runs). ``--thread-policy``: CPU threads and how they wait, on an idle machine (after a CPU-heavy minute) and
with one core busy.
``--aot``: no GPU needed: compile every Triton
kernel x autotune config x adder layer of every registered model for sm_90 and sm_80 and report registers,
spills, shared memory, grids against CUDA's limits and the inner loops' instruction mix (exit status 1 if any
kernel fails to compile, spills or exceeds a grid limit).
"""

import argparse
import json
import time

# addernet before torch: see addernet/__init__.py
from addernet.experiments import benchmark, int8_benchmark, threads_benchmark

import torch
from addernet.models import is_adder_model, list_models
from addernet.nn.kernels import aot
from addernet.nn.kernels import BACKENDS, choose
from addernet.system import device_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch-size", type=int, nargs="+",
                        help="ResNet-20 batch sizes; layers use the first (default: 256 on CUDA; 128 and 256 on "
                             "the CPU, the batches of the CPU results and of the paper's recipe)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    parser.add_argument("--imagenet-batch-size", type=int, help="ResNet-18 layer batch (default: 32 CUDA, 4 CPU)")
    parser.add_argument("--backends", nargs="+", choices=[b for b in BACKENDS if b != "auto"],
                        help="adder backends (default: the fast one for the device, and the reference)")
    parser.add_argument("--model-backends", nargs="+", choices=[b for b in BACKENDS if b != "auto"],
                        help="adder backends for whole models (default: the fast one)")
    parser.add_argument("--shapes", nargs="+", default=["resnet20", "resnet18"], choices=["resnet20", "resnet18"])
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--int8", action="store_true",
                        help="CPU int8 inference instead: ResNet-20, int8 adder (SAD kernel) vs its CNN twin in fp32 "
                             "and in PyTorch's int8, where the adder network's time goes, the int8 layers against "
                             "the SAD instruction's measured limit, and the goals (batches 1 8 64 and 1 and 2 threads "
                             "unless --batch-size / --threads say otherwise)")
    parser.add_argument("--layer-batch", type=int, default=64, help="--int8: batch of the layers measured alone")
    parser.add_argument("--runs", type=positive, default=1,
                        help="--int8: run the whole benchmark this many times in a row and end with each goal's "
                             "figure in every run and how many runs met it (--json then holds {\"runs\": [each run]})")
    parser.add_argument("--thread-policy", action="store_true",
                        help="CPU training speed by thread count and OpenMP wait policy, idle and with one core busy")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--aot", action="store_true", help="compile the Triton kernels ahead of time (no GPU)")
    parser.add_argument("--aot-models", nargs="+", help="models whose adder layers to compile (default: all; a wide "
                        "depthwise layer is always added)")
    parser.add_argument("--aot-dtypes", nargs="+", default=list(aot.DTYPES), choices=list(aot.DTYPES))
    parser.add_argument("--aot-archs", nargs="+", default=list(aot.ARCHS), choices=list(aot.ARCHS))
    parser.add_argument("--aot-batch", type=int, default=256, help="batch of the layer shapes (grids)")
    parser.add_argument("--aot-details", help="write one row per kernel x config x layer x dtype x arch to this "
                        "markdown file")
    args = parser.parse_args()
    if args.runs != 1 and not args.int8:
        parser.error("--runs repeats the int8 benchmark: add --int8")
    if args.aot:
        raise SystemExit(aot_check(args))
    if args.thread_policy:
        print(threads_benchmark.run())
        return
    if args.int8:
        return int8_report(args)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    fast = choose("auto", device)
    backends = args.backends or [fast, "reference"]
    model_backends = args.model_backends or [fast]
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batch_size or ([256] if device.type == "cuda" else [128, 256])
    batch = batches[0]
    imagenet_batch = args.imagenet_batch_size or (32 if device.type == "cuda" else 4)
    name = device_name(device)
    print(f"# {name}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}, {args.dtype}\n")

    report = {"device": name, "dtype": args.dtype, "torch": torch.__version__, "tables": {}}
    sections = []
    if not args.skip_layers:
        layer_sets = {"resnet20": (benchmark.RESNET20_LAYERS, batch),
                      "resnet18": (benchmark.RESNET18_LAYERS, imagenet_batch)}
        for shapes in args.shapes:
            layers, n = layer_sets[shapes]
            for backward in (False, True):
                title = f"{shapes} layers, batch {n}, {'forward+backward' if backward else 'forward'}"
                sections.append((title, "elements/s", "conv2d", benchmark.bench_layers(
                    layers, n, backends, device, dtype, args.warmup, args.repeats, backward)))
    if not args.skip_models:
        for model_batch in batches:
            for train in (True, False):
                title = f"resnet20 whole model, batch {model_batch}, {'training step' if train else 'inference'}"
                sections.append((title, "img/s", "cnn", benchmark.bench_model(
                    "resnet20", model_backends, model_batch, 32, device, dtype, args.warmup, args.repeats, train)))
    for title, unit, baseline, results in sections:
        print(f"## {title}\n\n{benchmark.markdown(results, unit, baseline)}\n", flush=True)
        report["tables"][title] = benchmark.as_dicts(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, not {text!r}")
    return value


def int8_report(args) -> None:
    print(f"# int8 inference on the CPU, torch {torch.__version__}\n", flush=True)
    reports = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"# Run {run + 1} of {args.runs} ({time.strftime('%H:%M:%S UTC', time.gmtime())})\n", flush=True)
        reports.append(int8_benchmark.run("resnet20", [args.threads] if args.threads else [1, 2],
                                          args.batch_size or [1, 8, 64], args.layer_batch, args.warmup,
                                          args.repeats))
        print(int8_benchmark.markdown(reports[-1]) + "\n", flush=True)
        if args.json:  # after each run: an interrupted series keeps the runs it finished
            with open(args.json, "w") as f:
                json.dump(reports[0].as_dict() if args.runs == 1 else {"runs": [r.as_dict() for r in reports]}, f,
                          indent=2)
    if args.runs > 1:
        print(int8_benchmark.goals_over_runs(reports))


def aot_check(args) -> int:
    try:
        models = args.aot_models or [m for m in list_models() if is_adder_model(m)]
        layers = [layer for m in models for layer in aot.model_layers(m, args.aot_batch)]
        layers.append(aot.depthwise_layer(args.aot_batch))  # the case that needs most programs on one axis
        print(f"# Triton kernels compiled ahead of time: {len(layers)} adder layers ({', '.join(models)}, "
              f"{layers[-1].label}), "
              f"{', '.join(args.aot_dtypes)}, {', '.join(args.aot_archs)}, batch {args.aot_batch}\n", flush=True)
        results = aot.check(layers, args.aot_dtypes, args.aot_archs)
    except aot.AOTUnavailable as err:
        print(f"error: {err}")
        return 2
    print(aot.summary(results))
    problems = [r for r in results if r.problems]
    for r in problems:
        print(f"problem: {r.kernel} {r.config} on {r.layer} ({r.dtype}, {r.arch}): {'; '.join(r.problems)}")
    print(f"\n{len(results)} kernel x config x layer x dtype x arch combinations, {len(problems)} with problems")
    if args.aot_details:
        with open(args.aot_details, "w") as f:
            f.write(aot.markdown(results) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1, default=str)
    return 1 if problems else 0


if __name__ == "__main__":
    main()
