"""UV layout for models that ship without one, and baking per-vertex attributes into textures.

Unwrap: least-squares conformal maps (LSCM, Lévy et al. 2002) of each connected component of the
mesh, solved with scipy's sparse LU on the normal equations. LSCM keeps angles (so texels stay
square on the skin) and needs no seams for the disc-like Basel face masks, so vertices need not be
split. Each component is pinned at its two extreme vertices along x (along y when it is taller
than wide), placed at their frontal projection (x, y) in mm; the layout therefore looks like a
frontal view of the face (face's left on the right of the texture, forehead at the top) and is
deterministic. The result is scaled uniformly
into [margin, 1 - margin] (aspect kept, centred). v = 0 is the texture's bottom row.

Baking: `texel_map` rasterises the UV triangles once into, per texel, the three vertex indices and
barycentric weights that interpolate a per-vertex attribute at the texel centre; texels up to
`dilate` texels outside the UV triangles copy a neighbour's triangle with clamped barycentrics, so
bilinear lookups at UV borders do not bleed in background. Applying the map is a gather and a
weighted sum, so it works on numpy arrays and, differentiably, on torch tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

if TYPE_CHECKING:
    from mfface.morphable.model import MorphableModel

_MAX_CANDIDATES = 1 << 22  # (triangle, texel) pairs tested at once while rasterising


def _local_frames(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each triangle's corners in its own 2D orthonormal frame (F, 3, 2) and its area (F,)."""
    p = vertices[triangles].astype(np.float64)
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    normal = np.cross(e1, e2)
    double_area = np.linalg.norm(normal, axis=1)
    len1 = np.maximum(np.linalg.norm(e1, axis=1), 1e-300)
    x_axis = e1 / len1[:, None]
    y_axis = np.cross(normal / np.maximum(double_area, 1e-300)[:, None], x_axis)
    local = np.zeros((len(triangles), 3, 2))
    local[:, 1, 0] = len1
    local[:, 2, 0] = np.einsum("ij,ij->i", e2, x_axis)
    local[:, 2, 1] = np.einsum("ij,ij->i", e2, y_axis)
    return local, 0.5 * double_area


def _lscm_component(vertices: np.ndarray, triangles: np.ndarray, pins: np.ndarray,
                    pin_uv: np.ndarray) -> np.ndarray:
    """LSCM of one connected mesh (local indices) with two pinned vertices; returns (V, 2)."""
    n = len(vertices)
    local, area = _local_frames(vertices, triangles)
    keep = area > 1e-12 * max(area.max(), 1e-300)
    local, area, tris = local[keep], area[keep], triangles[keep]
    # Complex LSCM coefficients W_j = (x_{j+2} - x_{j+1}) + i (y_{j+2} - y_{j+1}), / sqrt(2 A).
    w = np.roll(local, -2, axis=1) - np.roll(local, -1, axis=1)
    w /= np.sqrt(2.0 * area)[:, None, None]
    rows = np.repeat(np.arange(len(tris)), 3)
    cols = tris.reshape(-1)
    wr, wi = w[..., 0].reshape(-1), w[..., 1].reshape(-1)
    m_re = sp.csr_matrix((wr, (rows, cols)), shape=(len(tris), n))
    m_im = sp.csr_matrix((wi, (rows, cols)), shape=(len(tris), n))
    # Real form of M (u + i v) = 0 with unknowns [u; v].
    a = sp.vstack([sp.hstack([m_re, -m_im]), sp.hstack([m_im, m_re])]).tocsc()
    fixed = np.concatenate([pins, pins + n])
    free = np.setdiff1d(np.arange(2 * n), fixed)
    fixed_values = np.concatenate([pin_uv[:, 0], pin_uv[:, 1]])
    a_free, a_fixed = a[:, free], a[:, fixed]
    rhs = -(a_fixed @ fixed_values)
    normal = (a_free.T @ a_free).tocsc()
    solution = spla.spsolve(normal, a_free.T @ rhs)
    x = np.empty(2 * n)
    x[free] = solution
    x[fixed] = fixed_values
    return np.stack([x[:n], x[n:]], axis=1)


