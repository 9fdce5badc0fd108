"""Landmarks that cannot shape a face (mfface.fitting.untrusted_landmarks): a face cut by the border, a
head beyond profile, landmarks that fit no face. They are detected after stage 1, reported, and the
shape falls back to stronger priors instead of a confident wrong one."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfface.camera import project, to_camera
from mfface.config import FitConfig, apply_overrides
from mfface.fitting.pipeline import Reconstructor, prepare_photo
from mfface.fitting.untrusted_landmarks import landmark_problems
from mfface.morphable.store import ModelStore
from mfface.synthetic import random_face

SIZE = 128
STAGE1 = {"stage1.iterations": 150}


@pytest.fixture(scope="module")
def lite():
    return ModelStore().load("ict-lite")


def _grid(n: int = 478) -> np.ndarray:
    """n points spread over a 100 px face in a 200 px photo (eye corners 33 / 263 60 px apart)."""
    rng = np.random.default_rng(0)
    points = rng.uniform(50, 150, (n, 2))
    points[33], points[263] = (70, 90), (130, 90)
    return points


def test_clean_landmarks_raise_no_problem():
    points = _grid()
    assert landmark_problems((200, 200), points, points, "mediapipe478", math.radians(20), 2.0) == []


def test_each_problem_is_one_sentence():
    points = _grid()
    cut = points.copy()
    cut[:40, 0] = -10.0
    border = landmark_problems((200, 200), cut, points, "mediapipe478", 0.0, 2.0)
    assert len(border) == 1 and "cut by the photo's border" in border[0] and "8%" in border[0]
    profile = landmark_problems((200, 200), points, points, "mediapipe478", math.radians(-75), 2.0)
    assert len(profile) == 1 and "turned 75 degrees" in profile[0]
    residual = landmark_problems((200, 200), points, points, "mediapipe478", 0.0, 9.0)
    assert len(residual) == 1 and "do not fit one face" in residual[0]


def _fit_stage1(model, photo: torch.Tensor, landmarks: np.ndarray, **overrides):
    config = apply_overrides(FitConfig(), {**STAGE1, **overrides})
    image = prepare_photo(photo, landmarks, "mediapipe478", config, "face")
    return Reconstructor(model, config).fit([image], skip_stages=(2, 3))


def test_a_face_cut_by_the_border_keeps_near_the_mean_shape(lite):
    face = random_face(lite, SIZE, seed=4, spp=2, max_yaw_deg=10.0, identity_scale=1.0)
    whole = _fit_stage1(lite, face.photo, face.clean_landmarks)
    assert whole.landmark_warnings == [[]]
    shift = int(0.45 * SIZE)          # the photo loses its left 45%: a third of the face
    photo, points = face.photo[:, shift:], face.clean_landmarks - [shift, 0]
    trusting = _fit_stage1(lite, photo, points, **{"landmarks.unreliable_prior_scale": 1.0})
    falling_back = _fit_stage1(lite, photo, points)
    for result in (trusting, falling_back):
        assert len(result.landmark_warnings[0]) == 1
        assert "cut by the photo's border" in result.landmark_warnings[0][0]
    norm = lambda r: float(r.state.identity.norm())  # noqa: E731
    assert norm(falling_back) < 0.5 * norm(trusting)
    assert falling_back.config.stage1.identity_prior == pytest.approx(100 * FitConfig().stage1.identity_prior)


def test_a_head_beyond_profile_is_reported(lite):
    index = torch.as_tensor(lite.landmarks["mediapipe478"])
    euler = torch.tensor([[math.radians(78.0), 0.0, 0.0]])
    with torch.no_grad():
        camera = to_camera(lite.vertices(), euler, torch.tensor([[0.0, 0.0, 700.0]]))
        points = project(camera, torch.tensor([500.0]), 256, 256)[0, index.clamp_min(0)].double().numpy()
    photo = torch.full((256, 256, 3), 0.5)
    result = _fit_stage1(lite, photo, points)
    assert abs(math.degrees(float(result.state.euler[0, 0]))) > 70
    assert any("beyond 70" in w for w in result.landmark_warnings[0])
