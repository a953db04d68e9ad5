"""Training and evaluation runs from a composed Hydra config: what ``src/train.py`` and ``src/eval.py`` call."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from addernet.classifier import CONFIG_KEY, ImageClassifier
from addernet.data import DataError
from addernet.kernels import set_backend
from addernet.models import create_model
from addernet.system import configure_threads
from addernet.recalibration import BatchNormRecalibration
from addernet.reliability import AtomicCheckpointIO, CheckpointOnSignal, NonFiniteGuard

METRICS_FILE = "metrics.json"  # each run's final numbers, read by the sweep's results table
log = logging.getLogger(__name__)


def use_wandb_offline_without_key() -> None:
    """W&B needs no account here: with no API key configured, runs are written offline (``wandb sync`` later)."""
    has_key = os.environ.get("WANDB_API_KEY") or "api.wandb.ai" in _read(Path.home() / ".netrc")
    if not has_key:
        os.environ.setdefault("WANDB_MODE", "offline")


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


@rank_zero_only
def print_config(cfg: DictConfig) -> None:
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(OmegaConf.to_yaml(cfg, resolve=True), "yaml", theme="ansi_dark"))


def _instantiate_dict(section: DictConfig | None) -> list:
    return [instantiate(c) for c in (section or {}).values() if c is not None and "_target_" in c]


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and
            (not isinstance(v, torch.Tensor) or v.numel() == 1)}


FAILURE_FILE = "failed.json"  # a job of a sweep that raised: its error, for the report


def run_job(cfg: DictConfig, task) -> dict[str, float]:
    """Run ``task(cfg)``; in a multirun a job that raises is recorded as failed and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return task(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(err, DataError):  # the message says what to do; a traceback would only bury it
                log.error(str(err))
                raise SystemExit(2) from None
            raise
        log.exception("job failed; the sweep goes on")
        path = Path(cfg.paths.output_dir) / FAILURE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}, indent=2))
        return {}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns (and writes to ``metrics.json``) the final metrics."""
    print_config(cfg)
    check_types(cfg)
    check_resume_checkpoint(cfg)
    use_threads(cfg)
    set_backend(cfg.get("adder_backend", "auto"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model, num_classes=datamodule.num_classes)
    module = ImageClassifier(
        net, optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        adalr=instantiate(cfg.adalr), run_config=OmegaConf.to_container(cfg, resolve=True))
    if "wandb" in (cfg.get("logger") or {}):
        use_wandb_offline_without_key()
    callbacks = _instantiate_dict(cfg.get("callbacks")) + [CheckpointOnSignal(),
                                                            NonFiniteGuard(cfg.get("nonfinite", "stop"))]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                                      logger=_instantiate_dict(cfg.get("logger")) or False)
    for logger in trainer.loggers:  # the resolved config, nested, for comparing runs
        logger.log_hyperparams(module.run_config)
    start = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = _numbers(trainer.callback_metrics)
    metrics.update(fit_seconds=time.perf_counter() - start, epochs=trainer.current_epoch)
    if cfg.get("test_after_fit"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule, ckpt_path=best or None)
        metrics.update(_numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir) / METRICS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    _finish_wandb(trainer)
    return metrics


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close this job's W&B run, so that the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()


# settings whose type a typo in an override would otherwise only reveal deep inside a library
TYPED_SETTINGS = {"seed": int, "trainer.max_epochs": int, "trainer.accumulate_grad_batches": int,
                  "data.batch_size": int, "data.num_workers": int, "optimizer.lr": float,
                  "optimizer.momentum": float, "optimizer.weight_decay": float, "adalr.eta": float}


def check_types(cfg: DictConfig) -> None:
    for key, kind in TYPED_SETTINGS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        allowed = (int, float) if kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise TypeError(f"{key} must be {'a number' if kind is float else 'an integer'}, got {value!r} "
                            f"({type(value).__name__}): fix the override {key}=...")


def check_resume_checkpoint(cfg: DictConfig) -> None:
    """A checkpoint to resume from must hold the model being trained."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or ckpt in ("last", "hpc"):
        return
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such file (use a .ckpt written by train, or "
                                f"ckpt_path=last with hydra.run.dir=<the run's directory>)")
    saved = torch.load(path, map_location="cpu", weights_only=False).get(CONFIG_KEY, {}).get("model", {})
    if saved and saved.get("name") != cfg.model.name:
        raise ValueError(f"ckpt_path={ckpt} holds a {saved.get('name')} but model={cfg.model.name}: resume with "
                         f"model={saved.get('name')} or start a new run")


def load_checkpoint_model(ckpt_path: str | Path) -> tuple[ImageClassifier, dict]:
    """Rebuild the classifier stored in a checkpoint written by :func:`train` (model from its saved config)."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: pass ckpt_path=<a .ckpt file written by train>")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = checkpoint.get(CONFIG_KEY)
    if not config or "model" not in config:
        raise ValueError(f"{path} was not written by addernet's train.py: it holds no {CONFIG_KEY!r} entry")
    options = {k: v for k, v in config["model"].items() if k not in ("_target_", "name")}
    classes = checkpoint["state_dict"]["net.bn_logits.weight"].numel()
    net = create_model(config["model"]["name"], num_classes=classes, **options)
    module = ImageClassifier(net, optimizer=None)
    module.load_state_dict(checkpoint["state_dict"], strict=False)  # metric states may differ
    return module, config


def use_threads(cfg: DictConfig) -> None:
    """``threads=`` for this process; a CPU job of several processes (ddp on the CPU) shares the cores."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    processes = devices if trainer.get("accelerator") == "cpu" and isinstance(devices, int) else 1
    threads = configure_threads(cfg.get("threads", "auto"), processes)
    log.info(f"{threads} CPU thread{'s' * (threads > 1)} per process (threads=N to change)")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    use_threads(cfg)
    module, _ = load_checkpoint_model(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    if datamodule.num_classes != module.num_classes:
        raise ValueError(f"the checkpoint's model has {module.num_classes} classes but data={cfg.data._target_} "
                         f"has {datamodule.num_classes}: evaluate on data with the same classes")
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False,
                                      callbacks=[BatchNormRecalibration(cfg.get("recalibrate_bn", 0))])
    trainer.test(module, datamodule)
    return _numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
