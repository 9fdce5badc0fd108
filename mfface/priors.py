"""Losses shared by the fitting stages: statistical priors and the 2D landmark loss.

Coefficients are in std units (see mfface.morphable.model), so the statistical prior
mean(c^2 / variance) of NextFace reduces to mean(c^2). Landmark distances are in pixels.
"""
from __future__ import annotations

import torch

from mfface.landmarks import MEDIAPIPE_FACE_OVAL

# Landmarks on the face outline: they are silhouette points that slide over the surface as the head
# turns, so a fixed model vertex matches them only near the frontal pose; they are down-weighted.
# MediaPipe: the vertices of mediapipe's FACEMESH_FACE_OVAL; iBUG 68: the jaw contour 0-16.
CONTOUR_LANDMARKS: dict[str, tuple[int, ...]] = {
    "mediapipe478": tuple(sorted(MEDIAPIPE_FACE_OVAL)),
    "ibug68": tuple(range(17)),
}


def statistical_prior(coefficients: torch.Tensor, variance: torch.Tensor | None = None) -> torch.Tensor:
    """mean(c^2 / variance) over all entries; variance None = 1 (std-unit coefficients)."""
    squared = coefficients.pow(2)
    if variance is not None:
        squared = squared / variance
    return squared.mean()


def landmark_weights(scheme: str, count: int, contour_weight: float,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-landmark weights (count,): 1, and `contour_weight` for the scheme's outline landmarks."""
    if scheme not in CONTOUR_LANDMARKS:
        raise ValueError(f"unknown landmark scheme {scheme!r}; use one of {', '.join(CONTOUR_LANDMARKS)}.")
    weights = torch.ones(count, device=device)
    contour = [i for i in CONTOUR_LANDMARKS[scheme] if i < count]
    weights[contour] = contour_weight
    return weights


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                  robust_scale: float = 0.0) -> torch.Tensor:
    """Weighted mean of rho(d) over landmarks, d = pixel distance between (B, N, 2) point sets.

    rho(d) = d^2 (robust_scale = 0: mean squared error, px^2), else Huber-like: d^2 for d <= s and
    2 s d - s^2 beyond (continuous with a continuous slope), so a few wrong detections pull
    linearly instead of quadratically. weights (N,) or (B, N); a weight of 0 drops a landmark.
    """
    if predicted.shape != target.shape or predicted.shape[-1] != 2:
        raise ValueError(f"landmark sets must both be (B, N, 2), got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}.")
    squared = (predicted - target).pow(2).sum(-1)
    if robust_scale > 0:
        s = robust_scale
        distance = (squared + 1e-12).sqrt()
        rho = torch.where(distance <= s, squared, 2 * s * distance - s * s)
    else:
        rho = squared
    if weights is None:
        return rho.mean()
    weights = weights.expand_as(rho)
    return (weights * rho).sum() / weights.sum().clamp_min(1e-12)
