import pytest
import torch

import addernet
from addernet import adder2d
from addernet.nn.kernels import reference
from brute_force import adder2d_brute
from kernel_cases import CASES, case_id


def make_case(case, dtype=torch.float64, seed=0):
    n, c, o, (h, w), k, s, p, d, g, has_bias = case
    gen = torch.Generator().manual_seed(seed)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    weight = torch.randn(o, c // g, kh, kw, generator=gen, dtype=dtype) * 0.7
    bias = torch.randn(o, generator=gen, dtype=dtype) if has_bias else None
    return x, weight, bias, dict(stride=s, padding=p, dilation=d, groups=g)


def run_op(x, weight, bias, conf, weight_grad="full", grad_y=None, **kw):
    x = x.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    bias = bias.clone().requires_grad_() if bias is not None else None
    y = adder2d(x, weight, bias, weight_grad=weight_grad, **conf, **kw)
    if grad_y is None:
        grad_y = torch.randn_like(y)
    y.backward(grad_y)
    return y, x.grad, weight.grad, (bias.grad if bias is not None else None), grad_y


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("weight_grad", ["full", "sign"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients_match_brute_force(case, weight_grad, backend):
    x, weight, bias, conf = make_case(case)
    y, gx, gw, gb, gy = run_op(x, weight, bias, conf, weight_grad, backend=backend)
    y_ref, gx_ref, gw_ref, gb_ref = adder2d_brute(x, weight, bias, **conf, grad_y=gy, weight_grad=weight_grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)
    if bias is not None:
        torch.testing.assert_close(gb, gb_ref)


def test_padding_contributes_minus_abs_weight():
    weight = torch.tensor([[[[2.0, -3.0], [0.5, 1.0]]]], dtype=torch.float64)
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    y = adder2d(x, weight, padding=1)  # every window sees only padding and one zero pixel
    torch.testing.assert_close(y, torch.full((1, 1, 2, 2), -6.5, dtype=torch.float64))


def test_input_gradient_is_clipped_to_unit_interval():
    x = torch.zeros(1, 1, 1, 1, requires_grad=True)
    weight = torch.tensor([[[[5.0]]], [[[-0.25]]]])  # W - X = 5 (clipped to 1) and -0.25
    adder2d(x, weight).sum().backward()
    assert x.grad.item() == pytest.approx(1.0 - 0.25)


def test_full_weight_gradient_is_x_minus_w_not_sign():
    x = torch.full((1, 1, 1, 1), 3.0)
    weight = torch.zeros(1, 1, 1, 1, requires_grad=True)
    adder2d(x, weight, weight_grad="full").sum().backward()
    assert weight.grad.item() == pytest.approx(3.0)
    weight.grad = None
    adder2d(x, weight, weight_grad="sign").sum().backward()
    assert weight.grad.item() == pytest.approx(1.0)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[6]], ids=case_id)
def test_sign_weight_gradient_is_the_true_derivative(case):
    x, weight, bias, conf = make_case(case, seed=3)
    weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda w: adder2d(x, w, None, weight_grad="sign", **conf), (weight,),
                                    eps=1e-6, atol=1e-5)


def test_chunk_boundaries_do_not_change_results(monkeypatch):
    x, weight, bias, conf = make_case(CASES[1], seed=1)
    whole = run_op(x, weight, bias, conf, "sign")
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 7)  # force many small, ragged chunks
    chunked = run_op(x, weight, bias, conf, "sign", grad_y=whole[-1])
    for a, b in zip(whole, chunked):
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs_keep_dtype_and_accumulate_in_float32(dtype, tol, backend):
    x, weight, _, conf = make_case(CASES[0], dtype=torch.float32, seed=2)
    x, weight = x.to(dtype), weight.to(dtype)
    y, gx, gw, _, gy = run_op(x, weight, None, conf, backend=backend)
    assert y.dtype == gx.dtype == gw.dtype == dtype
    y_ref, gx_ref, gw_ref, _ = adder2d_brute(x, weight, **conf, grad_y=gy)
    for got, want in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
        scale = want.abs().max().item()
        assert (got.double() - want).abs().max().item() <= tol * scale + tol


def test_output_and_gradients_only_where_needed():
    x, weight, _, conf = make_case(CASES[0], dtype=torch.float32)
    weight.requires_grad_()
    adder2d(x, weight, **conf).sum().backward()
    assert x.grad is None and weight.grad is not None


def test_compiles_without_graph_breaks():
    layer = addernet.Adder2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, layer(x))


@pytest.mark.parametrize("call, error, message", [
    (lambda x, w: adder2d(x, w[:, :2]), ValueError, "input has 3 channels"),
    (lambda x, w: adder2d(x, w[0]), ValueError, "weight must be 4-D"),
    (lambda x, w: adder2d(x[0], w), ValueError, "input must be 4-D"),
    (lambda x, w: adder2d(x, w, dilation=4), ValueError, "larger than the padded"),
    (lambda x, w: adder2d(x, w, weight_grad="approx"), ValueError, "weight_grad must be one of"),
    (lambda x, w: adder2d(x, w.double()), TypeError, "cast one to the other"),
    (lambda x, w: adder2d(x, w.to("meta")), ValueError, "move both to one device"),
    (lambda x, w: adder2d(x.int(), w), TypeError, "floating-point"),
    (lambda x, w: adder2d(x, w[:, :1], groups=3), ValueError, r"out_channels \(4\) must be divisible by groups \(3\)"),
    (lambda x, w: adder2d(x, w, groups=0), ValueError, "groups must be a positive int"),
    (lambda x, w: adder2d(x, w, stride=0), ValueError, "stride and dilation must be positive"),
    (lambda x, w: adder2d(x, w, padding=(1, 2, 3)), TypeError, "padding must be an int or a pair"),
    (lambda x, w: adder2d(x, w, torch.zeros(3)), ValueError, "bias must be a tensor of shape"),
    (lambda x, w: adder2d(x, w, backend="cuda-magic"), ValueError, "unknown adder backend"),
    (lambda x, w: adder2d(x.numpy(), w), TypeError, "must be a torch.Tensor"),
])
def test_bad_arguments_get_clear_errors(call, error, message):
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)
    with pytest.raises(error, match=message):
        call(x, w)


def test_autocast_casts_like_convolution():
    x = torch.randn(2, 3, 6, 6)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = adder2d(x, weight, padding=1)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert weight.grad.dtype == torch.float32  # the parameter keeps its dtype
    torch.testing.assert_close(y.float(), adder2d(x.bfloat16(), weight.detach().bfloat16(), padding=1).float())
