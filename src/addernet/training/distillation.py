"""Distillation from a trained network (the CNN twin, say): the teacher, loaded and checked against the data.

The loss itself is :meth:`addernet.training.classifier.ImageClassifier.distillation_loss`.
"""

from __future__ import annotations

import torch

from addernet.errors import ConfigError
from addernet.training.classifier import load_checkpoint_model


def load_teacher(ckpt: str | None, datamodule) -> torch.nn.Module | None:
    """The network of a checkpoint to distil from, checked to fit the data: same classes, same input."""
    if not ckpt:
        return None
    teacher, config = load_checkpoint_model(ckpt)
    if teacher.num_classes != datamodule.num_classes:
        raise ConfigError(f"distill.teacher_ckpt={ckpt} has {teacher.num_classes} classes but the data has "
                          f"{datamodule.num_classes}: distil from a model trained on the same classes")
    datamodule.setup()
    x = next(iter(datamodule.test_dataloader()))[0][:2]
    x = datamodule.on_after_batch_transfer((x, None), 0)[0] if hasattr(datamodule, "normalize") else x
    try:
        with torch.no_grad():
            teacher.net.eval()(x)
    except RuntimeError as err:
        raise ConfigError(f"distill.teacher_ckpt={ckpt} ({config['model']['name']}) cannot take this data's "
                          f"images of shape {tuple(x.shape[1:])} ({str(err).splitlines()[0]}): distil from a "
                          f"model trained on the same kind of images") from None
    return teacher.net
