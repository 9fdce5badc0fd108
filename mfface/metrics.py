"""How close a reconstruction is to the truth: aligned vertex distances, PSNR and SSIM.

Shape is compared after aligning the fitted vertices onto the true ones by the least-squares
rotation and translation (Kabsch), optionally with a uniform scale as well (Umeyama), the
convention of the NoW benchmark ("rigidly aligned (rotation, translation, and scaling)"). The
scale matters for a single photo: a pinhole camera renders a face scaled by k about the camera
centre, at k times the distance, as exactly the same image (landmarks and shading alike), so a
monocular fit cannot observe the head's absolute size and only the shape prior sets it.
Image metrics are over a mask of pixels (the face), on display-referred values in [0, 1].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def similarity_transform(src: np.ndarray, dst: np.ndarray,
                         scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R (a rotation, never a reflection) and t with dst ~ s R src + t (Umeyama
    1991) for point sets (N, D); s = 1 when not `scale` (rigid)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(len(sigma))
    d[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = (u * d) @ vt
    s = float((sigma * d).sum() / (a ** 2).sum(1).mean()) if scale else 1.0
    return s, rotation, mu_d - s * rotation @ mu_s


def align_points(fitted: np.ndarray, true: np.ndarray, scale: bool = False) -> tuple[np.ndarray, float]:
    """`fitted` (N, 3) mapped onto `true` (N, 3) by the least-squares rigid (or similarity) transform.

    Returns (aligned points (N, 3), the scale applied: 1 unless `scale`). A reflection is never
    used, even when it would fit better.
    """
    fitted, true = np.asarray(fitted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if fitted.shape != true.shape or fitted.ndim != 2 or fitted.shape[1] != 3 or len(fitted) < 3:
        raise ValueError(f"align_points needs two (N, 3) point sets with N >= 3, got {fitted.shape} "
                         f"and {true.shape}.")
    k, rotation, translation = similarity_transform(fitted, true, scale)
    return k * fitted @ rotation.T + translation, k


def aligned_distances(fitted: np.ndarray, true: np.ndarray, scale: bool = False) -> np.ndarray:
    """Per-point distances (N,) between `true` and `fitted` aligned onto it (`align_points`), in
    the points' unit (mm for mfface models)."""
    aligned, _ = align_points(fitted, true, scale)
    return np.linalg.norm(aligned - np.asarray(true, dtype=np.float64), axis=1)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB, peak 1, of images (H, W, 3) over the `mask` (H, W) pixels and all channels."""
    mse = float(((x - y)[mask] ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _gaussian_blur(x: torch.Tensor, sigma: float = 1.5, taps: int = 11) -> torch.Tensor:
    """Separable Gaussian filter of (C, H, W); zero padding, renormalised at the borders."""
    r = torch.arange(taps, dtype=x.dtype) - (taps - 1) / 2
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[0]

    def conv(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t[None], k.view(1, 1, 1, -1).expand(c, 1, 1, taps), padding=(0, taps // 2), groups=c)
        return F.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, taps, 1), padding=(taps // 2, 0), groups=c)[0]
    return conv(x) / conv(torch.ones_like(x))


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean SSIM of images (H, W, 3) in [0, 1] over the `mask` (H, W) pixels and the channels.

    Per channel, an 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2:
        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)).
    Windows reach outside the mask; to compare only the face, make the two images equal there.
    """
    x, y = x.permute(2, 0, 1).double(), y.permute(2, 0, 1).double()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    sxx = _gaussian_blur(x * x) - mx * mx
    syy = _gaussian_blur(y * y) - my * my
    sxy = _gaussian_blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(value[:, mask].mean())
