import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from addernet.experiments.run import train
from addernet.models import list_models
from data_files import write_image_folders, write_mnist_idx
from hydra_helpers import CONF, compose_config, run_script

DATA = ["cifar10", "imagenet_cifar10", "imagenet_subset", "mnist", "synthetic"]
FAST = ["trainer=cpu", "logger=csv", "run_name=test"]
TINY = ["data=synthetic", "data.train_size=64", "data.test_size=32", "data.image_size=8", "data.batch_size=16"]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", list_models())
def test_every_model_and_data_composes(model, data, tmp_path):
    cfg = compose_config([f"model={model}", f"data={data}", "trainer=cpu"], tmp_path)
    assert cfg.model.name == model and cfg.data._target_.startswith("addernet.data.")
    assert cfg.trainer.accelerator == "cpu" and cfg.adalr.mode == "on"


@pytest.mark.parametrize("group", ["trainer", "logger", "adalr", "scheduler", "experiment", "debug", "sweep"])
def test_every_choice_of_every_group_composes(group, tmp_path):
    for choice in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = compose_config([f"{group}={choice}"], tmp_path)
        if group in ("trainer", "scheduler", "adalr"):
            assert "_target_" in cfg[group]


def test_components_instantiate(tmp_path):
    cfg = compose_config(FAST + ["scheduler=step", "adalr=ilr"], tmp_path)
    assert instantiate(cfg.adalr).ilr_factor == 100
    settings = instantiate(cfg.optimizer).keywords
    assert {k: settings[k] for k in ("lr", "momentum", "weight_decay", "nesterov")} == {
        "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005, "nesterov": False}
    model = instantiate(cfg.model, num_classes=10)
    assert {m.weight_grad for m in model.modules() if hasattr(m, "weight_grad")} == {"full"}


def tiny_cifar_folders(root: Path) -> Path:
    write_image_folders(root / "cifar", {"train": 2, "test": 1}, ext=".png")
    return root / "cifar"


def tiny_mnist(root: Path) -> Path:
    from addernet.data.mnist import RAW_DIR

    write_mnist_idx(root / "mnist" / RAW_DIR, "train", 16)
    write_mnist_idx(root / "mnist" / RAW_DIR, "test", 8, seed=1)
    return root / "mnist"


def tiny_imagenet(root: Path, wnids: tuple[str, ...] = ("n01", "n02", "n03")) -> Path:
    write_image_folders(root / "imagenet", {"train": 2, "val": 1}, classes=wnids, size=(36, 36), ext=".JPEG")
    return root / "imagenet"


@pytest.mark.parametrize("data", DATA)
def test_fast_dev_run_for_each_data_module(data, tmp_path):
    extra = {"cifar10": [f"data.root={tiny_cifar_folders(tmp_path)}", "data.download=false", "data.num_workers=0",
                         "data.batch_size=8"],
             "imagenet_cifar10": [f"data.root={tiny_imagenet(tmp_path, ('n02690373', 'n02123045'))}",
                                  "data.batch_size=4"],
             "imagenet_subset": [f"data.root={tiny_imagenet(tmp_path)}", "data.image_size=32", "data.num_workers=0",
                                 "data.batch_size=4", "data.num_classes=3", "model=adder_resnet18"],
             "mnist": [f"data.root={tiny_mnist(tmp_path)}", "data.download=false", "data.batch_size=8",
                       "model=adder_lenet5_bn"],
             "synthetic": TINY[1:]}[data]
    cfg = compose_config(FAST + ["debug=fdr", f"data={data}"] + extra, tmp_path)
    metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_adder_resnet20_learns_synthetic_data_in_a_cpu_minute(tmp_path):
    # the README's quick-start command: data=synthetic trainer=cpu trainer.max_epochs=2
    cfg = compose_config(FAST + ["data=synthetic", "trainer.max_epochs=2"], tmp_path)
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5  # chance is 0.1
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_eval_of_a_trained_checkpoint_matches_the_end_of_training(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", *FAST, *TINY, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    result = run_script("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "trainer=cpu", *TINY,
                        f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test/acc: {trained['test/acc']:.4f}" in result.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] == trained["test/acc"]
    per_class = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,images,top1" and len(per_class) == 11  # synthetic data: classes 0..9


def test_a_cifar10_model_evaluated_on_imagenet_images_of_its_classes(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", *FAST, *TINY, "data.image_size=32", "data.train_size=32", "trainer.max_epochs=1",
                        f"hydra.run.dir={run_dir}", cwd=tmp_path)  # CIFAR-sized images
    assert result.returncode == 0, result.stderr[-3000:]
    imagenet = tmp_path / "imagenet"  # airliner, tabby cat, and the tench, which is none of CIFAR-10's classes
    write_image_folders(imagenet, {"val": 3}, classes=("n02690373", "n02123045", "n01440764"), size=(48, 40),
                        ext=".JPEG")
    result = run_script("eval.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer=cpu",
                        "data=imagenet_cifar10", f"data.root={imagenet}", f"hydra.run.dir={tmp_path / 'eval'}",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    per_class = {k.rsplit("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/acc_class/")}
    assert set(per_class) == {"airplane", "cat"}  # the classes that have images
    assert metrics["test/acc"] == pytest.approx((per_class["airplane"] + per_class["cat"]) / 2)
    rows = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert rows[1].startswith("airplane,3,") and rows[3] == "bird,0," and rows[4].startswith("cat,3,")
    assert "test/acc_class/airplane:" in result.stdout


def test_ablation_sweep_runs_six_jobs_and_prints_a_table(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_script("train.py", "-m", "sweep=ablation", "debug=fdr", *FAST[:2], *TINY,
                        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == [str(i) for i in range(6)]
    table = (sweep_dir / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| model.weight_grad=")]
    assert len(rows) == 6 and all(r.split("|")[2].strip() == "1" for r in rows)  # one finished run each
    assert {r.split("|")[1].strip() for r in rows} == {f"model.weight_grad={g} adalr={a}"
                                                       for g in ("full", "sign") for a in ("on", "off", "ilr")}
    assert "| model.weight_grad=sign adalr=ilr |" in result.stdout
    shared = next(line for line in table.splitlines() if line.startswith("Settings all runs share: "))
    assert "model.name=adder_resnet20" in shared and "data.batch_size=16" in shared  # the table describes itself


@pytest.mark.parametrize("override, message", [
    ("model=adder_resnet21", "Could not find 'model/adder_resnet21'"),
    ("trainer.max_epoch=3", "Key 'max_epoch' not in 'TrainerConfig'"),
])
def test_config_mistakes_fail_before_any_work(override, message, tmp_path):
    result = run_script("train.py", override, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


def test_missing_data_is_one_message_not_a_traceback(tmp_path):
    result = run_script("train.py", *FAST, "data.root=nowhere", "data.download=false", cwd=tmp_path, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert "CIFAR-10 not found under" in output and "data.download=true to fetch it" in output
    assert "Traceback" not in output
