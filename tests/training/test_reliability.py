import signal
import warnings

import pytest
import torch

from addernet.training.nonfinite import NonFiniteError
from addernet.training.signals import Interrupted
from addernet.experiments.report import curve_rows, read_curves
from addernet.experiments.run import train
from hydra_helpers import ROOT, compose_config
from reliability_helpers import weights

# 6 batches an epoch, 2 epochs; random crops and flips on, so the RNG state matters too
# the plain-PyTorch adder layers: what these runs test (stops, resumes, sweeps) does not depend on the kernels,
# and each training process would compile the CPU ones for itself
BASE = ["trainer=cpu", "logger=csv", "run_name=test", "data=synthetic", "data.image_size=8", "data.train_size=96",
        "data.test_size=32", "data.batch_size=16", "trainer.max_epochs=2", "trainer.deterministic=true",
        "adder_backend=reference"]


def interrupt_at(step: int, signum: int) -> list[str]:
    return ["+callbacks.interrupt._target_=reliability_helpers.SignalAtStep", f"+callbacks.interrupt.step={step}",
            f"+callbacks.interrupt.signum={signum}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("whole")
    return run, train(compose_config(BASE, run))


def assert_same_ending(run, resumed, uninterrupted) -> None:
    """A resumed run ends with the uninterrupted run's weights, bit for bit, its metrics and its history."""
    whole_dir, whole = uninterrupted
    final_whole, final_resumed = weights(whole_dir / "checkpoints" / "last.ckpt"), weights(
        run / "checkpoints" / "last.ckpt")
    for key, value in final_whole.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=0, atol=0, msg=key)
    for key in ("val/acc", "val/acc_best", "test/acc", "train/loss_epoch", "train/acc"):
        assert resumed[key] == whole[key], key
    # the history survives the resume: both epochs' curves, as in the uninterrupted run
    assert read_curves(run)["val/acc"] == read_curves(whole_dir)["val/acc"]
    seconds = [v for _, v in read_curves(run)["perf/train_seconds"]]
    assert len(seconds) == 2 and all(0 < v < 600 for v in seconds)  # not the time since the machine booted


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2, signal.SIGINT],  # SIGUSR1: as SIGUSR2
                         ids=lambda s: s.name)
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(signum, uninterrupted, tmp_path):
    run = tmp_path / "interrupted"
    with pytest.raises(Interrupted) as stop:
        train(compose_config(BASE + interrupt_at(8, int(signum)), run))  # during step 9: epoch 2, batch 3 of 6
    assert stop.value.code == 128 + int(signum)
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 9 and saved["epoch"] == 1  # the step was finished, then saved
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed = train(compose_config(BASE + ["ckpt_path=last"], run))
    assert not [w for w in seen if "not resumable" in str(w.message)]  # it is resumable: no false alarm
    assert_same_ending(run, resumed, uninterrupted)


