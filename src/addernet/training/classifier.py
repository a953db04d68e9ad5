"""The LightningModule: image classification with any model of :mod:`addernet.models`, trained with AdaLR."""

from __future__ import annotations

from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from addernet.training.adalr import AdaLRStats, AdaptiveLR

CONFIG_KEY = "addernet_config"  # where checkpoints keep the run's resolved config
RNG_KEY = "addernet_rng_states"
INPUT_SIZE_KEY = "addernet_input_size"  # (C, H, W) of the training images: eval checks data against it


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classification with top-1/top-5 accuracy, the best validation accuracy, and AdaLR.

    ``optimizer(params)`` and ``scheduler(optimizer, total_steps)`` are builders (Hydra ``_partial_``);
    ``adalr`` rescales the adder-layer gradients in :meth:`optimizer_step` (see :mod:`addernet.training.adalr`).
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, adalr: AdaptiveLR | None = None,
                 num_classes: int | None = None, run_config: dict | None = None,
                 teacher: nn.Module | None = None, kd_temperature: float = 4.0, kd_weight: float = 0.5):
        super().__init__()
        self.net = net
        # a frozen teacher for distillation; kept out of the module tree: not trained, not in checkpoints
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []
        self.kd_temperature, self.kd_weight = kd_temperature, kd_weight
        self._teacher_acc = MulticlassAccuracy(net.num_classes, average="micro") if teacher is not None else None
        self._teacher_logged = False
        self.optimizer_builder, self.scheduler_builder = optimizer, scheduler
        self.adalr = adalr or AdaptiveLR(mode="off")
        self.num_classes = num_classes or net.num_classes
        self.run_config = run_config  # saved into checkpoints so that eval can rebuild the model
        self.last_adalr: AdaLRStats | None = None
        self.input_size: tuple[int, ...] | None = None  # (C, H, W) of the images it was trained on
        top5 = min(5, self.num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{name}": MulticlassAccuracy(self.num_classes, top_k=k, average="micro")
            for stage in ("train", "val", "test") for name, k in (("acc", 1), ("acc_top5", top5))})
        self.losses = nn.ModuleDict({f"{stage}_loss": MeanMetric() for stage in ("train", "val", "test")})
        self.val_acc_best = MaxMetric()
        self.test_acc_per_class = MulticlassAccuracy(self.num_classes, average=None)  # top-1 per class (eval)
        for metric in (*self.metrics.values(), *self.losses.values(), self.val_acc_best):
            metric.persistent(True)  # in checkpoints: a resumed run keeps its best accuracy and epoch sums

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)
            self._teacher_acc.to(self.device)

    def distillation_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Hinton et al.'s logits distillation: T^2 * KL(teacher || student) at temperature T."""
        t = self.kd_temperature
        return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                        reduction="batchmean") * t * t

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if self.teacher is not None and stage in ("train", "val"):
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            if stage == "train":
                kd = self.distillation_loss(logits, teacher_logits)
                self.log("train/kd_loss", kd, on_step=False, on_epoch=True, batch_size=y.numel())
                loss = (1 - self.kd_weight) * loss + self.kd_weight * kd
            elif not self._teacher_logged and not self.trainer.sanity_checking:
                self._teacher_acc.update(teacher_logits, y)
        self.losses[f"{stage}_loss"](loss.detach(), weight=y.numel())
        self.metrics[f"{stage}_acc"](logits.detach(), y)
        self.metrics[f"{stage}_acc_top5"](logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", self.losses[f"{stage}_loss"], on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=y.numel())
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], on_step=False, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc_top5", self.metrics[f"{stage}_acc_top5"], on_step=False, on_epoch=True)
        return loss, logits

    def training_step(self, batch, batch_idx):
        self.input_size = self.input_size or tuple(batch[0].shape[1:])
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        _, logits = self._step(batch, "test")
        self.test_acc_per_class.update(logits.detach(), batch[1])

    def per_class_accuracy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """After a test run: each class's top-1 accuracy and its number of test images (a class without any has
        accuracy 0 here; the report lists it as having no images)."""
        metric = self.test_acc_per_class
        return metric.compute(), metric.tp + metric.fn  # its true positives and misses: the class's images

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        if self.teacher is not None and not self._teacher_logged:  # once: the teacher does not change
            self.log("teacher/val_acc", self._teacher_acc.compute(), sync_dist=True)
            self._teacher_logged = True
        self.val_acc_best(self.metrics["val_acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """Apply AdaLR to the final gradient: after accumulation and the DDP all-reduce, before clipping.

        The closure runs forward and backward; Lightning calls it inside ``optimizer.step``. Wrapping it puts
        AdaLR after the gradient is complete; with a GradScaler the loss scale is still inside the gradient
        there, and AdaLR keeps it, so the unscaled result equals the float32 one. Clipping (configured on
        the trainer) acts afterwards, on the rescaled gradient; weight decay and momentum act inside SGD.
        """
        def closure_with_adalr():
            loss = optimizer_closure()
            scaler = getattr(self.trainer.precision_plugin, "scaler", None)
            self.last_adalr = self.adalr.apply(self.net, scaler.get_scale() if scaler is not None else 1.0)
            return loss

        optimizer.step(closure=closure_with_adalr)

    def configure_optimizers(self):
        optimizer = self.optimizer_builder(params=self.parameters())
        if self.scheduler_builder is None:
            return optimizer
        scheduler = self.scheduler_builder(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        if self.input_size is not None:
            checkpoint[INPUT_SIZE_KEY] = list(self.input_size)
        if self._trainer is not None and self.trainer.world_size > 1:
            self._sum_metric_states_over_processes(checkpoint)
        # the augmentation's random draws continue where they stopped when the run resumes
        checkpoint[RNG_KEY] = {"torch": torch.get_rng_state(),
                               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def _metric_states(self) -> dict[str, torch.Tensor]:
        """The states of the metrics kept in checkpoints, by their key in the module's state_dict."""
        return {f"{name}.{key}": value for name, m in self.named_modules() if isinstance(m, Metric)
                for key, value in m.state_dict().items()}

    def _sum_metric_states_over_processes(self, checkpoint: dict) -> None:
        """With several processes each holds its part of the epoch's metric sums, and the checkpoint keeps
        rank 0's state_dict: put the sums over all processes there (every rank calls this: a collective)."""
        for name, m in self.named_modules():
            if isinstance(m, Metric) and m.state_dict():
                with m.sync_context(should_sync=True, should_unsync=True):
                    checkpoint["state_dict"].update({f"{name}.{k}": v.clone() for k, v in m.state_dict().items()})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.global_rank > 0:  # rank 0 takes the sums, the others start empty
            checkpoint["state_dict"].update(self._metric_states())
        if INPUT_SIZE_KEY in checkpoint:
            self.input_size = tuple(checkpoint[INPUT_SIZE_KEY])
        states = checkpoint.get(RNG_KEY)
        if states:
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states["cuda"])
