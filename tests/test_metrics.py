"""Reconstruction metrics: alignment recovers known transforms, PSNR/SSIM match closed forms."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mfface.metrics import align_points, aligned_distances, psnr, ssim


@pytest.fixture
def points() -> np.ndarray:
    return np.random.default_rng(0).normal(scale=50.0, size=(200, 3))


def test_rigid_alignment_undoes_rotation_and_translation(points):
    rotation = Rotation.from_euler("xyz", [20, -35, 60], degrees=True).as_matrix()
    true = points @ rotation.T + np.array([10.0, -4.0, 300.0])
    assert aligned_distances(points, true).max() < 1e-9


def test_similarity_alignment_finds_the_scale_that_rigid_alignment_leaves(points):
    rotation = Rotation.from_euler("yxz", [10, 5, -3], degrees=True).as_matrix()
    true = 1.05 * points @ rotation.T + 7.0
    aligned, k = align_points(points, true, scale=True)
    assert k == pytest.approx(1.05, abs=1e-12)
    assert np.abs(aligned - true).max() < 1e-9
    rigid = aligned_distances(points, true)
    # without scale, a 5% size difference leaves ~5% of each point's distance from the centroid
    radius = np.linalg.norm(points - points.mean(0), axis=1)
    assert np.median(rigid) == pytest.approx(0.05 * np.median(radius), rel=0.15)


def test_alignment_never_mirrors(points):
    mirrored = points * np.array([-1.0, 1.0, 1.0])
    assert np.median(aligned_distances(points, mirrored)) > 1.0


def test_alignment_rejects_mismatched_sets(points):
    with pytest.raises(ValueError, match="N, 3"):
        aligned_distances(points, points[:10])
    with pytest.raises(ValueError, match="N >= 3"):
        aligned_distances(points[:2], points[:2])


def test_psnr_of_a_constant_error_inside_the_mask():
    x = torch.zeros(8, 8, 3)
    y = torch.full((8, 8, 3), 0.1)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 2:5] = True
    y[~mask] = 0.9  # outside the mask: not counted
    assert psnr(x, y, mask) == pytest.approx(20.0, abs=1e-4)


def test_ssim_of_constant_images_matches_the_closed_form():
    a, b = 0.3, 0.5
    mask = torch.ones(16, 16, dtype=torch.bool)
    c1 = 0.01 ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # no variance: the contrast term is 1
    x, y = (torch.full((16, 16, 3), v, dtype=torch.float64) for v in (a, b))
    assert ssim(x, y, mask) == pytest.approx(expected, rel=1e-9)


def test_ssim_is_one_for_equal_images_and_lower_for_noise():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(32, 32, 3, generator=g)
    mask = torch.ones(32, 32, dtype=torch.bool)
    assert ssim(image, image, mask) == pytest.approx(1.0, abs=1e-12)
    noisy = (image + 0.1 * torch.randn(32, 32, 3, generator=g)).clamp(0, 1)
    assert ssim(image, noisy, mask) < 0.95
    assert math.isfinite(psnr(image, noisy, mask))
