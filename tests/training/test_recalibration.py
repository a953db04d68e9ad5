import torch
import pytest

from addernet.models import create_model
from addernet.training.recalibration import BatchNormRecalibration, batchnorm_layers, recalibrate
from addernet.experiments.report import read_curves
from addernet.experiments.run import train
from hydra_helpers import compose_config

FAST = ["trainer=cpu", "logger=csv", "run_name=test", "data=synthetic", "data.train_size=128", "data.test_size=64",
        "data.image_size=8", "data.batch_size=32", "trainer.max_epochs=2", "trainer.deterministic=true",
        "callbacks.model_summary=null", "callbacks.progress_bar=null"]


def test_recalibration_gives_the_statistics_of_the_calibration_batches():
    torch.manual_seed(0)
    net = create_model("adder_resnet20", num_classes=10).eval()
    batches = [torch.randn(8, 3, 16, 16) + 2 for _ in range(3)]
    first = batchnorm_layers(net)[0]
    seen = []
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    assert recalibrate(net, batches) == 24
    hook.remove()
    inputs = torch.cat(seen)  # what the first BatchNorm saw: each batch's mean, averaged over the batches
    expected_mean = torch.stack([s.mean((0, 2, 3)) for s in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, expected_mean, rtol=1e-4, atol=1e-3)
    assert first.momentum == 0.1 and not net.training  # restored
    assert inputs.shape[0] == 24


def test_recalibration_is_off_by_default_and_checks_its_setting():
    with pytest.raises(ValueError, match="recalibrate_bn must be"):
        BatchNormRecalibration(-1)
    cfg = compose_config(FAST)
    assert cfg.recalibrate_bn == 0 and cfg.callbacks.bn_recalibration.batches == 0


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_recalibrated_runs_train_exactly_as_plain_ones_and_log_both_accuracies(tmp_path):
    # the reference kernels: the compiled ones may be compiled anew (other loop order, other rounding) between
    # the two runs when earlier tests in the process compiled other shapes
    exact = FAST + ["adder_backend=reference"]
    plain = train(compose_config(exact, tmp_path / "plain"))
    recal = train(compose_config(exact + ["recalibrate_bn=2"], tmp_path / "recal"))
    assert "val/acc_raw" not in plain and "test/acc_raw" not in plain
    assert 0 <= recal["val/acc_raw"] <= 1 and 0 <= recal["test/acc_raw"] <= 1
    # the stale statistics give the plain run's numbers: the same weights, the same BatchNorm state
    assert recal["val/acc_raw"] == pytest.approx(plain["val/acc"])
    assert recal["test/acc_raw"] == pytest.approx(plain["test/acc"])
    a, b = _weights(tmp_path / "plain/checkpoints/last.ckpt"), _weights(tmp_path / "recal/checkpoints/last.ckpt")
    for key in a:
        if key.startswith("net."):
            assert torch.equal(a[key], b[key]), key
    curves = read_curves(tmp_path / "recal")
    assert "val/acc_raw" in curves and "val/acc" in curves
