"""Learning-rate schedules over a whole run, stepped once per optimizer step: torch's schedulers, sized by the run.

Each is a builder ``(optimizer, total_steps, **options) -> LRScheduler``: configs give the options with
``_partial_: true`` and the LightningModule supplies ``total_steps`` once the trainer knows it, so that a
schedule (and its milestones, given as fractions of the run) fits whatever length the run has. An optional
linear warm-up from ``1 / warmup_steps`` of the learning rate comes first (``LinearLR`` + ``SequentialLR``).
"""

from __future__ import annotations

from typing import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, PolynomialLR, SequentialLR


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")


def _after_warmup(optimizer: Optimizer, warmup_steps: int, schedule: LRScheduler) -> LRScheduler:
    if not warmup_steps:
        return schedule
    warmup = LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, schedule], milestones=[warmup_steps])


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> LRScheduler:
    """Cosine decay from the base learning rate to ``min_factor`` times it (the authors' schedule)."""
    _check(total_steps, warmup_steps)
    base = optimizer.param_groups[0]["lr"]
    return _after_warmup(optimizer, warmup_steps, CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_factor * base))


def step(optimizer: Optimizer, total_steps: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1,
         warmup_steps: int = 0) -> LRScheduler:
    """Multiply by ``gamma`` at each milestone, given as fractions of the run."""
    _check(total_steps, warmup_steps)
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"milestones are fractions of the run in (0, 1), got {list(milestones)}")
    steps = [max(1, round(m * total_steps) - warmup_steps) for m in milestones]
    return _after_warmup(optimizer, warmup_steps, MultiStepLR(optimizer, steps, gamma))


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0) -> LRScheduler:
    """Polynomial decay to zero: (1 - progress) ** power."""
    _check(total_steps, warmup_steps)
    return _after_warmup(optimizer, warmup_steps, PolynomialLR(
        optimizer, total_iters=max(1, total_steps - warmup_steps), power=power))
