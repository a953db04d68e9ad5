from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from addernet.data import SyntheticDataModule
from lightning_helpers import fit, make_data, make_module


class SaveWeights(pl.Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


class FrozenBatchNorm(pl.Callback):
    """BN with its running statistics: per-rank batch statistics would make the ranks' gradients differ from
    the single-process one (SyncBatchNorm, which fixes that on GPUs, does not run on the CPU)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for m in pl_module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()


class OrderedShards(SyntheticDataModule):
    """Rank r takes samples r, r + world, ...: together the ranks see exactly the one-process batches
    (Lightning's own distributed sampler always shuffles training data)."""

    def train_dataloader(self):
        sampler = DistributedSampler(self.splits["train"], self.trainer.world_size, self.trainer.global_rank,
                                     shuffle=False)
        return DataLoader(self.splits["train"], batch_size=self.batch_size, sampler=sampler)


def calibrated_module():
    """The module with BN running statistics taken from one batch: adder outputs are all negative, so the
    initial statistics (mean 0) would leave ReLU nothing to pass."""
    module, data = make_module("on", backend="reference"), make_data(batch_size=32)
    data.setup()
    images, _ = next(iter(data.train_dataloader()))
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        module.train()(data.normalize(images))
    return module


def test_two_process_ddp_ranks_agree_and_match_one_process_on_the_global_batch(tmp_path):
    steps = 3
    fit(calibrated_module(), make_data(batch_size=16), steps=steps,
        callbacks=[FrozenBatchNorm(), SaveWeights(tmp_path / "single")])
    fit(calibrated_module(), make_data(batch_size=8, cls=OrderedShards), steps=steps, devices=2,
        strategy="ddp_spawn", use_distributed_sampler=False,
        callbacks=[FrozenBatchNorm(), SaveWeights(tmp_path / "ddp")])
    single = torch.load(tmp_path / "single" / "rank0.pt")
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    start = calibrated_module().net.state_dict()
    moved = [k for k in single if k.endswith("weight") and not torch.equal(single[k], start[k])]
    assert len(moved) > 40  # training really changed the weights
    for key in single:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0)  # identical on all ranks
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5)


# the plain-PyTorch adder layers: what this tests (each rank's place in the epoch, the metric sums) does not
# depend on the kernels, and each of the six processes would compile the CPU ones for itself
DDP_RUN = ["trainer=ddp_sim", "logger=csv", "data=synthetic", "data.image_size=8", "data.train_size=96",
           "data.test_size=32", "data.batch_size=16", "trainer.max_epochs=1", "trainer.deterministic=true",
           "adder_backend=reference"]


def test_two_process_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    """trainer=ddp_sim through the training script: 2 processes (gloo), 3 batches of 16 each in its one epoch.
    One run straight through; one stopped by a signal to rank 0 during step 2 (batch 2 of 3) and resumed with
    ckpt_path=last.
    Each process takes its shard of the epoch's order and skips what it had trained, and the epoch's metric
    sums of both processes survive the resume: the same weights and accuracy counts, bit for bit, and the same
    loss sums up to float32 rounding (the checkpoint holds both processes' partial sums added together, so the
    resumed run adds the rest of the epoch in another order: on some CPUs the last bit differs)."""
    import json
    import os
    import signal

    from hydra_helpers import ROOT, run_script
    from reliability_helpers import weights

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    whole, run = tmp_path / "whole", tmp_path / "interrupted"
    result = run_script("train.py", *DDP_RUN, f"hydra.run.dir={whole}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    interrupt = ["+callbacks.interrupt._target_=reliability_helpers.SignalAtStep", "+callbacks.interrupt.step=1",
                 f"+callbacks.interrupt.signum={int(signal.SIGUSR1)}"]
    result = run_script("train.py", *DDP_RUN, *interrupt, f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    assert result.returncode == 128 + signal.SIGUSR1, result.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and saved["epoch"] == 0  # mid-epoch, on both ranks at the same step
    result = run_script("train.py", *DDP_RUN, "ckpt_path=last", f"hydra.run.dir={run}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    final_whole, final_resumed = (weights(d / "checkpoints" / "last.ckpt") for d in (whole, run))
    moved = [k for k, v in final_whole.items() if k.endswith("weight") and not torch.equal(v, saved["state_dict"][k])]
    assert len(moved) > 20  # the resumed run trained on
    for key, value in final_whole.items():
        rounding = 1e-6 if key.startswith("losses.") else 0  # float sums added in another order
        torch.testing.assert_close(final_resumed[key], value, rtol=rounding, atol=0, msg=key)
    whole_metrics, resumed_metrics = (json.loads((d / "metrics.json").read_text()) for d in (whole, run))
    for key in ("train/acc", "val/acc", "test/acc"):
        assert resumed_metrics[key] == whole_metrics[key], key
    assert resumed_metrics["train/loss_epoch"] == pytest.approx(whole_metrics["train/loss_epoch"], rel=1e-6, abs=0)
