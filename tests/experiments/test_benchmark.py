import json

import pytest
import torch

from addernet.experiments import benchmark, int8_benchmark
from hydra_helpers import run_script

TINY_LAYER = [("tiny 3x3", 4, 8, 6, 3, 1, 1)]


def test_layer_measurements_and_table():
    cpu = torch.device("cpu")
    results = benchmark.bench_layers(TINY_LAYER, 2, ["cpu", "reference"], cpu, torch.float32, 1, 2, backward=True)
    assert [r.method for r in results] == ["adder/cpu", "adder/reference", "conv2d"]
    elements = benchmark.layer_elements(2, 4, 8, 6, 3, 1, 1)
    assert all(r.seconds > 0 and abs(r.per_second * r.seconds - elements) < 1e-6 * elements for r in results)
    table = benchmark.markdown(results, "elements/s", "conv2d").splitlines()
    assert len(table) == 5 and table[-1].split("|")[5].strip() == "1.00x"


def test_model_throughput_pairs_adder_with_its_cnn_twin():
    results = benchmark.bench_model("resnet20", ["cpu"], 2, 16, torch.device("cpu"), torch.float32, 1, 1,
                                    train=True)
    assert [r.what for r in results] == ["adder_resnet20 train bs2", "resnet20 train bs2"]
    table = benchmark.markdown(results, "img/s", "cnn")
    ratio = results[0].per_second / results[1].per_second
    assert f"{ratio:.2f}x" in table


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--shapes", "resnet20", "--skip-models", "--batch-size", "2", "--backends",
                        "cpu", "--warmup", "1", "--repeats", "1", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert len(report["tables"]) == 2 and "| resnet20 stage1 3x3 | adder/cpu |" in result.stdout


def test_bench_covers_several_model_batch_sizes_with_set_threads(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--skip-layers", "--batch-size", "2", "3", "--threads", "1", "--warmup", "0",
                        "--repeats", "1", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ", 1 CPU threads," in result.stdout
    titles = list(json.loads(out.read_text())["tables"])
    assert titles == [f"resnet20 whole model, batch {b}, {kind}" for b in (2, 3)
                      for kind in ("training step", "inference")]


def test_int8_report_measures_side_by_side_and_judges_every_goal(tmp_path):
    out = tmp_path / "int8.json"
    result = run_script("bench.py", "--int8", "--batch-size", "2", "--threads", "1", "--layer-batch", "2",
                        "--warmup", "0", "--repeats", "2", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    (cell,) = report["cells"]
    assert cell["threads"] == 1 and cell["batch"] == 2 and cell["engine"] in ("x86", "onednn", "fbgemm")
    assert list(cell["img_per_s"]) == ["int8 adder", "fp32 CNN (channels last, same stem and head)",
                                       "int8 CNN (PyTorch)"]
    assert all(v > 0 for v in cell["img_per_s"].values())
    parts = [int8_benchmark.ADDERS, "stem (float)", "pooling + classifier (float)", int8_benchmark.KERNEL_ALONE]
    assert all(0 < cell["profile"][p] for p in parts)
    # the kernel alone (the inner loop over each layer's input in the network) takes less than the layers as run
    assert cell["profile"][int8_benchmark.KERNEL_ALONE] < cell["profile"][int8_benchmark.ADDERS] * 1.5
    assert cell["terms"] == 2 * 40_370_176  # ResNet-20's 20 adder layers: |x - w| terms per image
    assert [r["layer"] for r in report["layers"]] == [layer[0] for layer in benchmark.RESNET20_LAYERS]
    assert report["layer_batch"] == 2 and "The int8 adder layer alone, batch 2, 1 thread" in result.stdout
    assert all(r["sums_terms_per_s"] > 0 for r in report["layers"])  # the inner loop, measured at 1 thread
    if "onednn" in torch.backends.quantized.supported_engines:
        assert any(line.startswith("oneDNN's int8 convolution: instruction set") for line in report["machine"])
    goals = result.stdout.split("## Against the goals")[1].strip().splitlines()
    # each goal judged from the run's own figures (the SAD-limit goal only where the CPU has the instruction;
    # thread scaling only when 1 and 2 threads both ran)
    assert len(goals) == 3 + bool(report["sad_limits"]) and all(g.endswith(("met", "for equal")) for g in goals)
    for limit in report["sad_limits"]:  # x86 with AVX2 or AVX-512BW
        assert limit["threads"] == 1 and limit["pairs_per_instruction"] in (32, 64)
        assert limit["instructions_per_second"] > 1e8 and 0.2e9 < limit["clock_hz"] < 10e9


def test_the_int8_report_shows_the_instructions_onednn_was_held_to():
    """ONEDNN_MAX_CPU_ISA (how an AVX2 comparison holds PyTorch's int8 CNN on a newer CPU) shows in the report."""
    import os
    import subprocess
    import sys

    if "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch has no oneDNN int8 engine")
    code = "from addernet.experiments.int8_benchmark import onednn_int8_convolution as f; print(f())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_MAX_CPU_ISA": "SSE41"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "instruction set Intel SSE4.1, implementation jit_uni_int8:sse41" in out.stdout


def test_thread_counts_take_turns_on_the_same_network_and_the_count_is_restored():
    before = torch.get_num_threads()
    scaling = int8_benchmark.thread_scaling("resnet20", 2, [1, 2], warmup=0, repeats=2)
    assert sorted(scaling) == [1, 2] and all(v > 0 for v in scaling.values())
    assert torch.get_num_threads() == before
