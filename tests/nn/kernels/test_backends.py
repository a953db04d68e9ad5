"""Every fast backend against the float64 brute force, on shapes that stress tiling and geometry.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 (see conftest); on a GPU the same tests run
the compiled kernels, plus full-size ResNet layer shapes.
"""

import pytest
import torch

from addernet import adder2d
from addernet.nn.kernels import choose
from brute_force import adder2d_brute
from kernel_cases import CASES, case_id

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["cpu", "triton"] if DEVICE == "cpu" else ["triton"]
TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def check(case, backend, weight_grad, dtype, device=DEVICE, seed=0):
    n, c, o, (h, w), k, s, p, d, g, has_bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(o, c // g, kh, kw, generator=gen) * 0.7
    grad_y = None
    xd, wd = (t.to(device, dtype).requires_grad_() for t in (x, weight))
    y = adder2d(xd, wd, stride=s, padding=p, dilation=d, groups=g, weight_grad=weight_grad, backend=backend)
    grad_y = torch.randn(y.shape, generator=gen).to(device, dtype)
    y.backward(grad_y)
    want = adder2d_brute(xd.detach().cpu(), wd.detach().cpu(), stride=s, padding=p, dilation=d, groups=g,
                         grad_y=grad_y.cpu(), weight_grad=weight_grad)
    for name, got, ref in (("output", y, want[0]), ("input grad", xd.grad, want[1]), ("weight grad", wd.grad, want[2])):
        assert got.dtype == dtype, name
        scale = ref.abs().max().item() + 1
        err = (got.detach().cpu().double() - ref).abs().max().item()
        assert err <= TOL[dtype] * scale, f"{name}: error {err:.3g} > {TOL[dtype] * scale:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_grad", ["full", "sign"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backend_matches_brute_force(case, weight_grad, backend):
    check(case, backend, weight_grad, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=case_id)
def test_backend_low_precision(case, dtype, backend):
    check(case, backend, "full", dtype)


@pytest.mark.skipif(DEVICE != "cuda", reason="full-size shapes need a GPU")
@pytest.mark.parametrize("case", [
    (64, 16, 16, (32, 32), 3, 1, 1, 1, 1, False),   # ResNet-20 stage 1
    (64, 32, 64, (16, 16), 3, 2, 1, 1, 1, False),   # ResNet-20 stage 3 entry
    (8, 64, 128, (56, 56), 3, 2, 1, 1, 1, False),   # ResNet-18 stage 2 entry
    (8, 256, 512, (14, 14), 1, 2, 0, 1, 1, False),  # ResNet-18 shortcut
], ids=case_id)
@pytest.mark.parametrize("weight_grad", ["full", "sign"])
def test_triton_full_size_layers(case, weight_grad):
    check(case, "triton", weight_grad, torch.float32)


def test_auto_picks_the_kernel_for_the_device():
    assert choose("auto", torch.device("cpu")) == "cpu"
    assert choose("auto", torch.device("cuda")) == "triton"
    assert choose("auto", torch.device("xla")) == "reference"  # TPUs take the reference path
    assert choose("auto", torch.device("mps")) == "reference"
    with pytest.raises(ValueError, match="cannot run tensors on cuda"):
        choose("cpu", torch.device("cuda"))
    with pytest.raises(ValueError, match="runs on CUDA devices"):
        choose("triton", torch.device("xla"))


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=case_id)
def test_cpu_kernels_split_long_reductions_exactly(case, monkeypatch):
    from addernet.nn.kernels import cpu

    monkeypatch.setattr(cpu, "CHANNEL_CHUNK", 2)  # several ragged chunks on every layer
    for weight_grad in ("full", "sign"):
        check(case, "cpu", weight_grad, torch.float32, device="cpu")


def _failing_kernel(error):
    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise error
            return launch
    return Broken()


@pytest.mark.parametrize("error", ["compilation", "ptxas", "resources", "launch"])
def test_a_failing_triton_kernel_falls_back_per_layer_with_one_warning_naming_it(error, monkeypatch):
    import warnings

    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    from addernet.nn.kernels import triton_kernels

    raised = {"compilation": CompilationError("def kernel(): pass", None, "unsupported on this GPU"),
              "ptxas": PTXASError("ptxas fatal: too many registers"),
              "resources": OutOfResources(300000, 232448, "shared memory"),
              "launch": RuntimeError("Triton Error [CUDA]: invalid argument")}[error]
    monkeypatch.setattr(triton_kernels, "_forward_kernel", _failing_kernel(raised))
    monkeypatch.setattr(triton_kernels, "_failed", {})
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.warns(UserWarning, match=r"failed on the adder layer 3->4 channels, 3x3 kernel, stride \(1, 1\).* "
                                         r"on 6x6 .*uses the reference kernels") as caught:
        y = adder2d(x, w, padding=1, backend="triton")
    assert len([c for c in caught if "Triton adder kernel" in str(c.message)]) == 1
    torch.testing.assert_close(y, adder2d(x, w, padding=1, backend="reference"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the same layer again goes straight to the reference
        adder2d(x, w, padding=1, backend="triton")
    assert len(triton_kernels._failed) == 1
    monkeypatch.undo()  # another kind of layer still runs the Triton kernels
    monkeypatch.setattr(triton_kernels, "_failed", {})
    adder2d(x, torch.randn(5, 3, 1, 1), backend="triton")
    assert not triton_kernels._failed


def test_running_out_of_gpu_memory_is_raised_not_hidden(monkeypatch):
    from addernet.nn.kernels import triton_kernels

    monkeypatch.setattr(triton_kernels, "_forward_kernel", _failing_kernel(torch.OutOfMemoryError("no memory")))
    monkeypatch.setattr(triton_kernels, "_failed", {})
    with pytest.raises(torch.OutOfMemoryError):
        adder2d(torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), backend="triton")


def test_sign_weight_grad_grid_stays_within_cuda_limits_on_a_wide_depthwise_layer(monkeypatch):
    """256 groups x 256 splits (batch 256 at 28x28) put 65,536 programs on one axis; axis 0 takes them."""
    from addernet.nn.kernels import triton_kernels
    from addernet.nn.kernels.geometry import Geometry

    grids = []

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                grids.append(grid({"BLOCK_A": 32, "BLOCK_B": 32}))
            return launch

    monkeypatch.setattr(triton_kernels, "_sign_weight_grad_kernel", Recorder())
    geo = Geometry(256, 256, (28, 28), 256, (3, 3), (1, 1), (1, 1), (1, 1), 256)
    x = torch.empty(256, 256, 28, 28)
    triton_kernels.launch_sign_weight_grad(torch.empty(geo.output_shape), x, torch.empty(256, 1, 3, 3), geo)
    (grid,) = grids
    assert grid[0] == 256 * 256 and grid[0] <= 2**31 - 1 and all(g <= 65535 for g in grid[1:])
