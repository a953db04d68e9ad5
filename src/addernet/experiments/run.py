"""Training and evaluation runs from a composed Hydra config: what ``src/train.py`` and ``src/eval.py`` call."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from addernet.nn import quantized
from addernet.training.classifier import CONFIG_KEY, ImageClassifier, load_checkpoint_model
from addernet.data.in_memory import InMemoryDataModule
from addernet.errors import ConfigError, ConfigTypeError, UserError
from addernet.nn.kernels import set_backend
from addernet.system import configure_threads
from addernet.training.distillation import load_teacher
from addernet.training.recalibration import BatchNormRecalibration
from addernet.training.reliability import AtomicCheckpointIO, CheckpointOnSignal, NonFiniteGuard, ResumableCSVLogger

METRICS_FILE = "metrics.json"  # each run's final numbers, read by the sweep's results table
log = logging.getLogger(__name__)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (``WANDB_BASE_URL``, default api.wandb.ai) accepts a connection within ``timeout``."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_wandb(run_dir: Path) -> None:
    """W&B writes offline when it cannot upload: with no API key, or with one but no route to the server (a
    cluster node without internet would otherwise stall for minutes and fail). One line says how to upload."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    has_key = os.environ.get("WANDB_API_KEY") or "api.wandb.ai" in _read(Path.home() / ".netrc")
    if has_key and wandb_reachable():
        return
    why = "no W&B API key (WANDB_API_KEY or wandb login)" if not has_key else "the W&B server cannot be reached"
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")  # its own hint ("run wandb online") does not fit here
    log.warning(f"W&B logs offline ({why}); upload later with: wandb sync {run_dir}/wandb/offline-run-*")


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


def user_error_in(err: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``err``, also when Hydra's ``instantiate`` wrapped it; else None."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, UserError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def run_job(cfg: DictConfig, task) -> dict[str, float]:
    """Run ``task(cfg)``. A user's mistake is one line on stderr and exit status 2 (``HYDRA_FULL_ERROR=1`` shows the
    traceback); in a multirun a job that raises is recorded as failed and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return task(cfg)
    except Exception as err:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            user_error = user_error_in(err)
            if user_error is not None and os.environ.get("HYDRA_FULL_ERROR") != "1":
                print(f"error: {user_error}", file=sys.stderr)
                raise SystemExit(2) from None
            raise
        log.exception("job failed; the sweep goes on")
        path = Path(cfg.paths.output_dir) / FAILURE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}, indent=2))
        return {}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns (and writes to ``metrics.json``) the final metrics."""
    check_types(cfg)
    check_device(cfg)
    resume = resume_checkpoint(cfg)
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
    if "wandb" in (cfg.get("logger") or {}):
        prepare_wandb(Path(cfg.paths.output_dir))
    loggers = _instantiate_dict(cfg.get("logger"))
    for logger in loggers:
        if isinstance(resume, Path) and isinstance(logger, ResumableCSVLogger):
            logger.continue_from(torch.load(resume, map_location="cpu", weights_only=False)["global_step"])
    callbacks = [c for c in _instantiate_dict(cfg.get("callbacks"))
                 if loggers or not isinstance(c, LearningRateMonitor)]  # it needs a logger to write to
    callbacks += [CheckpointOnSignal(), NonFiniteGuard(cfg.get("nonfinite", "stop"))]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                                      logger=loggers or False)
    for logger in trainer.loggers:  # the resolved config, nested, for comparing runs
        logger.log_hyperparams(module.run_config)
    start = time.perf_counter()
    with warnings.catch_warnings():
        if isinstance(datamodule, InMemoryDataModule):  # it does resume mid-epoch, through its own state
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        trainer.fit(module, datamodule, ckpt_path=str(resume) if resume else None)
    metrics = _numbers(trainer.callback_metrics)
    metrics.update(fit_seconds=time.perf_counter() - start, epochs=trainer.current_epoch)
    if cfg.get("test_after_fit"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule, ckpt_path=best or None)
        metrics.update(_numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
    if trainer.is_global_zero:
        write_metrics(Path(cfg.paths.output_dir) / METRICS_FILE, metrics)
    _finish_wandb(trainer)
    if cfg.get("next_step"):
        log.info(cfg.next_step)
    return metrics


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """``metrics.json`` with the headline numbers first: test, val, train, timing, then per-layer statistics."""
    def rank(key: str) -> tuple[int, str]:
        order = ("test/", "val/", "train/", "fit_seconds", "epochs", "perf/")
        return next((i for i, p in enumerate(order) if key.startswith(p)), len(order)), key

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: metrics[k] for k in sorted(metrics, key=rank)}, indent=2))


