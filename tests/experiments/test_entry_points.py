"""What a user meets at the command line: every documented choice runs, mistakes are one line, outputs exist."""

import json

import pytest
import torch

from addernet.experiments.jobs import write_metrics
from addernet.experiments.run import train
from hydra_helpers import CONF, compose_config, run_script

TINY = ["trainer=cpu", "run_name=test", "data=synthetic", "data.train_size=64", "data.test_size=32",
        "data.image_size=8", "data.batch_size=16", "trainer.max_epochs=1"]


@pytest.mark.parametrize("choice", ["logger=none", "logger=csv", "debug=overfit", "debug=limit"])
def test_documented_choices_run(choice, tmp_path):
    extra = ["trainer.max_epochs=3"] if choice == "debug=overfit" else []  # 30 epochs of one batch is slow
    metrics = train(compose_config(TINY + ["logger=csv", choice] + extra, tmp_path))
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.parametrize("override, message", [
    ("+trainer.foo=1", "trainer.foo is not a setting of TrainerConfig: remove +trainer.foo"),
    ("ckpt_path=/nonexistent.ckpt", "ckpt_path=/nonexistent.ckpt: no such file"),
    pytest.param("trainer=gpu", "PyTorch sees no CUDA GPU: use trainer=cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
    ("threads=0", "threads must be a positive integer or auto, got 0"),
])
def test_a_mistake_is_one_line_with_status_2(override, message, tmp_path):
    result = run_script("train.py", *TINY, "logger=csv", override, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "_target_" not in output  # no traceback, no config dump


@pytest.mark.parametrize("override, message", [  # Hydra's composing errors, made one line
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc: Value 'abc' of type 'str' could not be converted to Int"),
    ("optimizer.lrr=0.1", "Key 'lrr' not in 'SGDConfig'"),
    ("model=nope", "Could not find 'model/nope': choose one of adder_lenet5_bn, "),
    ("scheduler=null", "the config cannot be composed: ValueError: Config group override must be a string"),
])
def test_a_config_hydra_cannot_compose_is_one_line_with_status_2(override, message, tmp_path):
    result = run_script("train.py", *TINY, override, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert message in result.stderr


def test_every_entry_point_says_a_composing_error_in_one_line(tmp_path):
    result = run_script("export.py", "ckpt_path=x.ckpt", "calibration.images=many", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: Error merging override calibration.images=many: Value 'many' of type "
                                     "'str' could not be converted to Integer (`--cfg job` prints every setting)")


@pytest.mark.parametrize("override", ["threads=0", "optimizer.lr=abc"])  # a job's error, Hydra's composing error
def test_the_traceback_is_there_when_asked_for(override, tmp_path):
    import os
    result = run_script("train.py", *TINY, "logger=csv", override, cwd=tmp_path, timeout=120,
                        env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_experiments_run_where_the_user_is():
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose_config([f"experiment={path.stem}"])
        assert cfg.trainer.accelerator == "auto", path.name  # trainer=gpu is the user's explicit choice


def test_metrics_file_puts_the_headline_numbers_first(tmp_path):
    write_metrics(tmp_path / "m.json", {"adder/a/grad_norm": 1.0, "epochs": 2, "test/acc": 0.5, "val/acc": 0.4,
                                        "perf/train_img_per_s": 10.0, "train/loss": 1.0, "fit_seconds": 3.0})
    keys = list(json.loads((tmp_path / "m.json").read_text()))
    assert keys == ["test/acc", "val/acc", "train/loss", "fit_seconds", "epochs", "perf/train_img_per_s",
                    "adder/a/grad_norm"]
