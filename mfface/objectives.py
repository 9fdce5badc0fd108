"""Every loss and prior of fitting and training, each a plain function with its formula.

Conventions: images (B, S, S, 3) linear RGB; masks (B, S, S) weights in [0, 1]; landmarks (B, N, 2)
px; coefficients in std units (`mfface.morphable.model`), so NextFace's prior mean(c^2 / var)
reduces to mean(c^2); textures (B, H, W, C), row 0 at the top.

`weighted_terms` combines them: a config section (a stage's, or training's) names each term's
weight, and the result is a dict of named, weighted terms whose sum is the loss. So the fit's
stages and the network's training use the same terms with the same meaning.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mfface.landmarks import MEDIAPIPE_FACE_OVAL
from mfface.textures import resize_texture, sample_texture

# Landmarks on the face outline: they are silhouette points that slide over the surface as the head
# turns, so a fixed model vertex matches them only near the frontal pose; they are down-weighted.
# MediaPipe: the vertices of mediapipe's FACEMESH_FACE_OVAL; iBUG 68: the jaw contour 0-16.
CONTOUR_LANDMARKS: dict[str, tuple[int, ...]] = {
    "mediapipe478": tuple(sorted(MEDIAPIPE_FACE_OVAL)),
    "ibug68": tuple(range(17)),
}

# The nose tip of each scheme: the reference height of `upper_face_landmarks`.
NOSE_TIP_LANDMARK: dict[str, int] = {"mediapipe478": 1, "ibug68": 30}
UPPER_FACE_MM = 50.0


# -- image terms ------------------------------------------------------------------------------------

def masked_l1_sums(image: torch.Tensor, target: torch.Tensor,
                   weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_l1`'s two sums, sum(w |image - target|) and sum(w): both add up over items, so a
    batch can be taken item by item (`mfface.itemwise.itemwise_photometric`)."""
    return (weight[..., None] * (image - target).abs()).sum(), weight.sum()


