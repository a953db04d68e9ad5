import copy
import json
import pickle

import pytest
import torch

from addernet.errors import ConfigError
from addernet.models import create_model
from addernet.deploy.quantized import (GlobalMean, Int8Adder2d, Int8ResidualBlock, PointwiseLinear, SmallConv2d,
                                       calibrate, load_exported, prepare_float_layers, quantize_model)
from addernet.experiments.run import train
from addernet.nn.kernels import int8
from data_files import write_image_folders
from hydra_helpers import run_script
from int8_networks import needs_kernel


def test_int8_layer_matches_the_float_adder_and_batchnorm_within_quantisation_error():
    from addernet import Adder2d

    torch.manual_seed(0)
    adder, bn = Adder2d(16, 8, 3, padding=1).eval(), torch.nn.BatchNorm2d(8).eval()
    adder.weight.data.clamp_(-1.9, 1.9)  # inside the grid below: only rounding, no clipping
    bn.running_mean.uniform_(-50, -30)
    bn.running_var.uniform_(50, 100)
    x = torch.rand(2, 16, 6, 6) * 2  # post-ReLU-like
    scale = 4 / 255
    layer = Int8Adder2d.from_float(adder, bn, scale, zero_point=round(2 / scale))
    with torch.no_grad():
        expected = bn(adder(x.clamp(-2, 2)))
    got = layer(x)
    # input and filter are each rounded by at most half a step: each of the 144 terms is off by at most a step
    bound = 144 * scale * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs().max()
    assert (got - expected).abs().max() <= bound
    assert (got - expected).abs().mean() < bound / 10


def test_calibration_and_quantisation_keep_a_resnets_predictions():
    torch.manual_seed(0)
    net = create_model("adder_resnet20", num_classes=10).eval()
    with torch.no_grad():  # BatchNorm statistics that fit the data, as after training
        net.train()
        for _ in range(3):
            net(torch.randn(32, 3, 16, 16))
        net.eval()
    data = [torch.randn(32, 3, 16, 16) for _ in range(2)]
    params = calibrate(net, data)
    assert len(params) == 20 and all(0 <= zp <= 255 and s > 0 for s, zp in params.values())
    quantized = quantize_model(net, params)
    assert sum(isinstance(m, Int8Adder2d) for m in quantized.modules()) == 20
    assert sum(isinstance(m, Int8ResidualBlock) for m in quantized.modules()) == 9  # ReLU and sum in the kernel
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in quantized.modules())  # all folded, float ones too
    x = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        agree = (quantized(x).argmax(1) == net(x).argmax(1)).float().mean().item()
    assert agree > 0.8
    with pytest.raises(ConfigError, match="percentile"):
        calibrate(net, data, percentile=20)


BASE = ["trainer=cpu", "logger=csv", "run_name=test", "data=synthetic", "data.image_size=8", "data.train_size=128",
        "data.test_size=64", "data.batch_size=32", "trainer.max_epochs=1"]


