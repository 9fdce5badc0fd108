"""Learning-rate schedules shared by the fit's stages and the network's training."""
from __future__ import annotations

import math

import torch


def cosine_decay(optimizer: torch.optim.Optimizer, steps: int, floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(i) = lr0 (floor + (1 - floor) (1 + cos(pi min(i / steps, 1))) / 2): each group's lr falls
    from lr0 at step 0 to floor * lr0 at step `steps` and stays there. Call `step()` after each
    optimiser step. Decaying towards 0 lets the last steps of a noisy optimisation (Monte Carlo
    gradients, per-texel Adam) settle instead of jittering at lr-sized steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _cosine(i, steps, floor))


def warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
           decay_steps: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(i) = lr0 min(1, (i + 1) / (warmup_steps + 1)), times cosine_decay's factor over
    `decay_steps` when given. Call `step()` after each optimiser step. Adam's first steps move
    every parameter by about its lr whatever the gradient (its moment estimates start at the first
    gradient): a ramp keeps raised rates from throwing the fit off at the start (the refinement's
    landmark loss doubled at its first step)."""
    ramp = max(int(warmup_steps), 0) + 1
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / ramp) * (1.0 if decay_steps is None else _cosine(i, decay_steps, 0.0)))


def _cosine(i: int, steps: int, floor: float) -> float:
    steps = max(int(steps), 1)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(i / steps, 1.0)))
