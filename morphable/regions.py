"""Geometric helpers for deriving model regions and mirror partners from a neutral mesh.

All positions are in mm in the model frame (+x face's left, +y up, +z out of the face).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def _segment_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance (N,) from 2D points (N, 2) to the closed polyline `polygon` (M, 2)."""
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    ab = b - a
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test for 2D points (N, 2) against polygon (M, 2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0][None], polygon[:, 1][None]
    x1, y1 = np.roll(polygon[:, 0], -1)[None], np.roll(polygon[:, 1], -1)[None]
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_at)).sum(axis=1) % 2 == 1


def frontal_polygon_region(positions: np.ndarray, candidates: np.ndarray, contour: np.ndarray,
                           margin_mm: float, depth_mm: float = 15.0) -> np.ndarray:
    """Sorted indices of `candidates` whose frontal (x, y) projection lies inside the closed
    `contour` (K, 3) or within `margin_mm` of it, and no more than `depth_mm` behind it.

    Used for the eye and mouth regions: on a face, eyelids and lips face the camera, so the
    frontal projection of the landmark contour delimits them.
    """
    pts = positions[candidates]
    poly = contour[:, :2]
    near = _inside(pts[:, :2], poly) | (_segment_distance(pts[:, :2], poly) < margin_mm)
    near &= pts[:, 2] > contour[:, 2].min() - depth_mm
    return np.sort(candidates[near]).astype(np.int64)


def mirror_partners(positions: np.ndarray, uvs: np.ndarray | None = None,
                    candidates: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Each vertex's mirror partner across the x = 0 plane, and the mirror distance (mm).

    The partner is the vertex nearest to (-x, y, z). Vertices split at UV seams share a
    position; among partners at the same distance (within 1e-6 mm) the one whose UV is nearest
    to (1 - u, v) wins, so texture symmetry follows the mirrored chart when the UV layout is
    symmetric. Returns (partners (V,) int64, distances (V,) float64).
    """
    mirrored = positions * np.array([-1.0, 1.0, 1.0])
    k = min(candidates, len(positions))
    dist, idx = cKDTree(positions).query(mirrored, k=k)
    dist, idx = dist.reshape(len(positions), k), idx.reshape(len(positions), k)
    choice = np.zeros(len(positions), dtype=np.int64)
    if uvs is not None and k > 1:
        target = uvs * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
        uv_cost = np.linalg.norm(uvs[idx] - target[:, None, :], axis=-1)
        uv_cost[dist > dist[:, :1] + 1e-6] = np.inf
        choice = uv_cost.argmin(axis=1)
    rows = np.arange(len(positions))
    return idx[rows, choice].astype(np.int64), dist[rows, choice]