def test_slurm_warning_signal_checkpoints_mid_epoch_requeues_and_resumes_exactly(uninterrupted, tmp_path):
    """As on a SLURM cluster: the job gets SIGUSR2 before its time limit; it saves at the end of the step,
    Lightning's SLURM environment writes its hpc checkpoint and runs ``scontrol requeue``; the requeued job
    (ckpt_path=last) ends as if never stopped."""
    import json
    import os
    import stat

    from hydra_helpers import run_script

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train",
           "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    run = tmp_path / "job"
    result = run_script("train.py", *BASE, *interrupt_at(8, int(signal.SIGUSR2)), f"hydra.run.dir={run}",
                        cwd=tmp_path, env=env)
    assert result.returncode == 128 + signal.SIGUSR2, result.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    for path in (run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt"):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved["global_step"] == 9 and saved["epoch"] == 1, path  # mid-epoch: after batch 4 of 6
    # the requeued job, as SLURM starts it again: same command, no ckpt_path: it finds its hpc checkpoint
    result = run_script("train.py", *BASE, f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr and "hpc_ckpt_1.ckpt" in result.stdout + result.stderr
    assert_same_ending(run, json.loads((run / "metrics.json").read_text()), uninterrupted)


def test_ckpt_path_hpc_without_a_requeue_checkpoint_is_one_line(tmp_path):
    from addernet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ckpt_path=hpc: there is no hpc_ckpt_<N>\.ckpt in"):
        train(compose_config(BASE + ["ckpt_path=hpc"], tmp_path))


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    from addernet.training.checkpoints import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def crash_midway(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


POISON = ["+callbacks.poison._target_=reliability_helpers.PoisonGradientAtStep", "+callbacks.poison.step=3"]


def test_non_finite_gradient_stops_naming_step_and_layer(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at step 3 .*gradient of net\.stages\.1\.0\.conv2\.weight"):
        train(compose_config(BASE + POISON, tmp_path))


def test_non_finite_gradient_can_be_skipped_and_counted(tmp_path):
    metrics = train(compose_config(BASE + POISON + ["nonfinite=skip"], tmp_path))
    assert metrics["epochs"] == 2 and all(torch.isfinite(v).all() for v in weights(
        tmp_path / "checkpoints" / "last.ckpt").values() if v.is_floating_point())
    assert "nonfinite/skipped_steps" in read_curves(tmp_path)


def test_corrupt_images_are_refused_or_skipped_by_config(tmp_path):
    from addernet.data import CIFAR10DataModule, DataError
    from data_files import write_image_folders

    write_image_folders(tmp_path, {"train": 7, "test": 1}, ext=".png")  # includes grayscale, palette, RGBA
    broken = tmp_path / "train" / "cat" / "0001.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=r"cannot read image .*cat/0001\.png.*data\.bad_images=skip"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, bad_images="skip")
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape == (69, 3, 32, 32) and (y == 3).sum() == 6  # the cat folder lost one image
    assert broken.is_file()  # nothing of the user's is deleted


def test_imagenet_subset_skips_an_unreadable_file_when_asked(tmp_path):
    from addernet.data import DataError, ImageNetSubsetDataModule
    from data_files import write_image_folders

    write_image_folders(tmp_path, {"train": 2, "val": 1}, classes=("n01", "n02"), size=(40, 40), ext=".JPEG")
    (tmp_path / "train" / "n01" / "0000.JPEG").write_bytes(b"not a jpeg")
    strict = ImageNetSubsetDataModule(root=str(tmp_path), num_classes=2, image_size=32, num_workers=0)
    strict.setup()
    with pytest.raises(DataError, match="0000.JPEG"):
        strict.datasets["train"][0]
    lenient = ImageNetSubsetDataModule(root=str(tmp_path), num_classes=2, image_size=32, num_workers=0,
                                       bad_images="skip")
    lenient.setup()
    with pytest.warns(UserWarning, match="skipped unreadable image"):
        image, label = lenient.datasets["train"][0]
    assert image.shape == (3, 32, 32) and lenient.datasets["train"].skipped == 1


def test_empty_class_folder_is_named(tmp_path):
    from addernet.data import CIFAR10DataModule, DataError
    from data_files import write_image_folders

    write_image_folders(tmp_path, {"train": 1, "test": 1})
    for f in (tmp_path / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test/dog holds no images"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()


def test_resuming_from_another_models_checkpoint_is_refused(tmp_path):
    train(compose_config(BASE + ["model=resnet20", "trainer.max_epochs=1"], tmp_path / "cnn"))
    ckpt = tmp_path / "cnn" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="holds a resnet20 but model=adder_resnet20"):
        train(compose_config(BASE + [f"ckpt_path={ckpt}"], tmp_path / "adder"))


def test_eval_refuses_foreign_checkpoints_and_mismatched_classes(tmp_path):
    from addernet.experiments.evaluation import evaluate

    train(compose_config(BASE + ["trainer.max_epochs=1"], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    with pytest.raises(ValueError, match="has 10 classes but data=.* has 4"):
        evaluate(compose_config([f"ckpt_path={ckpt}", "trainer=cpu", "data=synthetic", "data.num_classes=4",
                                 "data.image_size=8"], tmp_path / "eval", name="eval"))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="was not written by addernet's src/train.py"):
        evaluate(compose_config([f"ckpt_path={foreign}", "trainer=cpu", "data=synthetic"], tmp_path / "e2",
                                name="eval"))


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("optimizer.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
    ("data.augment=maybe", "Value 'maybe' is not a valid bool"),
])
def test_overrides_of_the_wrong_type_are_named(override, message, tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=f"Error merging override {override}") as raised:
        compose_config(BASE + [override], tmp_path)
    assert message in str(raised.value.__cause__)


def test_a_failing_job_does_not_stop_its_sweep(tmp_path):
    from hydra_helpers import run_script

    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "debug=fdr", *BASE[:2], *BASE[3:8], BASE[-1], "data.batch_size=16,0",
                        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "failed.json").is_file()
    report = (sweep / "report.md").read_text()
    assert "| data.batch_size=0 | 0 (1 failed) |" in report
    assert "data.batch_size must be a positive integer, got 0" in report
    assert "job failed" in result.stderr + result.stdout


def test_slurm_launcher_composes_and_the_local_submitit_launcher_runs_a_sweep(tmp_path):
    from hydra_helpers import run_script

    cfg = compose_config(["hydra/launcher=slurm"], tmp_path)
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout == 10
    assert cfg.trainer is not None
    sweep = tmp_path / "sweep"
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", "debug=fdr", *BASE[:2], *BASE[3:8], BASE[-1],
                        "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "1" / "metrics.json").is_file()


def test_ckpt_path_last_starts_fresh_when_there_is_no_checkpoint_yet(tmp_path, caplog):
    """The first attempt of a requeued cluster job has nothing to resume from; a user who forgot
    hydra.run.dir is told so."""
    metrics = train(compose_config(BASE + ["ckpt_path=last", "trainer.max_epochs=1"], tmp_path))
    assert metrics["epochs"] == 1 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert "so this is a new run. To resume a run, also pass hydra.run.dir=" in caplog.text


def test_a_new_run_in_a_used_directory_keeps_the_old_metrics(tmp_path):
    train(compose_config(BASE + ["trainer.max_epochs=1"], tmp_path))
    first = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    history = curve_rows(tmp_path)
    train(compose_config(BASE + ["trainer.max_epochs=1", "seed=7"], tmp_path))
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text() == first  # kept as it was
    again = curve_rows(tmp_path)  # the new run's rows (from step 0) are the history now
    assert len(again) == len(history) and again != history
