"""Training that meets a NaN or infinite gradient: stop naming where, or skip the update and count it."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn


class NonFiniteError(FloatingPointError):
    pass


class NonFiniteGuard(pl.Callback):
    """Stop on a NaN/inf gradient (a non-finite loss makes one), naming the step and the first layer whose
    gradient is not finite; or, with ``action="skip"``, drop that step's update and count it
    (``nonfinite/skipped_steps``). With a GradScaler (``16-mixed``) overflowing steps are the scaler's to skip."""

    def __init__(self, action: str = "stop"):
        if action not in ("stop", "skip"):
            raise ValueError(f"non-finite action must be 'stop' or 'skip', got {action!r}")
        self.action, self.skipped = action, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not grads or torch.isfinite(torch.stack([g.sum() for _, g in grads])).all():
            return  # one synchronisation per step: a sum is finite only if every element is
        bad = next(name for name, g in grads if not torch.isfinite(g).all())
        what = f"the gradient of {bad}"
        if self.action == "stop":
            raise NonFiniteError(f"non-finite value at step {trainer.global_step} (epoch {trainer.current_epoch}, "
                                 f"batch {trainer.fit_loop.epoch_loop.batch_idx}): {what}. Lower the learning "
                                 f"rate, check the data, or set nonfinite=skip to skip such steps.")
        for p in pl_module.parameters():  # no update from this step: SGD leaves gradient-less parameters alone
            p.grad = None
        self.skipped += 1
        rank_zero_warn(f"skipped step {trainer.global_step}: non-finite {what} ({self.skipped} skipped so far)")
        pl_module.log("nonfinite/skipped_steps", float(self.skipped), on_step=False, on_epoch=True, reduce_fx="max")
