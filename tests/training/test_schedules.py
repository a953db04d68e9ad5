import math

import pytest
import torch

from addernet.training import schedules


def learning_rates(build, total: int, **options) -> list[float]:
    """The learning rate of each of ``total`` optimizer steps, as the LightningModule steps the scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = build(optimizer, total, **options)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_decays_from_the_base_rate_to_its_floor_over_the_run():
    rates = learning_rates(schedules.cosine, 100, min_factor=0.1)
    expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 100)) for t in range(100)]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_warmup_rises_linearly_then_the_schedule_starts_from_the_base_rate():
    rates = learning_rates(schedules.cosine, 50, warmup_steps=10)
    assert rates[:10] == pytest.approx([0.1 * (t + 1) / 10 for t in range(10)], rel=1e-6)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t / 40)) for t in range(40)]
    assert rates[10:] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_step_multiplies_at_fractions_of_the_run_and_poly_decays_to_zero():
    rates = learning_rates(schedules.step, 100, milestones=(0.5, 0.75), gamma=0.1)
    assert rates == pytest.approx([0.1] * 50 + [0.01] * 25 + [0.001] * 25, rel=1e-6)
    rates = learning_rates(schedules.poly, 100, power=2.0)
    assert rates == pytest.approx([0.1 * (1 - t / 100) ** 2 for t in range(100)], rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("options", [{"warmup_steps": 100}, {"warmup_steps": -1}])
def test_impossible_warmups_are_refused(options):
    with pytest.raises(ValueError, match="0 <= warmup_steps < total_steps"):
        learning_rates(schedules.cosine, 100, **options)
