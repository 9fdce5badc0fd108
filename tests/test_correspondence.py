"""MediaPipe-478 -> model vertex correspondence: transforms, recovery, the shipped ICT table."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import data_file
from mfface.landmarks import MEDIAPIPE_TO_IBUG68
from mfface.metrics import similarity_transform
from mfface.morphable.correspondence import (MEDIAPIPE_CONTOUR, mediapipe_correspondence,
                                             mediapipe_from_ibug68, read_canonical_mesh)
from mfface.morphable.ict import mediapipe_table, table_to_original
from mfface.morphable.model import MorphableModel

CANONICAL = "mediapipe/canonical_face_model.obj"


def _rotation(rx: float, ry: float) -> np.ndarray:
    cx, sx, cy, sy = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry)
    return np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array(
        [[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])


def _point_model(points: np.ndarray) -> MorphableModel:
    v = len(points)
    return MorphableModel("points", points.astype(np.float32), np.zeros((0, v, 3), np.float32),
                          np.zeros(0, np.float32), np.zeros((0, v, 3), np.float32),
                          np.zeros(0, np.float32), np.zeros((0, 3), np.int32),
                          np.zeros((v, 2), np.float32))


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    rotation = _rotation(0.3, -0.5)
    dst = 1.7 * src @ rotation.T + np.array([1.0, -2.0, 3.0])
    scale, r, t = similarity_transform(src, dst)
    assert scale == pytest.approx(1.7) and np.allclose(r, rotation) and np.allclose(t, [1, -2, 3])
    mirrored = src * np.array([-1, 1, 1])  # a reflection is never returned as a rotation
    _, r, _ = similarity_transform(src, mirrored)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_recovers_a_transformed_canonical_mesh_without_landmarks():
    """Init from centroid/scale + ICP must find each point's own copy (indices = identity)."""
    canonical = read_canonical_mesh(data_file(CANONICAL))
    moved = 0.9 * canonical @ _rotation(0.08, -0.1).T + np.array([3.0, -5.0, 20.0])
    corr = mediapipe_correspondence(_point_model(moved), data_file(CANONICAL))
    assert np.mean(corr.indices[:468] == np.arange(468)) > 0.98
    assert np.all(corr.indices[468:] == -1)
    assert corr.scale == pytest.approx(0.9, rel=1e-3)


def test_canonical_mesh_errors(tmp_path):
    bad = tmp_path / "mesh.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(ValueError, match="not MediaPipe's 468"):
        read_canonical_mesh(bad)
    with pytest.raises(ValueError, match="cannot read"):
        read_canonical_mesh(tmp_path / "missing.obj")


def test_contour_is_mediapipes_face_oval():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    assert set(MEDIAPIPE_CONTOUR) == {i for edge in FACEMESH_FACE_OVAL for i in edge}


def test_ibug_fallback_table():
    ibug = np.arange(1000, 1068)
    table = mediapipe_from_ibug68(ibug)
    singles = [(k, mp[0]) for k, mp in enumerate(MEDIAPIPE_TO_IBUG68) if len(mp) == 1]
    assert (table >= 0).sum() == len(singles) == 63
    assert all(table[mp] == 1000 + k for k, mp in singles)


def test_shipped_ict_table_matches_recomputation(ict_indexed):  # noqa: F811
    model, to_orig = ict_indexed
    corr = mediapipe_correspondence(model, data_file(CANONICAL))
    recomputed = table_to_original(corr.indices, to_orig)
    np.testing.assert_array_equal(recomputed, mediapipe_table(calibrated=False))
    # distances of the mapped ICT vertices from the aligned canonical mesh (docs/models.md)
    assert np.median(corr.distances) < 2.0
    assert np.percentile(corr.distances, 95) < 6.0 and corr.distances.max() < 10.0
    # the landmarks the table gives agree with ICT's own iBUG-68 annotation near the eyes/nose
    ib = model.landmarks["ibug68"]
    for k in (30, 36, 39, 42, 45):
        mp = MEDIAPIPE_TO_IBUG68[k][0]
        gap = np.linalg.norm(model.mean_shape[corr.indices[mp]] - model.mean_shape[ib[k]])
        assert gap < 6.0, (k, gap)
