import json
from pathlib import Path

import pytest
from PIL import Image

from addernet.training.callbacks import FEATURES_PLOT, HISTOGRAMS_FILE, STATS_FILE
from hydra_helpers import run_script
from wandb_files import summarize

# the plain-PyTorch adder layers: what the callbacks record does not depend on the kernels, and each job of a
# sweep would compile the CPU ones for itself
SMALL = ["data=synthetic", "data.image_size=8", "data.train_size=128", "data.test_size=64", "data.batch_size=32",
         "trainer=cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=2", "adder_backend=reference"]


def test_wandb_offline_run_holds_metrics_adder_statistics_histograms_and_config(tmp_path):
    run_dir = tmp_path / "run"
    result = run_script("train.py", "logger=wandb", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    keys, histograms, config = summarize(files[0])
    assert {"train/loss_step", "val/acc", "val/acc_top5", "val/acc_best", "test/acc", "lr-SGD",
            "perf/train_img_per_s", "perf/train_seconds", "perf/val_seconds", "perf/epoch_seconds"} <= keys
    for layer in ("stages.0.0.conv1", "stages.2.0.downsample.0"):
        assert {f"adder/{layer}/grad_norm", f"adder/{layer}/alpha", f"adder/{layer}/weight_norm"} <= keys
    assert {"weights/adder/_type", "weights/conv/_type"} <= histograms
    assert any(k.startswith("features/pca") for k in keys)
    assert {"model", "data", "trainer", "adalr", "optimizer", "model_stats"} <= config  # the nested config
    # the same numbers are kept in the run directory
    stats = json.loads((run_dir / STATS_FILE).read_text())
    assert stats["parameters"] == 272484 and stats["multiplications_per_image"] > 0
    records = [json.loads(line) for line in (run_dir / HISTOGRAMS_FILE).read_text().splitlines()]
    assert {(r["epoch"], r["when"], r["kind"]) for r in records} == {
        (e, w, k) for e in (0, 1) for w in ("start", "end") for k in ("adder", "conv")}
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()  # the local copy the report reads
    with Image.open(run_dir / FEATURES_PLOT) as image:
        assert image.width > 300 and image.height > 300


def test_report_of_a_small_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_script("train.py", "-m", "logger=csv", *SMALL, "adalr=on,off", "seed=1,2",
                        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "report"
    result = run_script("report.py", str(sweep_dir), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| adalr=")]
    assert [r.split("|")[1].strip() for r in rows] == ["adalr=on", "adalr=off"]  # one row per setting
    assert all(r.split("|")[2].strip() == "2" for r in rows)  # two seeds each
    assert all("±" in r.split("|")[4] or r.split("|")[4].strip().endswith("%") for r in rows)
    for name in ("val_acc_curves.png", "best_acc_bars.png", "weight_histograms.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    assert (out / "report.md").read_text().count("![") == 3


def test_report_of_nothing_is_a_clear_error(tmp_path):
    result = run_script("report.py", str(tmp_path), cwd=tmp_path)
    assert result.returncode != 0 and "no runs" in result.stderr
    assert not Path(tmp_path / "report.md").exists()


def test_each_job_of_a_multirun_is_its_own_wandb_run_in_the_sweeps_group(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "logger=wandb", *SMALL[:5], "trainer=cpu", "debug=limit",
                        "adalr=on,off", "sweep_name=my_study", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 2 and runs[0].name != runs[1].name
    for job, path in zip(("0", "1"), runs):
        assert path.parents[2].name == job
        _, _, config = summarize(path)
        assert "sweep_name" in config
        assert b"my_study" in path.read_bytes()  # the W&B group


def test_wandb_with_a_key_but_no_route_falls_back_to_offline_quickly(tmp_path, monkeypatch, caplog):
    import os
    import time

    from addernet.experiments.wandb_setup import prepare_wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    prepare_wandb(tmp_path)
    assert time.perf_counter() - start < 5
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_SILENT"] == "true"
    assert f"the W&B server cannot be reached); upload later with: wandb sync {tmp_path}/wandb" in caplog.text


def test_training_throughput_leaves_out_validation(tmp_path):
    from addernet.experiments.report import read_curves
    from addernet.experiments.run import train
    from hydra_helpers import compose_config

    slow = ["+callbacks.slow._target_=reliability_helpers.SlowValidation", "+callbacks.slow.seconds=3"]
    train(compose_config(["logger=csv", "run_name=test", "data=synthetic", "data.image_size=8", "data.train_size=64",
                          "data.test_size=32", "data.batch_size=32", "trainer=cpu", "trainer.max_epochs=1",
                          "recalibrate_bn=1", *slow], tmp_path))
    curves = read_curves(tmp_path)
    (_, train_s), = curves["perf/train_seconds"]
    (_, val_s), = curves["perf/val_seconds"]
    (_, epoch_s), = curves["perf/epoch_seconds"]
    (_, img_s), = curves["perf/train_img_per_s"]
    assert val_s >= 3 and train_s < 3  # two small steps; the slow validation is counted apart
    assert epoch_s == pytest.approx(train_s + val_s, rel=1e-5) and img_s == pytest.approx(64 / train_s, rel=1e-5)