def masked_l1(image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w |image - target|) / (3 max(sum(w), 1)): mean L1 over channels of the weighted pixels.

    image/target (B, S, S, 3); weight (B, S, S). The denominator's floor of one pixel keeps an
    empty mask at 0 instead of NaN."""
    error, weight_sum = masked_l1_sums(image, target, weight)
    return error / (3.0 * weight_sum.clamp_min(1.0))


def photometric_loss(image: torch.Tensor, coverage: torch.Tensor, target: torch.Tensor,
                     skin: torch.Tensor) -> torch.Tensor:
    """`masked_l1` inside coverage x skin: the pixels that are both rendered face and photographed
    skin (NextFace's loss, with its background and hair excluded by the skin mask)."""
    return masked_l1(image, target, coverage * skin)


# -- landmarks ----------------------------------------------------------------------------------------

def landmark_weights(scheme: str, count: int, contour_weight: float,
                     device: torch.device | str = "cpu", reliability: np.ndarray | None = None) -> torch.Tensor:
    """Per-landmark weights (count,): the model's `reliability` weight of each landmark (None: 1;
    `MorphableModel.landmark_reliability`), and `contour_weight` for the scheme's outline landmarks."""
    if scheme not in CONTOUR_LANDMARKS:
        raise ValueError(f"unknown landmark scheme {scheme!r}; use one of {', '.join(CONTOUR_LANDMARKS)}.")
    weights = torch.ones(count, device=device)
    if reliability is not None:
        weights = torch.as_tensor(np.asarray(reliability)[:count], dtype=torch.float32, device=device).clone()
    contour = [i for i in CONTOUR_LANDMARKS[scheme] if i < count]
    weights[contour] = contour_weight
    return weights


def upper_face_landmarks(mean_shape: np.ndarray, landmark_index: np.ndarray, scheme: str,
                         height_mm: float = UPPER_FACE_MM) -> np.ndarray:
    """Indices of the landmarks whose model vertex (`landmark_index`, -1 = none) lies more than
    `height_mm` above the scheme's nose tip on the mean face (`mean_shape` (V, 3) mm, y up): the
    brows, the forehead and the outline's top for MediaPipe's points."""
    index = np.asarray(landmark_index)
    nose = mean_shape[index[NOSE_TIP_LANDMARK[scheme]]]
    height = np.where(index >= 0, mean_shape[np.clip(index, 0, None), 1] - nose[1], -np.inf)
    return np.flatnonzero(height > height_mm)


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


# -- statistical priors and light ---------------------------------------------------------------------

def statistical_prior(coefficients: torch.Tensor, variance: torch.Tensor | None = None) -> torch.Tensor:
    """mean(c^2 / variance) over all entries; variance None = 1 (std-unit coefficients)."""
    squared = coefficients.pow(2)
    if variance is not None:
        squared = squared / variance
    return squared.mean()


def sparsity_prior(coefficients: torch.Tensor) -> torch.Tensor:
    """mean(|c|) over all entries: the L1 (lasso) prior. Unlike mean(c^2) it pulls a small
    coefficient to exactly 0 while shrinking every active one by the same amount, not in
    proportion: ARKit-style curves stay sparse where the landmarks give no evidence. Its
    derivative at c = 0 is taken as +1 (torch's |c| gives 0 there): the right one-sided slope
    for blend weights bounded below by 0, so that a solver's bound holds a weight at 0 unless the
    data pull harder (with abs's 0 the tracker needed 40% more Levenberg-Marquardt iterations)."""
    return torch.where(coefficients >= 0, coefficients, -coefficients).mean()


def sh_energy(coeffs: torch.Tensor) -> torch.Tensor:
    """mean(c^2) of SH coefficients (..., n, 3): NextFace's light regulariser (weight 1e-4 there).

    By Parseval, sum(c^2) is the integral of the squared radiance over the sphere, so this
    penalises light energy, mostly the ringing high bands that explain albedo detail wrongly.
    """
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3:
        raise ValueError(f"SH coefficients must have shape (..., n, 3), got {tuple(coeffs.shape)}.")
    return coeffs.pow(2).mean()


# -- texture priors -----------------------------------------------------------------------------------

def symmetry_loss(texture: torch.Tensor, uv: torch.Tensor, mirror_uv: torch.Tensor) -> torch.Tensor:
    """mean |T(uv) - T(mirror uv)| over surface points and their mirror points (uv (N, 2), from
    `mfface.textures.MirrorSampler`), so it holds for any UV layout."""
    return (sample_texture(texture, uv) - sample_texture(texture, mirror_uv)).abs().mean()


def smoothness_loss(texture: torch.Tensor) -> torch.Tensor:
    """mean |T[i, j+1] - T[i, j]| + mean |T[i+1, j] - T[i, j]| (anisotropic total variation)."""
    dx = (texture[:, :, 1:] - texture[:, :, :-1]).abs().mean()
    dy = (texture[:, 1:] - texture[:, :-1]).abs().mean()
    return dx + dy


def range_loss(texture: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """mean(relu(low - T)^2 + relu(T - high)^2): squared distance of texels outside [low, high]."""
    return (F.relu(low - texture) ** 2 + F.relu(texture - high) ** 2).mean()


def chromaticity(texture: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """RGB divided by its channel sum (+ eps): colour without brightness."""
    return texture / (texture.sum(dim=-1, keepdim=True) + eps)


def consistency_loss(texture: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """mean |chroma(T) - chroma(R)|: stays close in colour to a reference map (stage 3's diffuse
    against stage 2's), so shading cannot leak into the albedo's colour; R is resampled to T's
    size when they differ."""
    if reference.shape[1:3] != texture.shape[1:3]:
        reference = resize_texture(reference, texture.shape[1:3])
    return (chromaticity(texture) - chromaticity(reference)).abs().mean()


def closeness_loss(texture: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """mean |T - R|: stays close to a reference map (specular and roughness in stage 3)."""
    return (texture - reference).abs().mean()


# -- combining ------------------------------------------------------------------------------------

def weighted_terms(section: object, weights: Mapping[str, str],
                   terms: Mapping[str, Callable[[], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{name: w * term()} for each term whose weight w = getattr(section, weights[name]) is not 0.

    `section` is a config dataclass (a stage's, or training's loss section); `weights` maps each
    term's name to the field holding its weight; `terms` gives each term lazily, so that a term
    whose weight is 0 costs nothing. The loss is the sum of the returned values."""
    out = {}
    for name, compute in terms.items():
        weight = float(getattr(section, weights[name]))
        if weight != 0.0:
            out[name] = weight * compute()
    return out
