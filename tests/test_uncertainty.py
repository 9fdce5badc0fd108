"""The Laplace posterior of a fit (mfface.fitting.uncertainty): what the landmarks leave open."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfface.camera import project, to_camera
from mfface.fitting.uncertainty import landmark_posterior, summary, vertex_std
from mfface.morphable.store import ModelStore
from mfface.objectives import landmark_weights

SIZE = 256


@pytest.fixture(scope="module")
def lite():
    return ModelStore().load("ict-lite")


def _posterior(model, yaw_deg: float, noise_px: float = 0.0, shift_mm: float = 0.0):
    """The posterior of a face seen at `yaw_deg`, `shift_mm` to the image right, with its exact
    landmarks (+ noise)."""
    index = torch.as_tensor(model.landmarks["mediapipe478"])
    valid = index >= 0
    weights = landmark_weights("mediapipe478", 478, 0.3)[valid]
    identity = 0.7 * torch.randn(model.n_identity, generator=torch.Generator().manual_seed(1))
    expression = torch.zeros(model.n_expression)
    euler = torch.tensor([math.radians(yaw_deg), 0.0, 0.0])
    translation, focal = torch.tensor([shift_mm, 0.0, 600.0]), torch.tensor(900.0)
    with torch.no_grad():
        camera = to_camera(model.vertices(identity[None], expression[None]), euler[None], translation[None])
        points = project(camera, focal[None], SIZE, SIZE)[0, index[valid]]
    points = points + noise_px * torch.randn(points.shape, generator=torch.Generator().manual_seed(2))
    return landmark_posterior(model, identity, expression, euler, translation, focal,
                              torch.tensor([SIZE / 2, SIZE / 2]), points, index[valid], weights, SIZE)


def _cheek(model, side: float) -> np.ndarray:
    mean = model.mean_shape
    front = mean[:, 2].max()
    return np.flatnonzero((side * mean[:, 0] > 45) & (np.abs(mean[:, 1] + 10) < 20) & (mean[:, 2] > front - 70))


def test_the_hidden_cheek_is_less_certain_at_60_degrees_of_yaw(lite):
    frontal, turned = _posterior(lite, 0.0), _posterior(lite, 60.0)
    assert (~turned.visible).sum() > 2 * (~frontal.visible).sum()
    # yaw > 0 turns the face's left (+x) side away from the camera
    hidden = _cheek(lite, +1.0)
    assert len(hidden) > 20
    std_frontal, std_turned = vertex_std(lite, frontal), vertex_std(lite, turned)
    assert std_turned[hidden].mean() > 1.25 * std_frontal[hidden].mean()
    assert np.degrees(turned.std()[0]) > np.degrees(frontal.std()[0])


def test_size_is_left_to_the_prior_while_the_projection_is_sharp(lite):
    """A pinhole photo does not fix the head's size: the distance (log) is known only to the
    spread of head sizes in the identity prior, far worse than the projected size."""
    figures = summary(lite, _posterior(lite, 0.0, noise_px=1.0), lite.regions["skin"])
    face_width_px = 900.0 * 140.0 / 600.0
    assert figures["scale_std"] > 5 * figures["landmark_sigma_px"] / face_width_px
    assert 0.3 < figures["landmark_sigma_px"] < 2.0 * 1.0 * math.sqrt(2)
    identity_std = np.array(figures["identity_std"])
    assert identity_std.max() <= 1.0 + 1e-6
    assert identity_std[:5].mean() < identity_std[-10:].mean()   # leading modes: more determined
    assert 0 < figures["identity_determined"] < 1
    assert set(figures["expression_std"]) == set(lite.expression_names)
    assert figures["vertex_std_mm"]["median"] > 0


def test_more_landmark_noise_means_more_uncertainty(lite):
    sharp, noisy = _posterior(lite, 15.0, 0.5), _posterior(lite, 15.0, 3.0)
    assert noisy.sigma_px > 2 * sharp.sigma_px
    assert np.median(vertex_std(lite, noisy)) > np.median(vertex_std(lite, sharp))


def test_landmarks_beyond_the_border_count_as_hidden(lite):
    """A face cut by the crop's border: MediaPipe extrapolates the points beyond it, so they count
    like hidden ones, and the cut-off side's shape is less certain."""
    whole, cut = _posterior(lite, 0.0), _posterior(lite, 0.0, shift_mm=60.0)
    assert (~cut.visible).sum() > (~whole.visible).sum() + 50
    cut_side = _cheek(lite, -1.0)    # the face's right (-x) side lands on the image right
    assert vertex_std(lite, cut)[cut_side].mean() > 1.2 * vertex_std(lite, whole)[cut_side].mean()
