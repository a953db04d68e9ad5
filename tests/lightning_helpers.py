"""Small Lightning runs for tests: an optimizer that records what it is asked to apply."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import torch

from addernet import Adder2d
from addernet.training.adalr import AdaptiveLR
from addernet.training.classifier import ImageClassifier
from addernet.data import SyntheticDataModule
from addernet.models import create_model


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients of every step it takes: what the update really used."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
        super().step()
        return loss


def make_module(adalr="on", seed=0, model="adder_resnet20", eta=0.2, **model_options) -> ImageClassifier:
    torch.manual_seed(seed)
    net = create_model(model, num_classes=4, **model_options)
    return ImageClassifier(net, partial(RecordingSGD, lr=0.05, momentum=0.9),
                           adalr=AdaptiveLR(mode=adalr, eta=eta))


def make_data(batch_size=16, cls=SyntheticDataModule, **kwargs) -> SyntheticDataModule:
    return cls(num_classes=4, image_size=8, train_size=64, test_size=32, batch_size=batch_size,
                               augment=False, shuffle=False, **kwargs)


def fit(module, data, steps=1, **trainer_kwargs) -> list[list[torch.Tensor]]:
    trainer_kwargs.setdefault("devices", 1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         **trainer_kwargs)
    trainer.fit(module, data)
    return trainer.optimizers[0].seen if trainer.optimizers else []  # none in the parent of spawned ranks


def adder_indices(module) -> list[int]:
    params = list(module.parameters())
    adders = {id(m.weight) for m in module.modules() if isinstance(m, Adder2d)}
    return [i for i, p in enumerate(params) if id(p) in adders]


def adalr_of(grad: torch.Tensor, eta: float = 0.2) -> torch.Tensor:
    return eta * math.sqrt(grad.numel()) * grad / grad.norm()
