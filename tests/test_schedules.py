"""The learning-rate schedules against their formulas, step by step, as an optimiser sees them."""
import math

import pytest
import torch

from mfface.schedules import cosine_decay, warmup


def _rates(make, steps: int) -> list[float]:
    """The lr of each of `steps` optimiser steps under the schedule `make(optimizer)`."""
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([parameter], lr=0.5)
    schedule = make(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        parameter.sum().backward()
        optimizer.step()
        schedule.step()
    return rates


def test_cosine_decay_falls_to_its_floor_and_stays():
    rates = _rates(lambda o: cosine_decay(o, 4, floor=0.2), 6)
    expected = [0.5 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(i / 4, 1)))) for i in range(6)]
    assert rates == pytest.approx(expected)
    assert rates[0] == pytest.approx(0.5) and rates[4] == rates[5] == pytest.approx(0.1)


def test_warmup_ramps_linearly_then_holds_or_decays():
    assert _rates(lambda o: warmup(o, 3), 6) == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    assert _rates(lambda o: warmup(o, 0), 3) == pytest.approx([0.5] * 3)   # no ramp: the rate as given
    ramped = _rates(lambda o: warmup(o, 1, decay_steps=4), 5)
    cosine = _rates(lambda o: cosine_decay(o, 4), 5)
    assert ramped == pytest.approx([c * min(1, (i + 1) / 2) for i, c in enumerate(cosine)])
