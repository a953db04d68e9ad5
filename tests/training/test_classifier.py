import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_helpers import adalr_of, adder_indices, fit, make_data, make_module


def test_float32_step_uses_adalr_gradients_on_adder_layers_only():
    raw = fit(make_module("off"), make_data())[0]
    module = make_module("on")
    seen = fit(module, make_data())[0]
    adders = adder_indices(module)
    assert len(adders) == 20  # 18 body layers + 2 projection shortcuts (stages 2 and 3)
    for i, (r, s) in enumerate(zip(raw, seen)):
        if i in adders:
            torch.testing.assert_close(s, adalr_of(r), rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(s, r)
    assert module.last_adalr is not None and len(module.last_adalr.names) == 20


def test_ilr_multiplies_adder_gradients():
    raw = fit(make_module("off"), make_data())[0]
    module = make_module("ilr")
    seen = fit(module, make_data())[0]
    for i in adder_indices(module):
        torch.testing.assert_close(seen[i], raw[i] * 100, rtol=1e-4, atol=1e-6)


def scaled_fit(adalr):
    module = make_module(adalr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    seen = fit(module, make_data(), plugins=[MixedPrecision("16-mixed", "cpu", scaler)])[0]
    assert scaler.get_scale() > 1  # the loss really was scaled
    return module, seen


def test_grad_scaler_result_after_unscaling_is_the_unscaled_adalr():
    _, raw = scaled_fit("off")  # what the optimizer gets without AdaLR: the unscaled gradient
    module, seen = scaled_fit("on")
    for i in adder_indices(module):
        assert seen[i].norm().item() == pytest.approx(0.2 * seen[i].numel() ** 0.5, rel=1e-4)
        torch.testing.assert_close(seen[i], adalr_of(raw[i]), rtol=1e-4, atol=1e-6)


def test_accumulated_gradient_is_normalised_once():
    raw = fit(make_module("off"), make_data(batch_size=8), accumulate_grad_batches=2)[0]
    module = make_module("on")
    seen = fit(module, make_data(batch_size=8), accumulate_grad_batches=2)[0]
    for i in adder_indices(module):
        torch.testing.assert_close(seen[i], adalr_of(raw[i]), rtol=1e-4, atol=1e-6)


def test_clipping_acts_after_adalr():
    raw = fit(make_module("off"), make_data())[0]
    module = make_module("on")
    seen = fit(module, make_data(), gradient_clip_val=0.5, gradient_clip_algorithm="norm")[0]
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen]))
    assert total.item() == pytest.approx(0.5, rel=1e-3)
    # the clip factor is common to all layers: adder layers keep AdaLR's relative sizes
    factor = seen[adder_indices(module)[0]].norm() / adalr_of(raw[adder_indices(module)[0]]).norm()
    for i in adder_indices(module):
        torch.testing.assert_close(seen[i], factor * adalr_of(raw[i]), rtol=1e-3, atol=1e-7)


def test_cnn_gradients_are_untouched_whatever_the_mode():
    raw = fit(make_module("off", model="resnet20"), make_data())[0]
    seen = fit(make_module("on", model="resnet20"), make_data())[0]
    for r, s in zip(raw, seen):
        torch.testing.assert_close(s, r)


def test_bf16_mixed_step_uses_adalr_gradients():
    module = make_module("on")
    seen = fit(module, make_data(), precision="bf16-mixed")[0]
    for i in adder_indices(module):
        assert seen[i].dtype == torch.float32  # parameters and their gradients stay float32
        assert seen[i].norm().item() == pytest.approx(0.2 * seen[i].numel() ** 0.5, rel=1e-4)