def unwrap_lscm(vertices: np.ndarray, triangles: np.ndarray, margin: float = 0.02) -> np.ndarray:
    """A deterministic conformal UV layout (V, 2) float32 in [margin, 1 - margin].

    vertices (V, 3) in the model frame (+y up, +z out of the face); triangles (F, 3). Vertices in no
    triangle keep their frontal projection. Each connected component is unwrapped on its own and
    placed at its frontal position, so separate components land where they are seen from the front.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) < 3:
        raise ValueError("vertices must be a (V, 3) array with at least 3 vertices")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
        raise ValueError("triangles must be a non-empty (F, 3) array")
    n = len(vertices)
    uv = vertices[:, :2].copy()  # frontal projection (x right, y up) for unreferenced vertices
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    graph = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = csgraph.connected_components(graph, directed=False)
    tri_label = labels[triangles[:, 0]]
    for label in np.unique(tri_label):
        tris = triangles[tri_label == label]
        members = np.unique(tris)
        local_index = np.full(n, -1)
        local_index[members] = np.arange(len(members))
        sub = vertices[members]
        axis = 0 if np.ptp(sub[:, 0]) >= np.ptp(sub[:, 1]) else 1
        pins = np.array([np.argmin(sub[:, axis]), np.argmax(sub[:, axis])])
        uv[members] = _lscm_component(sub, local_index[tris], pins, sub[pins, :2])
    low, high = uv.min(axis=0), uv.max(axis=0)
    scale = (1.0 - 2.0 * margin) / max(float((high - low).max()), 1e-12)
    centred = (uv - 0.5 * (low + high)) * scale + 0.5
    return centred.astype(np.float32)


def uv_distortion(vertices: np.ndarray, triangles: np.ndarray, uvs: np.ndarray) -> dict[str, float]:
    """How much a UV layout distorts the surface, from each triangle's 3D->UV Jacobian.

    Returns area-weighted figures: 'conformal_mean' / 'conformal_p95' (ratio of singular values,
    1 = angles kept), 'area_log_mean' / 'area_log_p95' (|log| of the triangle's UV/3D area ratio over
    the global ratio, 0 = uniform texel density), and 'flipped' (fraction of area whose UV triangle
    is mirrored).
    """
    triangles = np.asarray(triangles, dtype=np.int64)
    local, area = _local_frames(np.asarray(vertices, dtype=np.float64), triangles)
    keep = area > 0
    local, area, triangles = local[keep], area[keep], triangles[keep]
    q = np.asarray(uvs, dtype=np.float64)[triangles]
    p_edges = np.stack([local[:, 1] - local[:, 0], local[:, 2] - local[:, 0]], axis=2)  # (F,2,2)
    q_edges = np.stack([q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]], axis=2)
    jac = q_edges @ np.linalg.inv(p_edges)
    s = np.linalg.svd(jac, compute_uv=False)
    det = np.linalg.det(jac)
    uv_area = 0.5 * np.abs(det) * 2.0 * area
    weights = area / area.sum()
    conformal = s[:, 0] / np.maximum(s[:, 1], 1e-300)
    area_log = np.abs(np.log(np.maximum(uv_area / area, 1e-300) / (uv_area.sum() / area.sum())))

    def weighted_percentile(x: np.ndarray, pct: float) -> float:
        order = np.argsort(x)
        cumulative = np.cumsum(weights[order])
        return float(x[order][np.searchsorted(cumulative, pct / 100.0)])

    return {
        "conformal_mean": float(np.sum(weights * conformal)),
        "conformal_p95": weighted_percentile(conformal, 95),
        "area_log_mean": float(np.sum(weights * area_log)),
        "area_log_p95": weighted_percentile(area_log, 95),
        "flipped": float(np.sum(weights[det < 0])),
    }


@dataclass
class TexelMap:
    """Per texel, which vertices and weights interpolate a per-vertex attribute at its centre.

    vertex_indices (H, W, 3) int64 and weights (H, W, 3) float32 (rows sum to 1 where covered);
    mask (H, W) bool is True for texels inside a UV triangle or within the dilation band. Row 0 is
    the top of the texture image (v = 1).
    """
    vertex_indices: np.ndarray
    weights: np.ndarray
    mask: np.ndarray

    def apply(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Bake per-vertex values (V, C) or batched (B, V, C) into (H, W, C) / (B, H, W, C).

        Uncovered texels are 0. Torch input stays torch (differentiable, on its own device).
        """
        if isinstance(values, torch.Tensor):
            idx = torch.from_numpy(self.vertex_indices).to(values.device)
            w = torch.from_numpy(self.weights).to(values.device, values.dtype)
            gathered = values[..., idx, :]  # (..., H, W, 3, C)
            return (gathered * w[..., None]).sum(dim=-2)
        values = np.asarray(values)
        return np.einsum("...hwkc,hwk->...hwc", values[..., self.vertex_indices, :],
                         self.weights).astype(np.float32)


