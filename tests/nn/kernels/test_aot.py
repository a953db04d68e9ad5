"""The Triton kernels compiled ahead of time for sm_90 on a CPU-only computer, without a GPU (see
addernet.nn.kernels.aot): every kernel and autotune config on each kind of adder layer must compile, not spill
and keep its grid within CUDA's limits."""

import json
import os
from pathlib import Path

import pytest
import torch

from addernet.nn.kernels import aot
from addernet.nn.kernels.geometry import Geometry
from hydra_helpers import run_script

SASS = """
        /*0100*/                   MOV R1, c[0x0][0x28] ;
        /*0110*/                   FADD R2, R3, -R4 ;
        /*0120*/              @P0 BRA 0x0100 ;
        /*0130*/                   LDG.E R5, desc[UR4][R6.64] ;
        /*0140*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0150*/                   LDS.128 R8, [R9] ;
        /*0160*/                   FADD R2, |R5|, R2 ;
        /*0170*/                   FMNMX R3, R3, 1, PT ;
        /*0180*/              @!P1 BRA 0x0130 ;
        /*0190*/                   EXIT ;
"""


def test_the_hottest_innermost_loop_is_measured():
    mix = aot.inner_loop_mix(SASS)  # two loops: 0x100-0x120 (1 FP op) and 0x130-0x180 (2 FP ops)
    assert (mix.instructions, mix.fp, mix.global_loads, mix.shared_loads, mix.barriers) == (6, 2, 1, 1, 1)
    assert mix.fp_share == pytest.approx(2 / 6)


def test_spills_failures_and_grids_over_cudas_limits_are_problems():
    ok = aot.Result("forward", "layer", "float32", "sm_90", "cfg", grid=(70000, 2, 1))
    assert ok.problems == []
    assert aot.Result("f", "l", "float32", "sm_90", "c", grid=(1, 1, 65536)).problems == [
        "grid (1, 1, 65536) beyond CUDA's limits (2147483647, 65535, 65535)"]
    assert aot.Result("f", "l", "float32", "sm_90", "c", grid=(1, 1, 1), spill_bytes=8).problems == ["spills 8 bytes"]
    assert "does not compile" in aot.Result("f", "l", "float32", "sm_90", "c", error="PTXASError: x").problems[0]


def test_the_layers_of_a_model_are_found_without_computing():
    layers = aot.model_layers("adder_resnet20", 256)
    assert len(layers) == 7  # 3x3 at each stage, the strided 3x3 and 1x1 entries of stages 2 and 3
    assert layers[0].geo == Geometry(256, 16, (32, 32), 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert {layer.geo.kernel for layer in layers} == {(3, 3), (1, 1)}


def test_the_wrappers_launches_are_recorded_with_their_grids():
    if os.environ.get("TRITON_INTERPRET") == "1":
        with pytest.raises(aot.AOTUnavailable, match="unset it"):
            aot.record_launches(aot.depthwise_layer().geo, torch.float32)
        return
    launches = aot.record_launches(aot.depthwise_layer().geo, torch.float32)
    assert [launch.kernel for launch in launches] == list(aot.KERNELS)


def test_every_kernel_and_config_compiles_for_sm90_without_spills_on_each_layer_kind(tmp_path):
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").is_file():
        pytest.skip("this Triton has no CUDA tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = run_script("bench.py", "--aot", "--aot-models", "adder_resnet20", "adder_lenet5_bn", "--aot-dtypes",
                        "float32", "--aot-archs", "sm_90", "--json", str(tmp_path / "aot.json"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ", 0 with problems" in result.stdout
    rows = json.loads((tmp_path / "aot.json").read_text())
    assert {r["kernel"] for r in rows} == set(aot.KERNELS) and all(not r["error"] for r in rows)
    assert any(r["layer"] == "depthwise256@28" and r["grid"][0] == 256 * 256 for r in rows)  # the grid-limit case


def test_autotuning_is_keyed_on_the_layer_kind_not_the_batch():
    """A new batch size (the last partial batch, evaluation batches) must not re-run the autotuning."""
    from addernet.nn.kernels import triton_kernels as tk

    for kernel in (tk._forward_kernel, tk._input_grad_kernel, tk._sign_weight_grad_kernel):
        assert kernel.keys == tk.LAYER_KEY
        assert not {"M", "P", "N"} & set(kernel.keys)  # the arguments that grow with the batch
