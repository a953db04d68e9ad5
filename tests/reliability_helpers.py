"""Callbacks that misbehave on purpose, added to runs through config overrides."""

import os
import signal
import time

import lightning.pytorch as pl
import torch


class SignalAtStep(pl.Callback):
    """Send the process of rank 0 a signal in the middle of one training step (after its backward pass, before
    its update), as a scheduler or Ctrl-C would: the other ranks learn of it only through rank 0."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), self.signum)


class PoisonGradientAtStep(pl.Callback):
    """Put a NaN into one layer's gradient at one step."""

    def __init__(self, step: int, layer: str = "net.stages.1.0.conv2.weight"):
        self.step, self.layer = step, layer

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            dict(pl_module.named_parameters())[self.layer].grad[0].fill_(float("nan"))
            self.poisoned = True


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


class SlowValidation(pl.Callback):
    """Make every validation run (not the sanity check) take at least ``seconds`` longer."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            time.sleep(self.seconds)
