"""Files a user passes: damaged, foreign or mismatched checkpoints and exports get one clear error in every
entry point that reads them, and the files stay as they were."""

from pathlib import Path

import pytest
import torch

from addernet.errors import ConfigError, UserError
from addernet.experiments.deploy import export, predict
from addernet.experiments.evaluation import evaluate
from addernet.experiments.run import train
from addernet.models import create_model
from addernet.deploy.quantized import calibrate, quantize_model
from addernet.deploy.quantized import export as write_export
from addernet.training.checkpoints import load_checkpoint_model, read_checkpoint
from addernet.training.classifier import CONFIG_KEY, INPUT_SIZE_KEY, ImageClassifier
from data_files import write_image_folders
from hydra_helpers import compose_config, run_script

DATA = ["data=synthetic", "data.image_size=8", "data.train_size=32", "data.test_size=16", "data.batch_size=16"]
TRAIN = ["trainer=cpu", "logger=csv", "run_name=test", *DATA]


class NotATensor:
    """A Python object in a checkpoint: what a weights-only load refuses to unpickle."""


def fake_checkpoint(path: Path, name="adder_resnet20", weights_of=None, input_size=(3, 8, 8)) -> Path:
    """A checkpoint with what ``src/train.py`` writes that the readers look at (state_dict, config, input size)."""
    net = create_model(weights_of or name, num_classes=10)
    checkpoint = {"state_dict": ImageClassifier(net, optimizer=None).state_dict(), "global_step": 0,
                  CONFIG_KEY: {"model": {"name": name}}}
    if input_size:
        checkpoint[INPUT_SIZE_KEY] = list(input_size)
    torch.save(checkpoint, path)
    return path


