"""Every objective of `mfface.objectives` on hand-computed cases, and the combiner."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mfface.config import FitConfig
from mfface.objectives import (CONTOUR_LANDMARKS, closeness_loss, consistency_loss, landmark_loss,
                               landmark_weights, masked_l1, photometric_loss, range_loss, sh_energy,
                               smoothness_loss, sparsity_prior, statistical_prior, symmetry_loss, weighted_terms)
from mfface.textures import MirrorSampler


def _mirrored_quad() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two triangles mirrored across u = 0.5; vertex i's partner is its mirror."""
    uvs = np.array([[0.1, 0.2], [0.4, 0.2], [0.4, 0.8], [0.9, 0.2], [0.6, 0.2], [0.6, 0.8]])
    return np.array([[0, 1, 2], [3, 5, 4]]), uvs, np.array([3, 4, 5, 0, 1, 2])


def test_mirror_pairs_are_mirror_images_and_symmetry_loss_sees_asymmetry() -> None:
    triangles, uvs, symmetry = _mirrored_quad()
    sampler = MirrorSampler(triangles, uvs, symmetry)
    uv, mirror = sampler.sample(500, torch.Generator().manual_seed(1))
    assert torch.allclose(mirror[:, 0], 1.0 - uv[:, 0], atol=1e-6)
    assert torch.allclose(mirror[:, 1], uv[:, 1], atol=1e-6)
    u = torch.linspace(0, 1, 32)
    symmetric = (u - 0.5).abs().expand(32, 32)[None, :, :, None].expand(1, 32, 32, 3)
    lopsided = u.expand(32, 32)[None, :, :, None].expand(1, 32, 32, 3)
    assert symmetry_loss(symmetric, uv, mirror) < 0.01
    assert symmetry_loss(lopsided, uv, mirror) > 0.1


def test_smoothness_range_and_consistency() -> None:
    flat = torch.full((1, 16, 16, 3), 0.5)
    noisy = flat + 0.1 * torch.randn(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert smoothness_loss(flat) == 0 and smoothness_loss(noisy) > 0.05
    assert range_loss(flat, 0.0, 1.0) == 0
    assert range_loss(torch.full((1, 2, 2, 1), 1.5), 0.0, 1.0) == pytest.approx(0.25)
    # Consistency compares colour, not brightness: a darker copy is consistent, a bluer one is not.
    assert consistency_loss(0.5 * noisy.clamp(0.01), noisy.clamp(0.01)) < 1e-3
    bluer = noisy.clone()
    bluer[..., 2] += 0.3
    assert consistency_loss(bluer, noisy) > 0.02


def test_photometric_loss_is_the_mean_l1_inside_the_mask() -> None:
    target = torch.zeros(1, 4, 4, 3)
    image = torch.zeros(1, 4, 4, 3)
    image[0, :2] = 0.3           # error 0.3 on the top half
    coverage = torch.ones(1, 4, 4)
    skin = torch.zeros(1, 4, 4)
    skin[0, :2] = 1.0
    assert float(photometric_loss(image, coverage, target, skin)) == pytest.approx(0.3)
    skin[0] = 1.0                # half the counted pixels are now right
    assert float(photometric_loss(image, coverage, target, skin)) == pytest.approx(0.15)
    coverage[0, :2] = 0.0        # the wrong pixels are not rendered: they do not count
    assert float(photometric_loss(image, coverage, target, skin)) == 0.0


def test_priors_and_landmark_loss():
    assert statistical_prior(torch.tensor([[1.0, 3.0]])) == 5.0
    assert statistical_prior(torch.tensor([[2.0]]), torch.tensor([4.0])) == 1.0
    target = torch.zeros(1, 2, 2)
    near = torch.tensor([[[3.0, 0.0], [0.0, 0.0]]])
    far = torch.tensor([[[10.0, 0.0], [0.0, 0.0]]])
    assert landmark_loss(near, target) == 4.5  # mean of 9 and 0
    assert landmark_loss(near, target, robust_scale=4.0) == 4.5  # inside the quadratic zone
    assert landmark_loss(far, target, robust_scale=4.0) == (2 * 4 * 10 - 16) / 2  # linear beyond 4 px
    weights = landmark_weights("ibug68", 68, 0.25)
    assert weights[:17].eq(0.25).all() and weights[17:].eq(1.0).all()
    assert landmark_loss(far, target, torch.tensor([0.0, 1.0])) == 0.0
    import mediapipe as mp
    oval = sorted({i for edge in mp.solutions.face_mesh.FACEMESH_FACE_OVAL for i in edge})
    assert list(CONTOUR_LANDMARKS["mediapipe478"]) == oval


def test_sparsity_prior_is_the_mean_absolute_value_with_a_constant_pull() -> None:
    """mean |c|; its gradient is sign(c) / n whatever the size of c (the quadratic prior's is
    2c / n), so it pulls a small weight as hard as a large one; at 0 the slope is +1 / n (the
    one-sided slope of a weight bounded below by 0)."""
    c = torch.tensor([[0.5, -2.0, 0.0, 0.01]], requires_grad=True)
    value = sparsity_prior(c)
    assert value.item() == pytest.approx(2.51 / 4)
    value.backward()
    assert c.grad.tolist() == [[0.25, -0.25, 0.25, 0.25]]


def test_masked_l1_of_a_hand_computed_case() -> None:
    image = torch.tensor([[[[0.2, 0.4, 0.6]], [[1.0, 1.0, 1.0]]]])   # (1, 2, 1, 3)
    target = torch.zeros(1, 2, 1, 3)
    weight = torch.tensor([[[1.0], [0.5]]])
    # (1 * (0.2 + 0.4 + 0.6) + 0.5 * 3) / (3 * 1.5) = 2.7 / 4.5
    assert float(masked_l1(image, target, weight)) == pytest.approx(0.6)
    assert float(masked_l1(image, target, torch.zeros(1, 2, 1))) == 0.0  # empty mask: 0, not NaN


def test_sh_energy_is_the_mean_square_and_its_gradient() -> None:
    coeffs = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 1.0]], requires_grad=True)
    energy = sh_energy(coeffs)
    assert float(energy.detach()) == pytest.approx(10.0 / 6.0)
    energy.backward()
    assert torch.allclose(coeffs.grad, 2 * coeffs.detach() / 6.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., n, 3\)"):
        sh_energy(torch.zeros(4))


def test_closeness_is_the_mean_absolute_difference() -> None:
    assert float(closeness_loss(torch.full((1, 2, 2, 1), 0.5), torch.full((1, 2, 2, 1), 0.2))) == pytest.approx(0.3)


def test_weighted_terms_weights_by_config_field_and_skips_zero_weights() -> None:
    section = FitConfig().stage2            # photo_weight 1000, landmark_weight 1
    called = []

    def term(value: float, name: str):
        def compute() -> torch.Tensor:
            called.append(name)
            return torch.tensor(value)
        return compute
    zero = FitConfig().stage3               # diffuse_range 0.0
    terms = weighted_terms(section, {"photo": "photo_weight", "landmarks": "landmark_weight"},
                           {"photo": term(0.01, "photo"), "landmarks": term(2.0, "landmarks")})
    assert {k: float(v) for k, v in terms.items()} == pytest.approx({"photo": 10.0, "landmarks": 2.0})
    skipped = weighted_terms(zero, {"diffuse_range": "diffuse_range"}, {"diffuse_range": term(5.0, "range")})
    assert skipped == {} and "range" not in called