def test_export_eval_and_predict_as_a_user_runs_them(tmp_path):
    from hydra_helpers import compose_config

    train(compose_config(BASE, tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    result = run_script("export.py", f"ckpt_path={ckpt}", "calibration.images=64", "batch_size=32",
                        f"hydra.run.dir={tmp_path / 'export'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = tmp_path / "run" / "checkpoints" / "best.int8.pt"
    model = load_exported(exported)
    meta = model.info["metadata"]
    assert 0 <= meta["int8_test_acc"] <= 1 and meta["test_images"] == 64 and model.info["input_size"] == [3, 8, 8]
    assert "float" in result.stderr + result.stdout and "int8" in result.stderr + result.stdout
    # evaluating the file gives the accuracy the export measured
    result = run_script("eval.py", f"ckpt_path={exported}", "trainer=cpu", *BASE[3:8],
                        f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] == pytest.approx(
        meta["int8_test_acc"])
    # image files in, classes out
    write_image_folders(tmp_path / "images", {"x": 1}, classes=("a", "b"), size=(12, 12))
    files = sorted(str(p) for p in (tmp_path / "images").rglob("*.png"))
    result = run_script("predict.py", str(exported), *files, "--top", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.count("%") == 2 for line in lines)
    # an existing file is not overwritten
    result = run_script("export.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path)
    assert result.returncode == 2 and "exists: pass out=" in result.stderr


def test_damaged_or_foreign_files_are_refused_clearly(tmp_path):
    bad = tmp_path / "damaged.int8.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot be read as an exported model"):
        load_exported(bad)
    other = tmp_path / "other.pt"
    for version in (1, 99):  # 1: written before the float BatchNorms were folded
        torch.save({"format": "addernet-int8", "version": version}, other)
        with pytest.raises(ConfigError, match=f"version {version}, this code reads version 2: export"):
            load_exported(other)
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConfigError, match="is not an addernet-int8 export"):
        load_exported(other)
    result = run_script("predict.py", str(bad), str(bad), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_filters_beyond_the_grid_are_clipped_exactly():
    """Adder filters range far wider than their inputs; clipping them to the grid moves a per-channel constant
    into the bias, and the result stays within rounding of the float layer."""
    from addernet import Adder2d

    torch.manual_seed(0)
    adder = Adder2d(8, 4, 3, padding=1).eval()
    adder.weight.data.mul_(5)  # mostly outside the inputs' range [0, 2]
    x = torch.rand(2, 8, 5, 5) * 2
    scale = 2 / 255
    layer = Int8Adder2d.from_float(adder, None, scale, zero_point=0)  # the grid is [0, 2]
    with torch.no_grad():
        expected = adder(x)
    assert (layer(x) - expected).abs().max() <= 72 * scale  # each of 72 terms within a step of rounding


def test_preparing_the_float_layers_keeps_a_cnns_outputs():
    """BatchNorms folded, the stem in the direct loop with its ReLU, the head as mean + linear: as the int8
    models' float layers and the int8 benchmark's fp32 twin run."""
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=10)
    with torch.no_grad():  # BatchNorm statistics away from their initial values
        for _ in range(3):
            net(torch.randn(16, 3, 16, 16))
    net.eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        prepared = prepare_float_layers(copy.deepcopy(net))
        got = prepared(x)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 22  # stem, 18 + 2 in the stages, logits
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert isinstance(prepared.stem[0], SmallConv2d) and prepared.stem[0].relu
    assert isinstance(prepared.pool, GlobalMean) and isinstance(prepared.fc, PointwiseLinear)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_a_layer_packs_its_filters_again_when_they_change():
    """Int8Adder2d keeps its packed filters between calls: filters loaded, written in place, given other storage
    or only other strides through ``.data``, or replaced are each used at the next call, which equals the
    plain-PyTorch arithmetic on the filters as they are then; a pickled or copied layer runs alike."""
    torch.manual_seed(0)
    layer = Int8Adder2d(8, 8, 3, 1, 1, scale=0.05, zero_point=7)
    layer.qweight.copy_(torch.randint(0, 256, layer.qweight.shape, dtype=torch.uint8))
    layer.a.fill_(-0.01)
    x = torch.rand(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)

    def reference() -> torch.Tensor:
        return int8.sad_forward_reference(x, layer.scale, layer.zero_point, layer.qweight, 1, 1, layer.a, layer.b)

    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["qweight"] = layer.qweight.flip(0)
    changes = [lambda: layer.load_state_dict(state),
               lambda: layer.qweight.copy_(layer.qweight.roll(1, dims=1)),
               lambda: setattr(layer.qweight, "data", layer.qweight.data.roll(1, dims=2).clone()),
               lambda: setattr(layer.qweight, "data", layer.qweight.data.transpose(2, 3)),  # same storage
               lambda: setattr(layer, "qweight", layer.qweight.flip(1).clone())]
    with torch.no_grad():
        results = [layer(x)]
        assert layer.packed_filters() is layer.packed_filters()  # kept, not packed at every call
        for change in changes:
            change()
            results.append(layer(x))
            assert not torch.equal(results[-2], results[-1])
            torch.testing.assert_close(results[-1], reference(), rtol=0, atol=0)
        for copy_of in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(copy_of(x), results[-1], rtol=0, atol=0)
