"""Sliding contour correspondences: outline landmarks matched to the model's occluding contour.

A face-outline landmark (MediaPipe's face oval, iBUG's jaw) marks where the face's surface turns
away from the camera, and that place moves over the surface as the head turns (3DDFA and
Deep3DFaceRecon slide these correspondences). A fixed vertex matches it only near the poses it was
chosen for. Here each outline landmark owns a strip of candidate vertices, found once on the mean
face: the model's skin vertices within `band_mm` of the plane through the landmark's vertex across
the outline (the plane's normal is the outline's tangent there, from its two neighbours) and within
`radius_mm` of that vertex. For a posed face the landmark uses

  - its own vertex while that vertex faces the camera (n . p < 0, with p the camera-space point
    and n its normal): the calibrated vertex is right for outlines that are seen, and
  - otherwise the seen candidate (n . p < 0) that lies outermost in the image along the strip's
    outward direction (away from the face's centre, across the outline; 3DDFA's rule): where the
    projected strip folds back, the strip's point on the occluding contour.

The choice is made without gradients; the loss then pulls the chosen vertex like any other.
Normals are the mean face's, rotated with the head: the shape changes them little.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mfface.camera import rotation_matrix
from mfface.morphable.export import vertex_normals
from mfface.morphable.model import MorphableModel
from mfface.objectives import CONTOUR_LANDMARKS


@dataclass
class ContourStrips:
    """Candidate vertices of the sliding outline landmarks.

    rows (C,) the landmark rows (into the landmarks the strips were built for) that slide;
    candidates (C, K) model vertices, each strip padded with its own landmark vertex (column 0);
    normals (C, K, 3) their unit normals on the mean face, model frame; outward (C, 3) each strip's
    unit direction away from the face's centre, across the outline, model frame.
    """
    rows: torch.Tensor
    candidates: torch.Tensor
    normals: torch.Tensor
    outward: torch.Tensor

    def to(self, device: torch.device | str) -> "ContourStrips":
        return ContourStrips(self.rows.to(device), self.candidates.to(device), self.normals.to(device),
                             self.outward.to(device))


def _outline_order(scheme: str, count: int) -> list[int]:
    """The scheme's outline landmarks below `count`, in order along the outline."""
    if scheme == "mediapipe478":
        from mfface.landmarks import MEDIAPIPE_FACE_OVAL
        order = list(MEDIAPIPE_FACE_OVAL)
    else:
        order = list(CONTOUR_LANDMARKS[scheme])
    return [i for i in order if i < count]


def contour_strips(model: MorphableModel, scheme: str, landmark_index: np.ndarray, band_mm: float = 2.0,
                   radius_mm: float = 20.0) -> ContourStrips | None:
    """The strips (module docstring) of `scheme`'s outline landmarks; landmark_index (N,) the
    model vertex per landmark (-1 = not covered, never slides). None when no outline landmark is
    covered. Candidates come from the model's 'skin' region when it has one (not the ears, neck or
    scalp, whose silhouettes the detector does not mark)."""
    index = np.asarray(landmark_index, dtype=np.int64)
    key = ("contour_strips", scheme, index.tobytes(), float(band_mm), float(radius_mm))
    if key not in model._torch_cache:   # built once per model and table (tracking fits many windows)
        model._torch_cache[key] = _build_strips(model, scheme, index, band_mm, radius_mm)
    return model._torch_cache[key]


def _build_strips(model: MorphableModel, scheme: str, index: np.ndarray, band_mm: float,
                  radius_mm: float) -> ContourStrips | None:
    order = [i for i in _outline_order(scheme, len(index)) if index[i] >= 0]
    if len(order) < 3:
        return None
    mean = np.asarray(model.mean_shape, dtype=np.float64)
    pool = np.asarray(model.regions.get("skin", np.arange(model.n_vertices)), dtype=np.int64)
    closed = scheme == "mediapipe478"  # the face oval is a loop; the iBUG jaw is open
    centre = mean[pool].mean(0)
    strips, outward = [], []
    for k, row in enumerate(order):
        before = order[k - 1] if (k > 0 or closed) else row
        after = order[(k + 1) % len(order)] if (k + 1 < len(order) or closed) else row
        tangent = mean[index[after]] - mean[index[before]]
        tangent /= max(np.linalg.norm(tangent), 1e-9)
        offset = mean[pool] - mean[index[row]]
        near = (np.abs(offset @ tangent) < band_mm) & (np.linalg.norm(offset, axis=1) < radius_mm)
        strips.append([int(index[row])] + [int(v) for v in pool[near] if v != index[row]])
        away = mean[index[row]] - centre
        away -= (away @ tangent) * tangent
        outward.append(away / max(np.linalg.norm(away), 1e-9))
    width = max(len(s) for s in strips)
    candidates = np.array([s + [s[0]] * (width - len(s)) for s in strips], dtype=np.int64)
    normals = vertex_normals(mean, model.triangles)[candidates]
    return ContourStrips(rows=torch.tensor(order), candidates=torch.from_numpy(candidates),
                         normals=torch.from_numpy(normals).float(),
                         outward=torch.from_numpy(np.array(outward)).float())


def occluding_choice(strips: ContourStrips, points: torch.Tensor, euler: torch.Tensor) -> torch.Tensor:
    """(B, C) column of each strip to use: 0 (the landmark's own vertex) while it faces the camera,
    else the seen candidate outermost in the image along the strip's outward direction (0 when
    no candidate is seen).

    points (B, C, K, 3) camera-space candidate positions mm; euler (B, 3) the head's rotation.
    Image positions are taken as x / z, y / z (the focal and principal point do not change the
    order along a direction)."""
    with torch.no_grad():
        rotation = rotation_matrix(euler).transpose(-1, -2)                     # (B, 3, 3), row-vector form
        normals = strips.normals.to(points) @ rotation[:, None]                  # (B, C, K, 3)
        seen = (normals * points).sum(-1) < 0                                    # (B, C, K)
        direction = torch.nn.functional.normalize((strips.outward.to(points) @ rotation)[..., :2], dim=-1)
        image = points[..., :2] / points[..., 2:].clamp_min(1e-6)
        unseen = torch.full_like(seen, -1e9, dtype=points.dtype)
        reach = torch.where(seen, (image * direction[:, :, None]).sum(-1), unseen)
        pick = reach.argmax(-1)
        keep = seen[..., 0] | ~seen.any(-1)
        return torch.where(keep, torch.zeros_like(pick), pick)
