"""The int8 SAD kernel against an integer brute force, on every instruction set this CPU has."""

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from addernet.experiments.int8_benchmark import cpu_flags
from addernet.nn.kernels import int8

# (batch, in, out, size, kernel, stride, padding): stride, padding, 1x1 and 3x3, odd channel counts, batch 1,
# rows longer than one vector (64 * 3 = 192 bytes) and shorter, filter counts that leave remainders; window rows
# of 1 and 3 whole 8-byte groups with no partial one (8 and 24 bytes) and of 3 whole groups and a partial one
# (27 bytes): the loops that take two groups a round, with one left over; 3x3 windows over 16, 32 and 64
# channels (the unrolled AVX-512 blocks) with positions and filters past the last whole block (filter counts of
# 2.5 and 3 groups)
CASES = [(2, 16, 16, 8, 3, 1, 1), (1, 3, 5, 7, 3, 2, 1), (2, 33, 7, 6, 1, 1, 0), (1, 64, 64, 5, 3, 1, 1),
         (3, 5, 9, 9, 3, 2, 0), (1, 70, 6, 4, 3, 1, 1), (2, 32, 64, 8, 1, 2, 0), (1, 8, 8, 6, 3, 1, 1),
         (1, 9, 8, 6, 3, 1, 1), (2, 8, 16, 5, 1, 1, 0), (1, 32, 24, 7, 3, 2, 1), (3, 16, 20, 5, 3, 1, 1),
         (1, 32, 20, 7, 3, 1, 1), (1, 64, 20, 5, 3, 1, 1)]


