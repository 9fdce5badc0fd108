"""Temporal priors and measures of a tracked sequence: smoothness terms, jitter, interpolation.

Smoothness (the tracker's temporal term): for a sequence x_0 .. x_{T-1} (frames, in order),

    S_k(x) = mean_t || D^k x_t ||^2,   D x_t = x_t - x_{t-1},   D^2 x_t = x_t - 2 x_{t-1} + x_{t-2},

over the differences that involve at least one of the frames being optimised (the frames before
them, `history`, are fixed). k = 1 penalises velocity (it pulls every change towards zero, so it
also shrinks real motion); k = 2 penalises acceleration (steady motion costs nothing, jitter does).
The tracker weights rotation (in degrees), translation (mm) and expression separately.

Jitter (the benchmark's measure, issue 10): mean |D^2 x_t| over all t and components, the mean
absolute frame-to-frame acceleration, compared with the same of the true curves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DEG = 180.0 / math.pi


def finite_differences(values: torch.Tensor, order: int) -> torch.Tensor:
    """D^order of a sequence (T, D) along its first axis: (T - order, D)."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (velocity) or 2 (acceleration), got {order}.")
    out = values[1:] - values[:-1]
    return out[1:] - out[:-1] if order == 2 else out


def difference_matrix(length: int, order: int) -> torch.Tensor:
    """D^order of a sequence of `length` frames as a matrix (length - order, length)."""
    eye = torch.eye(length)
    if length <= order:
        return torch.zeros(0, length)
    if order == 1:
        return eye[1:] - eye[:-1]
    return eye[2:] - 2 * eye[1:-1] + eye[:-2]


def smoothness(values: torch.Tensor, history: torch.Tensor | None, order: int) -> torch.Tensor:
    """S_order of `values` (T, D) preceded by the fixed frames `history` (H, D) (None or H = 0: none):
    the mean over the differences that involve `values`, of their squared norm (0 when there are
    none, e.g. one frame without history)."""
    if history is not None and len(history):
        history = history[-order:].to(values)
        values = torch.cat([history, values])
    if len(values) <= order:
        return values.sum() * 0.0
    return finite_differences(values, order).pow(2).sum(-1).mean()


@dataclass
class TemporalPrior:
    """The tracker's temporal term over a window of frames, `fit_landmarks`' `prior`:

        rotation_weight * S(euler in deg) + translation_weight * S(translation in mm)
      + expression_weight * S(expression)

    with S = `smoothness` of `order` against the fixed `history` frames (euler (H, 3) rad,
    translation (H, 3) mm, expression (H, K); None = the window starts a sequence)."""
    rotation_weight: float
    translation_weight: float
    expression_weight: float
    order: int = 2
    history_euler: torch.Tensor | None = None
    history_translation: torch.Tensor | None = None
    history_expression: torch.Tensor | None = None

    def __call__(self, euler: torch.Tensor, translation: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        def deg(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t * DEG
        total = euler.sum() * 0.0
        if self.rotation_weight:
            total = total + self.rotation_weight * smoothness(euler * DEG, deg(self.history_euler), self.order)
        if self.translation_weight:
            total = total + self.translation_weight * smoothness(translation, self.history_translation, self.order)
        if self.expression_weight:
            total = total + self.expression_weight * smoothness(expression, self.history_expression, self.order)
        return total

    def hessian(self, batch: int, k: int) -> torch.Tensor:
        """The term's Hessian (it is quadratic) with respect to B frames of (euler rad (3),
        translation mm (3), expression (k)), frame-major: (B (6 + k), B (6 + k)).

        S = mean_r || sum_j D_rj s_j ||^2 over the rows r of D^order on [history; frames], so its
        Hessian in the frames is 2 / R D_x^T D_x per component, D_x the frames' columns."""
        history = 0 if self.history_euler is None else min(len(self.history_euler), self.order)
        d = difference_matrix(history + batch, self.order)
        size = 6 + k
        if not len(d):
            return torch.zeros(batch * size, batch * size)
        dx = d[:, history:]
        time = 2.0 / len(d) * dx.T @ dx
        scales = torch.cat([torch.full((3,), self.rotation_weight * DEG ** 2),
                            torch.full((3,), self.translation_weight), torch.full((k,), self.expression_weight)])
        return torch.kron(time, torch.diag(scales))


def jitter(values: np.ndarray) -> float:
    """Mean absolute frame-to-frame acceleration of a sequence (T, D): mean |D^2 x| (NaN for T < 3)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 3:
        return float("nan")
    return float(np.abs(values[2:] - 2 * values[1:-1] + values[:-2]).mean())


def interpolate_gaps(good: np.ndarray, euler: np.ndarray, translation: np.ndarray,
                     expression: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fill the frames where `good` (T,) is False from the good frames around them: rotation by
    spherical linear interpolation of the head rotation (then back to yaw, pitch, roll), translation
    and expression linearly in time; before the first and after the last good frame the nearest
    good frame is held. euler (T, 3) rad, translation (T, 3), expression (T, K); returns new arrays.
    Raises ValueError when no frame is good."""
    from scipy.spatial.transform import Rotation, Slerp

    from mfface.camera import euler_from_head, head_rotation

    good = np.asarray(good, dtype=bool)
    if not good.any():
        raise ValueError("no frame to interpolate from: the face was not tracked in any frame.")
    euler, translation, expression = (np.array(a, dtype=np.float64, copy=True)
                                      for a in (euler, translation, expression))
    if good.all():
        return euler, translation, expression
    frames = np.arange(len(good))
    known = frames[good]
    missing = frames[~good]
    inside = missing[(missing > known[0]) & (missing < known[-1])]
    for values in (translation, expression):
        for d in range(values.shape[1]):
            values[~good, d] = np.interp(missing, known, values[good, d])
    rotations = head_rotation(torch.from_numpy(euler[good])).numpy()
    if len(inside):
        slerp = Slerp(known.astype(np.float64), Rotation.from_matrix(rotations))
        turned = slerp(inside.astype(np.float64)).as_matrix()
        euler[inside] = euler_from_head(torch.from_numpy(turned)).numpy()
    euler[missing[missing < known[0]]] = euler[known[0]]
    euler[missing[missing > known[-1]]] = euler[known[-1]]
    return euler, translation, expression
