"""Learning-rate schedules shared by the fit's stages and the network's training."""
from __future__ import annotations

import math

import torch


def cosine_decay(optimizer: torch.optim.Optimizer, steps: int, floor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(i) = lr0 (floor + (1 - floor) (1 + cos(pi min(i / steps, 1))) / 2): each group's lr falls
    from lr0 at step 0 to floor * lr0 at step `steps` and stays there. Call `step()` after each
    optimiser step. Decaying towards 0 lets the last steps of a noisy optimisation (Monte Carlo
    gradients, per-texel Adam) settle instead of jittering at lr-sized steps."""
    steps = max(int(steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(i / steps, 1.0))))
