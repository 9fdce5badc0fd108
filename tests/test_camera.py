"""Pose, projection and the PnP initialisation."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mfface.camera import (euler_from_matrix, head_rotation, project, rotation_matrix, solve_pnp,
                           to_camera)


def test_frontal_pose_projects_known_point():
    # nose 100 mm in front of the model origin, face 500 mm away, 10 mm to the face's left, 20 mm up
    point = torch.tensor([[[10.0, 20.0, 100.0]]], dtype=torch.float64)
    cam = to_camera(point, torch.zeros(1, 3, dtype=torch.float64),
                    torch.tensor([[0.0, 0.0, 500.0]], dtype=torch.float64))
    assert torch.allclose(cam, torch.tensor([[[10.0, -20.0, 400.0]]], dtype=torch.float64))
    uv = project(cam, torch.tensor([800.0], dtype=torch.float64), 256, 128)
    # u = 800 * 10/400 + 128 = 148 (image right = face's left), v = 800 * -20/400 + 64 = 24 (up)
    assert torch.allclose(uv, torch.tensor([[[148.0, 24.0]]], dtype=torch.float64))


def test_rotation_matches_scipy_and_is_orthonormal():
    rng = np.random.default_rng(1)
    euler = rng.uniform(-1.4, 1.4, (16, 3))
    head = head_rotation(torch.from_numpy(euler)).numpy()
    expected = Rotation.from_euler("YXZ", euler).as_matrix()
    np.testing.assert_allclose(head, expected, atol=1e-12)
    rot = rotation_matrix(torch.from_numpy(euler)).numpy()
    np.testing.assert_allclose(rot, np.diag([1.0, -1.0, -1.0]) @ expected, atol=1e-12)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)


def test_euler_round_trip():
    rng = np.random.default_rng(2)
    euler = torch.from_numpy(rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (32, 3)))
    back = euler_from_matrix(rotation_matrix(euler))
    assert torch.allclose(back, euler, atol=1e-9)


def test_axis_meanings():
    """Positive yaw moves the nose to the image right, positive pitch moves it down."""
    nose = torch.tensor([[[0.0, 0.0, 100.0]]])
    t = torch.tensor([[0.0, 0.0, 500.0]])
    f = torch.tensor([500.0])

    def uv(e):
        return project(to_camera(nose, torch.tensor([e]), t), f, 100, 100)[0, 0]
    centre = uv([0.0, 0.0, 0.0])
    assert uv([0.3, 0.0, 0.0])[0] > centre[0] + 10
    assert uv([0.0, 0.3, 0.0])[1] > centre[1] + 10
    left_eye = torch.tensor([[[30.0, 0.0, 0.0]]])  # on the image right when frontal
    raised = project(to_camera(left_eye, torch.tensor([[0.0, 0.0, 0.3]]), t), f, 100, 100)[0, 0]
    assert raised[1] < 50 - 5  # the image-right side rises: counter-clockwise in the image


def test_projection_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    verts = torch.from_numpy(rng.normal(0, 50, (2, 5, 3)))
    euler = torch.from_numpy(rng.normal(0, 0.3, (2, 3))).requires_grad_()
    trans = torch.tensor([[5.0, -3.0, 400.0], [0.0, 2.0, 600.0]], dtype=torch.float64, requires_grad=True)
    focal = torch.tensor([500.0, 700.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, t, f: project(to_camera(verts, e, t), f, 64, 48),
                                    (euler, trans, focal))


def _face_like_points(n: int, rng: np.random.Generator) -> np.ndarray:
    """Points on the front of an ellipsoid, 150 x 200 mm with 80 mm of depth relief."""
    xy = rng.uniform(-1, 1, (n, 2))
    xy = xy[np.sum(xy ** 2, axis=1) < 1]
    z = 80.0 * np.sqrt(1 - np.sum(xy ** 2, axis=1))
    return np.column_stack([75.0 * xy[:, 0], 100.0 * xy[:, 1], z])


@pytest.mark.parametrize("euler, translation, focal", [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 600.0), 600.0),
    ((0.4, -0.2, 0.1), (20.0, -10.0, 450.0), 900.0),
    ((-0.6, 0.25, -0.2), (-30.0, 15.0, 800.0), 1500.0),
])
def test_pnp_recovers_pose_and_focal(euler, translation, focal):
    rng = np.random.default_rng(4)
    width, height = 512, 384
    model = _face_like_points(478, rng)
    cam = to_camera(torch.from_numpy(model[None]), torch.tensor([euler], dtype=torch.float64),
                    torch.tensor([translation], dtype=torch.float64))
    image = project(cam, torch.tensor([focal], dtype=torch.float64), width, height)[0].numpy()
    noisy = image + rng.normal(0, 0.5, image.shape)
    found = solve_pnp(model, noisy, width, height)
    assert abs(found.focal / focal - 1) < 0.05
    assert np.degrees(np.abs(found.euler - euler)).max() < 1.0
    assert np.abs(found.translation - translation).max() / translation[2] < 0.05
    assert found.rms < 0.8
    known = solve_pnp(model, noisy, width, height, focal=focal)
    assert np.degrees(np.abs(known.euler - euler)).max() < 0.5
    assert abs(known.translation[2] / translation[2] - 1) < 0.01


def test_principal_point_shifts_projection_and_pnp_uses_it():
    rng = np.random.default_rng(5)
    width, height, focal = 256, 256, 400.0
    euler, translation = (0.2, -0.1, 0.05), (-40.0, 25.0, 500.0)
    principal = torch.tensor([[180.0, 60.0]], dtype=torch.float64)  # e.g. a crop's corner region
    model = _face_like_points(478, rng)
    cam = to_camera(torch.from_numpy(model[None]), torch.tensor([euler], dtype=torch.float64),
                    torch.tensor([translation], dtype=torch.float64))
    f = torch.tensor([focal], dtype=torch.float64)
    image = project(cam, f, width, height, principal)[0].numpy()
    centred = project(cam, f, width, height)[0].numpy()
    assert np.allclose(image - centred, [180.0 - 128.0, 60.0 - 128.0])
    found = solve_pnp(model, image, width, height, focal=focal, principal=(180.0, 60.0))
    assert np.degrees(np.abs(found.euler - euler)).max() < 0.01
    assert np.abs(found.translation - translation).max() < 0.01
    # assuming the image centre instead tilts the head towards the offset
    wrong = solve_pnp(model, image, width, height, focal=focal)
    assert np.degrees(np.abs(wrong.euler - euler)).max() > 3.0
    with pytest.raises(ValueError, match="principal must be"):
        project(cam, f, width, height, torch.zeros(3, 2, dtype=torch.float64))


def test_pnp_rejects_bad_input():
    with pytest.raises(ValueError, match="needs"):
        solve_pnp(np.zeros((5, 3)), np.zeros((5, 2)), 64, 64)
    with pytest.raises(ValueError, match="needs"):
        solve_pnp(np.zeros((10, 3)), np.zeros((9, 2)), 64, 64)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="euler must end in shape"):
        rotation_matrix(torch.zeros(2, 4))
