"""Unit tests of the fitting's parts: texture lookup, skin mask, integrator setting, checkpoints."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import data_file
from mfface.checkpoints import CheckpointError, CheckpointOwner, load_checkpoint, save_checkpoint
from mfface.config import FitConfig, apply_overrides
from mfface.forward import ForwardModel, RenderSettings
from mfface.masks import skin_mask
from mfface.state import FaceState
from mfface.textures import sample_texture


def test_sample_texture_puts_v0_at_the_bottom_row() -> None:
    texture = torch.zeros(1, 8, 8, 3)
    texture[0, 0, :, 0] = 1.0   # top row red
    texture[0, -1, :, 1] = 1.0  # bottom row green
    values = sample_texture(texture, torch.tensor([[0.5, 0.99], [0.5, 0.01]]))
    assert torch.allclose(values[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(values[0, 1], torch.tensor([0.0, 1.0, 0.0]))


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
    settings = RenderSettings.from_config(config, 32, 1)
    assert ForwardModel(ict).renderer(settings).settings["integrator"] == "prb_projective"


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
