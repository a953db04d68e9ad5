"""Stopping on a signal with a checkpoint that resumes exactly, and requeueing on SLURM.

Who handles what:

- **SIGTERM** (``kill``, ``scancel``, a scheduler's end): Lightning's own handler. It stops training at the end of
  the current step (``SIGTERMException``, also on every DDP rank); :class:`CheckpointOnSignal` then writes
  ``last.ckpt``.
- **SIGUSR2** (SLURM's warning before a time limit or preemption, as submitit asks for it), **SIGUSR1** and
  **SIGINT** (Ctrl-C): :class:`CheckpointOnSignal` notes the signal, lets the current step finish, writes
  ``last.ckpt``, then hands the signal to the handler that was there before it: on SLURM that is Lightning's
  requeue handler (``SLURMEnvironment(auto_requeue=True, requeue_signal=SIGUSR2)``, see :func:`cluster_plugins`),
  which writes its ``hpc_ckpt_N.ckpt`` and runs ``scontrol requeue``; in a job that submitit started
  (``hydra/launcher=slurm``) it is submitit's, which requeues the job with its countdown. The requeued job,
  in the same run directory, resumes from ``last.ckpt`` with ``ckpt_path=last``, or from the hpc checkpoint
  without it (:func:`addernet.experiments.run.resume_checkpoint`).

Why a callback at all: Python runs a signal handler wherever the main thread is, so a checkpoint taken inside
the handler (as Lightning's and submitit's would be) can fall between a step's optimizer update and its
bookkeeping, or after the augmentation drew its random numbers: the resumed run would then differ. Taken at
the end of a step, the checkpoint resumes to the same weights, bit for bit.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

REQUEUE_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM to send (sbatch --signal=USR2@<seconds>)
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # in the run directory: what ckpt_path=last resumes


class Interrupted(SystemExit):
    """Training stopped on a signal after saving ``last.ckpt``; resume with ``ckpt_path=last``."""


def cluster_plugins() -> list:
    """Under SLURM, Lightning's environment with automatic requeue on :data:`REQUEUE_SIGNAL`; else none."""
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL)]
    return []


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where ``ckpt_path=last`` looks: the run directory's ``checkpoints/last.ckpt``."""
    return Path(trainer.default_root_dir) / LAST_CHECKPOINT


class CheckpointOnSignal(pl.Callback):
    """Write ``last.ckpt`` at the end of the step during which a signal arrived, then stop (see the module).

    The run stops with :class:`Interrupted`, exit status 128 + the signal's number, unless the earlier handler
    it hands the signal to (a cluster's requeue) exits first.
    """

    DEFERRED = (signal.SIGINT, signal.SIGUSR1, REQUEUE_SIGNAL)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:  # Ctrl-C twice: do not wait for the step
            raise KeyboardInterrupt
        self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning registered its handlers: those are the ones the signal is handed to afterwards
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in self.DEFERRED}

    def on_train_end(self, trainer, pl_module) -> None:
        """A signal that came after the last training step gets the handling it would have had without us."""
        received = self.received
        self._restore()
        if received is not None:
            signal.raise_signal(received)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()
        # Lightning stopped on SIGTERM; between two training steps only (an evaluation it stopped may hold
        # recalibrated BatchNorm statistics and no position in the epoch): the last epoch's last.ckpt stays
        if isinstance(exception, SIGTERMException) and trainer.training:
            self._save(trainer, signal.SIGTERM)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # one number for all ranks (the signal may reach one rank only): 0, or the highest signal received
        mine = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        received = int(trainer.strategy.reduce(mine, reduce_op="max"))
        if not received:
            return
        signum = signal.Signals(received)
        previous = self._previous.get(signum)
        self._restore()
        self.received = None
        self._save(trainer, signum)
        if signum != signal.SIGINT and callable(previous):  # a cluster's requeue handler, now at a safe point
            previous(int(signum), None)
        raise Interrupted(128 + int(signum))

    def _save(self, trainer: pl.Trainer, signum: int) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_warn(f"received {signal.Signals(signum).name}: saved {path} after step {trainer.global_step}; "
                       f"resume with ckpt_path=last hydra.run.dir={trainer.default_root_dir}")
