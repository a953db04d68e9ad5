"""Evaluation runs: what ``src/eval.py`` calls, for checkpoints and int8 exports alike."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from addernet.deploy import quantized
from addernet.errors import ConfigError
from addernet.experiments.jobs import METRICS_FILE, check_device, numbers, use_threads, write_metrics
from addernet.training.checkpoints import check_images_fit, load_checkpoint_model
from addernet.training.classifier import ImageClassifier
from addernet.training.recalibration import BatchNormRecalibration

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on ``cfg.data``'s test split; the numbers also go to ``metrics.json`` in the run directory."""
    check_device(cfg)
    use_threads(cfg)
    if quantized.is_export(cfg.ckpt_path):  # a file written by src/export.py
        deployed = quantized.load_exported(cfg.ckpt_path)
        module, input_size = ImageClassifier(deployed, optimizer=None), deployed.info["input_size"]
    else:
        module, _ = load_checkpoint_model(cfg.ckpt_path)
        input_size = module.input_size
    datamodule = instantiate(cfg.data)
    if datamodule.num_classes != module.num_classes:
        raise ConfigError(f"the checkpoint's model has {module.num_classes} classes but data={cfg.data._target_} "
                         f"has {datamodule.num_classes}: evaluate on data with the same classes")
    check_images_fit(module.net, input_size, datamodule, f"ckpt_path={cfg.ckpt_path}")
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False,
                                      callbacks=[BatchNormRecalibration(cfg.get("recalibrate_bn", 0))])
    trainer.test(module, datamodule)
    metrics = numbers({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
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
