"""Distillation from a trained network (the CNN twin, say): the teacher, loaded and checked against the data.

The loss itself is :meth:`addernet.training.classifier.ImageClassifier.distillation_loss`.
"""

from __future__ import annotations

import torch

from addernet.errors import ConfigError
from addernet.training.checkpoints import check_images_fit, load_checkpoint_model


def load_teacher(ckpt: str | None, datamodule) -> torch.nn.Module | None:
    """The network of a checkpoint to distil from, checked to fit the data: same classes, same input."""
    if not ckpt:
        return None
    teacher, _ = load_checkpoint_model(ckpt, "distill.teacher_ckpt")
    if teacher.num_classes != datamodule.num_classes:
        raise ConfigError(f"distill.teacher_ckpt={ckpt} has {teacher.num_classes} classes but the data has "
                          f"{datamodule.num_classes}: distil from a model trained on the same classes")
    check_images_fit(teacher.net, teacher.input_size, datamodule, f"distill.teacher_ckpt={ckpt}")
    return teacher.net
