"""BatchNorm recalibration: re-estimate the running statistics on training images before each evaluation.

An adder layer's outputs are sums of |x - w| over hundreds of terms, so their scale moves fast while the
weights are still moving; BatchNorm's running averages (momentum 0.1) lag behind, and early validation
accuracy then measures stale statistics rather than the network. Recalibration resets the running
statistics, runs ``batches`` training batches through the network in train mode without gradients and with
a cumulative average (``momentum=None``), evaluates with those, and then puts the original statistics back,
so training itself is untouched: weights and optimizer follow exactly the same path with it on or off (the
calibration images are drawn with their own seeded generator, without augmentation, and draw nothing from
the global random state).

The accuracy with the original (stale) statistics is measured on the same batches and logged beside it as
``val/acc_raw`` (``test/acc_raw``), so both curves come from one run. Off by default (``recalibrate_bn=0``),
so that reported numbers stay comparable with the paper's.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from addernet.errors import ConfigError

BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BATCHNORM_TYPES) and m.track_running_stats]


def running_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in batchnorm_layers(model)]


def load_running_stats(model: nn.Module, stats) -> None:
    for m, (mean, var, count) in zip(batchnorm_layers(model), stats):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)


@torch.no_grad()
def recalibrate(model: nn.Module, batches) -> int:
    """Replace the running statistics by their average over ``batches`` (input tensors); returns images used."""
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    images = 0
    try:
        for x in batches:
            model(x)
            images += x.shape[0]
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    return images


class BatchNormRecalibration(pl.Callback):
    """Evaluate with BatchNorm statistics re-estimated on ``batches`` training batches (0: off)."""

    def __init__(self, batches: int = 0):
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
            raise ConfigError(f"recalibrate_bn must be a number of training batches >= 0, got {batches!r}")
        self.batches = batches
        self._raw_stats = None
        self._raw_acc: MulticlassAccuracy | None = None

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.batches or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "calibration_loader"):
            raise ConfigError(f"recalibrate_bn needs a data module that serves calibration batches; "
                             f"{type(datamodule).__name__} does not: set recalibrate_bn=0")
        self._raw_stats = running_stats(pl_module.net)
        loader = datamodule.calibration_loader(self.batches)
        batches = (trainer.strategy.batch_to_device(b)[0] for b in loader)  # normalised, not augmented
        recalibrate(pl_module.net, batches)
        self._raw_acc = MulticlassAccuracy(pl_module.num_classes, average="micro").to(pl_module.device)

    def _batch_end(self, pl_module: pl.LightningModule, batch) -> None:
        """The same batch with the original statistics, for the ``*/acc_raw`` curve."""
        if self._raw_stats is None:
            return
        x, y = batch
        calibrated = running_stats(pl_module.net)
        load_running_stats(pl_module.net, self._raw_stats)
        with torch.no_grad():
            self._raw_acc.update(pl_module(x), y)
        load_running_stats(pl_module.net, calibrated)

    def _end(self, pl_module: pl.LightningModule, stage: str) -> None:
        if self._raw_stats is None:
            return
        pl_module.log(f"{stage}/acc_raw", self._raw_acc.compute(), sync_dist=True)
        load_running_stats(pl_module.net, self._raw_stats)  # training goes on exactly as without recalibration
        self._raw_stats = self._raw_acc = None

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(pl_module, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end(pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_end(pl_module, batch)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(pl_module, "test")
