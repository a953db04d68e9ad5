"""Runs that survive interruption and bad numbers: signal handling, atomic checkpoints, non-finite checks."""

from __future__ import annotations

import csv
import os
import signal
import time
import tempfile
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Interrupted(SystemExit):
    """Training stopped on a signal after saving ``last.ckpt``; resume with ``ckpt_path=last``."""


class CheckpointOnSignal(pl.Callback):
    """On SIGTERM, SIGUSR1 (schedulers' warnings) or SIGINT (Ctrl-C): finish the current training step, save
    ``last.ckpt`` next to the other checkpoints, and stop with exit status 128 + signal number.

    The handlers only set a flag, so the checkpoint is always taken between two steps, never inside one.
    """

    SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not received:
            return
        folder = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else trainer.default_root_dir)
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        signum = self.received or signal.SIGTERM
        rank_zero_warn(f"received {signal.Signals(signum).name}: saved {path} after step {trainer.global_step}; "
                       f"resume with ckpt_path=last hydra.run.dir={trainer.default_root_dir}")
        self._restore()
        raise Interrupted(128 + int(signum))


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


class _HistoryKeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one keeps what it holds (see below)."""

    def __init__(self, log_dir: str, resume_step: int | None):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:  # a new run in a used directory: the old file stays, under another name
            path.rename(path.with_name(f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            # rows past the checkpoint are logged again by the resumed run
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) <= self.resume_step]
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".csv", dir=path.parent)
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = sorted(keys)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that nothing already logged is lost: a resumed run (``ckpt_path=``) appends
    to its ``metrics.csv`` after the checkpoint's step, and a new run in a directory that already has one
    renames the old file ``metrics.before-<time>.csv``."""

    resume_step: int | None = None

    def continue_from(self, step: int) -> None:
        """Resuming from a checkpoint taken at global step ``step``."""
        self.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(self.log_dir, self.resume_step)
        return self._experiment
