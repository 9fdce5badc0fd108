"""MediaPipe face-mesh landmarks (478 points) -> vertices of any morphable model.

Method: MediaPipe's canonical face mesh (468 vertices in landmark order, cm; not shipped with
mfface, its path is an argument) is aligned to the model's neutral face by a similarity
transform, initialised from the iBUG-68 correspondences when the model has them (else from the
shared orientation convention, centroids and RMS radii), refined by trimmed ICP against the
model's face vertices; each canonical point then takes its nearest model vertex. The 10 iris
points (468-477) are not in the canonical mesh and stay -1 (no model we import has eyeballs in
its fitted surface).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from mfface.landmarks import MEDIAPIPE_FACE_OVAL, MEDIAPIPE_TO_IBUG68
from mfface.metrics import similarity_transform
from mfface.morphable.model import MorphableModel

N_MEDIAPIPE = 478
N_CANONICAL = 468

# Silhouette landmarks that slide over the face as the head turns: MediaPipe's face oval.
MEDIAPIPE_CONTOUR: tuple[int, ...] = MEDIAPIPE_FACE_OVAL


@dataclass
class Correspondence:
    """Result of `mediapipe_correspondence`.

    indices (478,) vertex index per MediaPipe landmark (-1 = none); distances (468,) mm from each
    aligned canonical point to its vertex; scale, rotation (3, 3), translation (3,) map canonical
    mm coordinates onto the model: x_model = scale * rotation @ x + translation.
    """
    indices: np.ndarray
    distances: np.ndarray
    scale: float
    rotation: np.ndarray
    translation: np.ndarray


def read_canonical_mesh(path: str | Path) -> np.ndarray:
    """The 468 vertices (mm) of MediaPipe's `canonical_face_model.obj` (cm on disk)."""
    path = Path(path)
    try:
        rows = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
        vertices = np.array(rows, dtype=np.float64)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"cannot read MediaPipe's canonical mesh {path} ({error}); pass "
                         f"mediapipe's canonical_face_model.obj.") from error
    if vertices.shape != (N_CANONICAL, 3):
        raise ValueError(f"{path} has {len(rows)} vertices, not MediaPipe's {N_CANONICAL}; pass "
                         f"mediapipe's canonical_face_model.obj.")
    return vertices * 10.0


def contour_subset(indices: np.ndarray, positions: Iterable[int]) -> np.ndarray:
    """`indices` with every entry outside `positions` set to -1 (the contour part of a scheme)."""
    keep = np.zeros(len(indices), dtype=bool)
    keep[list(positions)] = True
    return np.where(keep, indices, -1).astype(np.int64)


def mediapipe_from_ibug68(ibug68: np.ndarray) -> np.ndarray:
    """A (478,) MediaPipe table holding only the iBUG-68 points that are one MediaPipe landmark
    in `mfface.landmarks.MEDIAPIPE_TO_IBUG68` (63 of 68; all others -1).

    The fallback when MediaPipe's canonical mesh is not available at install time.
    """
    table = np.full(N_MEDIAPIPE, -1, dtype=np.int64)
    for k, mp in enumerate(MEDIAPIPE_TO_IBUG68):
        if len(mp) == 1:
            table[mp[0]] = ibug68[k]
    return table


def mediapipe_correspondence(model: MorphableModel, canonical_mesh: str | Path,
                             iterations: int = 30) -> Correspondence:
    """Map MediaPipe's 478 landmarks to vertices of `model`'s neutral face (see module doc).

    Only vertices of the model's 'face' region (all vertices when it has none) are candidates.
    """
    canonical = read_canonical_mesh(canonical_mesh)
    mean = model.mean_shape.astype(np.float64)
    candidates = model.regions.get("face", np.arange(model.n_vertices))
    tree = cKDTree(mean[candidates])
    ibug = model.landmarks.get("ibug68")
    anchors = None
    if ibug is not None and (ibug[17:] >= 0).all():
        # Inner points only: the jaw contour of a 2D annotation scheme is pose dependent.
        inner = np.stack([canonical[list(mp)].mean(0) for mp in MEDIAPIPE_TO_IBUG68[17:]])
        anchors = (inner, mean[ibug[17:]])
        scale, rotation, translation = similarity_transform(*anchors)
    else:
        target = mean[candidates]
        scale = float(np.sqrt(((target - target.mean(0)) ** 2).sum(1).mean()
                              / ((canonical - canonical.mean(0)) ** 2).sum(1).mean()))
        rotation = np.eye(3)
        translation = target.mean(0) - scale * canonical.mean(0)
    for _ in range(iterations):
        aligned = scale * canonical @ rotation.T + translation
        dist, nearest = tree.query(aligned)
        keep = dist <= max(3.0 * np.median(dist), 1.0)
        src, dst = canonical[keep], mean[candidates[nearest[keep]]]
        if anchors is not None:
            src, dst = np.vstack([src, anchors[0]]), np.vstack([dst, anchors[1]])
        scale, rotation, translation = similarity_transform(src, dst)
    aligned = scale * canonical @ rotation.T + translation
    dist, nearest = tree.query(aligned)
    indices = np.full(N_MEDIAPIPE, -1, dtype=np.int64)
    indices[:N_CANONICAL] = candidates[nearest]
    return Correspondence(indices, dist, scale, rotation, translation)