def _barycentric(px: np.ndarray, py: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (N, 3) of points (px, py) in triangles with corners (N, 3, 2)."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)
    l0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / det
    l1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / det
    return np.stack([l0, l1, 1.0 - l0 - l1], axis=1)


def texel_map(uvs: np.ndarray, triangles: np.ndarray, texture_size: int | tuple[int, int],
              dilate: int = 4) -> TexelMap:
    """Rasterise UV triangles into a `TexelMap` of (height, width) texels (vectorised numpy).

    A texel belongs to a triangle when its centre lies inside it (ties go to the later triangle);
    `dilate` rings of texels around the covered area reuse a neighbour's triangle with barycentrics
    clamped to that triangle.
    """
    height, width = (texture_size, texture_size) if isinstance(texture_size, int) else texture_size
    if height <= 0 or width <= 0:
        raise ValueError("texture_size must be positive, e.g. 512 or (512, 512)")
    uvs = np.asarray(uvs, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError("uvs must be a (V, 2) array")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.size == 0 or triangles.max() >= len(uvs):
        raise ValueError("triangles must be a non-empty (F, 3) array of indices into uvs")
    # Pixel space: x = u W, y = (1 - v) H; texel (row j, column i) has its centre at (i + .5, j + .5).
    corners = np.stack([uvs[triangles][..., 0] * width, (1.0 - uvs[triangles][..., 1]) * height], axis=-1)
    tri_of = np.full((height, width), -1, dtype=np.int64)
    bary = np.zeros((height, width, 3))
    i0 = np.clip(np.ceil(corners[..., 0].min(axis=1) - 0.5), 0, width).astype(np.int64)
    i1 = np.clip(np.floor(corners[..., 0].max(axis=1) - 0.5), -1, width - 1).astype(np.int64)
    j0 = np.clip(np.ceil(corners[..., 1].min(axis=1) - 0.5), 0, height).astype(np.int64)
    j1 = np.clip(np.floor(corners[..., 1].max(axis=1) - 0.5), -1, height - 1).astype(np.int64)
    nx, ny = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    counts = nx * ny
    start = 0
    while start < len(triangles):
        cumulative = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(cumulative, _MAX_CANDIDATES, side="right")))
        tri = np.repeat(np.arange(start, stop), counts[start:stop])
        offset = np.arange(len(tri)) - np.repeat(np.cumsum(counts[start:stop]) - counts[start:stop],
                                                   counts[start:stop])
        ix = i0[tri] + offset % np.maximum(nx[tri], 1)
        iy = j0[tri] + offset // np.maximum(nx[tri], 1)
        lam = _barycentric(ix + 0.5, iy + 0.5, corners[tri])
        inside = (lam >= -1e-9).all(axis=1)
        tri_of[iy[inside], ix[inside]] = tri[inside]
        bary[iy[inside], ix[inside]] = lam[inside]
        start = stop
    for _ in range(max(0, dilate)):
        grown = tri_of.copy()
        # 4-neighbours first, then diagonals: a fixed order keeps the result deterministic.
        for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            shifted = np.full_like(tri_of, -1)
            ys = slice(max(dy, 0), height + min(dy, 0))
            yd = slice(max(-dy, 0), height + min(-dy, 0))
            xs = slice(max(dx, 0), width + min(dx, 0))
            xd = slice(max(-dx, 0), width + min(-dx, 0))
            shifted[yd, xd] = tri_of[ys, xs]
            take = (grown < 0) & (shifted >= 0)
            grown[take] = shifted[take]
        new = (grown >= 0) & (tri_of < 0)
        if not new.any():
            break
        jy, ix = np.nonzero(new)
        lam = np.clip(_barycentric(ix + 0.5, jy + 0.5, corners[grown[new]]), 0.0, None)
        bary[new] = lam / np.maximum(lam.sum(axis=1, keepdims=True), 1e-12)
        tri_of = grown
    mask = tri_of >= 0
    indices = np.where(mask[..., None], triangles[np.maximum(tri_of, 0)], 0)
    weights = np.where(mask[..., None], bary, 0.0).astype(np.float32)
    return TexelMap(vertex_indices=indices, weights=weights, mask=mask)


def bake_vertex_attribute(model_or_arrays: MorphableModel | tuple[np.ndarray, np.ndarray],
                          values: np.ndarray, texture_size: int | tuple[int, int] | None = None,
                          dilate: int = 4) -> np.ndarray:
    """Rasterise per-vertex values (V, C) into a texture (H, W, C) float32 by barycentric interpolation.

    model_or_arrays is a MorphableModel (its `uvs`, `triangles` and, when texture_size is None, its
    `texture_size`) or a tuple (uvs (V, 2), triangles (F, 3)). Texels farther than `dilate` texels
    from every UV triangle are 0.
    """
    if isinstance(model_or_arrays, tuple):
        uvs, triangles = model_or_arrays
        size = texture_size
    else:
        uvs, triangles = model_or_arrays.uvs, model_or_arrays.triangles
        size = texture_size if texture_size is not None else tuple(model_or_arrays.texture_size)
    if size is None:
        raise ValueError("texture_size is required when baking from (uvs, triangles) arrays")
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] != len(uvs):
        raise ValueError(f"values must be (V, C) with V = {len(uvs)} vertices, got {values.shape}")
    return texel_map(uvs, triangles, size, dilate).apply(values)