def brute_force(qx: np.ndarray, qw: np.ndarray, stride: int, padding: int, zero_point: int) -> np.ndarray:
    qx = np.pad(qx.astype(np.int64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2), constant_values=zero_point)
    qw = qw.astype(np.int64)
    o, _, kh, kw = qw.shape
    ho, wo = (qx.shape[2] - kh) // stride + 1, (qx.shape[3] - kw) // stride + 1
    out = np.zeros((qx.shape[0], o, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            window = qx[:, None, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.abs(window - qw[None]).sum((2, 3, 4))
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_is_exact(case):
    n, c, o, size, k, s, p = case
    torch.manual_seed(sum(case))
    x, w = torch.randn(n, c, size, size) * 2, torch.randn(o, c, k, k)
    scale, zero_point = 8 / 255, 117
    qw = int8.quantize(w, scale, zero_point)
    expected = brute_force(int8.quantize(x, scale, zero_point).numpy(), qw.numpy(), s, p, zero_point)
    a, b = torch.linspace(-1, 1, o), torch.linspace(0, 3, o)
    y = int8.sad_forward(x, scale, zero_point, qw, s, p, a, b)
    torch.testing.assert_close(y, a.view(1, -1, 1, 1) * torch.from_numpy(expected).float() + b.view(1, -1, 1, 1),
                               rtol=0, atol=0)
    reference = int8.sad_forward_reference(x, scale, zero_point, qw, s, p, a, b)
    torch.testing.assert_close(reference, y, rtol=0, atol=0)
    # the fused ending of a residual block: + residual, then ReLU, in the same pass
    residual = torch.randn_like(y)
    fused = int8.sad_forward(x, scale, zero_point, qw, s, p, a, b, residual=residual, relu=True)
    torch.testing.assert_close(fused, (y + residual).relu(), rtol=0, atol=0)


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
@pytest.mark.parametrize("case", CASES + [(2, 3, 8, 7, 5, 1, 2)], ids=str)
def test_the_sums_alone_are_exact(case):
    """sad_sums (the benchmark's inner loop): padded uint8 input, int32 sums, rows of whole byte groups and not."""
    n, c, o, size, k, s, p = case
    torch.manual_seed(sum(case))
    qx = torch.randint(0, 256, (n, c, size + 2 * p, size + 2 * p), dtype=torch.uint8)
    qw = torch.randint(0, 256, (o, c, k, k), dtype=torch.uint8)
    sums = int8.sad_sums(qx, qw, s)
    assert sums.dtype == torch.int32 and sums.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(sums.numpy(), brute_force(qx.numpy(), qw.numpy(), s, 0, 0))


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
@pytest.mark.parametrize("kh, kw, c", [(3, 1, 48), (3, 2, 48), (3, 6, 16)])
def test_windows_not_square(kh, kw, c):
    """Window rows of 48, 96 and 96 bytes in 3 rows, as a 3x3 window over 16 or 32 channels has (the unrolled
    AVX-512 blocks take any such window), against the brute force."""
    torch.manual_seed(kh * kw * c)
    qx = torch.randint(0, 256, (2, c, 9, 11), dtype=torch.uint8)
    qw = torch.randint(0, 256, (20, c, kh, kw), dtype=torch.uint8)
    sums = int8.sad_sums(qx, qw, 1)
    np.testing.assert_array_equal(sums.numpy(), brute_force(qx.numpy(), qw.numpy(), 1, 0, 0))


def test_quantization_rounds_and_clamps_as_the_kernel_does():
    x = torch.tensor([-10.0, 0.0, 0.5, 1.5, 2.5, 1e6]) * 0.25  # exact in binary: the halves stay halves
    assert int8.quantize(x, 0.25, 3).tolist() == [0, 3, 4, 4, 6, 255]  # 3.5 -> 4, 4.5 -> 4, 5.5 -> 6; clamped
    for value, level in ((0.125, 4), (0.375, 4), (0.625, 6)):  # the same halves through the kernel
        y = int8.sad_forward(torch.full((1, 1, 1, 1), value), 0.25, 3, torch.zeros(1, 1, 1, 1, dtype=torch.uint8),
                             1, 0, torch.ones(1), torch.zeros(1))
        assert y.item() == level


def quantised_row_matches_quantize() -> bool:
    """A row of 83 values (the vector rounds of 64, 32 and 16 values, and a rest): x / scale + zero point runs
    over -37.5 to 331.5 in steps of 4.5, so exact halves and values past both ends, with infinities, +-1e30
    and NaNs among them in every part of the row, quantised by the kernel (read back through a 1x1 layer of
    one zero filter: each output is its input's code) against quantize(); NaNs, which quantize() leaves
    undefined, to 0."""
    x = (torch.arange(83.0) * 4.5 - 40.5) * 4.0  # exact in binary
    nans = [20, 70, 81]  # in each part of the row: the rounds of 64 (AVX-512) or 32 (AVX2), of 16, the rest
    x[[5, 66]], x[[17, 82]], x[[40, 75]], x[[41, 80]] = float("inf"), float("-inf"), 1e30, -1e30
    x[nans] = float("nan")
    x = x.view(1, 1, 1, -1)
    codes = int8.sad_forward(x, 4.0, 3, torch.zeros(1, 1, 1, 1, dtype=torch.uint8), 1, 0, torch.ones(1),
                             torch.zeros(1)).flatten()
    expected = int8.quantize(x, 4.0, 3).flatten().float()
    expected[nans] = 0.0
    return bool(torch.equal(codes, expected)) and {0, 255} <= set(expected.tolist())


def test_a_row_quantised_by_the_kernel_rounds_and_clamps_as_quantize():
    assert quantised_row_matches_quantize()


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_slower_instruction_sets_give_the_same_sums(isa):
    """The kernel picks its instructions once per process, so each path runs in a process of its own."""
    code = ("import torch; from addernet.nn.kernels import int8; torch.manual_seed(0); "
            "x = torch.randn(2, 40, 6, 6); w = int8.quantize(torch.randn(9, 40, 3, 3), 0.05, 128); "
            "a, b = torch.ones(9), torch.zeros(9); "
            "y = int8.sad_forward(x, 0.05, 128, w, 1, 1, a, b); "
            "r = int8.sad_forward_reference(x, 0.05, 128, w, 1, 1, a, b); "
            "s = int8.sad_sums(int8.quantize(x, 0.05, 128), w, 1); "
            "import sys; sys.path.insert(0, 'tests/nn/kernels'); from test_int8 import quantised_row_matches_quantize; "
            "print(int8.instruction_set(), bool(torch.equal(y, r)) and bool(torch.equal(a.view(1, -1, 1, 1) * "
            "s.float(), int8.sad_forward(x, 0.05, 128, w, 1, 0, a, b))) and quantised_row_matches_quantize())")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ADDERNET_SAD_ISA": isa},
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, equal = out.stdout.split()
    assert equal == "True" and chosen in (isa, "portable")  # portable where the CPU lacks AVX2


def test_threads_split_large_layers_and_give_the_same_sums():
    """A layer large enough to be split across two threads (35M terms; small ones stay on one thread), with
    position and filter counts that leave partial blocks, and an NCHW residual: exact, channels-last output."""
    torch.manual_seed(1)
    x, qw = torch.randn(4, 64, 15, 15), int8.quantize(torch.randn(60, 64, 3, 3), 0.05, 128)
    a, b = torch.linspace(-1, 1, 60), torch.zeros(60)
    residual = torch.randn(4, 60, 15, 15)  # NCHW in memory: the kernel takes any layout
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y = int8.sad_forward(x, 0.05, 128, qw, 1, 1, a, b, residual=residual, relu=True)
    finally:
        torch.set_num_threads(threads)
    assert y.is_contiguous(memory_format=torch.channels_last)
    expected = int8.sad_forward_reference(x, 0.05, 128, qw, 1, 1, a, b, residual=residual, relu=True)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


# (batch, in, out, height, width, kernel, stride, padding)
SMALL_CONV_CASES = [(2, 3, 16, 9, 9, 3, 1, 1), (1, 3, 16, 32, 20, 3, 2, 1), (2, 3, 64, 40, 33, 7, 2, 3),
                    (1, 1, 32, 6, 6, 3, 1, 0), (1, 3, 8, 2, 5, 3, 1, 1), (3, 4, 24, 5, 5, 5, 2, 2),
                    (4, 3, 16, 64, 64, 3, 1, 1), (1, 3, 32, 12, 21, 3, 1, 1), (2, 3, 64, 5, 11, 3, 1, 1),
                    (1, 3, 64, 4, 10, 3, 1, 0), (1, 3, 16, 6, 40, 3, 1, 2)]


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
@pytest.mark.parametrize("case", SMALL_CONV_CASES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_small_convolution_matches_pytorchs(case, relu):
    """The stem's direct loop: vector paths (8, 16, 32, 64 filters: on AVX2 4 pixels at a time inside, on
    AVX-512 for 3x3 windows at stride 1 blocks of 16, 8 or 4 pixels, the last one moved back where the row
    leaves a part of one, fewer pixels inside than a block, 1 at a time at the sides, 2 of them at padding 2;
    stride 2, a 7x7 ImageNet
    stem, maps not square and smaller than the kernel, one large enough for two threads) and the plain one (24
    filters); channels-last output."""
    n, c, o, h, w, k, s, p = case
    torch.manual_seed(sum(case))
    x, weight, b = torch.randn(n, c, h, w), torch.randn(o, c, k, k), torch.randn(o)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y = int8.small_conv(x.contiguous(memory_format=torch.channels_last), weight, b, s, p, relu)
    finally:
        torch.set_num_threads(threads)
    expected = F.conv2d(x, weight, b, s, p)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected.relu() if relu else expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
def test_kernels_refuse_windows_larger_than_the_padded_map():
    x, w = torch.randn(1, 3, 2, 2), torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        int8.small_conv(x, w, torch.zeros(4), 2, 0, False)
    qw = int8.quantize(w, 0.05, 128)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        int8.sad_forward(x, 0.05, 128, qw, 2, 0, torch.ones(4), torch.zeros(4))


def test_the_kernel_is_built_and_runs_the_cpus_best_instructions():
    """Where a C++ compiler is, no test may pass on the plain-PyTorch fallback unseen."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: the kernel cannot be built here")
    assert int8.extension_available()
    flags = cpu_flags()  # empty where /proc/cpuinfo is not
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get("ADDERNET_SAD_ISA") or not flags:
        return
    best = "avx512bw" if {"avx512f", "avx512bw", "avx512dq"} <= flags else "avx2" if "avx2" in flags else "portable"
    assert int8.instruction_set() == best


@pytest.mark.skipif(not int8.extension_available(), reason="no C++ compiler: the kernel is not built")
def test_places_tell_an_object_replaced_a_key_removed_or_added_and_a_dictionary_resized():
    """``Places`` (what a module checks before it reuses its kernel object): identity, not equality; a missing
    key holds None; a watched dictionary's size."""
    weight, absent = torch.ones(3), {}
    params, children = {"weight": weight, "bias": None}, {"stem": object()}
    places = int8.extension().Places([(params, "weight"), (params, "bias"), (absent, "x")], [children])
    assert places.unchanged()
    params["weight"] = torch.ones(3)  # equal values, another tensor
    assert not places.unchanged()
    params["weight"] = weight
    assert places.unchanged()
    del params["bias"]  # a missing key holds None, as the None it held
    assert places.unchanged()
    params["bias"] = torch.zeros(3)
    assert not places.unchanged()
    del params["bias"]
    children["fc"] = object()  # the watched dictionary grew
    assert not places.unchanged()
    del children["fc"]
    assert places.unchanged()
    absent["x"] = 1
    assert not places.unchanged()

    with pytest.raises(TypeError):
        int8.extension().Places([([1], "x")], [])  # not a dictionary
    with pytest.raises(TypeError):
        int8.extension().Places([({}, [])], [])  # a key that cannot be hashed
