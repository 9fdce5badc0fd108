"""Errors of a fit that the user can act on; the CLI prints their message as one line."""
from __future__ import annotations

import math


class FitInputError(ValueError):
    """Photos, landmarks or a checkpoint that cannot be fitted as given; the message says why."""


class FitDivergedError(FitInputError):
    """The optimisation produced NaN or infinite values; the message names the stage."""


def check_finite(stage: str, iteration: int, loss: float) -> None:
    """Raise FitDivergedError when a stage's total loss is no longer finite (stop at once rather
    than optimise NaNs for the remaining iterations)."""
    if not math.isfinite(loss):
        raise FitDivergedError(f"the fit diverged in {stage} at iteration {iteration + 1} (loss "
                               f"{loss}); lower that stage's learning rates or raise its priors.")
