"""UV unwrap (LSCM) and per-vertex -> texel baking."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

from mfface.morphable.uv import bake_vertex_attribute, texel_map, unwrap_lscm, uv_distortion


def face_mesh(n: int = 15, bulge: float = 60.0) -> tuple[np.ndarray, np.ndarray]:
    """A face-sized (150 x 200 mm) half-ellipsoid mask with a nose bump, symmetric about x = 0.

    Vertices (V, 3) in the model frame (+y up, +z out of the face); triangles (F, 3) counter-clockwise
    seen from the front.
    """
    a, b = 75.0, 100.0
    x, y = np.meshgrid(np.linspace(-a, a, n), np.linspace(-b, b, int(n * b / a)))
    x, y = x.ravel(), y.ravel()
    r = (x / a) ** 2 + (y / b) ** 2
    keep = r < 0.98
    x, y, r = x[keep], y[keep], r[keep]
    z = bulge * np.sqrt(1.0 - r) + 25.0 * np.exp(-((x / 12.0) ** 2 + ((y + 5.0) / 25.0) ** 2))
    triangles = Delaunay(np.stack([x, y], axis=1)).simplices
    p = np.stack([x, y], axis=1)[triangles]
    cross = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 1, 1] - p[:, 0, 1]) * (p[:, 2, 0] - p[:, 0, 0])
    triangles = np.where((cross < 0)[:, None], triangles[:, [0, 2, 1]], triangles)
    return np.stack([x, y, z], axis=1), triangles


def test_flat_mesh_unwraps_to_its_own_similarity_image() -> None:
    vertices, triangles = face_mesh(bulge=0.0)
    vertices[:, 2] = 0.0
    uv = unwrap_lscm(vertices, triangles, margin=0.05)
    xy = vertices[:, :2]
    scale = 0.9 / np.ptp(xy, axis=0).max()
    expected = (xy - 0.5 * (xy.min(axis=0) + xy.max(axis=0))) * scale + 0.5
    np.testing.assert_allclose(uv, expected, atol=1e-5)


def test_curved_face_unwrap_is_conformal_oriented_and_deterministic() -> None:
    vertices, triangles = face_mesh()
    uv = unwrap_lscm(vertices, triangles, margin=0.02)
    assert uv.dtype == np.float32 and uv.shape == (len(vertices), 2)
    assert uv.min() >= 0.02 - 1e-6 and uv.max() <= 0.98 + 1e-6
    assert np.isclose(np.ptp(uv, axis=0).max(), 0.96, atol=1e-5)
    d = uv_distortion(vertices, triangles, uv)
    assert d["flipped"] == 0.0
    assert d["conformal_mean"] < 1.1
    assert d["conformal_mean"] < uv_distortion(vertices, triangles, vertices[:, :2])["conformal_mean"]
    # frontal look: the face's left (+x) on the right of the texture, forehead (+y) at the top
    assert uv[np.argmax(vertices[:, 0]), 0] > 0.8 and uv[np.argmin(vertices[:, 0]), 0] < 0.2
    assert uv[np.argmax(vertices[:, 1]), 1] > 0.9 and uv[np.argmin(vertices[:, 1]), 1] < 0.1
    np.testing.assert_array_equal(uv, unwrap_lscm(vertices, triangles, margin=0.02))


def test_components_and_stray_vertices_keep_their_frontal_places() -> None:
    vertices, triangles = face_mesh(n=9)
    shifted = vertices + np.array([200.0, 0.0, 0.0])
    stray = np.array([[100.0, 300.0, 0.0]])
    all_vertices = np.concatenate([vertices, shifted, stray])
    uv = unwrap_lscm(all_vertices, np.concatenate([triangles, triangles + len(vertices)]))
    left, right = uv[: len(vertices)], uv[len(vertices): 2 * len(vertices)]
    assert left[:, 0].max() < right[:, 0].min()
    np.testing.assert_allclose(right - right.mean(axis=0), left - left.mean(axis=0), atol=1e-5)
    assert uv[-1, 1] == pytest.approx(uv.max(axis=0)[1])  # the stray vertex sits highest


def test_distortion_of_known_maps() -> None:
    vertices, triangles = face_mesh()
    vertices[:, 2] = 0.0
    xy = vertices[:, :2]
    stretched = uv_distortion(vertices, triangles, xy * np.array([2.0, 1.0]))
    assert stretched["conformal_mean"] == pytest.approx(2.0)
    assert stretched["area_log_mean"] == pytest.approx(0.0, abs=1e-9)
    assert uv_distortion(vertices, triangles, xy * np.array([-1.0, 1.0]))["flipped"] == pytest.approx(1.0)


def test_unwrap_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        unwrap_lscm(np.zeros((4, 2)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="triangles"):
        unwrap_lscm(np.zeros((4, 3)), np.zeros((0, 3), dtype=int))


def test_bake_reproduces_linear_functions_of_uv_exactly() -> None:
    vertices, triangles = face_mesh()
    uv = unwrap_lscm(vertices, triangles)
    values = np.stack([uv[:, 0], uv[:, 1], 0.3 * uv[:, 0] - 2.0 * uv[:, 1] + 1.0], axis=1)
    size = (48, 64)
    inside = texel_map(uv, triangles, size, dilate=0)
    tex = bake_vertex_attribute((uv, triangles), values, size, dilate=0)
    rows, cols = np.nonzero(inside.mask)
    u, v = (cols + 0.5) / size[1], 1.0 - (rows + 0.5) / size[0]
    np.testing.assert_allclose(tex[rows, cols], np.stack([u, v, 0.3 * u - 2.0 * v + 1.0], axis=1), atol=1e-5)
    assert inside.mask.mean() > 0.5
    assert np.all(tex[~inside.mask] == 0.0)


def test_dilation_grows_the_border_with_convex_values() -> None:
    vertices, triangles = face_mesh()
    uv = unwrap_lscm(vertices, triangles)
    values = np.random.default_rng(1).random((len(uv), 2))
    plain = texel_map(uv, triangles, 64, dilate=0)
    grown = texel_map(uv, triangles, 64, dilate=3)
    assert grown.mask[plain.mask].all() and grown.mask.sum() > plain.mask.sum()
    tex = grown.apply(values)
    np.testing.assert_array_equal(tex[plain.mask], plain.apply(values)[plain.mask])
    ring = grown.mask & ~plain.mask
    assert np.all(tex[ring] >= values.min(axis=0) - 1e-6) and np.all(tex[ring] <= values.max(axis=0) + 1e-6)
    np.testing.assert_allclose(grown.weights[grown.mask].sum(axis=1), 1.0, atol=1e-6)
    # every dilated texel is within 3 texels (Chebyshev) of a covered one
    from scipy.ndimage import binary_dilation
    assert not (ring & ~binary_dilation(plain.mask, np.ones((3, 3), bool), iterations=3)).any()


def test_v_zero_is_the_bottom_row_and_bad_inputs_raise() -> None:
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5]])  # lower-left half of the bottom half
    m = texel_map(uv, np.array([[0, 1, 2]]), 16, dilate=0)
    assert m.mask[12:].any() and not m.mask[:8].any()
    with pytest.raises(ValueError, match="texture_size is required"):
        bake_vertex_attribute((uv, np.array([[0, 1, 2]])), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"values must be \(V, C\)"):
        bake_vertex_attribute((uv, np.array([[0, 1, 2]])), np.zeros((4, 1)), 8)
    with pytest.raises(ValueError, match="triangles"):
        texel_map(uv, np.array([[0, 1, 5]]), 8)


def test_texel_map_on_torch_is_differentiable_and_matches_numpy() -> None:
    vertices, triangles = face_mesh(n=9)
    uv = unwrap_lscm(vertices, triangles)
    m = texel_map(uv, triangles, 32)
    values = torch.rand(2, len(uv), 3, dtype=torch.float64, requires_grad=True)
    tex = m.apply(values)
    assert tex.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(tex.detach().numpy(), m.apply(values.detach().numpy()), atol=1e-6)
    tex.sum().backward()
    # each covered texel spreads a total weight of 1 over vertices
    assert values.grad.sum().item() == pytest.approx(2 * 3 * m.mask.sum(), rel=1e-6)
