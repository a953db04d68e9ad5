"""Learning-rate schedules over a whole run, stepped once per optimizer step.

Each is a builder ``(optimizer, total_steps, **options) -> LRScheduler``; configs give the options with
``_partial_: true`` and the LightningModule supplies ``total_steps`` once the trainer knows it.
"""

from __future__ import annotations

import math
from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")


def _with_warmup(shape, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return shape(step)
    return factor


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> LambdaLR:
    """Cosine decay from the base learning rate to ``min_factor`` times it (the authors' schedule)."""
    _check(total_steps, warmup_steps)
    span = max(1, total_steps - warmup_steps)
    return LambdaLR(optimizer, _with_warmup(
        lambda s: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup_steps) / span))),
        warmup_steps))


def step(optimizer: Optimizer, total_steps: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1,
         warmup_steps: int = 0) -> LambdaLR:
    """Multiply by ``gamma`` at each milestone, given as fractions of the run."""
    _check(total_steps, warmup_steps)
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"milestones are fractions of the run in (0, 1), got {list(milestones)}")
    bounds = [m * total_steps for m in milestones]
    return LambdaLR(optimizer, _with_warmup(lambda s: gamma ** sum(s >= b for b in bounds), warmup_steps))


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> LambdaLR:
    """Polynomial decay to zero: (1 - progress) ** power."""
    _check(total_steps, warmup_steps)
    span = max(1, total_steps - warmup_steps)
    return LambdaLR(optimizer, _with_warmup(lambda s: max(0.0, 1 - (s - warmup_steps) / span) ** power,
                                            warmup_steps))