def damaged_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad file, and the words its error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = fake_checkpoint(folder / "good.ckpt").read_bytes()
    files = {
        "empty": (b"", "the file is empty"),
        "truncated": (good[: len(good) // 2], "damaged or truncated"),
        "garbage": (b"\x00\xffnot a checkpoint at all" * 10, "damaged or truncated"),
    }
    paths = {}
    for kind, (data, words) in files.items():
        (folder / f"{kind}.ckpt").write_bytes(data)
        paths[kind] = (folder / f"{kind}.ckpt", words)
    torch.save({"state_dict": {}, "extra": NotATensor()}, folder / "pickled.ckpt")
    paths["pickled"] = (folder / "pickled.ckpt", "loading them can run code")
    torch.save({"state_dict": {"weight": torch.ones(1)}}, folder / "foreign.ckpt")
    paths["foreign"] = (folder / "foreign.ckpt", "not written by addernet's src/train.py")
    torch.save({"format": "addernet-int8", "version": 1}, folder / "export.ckpt")
    paths["export"] = (folder / "export.ckpt", "is an int8 export")
    fake_checkpoint(folder / "family.ckpt", name="adder_resnet20", weights_of="resnet32")
    paths["other family"] = (folder / "family.ckpt", "its weights do not fit the model")
    return paths


KINDS = ["empty", "truncated", "garbage", "pickled", "foreign", "export", "other family"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return damaged_files(tmp_path_factory.mktemp("bad"))


def readers(path: Path, tmp_path: Path):
    """Every way the project reads a checkpoint a user names."""
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(path.read_bytes())
    return {
        "train ckpt_path=<file>": lambda: train(compose_config(TRAIN + [f"ckpt_path={path}"], tmp_path / "t")),
        "train ckpt_path=last": lambda: train(compose_config(TRAIN + ["ckpt_path=last"], run)),
        "eval": lambda: evaluate(compose_config(DATA + ["trainer=cpu", f"ckpt_path={path}"], tmp_path / "e",
                                                name="eval")),
        "export": lambda: export(compose_config([f"ckpt_path={path}", f"out={tmp_path / 'x.int8.pt'}"],
                                                tmp_path / "x", name="export")),
        "distillation teacher": lambda: train(compose_config(TRAIN + [f"distill.teacher_ckpt={path}"],
                                                             tmp_path / "d")),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_a_bad_checkpoint_in_one_line_and_keeps_the_file(kind, bad_files, tmp_path):
    path, words = bad_files[kind]
    before = path.read_bytes()
    for reader, read in readers(path, tmp_path).items():
        if kind == "export" and reader == "eval":
            continue  # eval reads exports: tested with the int8 files
        with pytest.raises(UserError) as err:
            read()
        message = str(err.value)
        assert words in message and "\n" not in message, (reader, message)
        assert path.read_bytes() == before, reader
    assert not (tmp_path / "x.int8.pt").exists()


def test_a_good_checkpoint_loads_strictly(tmp_path):
    path = fake_checkpoint(tmp_path / "good.ckpt")
    module, config = load_checkpoint_model(path)
    assert config["model"]["name"] == "adder_resnet20" and module.input_size == (3, 8, 8)
    checkpoint = read_checkpoint(path)
    del checkpoint["state_dict"]["net.stages.0.0.conv1.weight"]
    checkpoint["state_dict"]["net.extra"] = torch.ones(1)
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(ConfigError, match=r"missing: stages\.0\.0\.conv1\.weight \(1\); unexpected: extra \(1\)"):
        load_checkpoint_model(tmp_path / "edited.ckpt")


def test_eval_refuses_images_of_another_shape_in_one_line(tmp_path):
    sized = fake_checkpoint(tmp_path / "sized.ckpt", input_size=(3, 16, 16))
    with pytest.raises(ConfigError, match="trained on 3-channel 16x16 images, but SyntheticDataModule serves "
                                          "3-channel 8x8 images"):
        evaluate(compose_config(DATA + ["trainer=cpu", f"ckpt_path={sized}"], tmp_path / "e", name="eval"))
    # a checkpoint that does not record its input size: the model must at least take the images
    gray = fake_checkpoint(tmp_path / "gray.ckpt", name="adder_lenet5_bn", input_size=None)
    with pytest.raises(ConfigError, match="cannot take SyntheticDataModule's images of shape 3-channel 8x8"):
        evaluate(compose_config(DATA + ["trainer=cpu", f"ckpt_path={gray}"], tmp_path / "g", name="eval"))


def grayscale_export(path: Path) -> Path:
    """An int8 adder LeNet-5 for 1-channel 28x28 images, as src/export.py writes it."""
    torch.manual_seed(0)
    net = create_model("adder_lenet5_bn", num_classes=3).eval()
    int8_net = quantize_model(net, calibrate(net, [torch.randn(8, 1, 28, 28)]))
    write_export(int8_net, path, model_name="adder_lenet5_bn", num_classes=3, class_names=["a", "b", "c"],
                 input_size=(1, 28, 28), mean=(0.5,), std=(0.5,), metadata={})
    return path


def test_predict_converts_images_to_the_models_channels_and_size_and_says_so(tmp_path):
    model = grayscale_export(tmp_path / "gray.int8.pt")
    write_image_folders(tmp_path / "images", {"x": 3}, classes=("a",), size=(12, 10))  # RGB, RGB, grayscale
    files = sorted(str(p) for p in (tmp_path / "images").rglob("*.png"))
    results, notes = predict(str(model), files)
    assert [file for file, _ in results] == files and all(name in "abc" for _, ((name, _),) in results)
    assert notes == ["2 of 3 images converted to grayscale (the model's input: 1x28x28)",
                     "3 of 3 images resized to 28x28 (the model's input: 1x28x28)"]
    result = run_script("predict.py", str(model), *files, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: 2 of 3 images converted to grayscale" in result.stderr and len(result.stdout.splitlines()) == 3
    with pytest.raises(ConfigError, match=r"cannot read image .*missing\.png .*: pass image files"):
        predict(str(model), [str(tmp_path / "missing.png")])
    with pytest.raises(ConfigError, match="--top must be at least 1"):
        predict(str(model), files, top=0)


def test_an_export_whose_layers_were_edited_is_refused(tmp_path):
    model = grayscale_export(tmp_path / "gray.int8.pt")
    payload = torch.load(model, weights_only=True)
    payload["layers"].popitem()
    torch.save(payload, tmp_path / "edited.int8.pt")
    with pytest.raises(ConfigError, match="its layers do not fit the model it names"):
        predict(str(tmp_path / "edited.int8.pt"), [])


@pytest.mark.parametrize("entry", ["train last", "eval", "export", "predict"])
def test_entry_points_print_one_line_and_exit_2_on_a_truncated_file(entry, bad_files, tmp_path):
    path, _ = bad_files["truncated"]
    before = path.read_bytes()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(before)
    args = {"train last": ("train.py", *TRAIN, "ckpt_path=last", f"hydra.run.dir={run}"),
            "eval": ("eval.py", *DATA, "trainer=cpu", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'e'}"),
            "export": ("export.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'x'}"),
            "predict": ("predict.py", str(path), str(path))}[entry]
    result = run_script(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1
    assert path.read_bytes() == before and (run / "checkpoints" / "last.ckpt").read_bytes() == before
