"""Training runs from a composed Hydra config: what ``src/train.py`` calls."""

from __future__ import annotations

import logging
import signal
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from addernet.data.in_memory import InMemoryDataModule
from addernet.errors import ConfigError
from addernet.experiments.report import mark_version_start
from addernet.experiments.jobs import METRICS_FILE, check_device, numbers, use_threads, write_metrics
from addernet.experiments.wandb_setup import finish_wandb, prepare_wandb
from addernet.nn.kernels import set_backend
from addernet.training.checkpoints import AtomicCheckpointIO, check_weights, read_checkpoint
from addernet.training.classifier import CONFIG_KEY, ImageClassifier
from addernet.training.distillation import load_teacher
from addernet.training.nonfinite import NonFiniteGuard
from addernet.training.signals import LAST_CHECKPOINT, CheckpointOnSignal, Interrupted, cluster_plugins

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns (and writes to ``metrics.json``) the final metrics."""
    check_device(cfg)
    resume, resumed_state = resume_checkpoint(cfg)
    use_threads(cfg)
    announce(cfg)
    set_backend(cfg.get("adder_backend", "auto"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, num_classes=datamodule.num_classes)
    distill = cfg.get("distill") or {}
    module = ImageClassifier(
        net, optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        adalr=instantiate(cfg.adalr), run_config=OmegaConf.to_container(cfg, resolve=True),
        teacher=load_teacher(distill.get("teacher_ckpt"), datamodule),
        kd_temperature=float(distill.get("temperature", 4.0)), kd_weight=float(distill.get("weight", 0.5)))
    start_step = 0
    if resumed_state is not None:  # before Lightning loads it: the weights must fit the model, or one clear line
        check_weights(net, resumed_state["state_dict"], f"the checkpoint {resume}")
        start_step, resumed_state = int(resumed_state.get("global_step", 0)), None
    if "wandb" in (cfg.get("logger") or {}):
        prepare_wandb(Path(cfg.paths.output_dir))
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = [c for c in _instantiate_dict(cfg.get("callbacks"))
                 if loggers or not isinstance(c, LearningRateMonitor)]  # it needs a logger to write to
    callbacks += [CheckpointOnSignal(), NonFiniteGuard(cfg.get("nonfinite", "stop"))]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      plugins=[AtomicCheckpointIO(), *cluster_plugins()])
    for logger in trainer.loggers:  # the resolved config, nested, for comparing runs
        logger.log_hyperparams(module.run_config)
        if isinstance(logger, CSVLogger):
            mark_version_start(Path(logger.log_dir), start_step)
    start = time.perf_counter()
    with warnings.catch_warnings():
        if isinstance(datamodule, InMemoryDataModule):  # it does resume mid-epoch, through its own state
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        with stopped_on_sigterm():
            trainer.fit(module, datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    metrics = numbers(trainer.callback_metrics)
    metrics.update(fit_seconds=time.perf_counter() - start, epochs=trainer.current_epoch)
    if cfg.get("test_after_fit"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        with stopped_on_sigterm():
            trainer.test(module, datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
    if trainer.is_global_zero:
        write_metrics(Path(cfg.paths.output_dir) / METRICS_FILE, metrics)
    finish_wandb(trainer)
    if cfg.get("next_step"):
        log.info(cfg.next_step)
    return metrics


@contextmanager
def stopped_on_sigterm():
    """Lightning ends a run it stopped on SIGTERM with exit status 0; say 143 (128 + SIGTERM), as a killed
    process would, so that schedulers and scripts see it did not finish. CheckpointOnSignal saved last.ckpt."""
    try:
        yield
    except SIGTERMException:
        raise Interrupted(128 + signal.SIGTERM) from None


def announce(cfg: DictConfig) -> None:
    """Where the run writes, instead of a page of config (the resolved config is in ``.hydra/config.yaml``)."""
    if cfg.get("print_config"):
        print_config(cfg)
    log.info(f"run directory: {cfg.paths.output_dir} (resolved config: .hydra/config.yaml)")


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(OmegaConf.to_yaml(cfg, resolve=True), "yaml", theme="ansi_dark"))


def _instantiate_dict(section: DictConfig | None) -> list:
    return [instantiate(c) for c in (section or {}).values() if c is not None and "_target_" in c]


def resume_checkpoint(cfg: DictConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint to resume from and its contents, read safely and checked to hold the model being trained;
    ``(None, None)`` for a new run. ``ckpt_path``: a file, ``last`` (the run directory's
    ``checkpoints/last.ckpt``) or ``hpc`` (the newest ``hpc_ckpt_N.ckpt`` that Lightning's SLURM requeue
    wrote there). Under SLURM without ``ckpt_path``, Lightning would take such a file by itself: it is
    checked the same way and passed on."""
    ckpt = cfg.get("ckpt_path")
    run_dir = Path(cfg.paths.output_dir)
    if not ckpt:
        path = newest_hpc_checkpoint(run_dir) if SLURMEnvironment.detect() else None
        if path is None:
            return None, None
        log.info(f"resuming from {path}, the checkpoint of this SLURM job's earlier attempt")
        where = f"the SLURM requeue checkpoint {path}"
    elif ckpt == "hpc":
        path = newest_hpc_checkpoint(run_dir)
        if path is None:
            raise ConfigError(f"ckpt_path=hpc: there is no hpc_ckpt_<N>.ckpt in {run_dir}: pass "
                              f"hydra.run.dir=<the job's run directory>, or ckpt_path=last")
        where = f"ckpt_path=hpc ({path})"
    elif ckpt == "last":
        path = run_dir / LAST_CHECKPOINT
        if not path.is_file():  # a requeued cluster job's first attempt, or a missing hydra.run.dir
            log.warning(f"ckpt_path=last: there is no {path}, so this is a new run. To resume a run, also pass "
                        f"hydra.run.dir=<that run's directory> (hydra.sweep.dir=... for a sweep).")
            return None, None
        where = f"ckpt_path=last ({path})"
    else:
        path, where = Path(ckpt).expanduser(), f"ckpt_path={ckpt}"
    state = read_checkpoint(path, where)
    saved = state[CONFIG_KEY]["model"]["name"]
    if saved != cfg.model.name:
        raise ConfigError(f"{where} holds a {saved} but model={cfg.model.name}: resume with "
                          f"model={saved} or start a new run")
    return path, state


def newest_hpc_checkpoint(run_dir: Path) -> Path | None:
    """The ``hpc_ckpt_<N>.ckpt`` with the highest N in ``run_dir``, as Lightning numbers them; None if none."""
    found = [(int(p.stem.rsplit("_", 1)[1]), p) for p in run_dir.glob("hpc_ckpt_*.ckpt")
             if p.stem.rsplit("_", 1)[1].isdigit()]
    return max(found)[1] if found else None
