"""Every fast backend against the float64 brute force, on shapes that stress tiling and geometry.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1 (see conftest); on a GPU the same tests run
the compiled kernels, plus full-size ResNet layer shapes.
"""

import pytest
import torch

from addernet import adder2d
from addernet.kernels import choose
from brute_force import adder2d_brute
from kernels.cases import CASES, case_id

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
    from addernet.kernels import cpu

    monkeypatch.setattr(cpu, "CHANNEL_CHUNK", 2)  # several ragged chunks on every layer
    for weight_grad in ("full", "sign"):
        check(case, "cpu", weight_grad, torch.float32, device="cpu")


def test_triton_compile_failure_falls_back_to_the_reference_with_a_warning(monkeypatch):
    from triton.compiler.errors import CompilationError

    from addernet.kernels import triton_kernels

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise CompilationError("def kernel(): pass", None, "unsupported on this GPU")
            return launch

    monkeypatch.setattr(triton_kernels, "_forward_kernel", Broken())
    monkeypatch.setattr(triton_kernels, "_compile_failed", False)
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.warns(UserWarning, match="using the reference kernels"):
        y = adder2d(x, w, padding=1, backend="triton")
    torch.testing.assert_close(y, adder2d(x, w, padding=1, backend="reference"))
    assert triton_kernels._compile_failed
