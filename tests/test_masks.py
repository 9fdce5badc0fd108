"""Skin masks from landmarks: degenerate landmarks give a clear error, never a Qhull traceback."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import data_file
from mfface.landmarks import LandmarkCheckError, read_landmarks
from mfface.masks import SkinMaskError, skin_mask


def _takeo_pts() -> np.ndarray:
    return read_landmarks(data_file("images/takeo.pts"))[0]


def test_takeo_mask_covers_cheeks_not_eyes():
    pts = _takeo_pts()
    mask = skin_mask(pts, 225, 150)
    assert mask.shape == (225, 150) and mask.dtype == np.float32
    cheek = (pts[3] + pts[31]) / 2  # between the jaw and the nostril
    eye = pts[36:42].mean(axis=0)
    assert mask[int(cheek[1]), int(cheek[0])] == 1.0
    assert mask[int(eye[1]), int(eye[0])] == 0.0
    assert mask[5, 5] == 0.0


@pytest.mark.parametrize("n", [68, 478])
@pytest.mark.parametrize("case", ["all equal", "collinear", "nan"])
def test_degenerate_landmarks_raise_skin_mask_error(n, case):
    if case == "all equal":
        pts = np.full((n, 2), 50.0)
    elif case == "collinear":
        t = np.linspace(0.0, 1.0, n)
        pts = np.stack([10 + 80 * t, 20 + 60 * t], axis=1)
    else:
        pts = np.full((n, 2), 50.0)
        pts[0, 0] = np.nan
    message = "not all finite" if case == "nan" else "face-outline landmarks lie on a line or at one point"
    with pytest.raises(SkinMaskError, match=message):
        skin_mask(pts, 100, 100)
    assert issubclass(SkinMaskError, LandmarkCheckError) and issubclass(SkinMaskError, ValueError)


def test_closed_eyes_and_mouth_are_cut_as_lines():
    """Hand-placed iBUG files mark a closed eye or mouth with upper and lower points on one line;
    those holes are collinear (Qhull cannot hull them) and are cut out as lines."""
    pts = _takeo_pts().copy()
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46), (61, 67), (62, 66), (63, 65)]:
        pts[lower] = pts[upper]
    for corner_a, mid, corner_b in [(36, 37, 39), (42, 43, 45), (60, 61, 64)]:
        pts[corner_a, 1] = pts[corner_b, 1] = pts[mid, 1]
    pts[[38, 40], 1] = pts[37, 1]
    pts[[44, 46], 1] = pts[43, 1]
    pts[[62, 63, 65, 66], 1] = pts[61, 1]
    mask = skin_mask(pts, 225, 150, erode_px=0.0)
    open_mask = skin_mask(_takeo_pts(), 225, 150, erode_px=0.0)
    assert mask.sum() > open_mask.sum()  # less is cut out
    y, x = pts[37, 1], (pts[37, 0] + pts[38, 0]) / 2  # on the closed right eye's line
    assert mask[int(y), int(x)] == 0.0


def test_wrong_count_is_a_value_error():
    with pytest.raises(ValueError, match="478 .MediaPipe. or 68"):
        skin_mask(np.zeros((100, 2)), 10, 10)


def test_mediapipe_edge_tables_are_mediapipes():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    from mfface import landmarks

    for name in ("LEFT_EYE", "RIGHT_EYE", "LEFT_EYEBROW", "RIGHT_EYEBROW", "LIPS"):
        assert getattr(landmarks, f"MEDIAPIPE_{name}") == getattr(fmc, f"FACEMESH_{name}"), name


def test_a_mediapipe_mask_needs_no_mediapipe(monkeypatch):
    """A fit from a MediaPipe landmark file runs where MediaPipe is not installed: the mask's eye,
    brow and lip holes come from the project's own tables."""
    import sys

    from mfface import masks
    from mfface.morphable.correspondence import read_canonical_mesh

    canonical = read_canonical_mesh(data_file("mediapipe/canonical_face_model.obj"))
    pts = np.stack([120 + 1.2 * canonical[:, 0], 130 - 1.2 * canonical[:, 1]], axis=1)  # frontal, y down
    expected = skin_mask(pts, 256, 256)
    masks._mediapipe_regions.cache_clear()
    monkeypatch.setitem(sys.modules, "mediapipe", None)   # any import of it now fails
    try:
        mask = skin_mask(pts, 256, 256)
    finally:
        masks._mediapipe_regions.cache_clear()
    assert 0.1 < mask.mean() < 0.6
    assert np.array_equal(mask, expected)
    right_eye = pts[sorted({i for e in masks.MEDIAPIPE_RIGHT_EYE for i in e})].mean(0)
    assert mask[int(right_eye[1]), int(right_eye[0])] == 0.0   # the eye is a hole