def announce(cfg: DictConfig) -> None:
    """Where the run writes, instead of a page of config (the resolved config is in ``.hydra/config.yaml``)."""
    if cfg.get("print_config"):
        print_config(cfg)
    log.info(f"run directory: {cfg.paths.output_dir} (resolved config: .hydra/config.yaml)")


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
            raise ConfigTypeError(f"{key} must be {'a number' if kind is float else 'an integer'}, got {value!r} "
                                  f"({type(value).__name__}): fix the override {key}=...")


def check_device(cfg: DictConfig) -> None:
    """An accelerator asked for by name must be there: say so before Lightning fails with a bare message."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator") or "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}, but PyTorch sees no CUDA GPU on this machine: use "
                          f"trainer=cpu, or trainer=default to take a GPU only where there is one")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer=tpu needs torch_xla (a TPU machine); use trainer=default or trainer=cpu here")


def resume_checkpoint(cfg: DictConfig) -> Path | str | None:
    """The checkpoint ``ckpt_path`` names (``last``: this run directory's ``checkpoints/last.ckpt``), checked to
    hold the model being trained; ``"hpc"`` as it is (Lightning's SLURM requeue checkpoint); None for a new run."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        return None
    if ckpt == "hpc":
        return ckpt
    if ckpt == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():  # a requeued cluster job's first attempt, or a missing hydra.run.dir
            log.warning(f"ckpt_path=last: there is no {path}, so this is a new run. To resume a run, also pass "
                        f"hydra.run.dir=<that run's directory> (hydra.sweep.dir=... for a sweep).")
            return None
    else:
        path = Path(ckpt).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt}: no such file (use a .ckpt written by train, or "
                              f"ckpt_path=last with hydra.run.dir=<the run's directory>)")
    saved = torch.load(path, map_location="cpu", weights_only=False).get(CONFIG_KEY, {}).get("model", {})
    if saved and saved.get("name") != cfg.model.name:
        raise ConfigError(f"ckpt_path={ckpt} holds a {saved.get('name')} but model={cfg.model.name}: resume with "
                          f"model={saved.get('name')} or start a new run")
    return path


def use_threads(cfg: DictConfig) -> None:
    """``threads=`` for this process; a CPU job of several processes (ddp on the CPU) shares the cores."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    processes = devices if trainer.get("accelerator") == "cpu" and isinstance(devices, int) else 1
    threads = configure_threads(cfg.get("threads", "auto"), processes)
    log.info(f"{threads} CPU thread{'s' * (threads > 1)} per process (threads=N to change)")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on ``cfg.data``'s test split; the numbers also go to ``metrics.json`` in the run directory."""
    check_device(cfg)
    use_threads(cfg)
    if quantized.is_export(cfg.ckpt_path):  # a file written by src/export.py
        module = ImageClassifier(quantized.load_exported(cfg.ckpt_path), optimizer=None)
    else:
        module, _ = load_checkpoint_model(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    if datamodule.num_classes != module.num_classes:
        raise ConfigError(f"the checkpoint's model has {module.num_classes} classes but data={cfg.data._target_} "
                         f"has {datamodule.num_classes}: evaluate on data with the same classes")
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False,
                                      callbacks=[BatchNormRecalibration(cfg.get("recalibrate_bn", 0))])
    trainer.test(module, datamodule)
    metrics = _numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    metrics.update(per_class_report(module, datamodule, Path(cfg.paths.output_dir)))
    out = Path(cfg.paths.output_dir) / METRICS_FILE
    write_metrics(out, metrics)
    log.info(f"wrote {out}")
    return metrics


PER_CLASS_FILE = "per_class.csv"
PER_CLASS_IN_METRICS = 100  # up to this many classes, each one's top-1 also goes into metrics.json


def per_class_report(module: ImageClassifier, datamodule, out_dir: Path) -> dict[str, float]:
    """Top-1 per class after a test run: logged as a table, written to ``per_class.csv`` (class, test images,
    top-1), and returned as ``test/acc_class/<name>`` when there are at most 100 classes. A class without test
    images is listed with none and left out of the metrics."""
    accuracy, support = module.per_class_accuracy()
    names = list(getattr(datamodule, "class_names", None) or range(len(support)))
    rows = [f"{name},{int(n)},{'' if n == 0 else f'{float(a):.4f}'}" for name, a, n in zip(names, accuracy, support)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PER_CLASS_FILE).write_text("class,images,top1\n" + "\n".join(rows) + "\n")
    width = max(len(str(name)) for name in names)
    table = "\n".join(f"  {str(name):<{width}}  {int(n):>7}  " + ("no images" if n == 0 else f"{100 * float(a):6.2f}%")
                      for name, a, n in zip(names, accuracy, support))
    log.info(f"top-1 per class (class, test images, top-1), also in {out_dir / PER_CLASS_FILE}:\n{table}")
    if len(names) > PER_CLASS_IN_METRICS:
        return {}
    return {f"test/acc_class/{name}": float(a) for name, a, n in zip(names, accuracy, support) if n > 0}
