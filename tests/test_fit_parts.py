"""Unit tests of the fitting's parts: texture priors, skin mask, photometric loss, checkpoints."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import data_file
from mfface.config import FitConfig, apply_overrides
from mfface.fitting.face_render import FaceRender, photometric_loss
from mfface.fitting.state import (CheckpointError, CheckpointOwner, FaceState, load_checkpoint,
                                  save_checkpoint)
from mfface.masks import skin_mask
from mfface.texture_priors import (MirrorSampler, consistency_loss, range_loss, sample_texture,
                                   smoothness_loss, symmetry_loss)


def test_sample_texture_puts_v0_at_the_bottom_row() -> None:
    texture = torch.zeros(1, 8, 8, 3)
    texture[0, 0, :, 0] = 1.0   # top row red
    texture[0, -1, :, 1] = 1.0  # bottom row green
    values = sample_texture(texture, torch.tensor([[0.5, 0.99], [0.5, 0.01]]))
    assert torch.allclose(values[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(values[0, 1], torch.tensor([0.0, 1.0, 0.0]))


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


def test_skin_mask_covers_the_face_but_not_eyes_or_background() -> None:
    from mfface.images import read_image
    from mfface.landmarks import LandmarkDetector

    photo = read_image(data_file("images/astronaut.png"))
    with LandmarkDetector() as detector:
        points = detector.detect((photo.numpy() * 255).round().astype(np.uint8))
    mask = skin_mask(points, 512, 512)
    nose_tip = points[1]
    assert mask[int(nose_tip[1]), int(nose_tip[0])] == 1.0
    eye_centre = points[[33, 133, 159, 145]].mean(axis=0)
    assert mask[int(eye_centre[1]), int(eye_centre[0])] == 0.0
    assert mask[10, 10] == 0.0 and mask[500, 250] == 0.0
    assert 0.01 < mask.mean() < 0.1  # the face is ~100 px wide in a 512 px photo
    with pytest.raises(ValueError, match="478 .MediaPipe. or 68"):
        skin_mask(points[:100], 512, 512)


def test_integrator_setting_reaches_the_renderer(ict) -> None:
    config = apply_overrides(FitConfig(), {"render.integrator": "prb_projective"})
    assert FaceRender(ict, 32, config).renderer.settings["integrator"] == "prb_projective"


def _state(batch: int = 2) -> FaceState:
    g = torch.Generator().manual_seed(0)
    return FaceState(identity=torch.randn(1, 5, generator=g), expression=torch.rand(batch, 3, generator=g),
                     euler=torch.randn(batch, 3, generator=g), translation=torch.randn(batch, 3, generator=g),
                     focal=torch.rand(batch, generator=g), sh=torch.randn(batch, 9, 3, generator=g),
                     diffuse=torch.rand(1, 4, 4, 3, generator=g), specular=torch.rand(1, 4, 4, 3, generator=g),
                     roughness=torch.rand(1, 4, 4, 1, generator=g))


OWNER = CheckpointOwner("ict", "0123456789abcdef", ("aaaa", "bbbb"))


def test_checkpoint_round_trip_and_bad_files(tmp_path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "stage2.npz", state, 2, OWNER)
    loaded, stage, owner = load_checkpoint(tmp_path / "stage2.npz")
    assert stage == 2 and loaded.albedo is None and loaded.principal is None and owner == OWNER
    with_principal = dataclasses.replace(state, principal=torch.tensor([[10.0, 20.0], [30.0, 40.0]]))
    save_checkpoint(tmp_path / "stage1.npz", with_principal, 1, OWNER)
    assert torch.equal(load_checkpoint(tmp_path / "stage1.npz")[0].item(1).principal, torch.tensor([[30.0, 40.0]]))
    for name in ("identity", "expression", "sh", "diffuse", "roughness"):
        assert torch.equal(getattr(loaded, name), getattr(state, name))
    assert loaded.item(1).identity.shape == (1, 5) and torch.equal(loaded.item(1).euler, state.euler[1:2])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="damaged or not an mfface checkpoint"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="not an mfface checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
