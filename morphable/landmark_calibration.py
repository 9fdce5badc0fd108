"""Calibrate a model's landmark embedding against a detector run on renders of the model.

A landmark table maps each detector point to a model vertex. Built from geometry alone (MediaPipe's
canonical mesh aligned to the model, `mfface.morphable.correspondence`), it puts a point where the
canonical mesh has it, not where MediaPipe actually places it on a face of this model: the eye
corners, lip lines and nostrils it marks sit a few millimetres away. Calibration measures that on
faces whose truth is known (`mfface synth` renders: the detector's points on each render, and the
identity, expression, pose and camera the render was made from), the way FLAME's MediaPipe
embedding was made.

For landmark l and every candidate vertex v within `radius_mm` of l's current vertex on the mean
face, the cost is the mean over renders s of

    min(|P_s(v) - d_s,l| / e_s, cap)^2

where P_s projects the vertex with render s's true shape, pose and camera, d_s,l is the detected
point and e_s the detected outer-eye-corner distance (so that large and small faces count alike);
`cap` bounds the pull of a detection that went wrong. Each landmark takes the candidate of least
cost. Renders where l's current vertex faces away from the camera do not count for l. Contour
landmarks (silhouette points, whose vertex depends on the view) are calibrated on near-frontal
renders only.

`reliability` then weighs each inner landmark by how consistently the detector places it: the
inverse of the median over renders of its squared residual (in eye-corner distances), divided by
the median of that over the inner landmarks and clipped to [RELIABILITY_MIN, RELIABILITY_MAX],
so that the loss trusts eye corners more than points MediaPipe interpolates across the cheek.
Contour landmarks keep weight 1 (their weight is `landmarks.contour_weight`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from mfface.camera import project, to_camera
from mfface.morphable.export import vertex_normals
from mfface.morphable.model import MorphableModel

# MediaPipe's outer eye corners (subject's right, left): the per-render length unit.
EYE_CORNERS = (33, 263)
RELIABILITY_MIN, RELIABILITY_MAX = 0.05, 5.0


@dataclass
class CalibrationSamples:
    """Renders with known truth: S faces of one model in images of side `size` px.

    detected (S, N, 2) px, the detector's points; identity (S, K_id) and expression (S, K_exp) in
    std units; euler (S, 3) rad and translation (S, 3) mm (mfface.camera's pose); focal (S,) px
    and principal (S, 2) px.
    """
    detected: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    euler: np.ndarray
    translation: np.ndarray
    focal: np.ndarray
    principal: np.ndarray
    size: int

    def __len__(self) -> int:
        return len(self.detected)

    def subset(self, keep: np.ndarray) -> "CalibrationSamples":
        """The samples where `keep` (S,) bool is true."""
        return CalibrationSamples(self.detected[keep], self.identity[keep], self.expression[keep],
                                  self.euler[keep], self.translation[keep], self.focal[keep],
                                  self.principal[keep], self.size)


@dataclass
class Calibration:
    """Result of `calibrate_landmarks`: `table` (N,) the calibrated vertex per landmark (-1 kept),
    `moved_mm` (N,) how far each landmark's vertex moved on the mean face, and `cost_before`,
    `cost_after` (N,) its cost (see the module docstring; nan where no render counted)."""
    table: np.ndarray
    moved_mm: np.ndarray
    cost_before: np.ndarray
    cost_after: np.ndarray


def camera_vertices(model: MorphableModel, samples: CalibrationSamples) -> torch.Tensor:
    """(S, V, 3) float32 camera-space vertices (mm) of every sample's true face."""
    if samples.identity.shape[1] > model.n_identity or samples.expression.shape[1] != model.n_expression:
        raise ValueError(f"the renders have {samples.identity.shape[1]} identity and "
                         f"{samples.expression.shape[1]} expression coefficients, model {model.name!r} "
                         f"{model.n_identity} and {model.n_expression}; use renders of this model.")
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        vertices = model.vertices(as_tensor(samples.identity), as_tensor(samples.expression))
        return to_camera(vertices, as_tensor(samples.euler), as_tensor(samples.translation))


def _projected(camera: torch.Tensor, samples: CalibrationSamples) -> np.ndarray:
    """(S, V, 2) px: camera-space vertices (S, V, 3) projected with each sample's camera."""
    with torch.no_grad():
        uv = project(camera, torch.as_tensor(samples.focal, dtype=torch.float32), samples.size,
                     samples.size, torch.as_tensor(samples.principal, dtype=torch.float32))
    return uv.numpy().astype(np.float64)


def projected_vertices(model: MorphableModel, samples: CalibrationSamples) -> tuple[np.ndarray, np.ndarray]:
    """(S, V, 2) px projections of every sample's true vertices, and (S, V) bool: the vertex's
    normal faces the camera."""
    camera = camera_vertices(model, samples)
    facing = np.stack([np.einsum("vk,vk->v", vertex_normals(points, model.triangles), points) < 0
                       for points in camera.numpy()])
    return _projected(camera, samples), facing


def eye_distance(detected: np.ndarray) -> np.ndarray:
    """(S,) px distance between the detected outer eye corners (MediaPipe 33 and 263)."""
    return np.linalg.norm(detected[:, EYE_CORNERS[0]] - detected[:, EYE_CORNERS[1]], axis=-1)


def landmark_costs(uv: np.ndarray, facing: np.ndarray, detected: np.ndarray, unit: np.ndarray,
                   landmark: int, candidates: np.ndarray, anchor: int, cap: float) -> np.ndarray:
    """(C,) cost of each candidate vertex for one landmark (module docstring); nan when no
    render counts (the anchor vertex faces away in all of them)."""
    counted = facing[:, anchor]
    if not counted.any():
        return np.full(len(candidates), np.nan)
    offsets = uv[counted][:, candidates] - detected[counted, landmark][:, None, :]
    error = np.linalg.norm(offsets, axis=-1) / unit[counted, None]
    return np.mean(np.minimum(error, cap) ** 2, axis=0)


def calibrate_landmarks(model: MorphableModel, samples: CalibrationSamples, start: np.ndarray,
                        region: np.ndarray, contour: tuple[int, ...] = (), radius_mm: float = 6.0,
                        cap: float = 0.15, frontal_deg: float = 10.0) -> Calibration:
    """The table (N,) that moves each landmark of `start` (N,) to the vertex of `region` (vertex
    indices) within `radius_mm` of it, on the mean face, that best explains the detections.

    `contour` lists the landmark positions calibrated only on renders with |yaw| and |pitch| under
    `frontal_deg`; `cap` (in eye-corner distances) bounds one detection's cost.
    """
    start = np.asarray(start, dtype=np.int64)
    if samples.detected.shape[1] != len(start):
        raise ValueError(f"{samples.detected.shape[1]} detected points per render, but the table has "
                         f"{len(start)} landmarks.")
    mean_face = model.mean_shape.reshape(-1, 3).astype(np.float64)
    region = np.asarray(region, dtype=np.int64)
    frontal = np.all(np.abs(np.degrees(samples.euler[:, :2])) < frontal_deg, axis=1)
    groups = {"all": samples, "frontal": samples.subset(frontal)}
    projections = {name: projected_vertices(model, group) + (eye_distance(group.detected),)
                   for name, group in groups.items() if len(group)}

    table, moved = start.copy(), np.zeros(len(start))
    before, after = np.full(len(start), np.nan), np.full(len(start), np.nan)
    for landmark, anchor in enumerate(start):
        group = "frontal" if landmark in contour else "all"
        if anchor < 0 or group not in projections:
            continue
        near = np.linalg.norm(mean_face[region] - mean_face[anchor], axis=1) <= radius_mm
        candidates = np.union1d(region[near], [anchor])
        uv, facing, unit = projections[group]
        costs = landmark_costs(uv, facing, groups[group].detected, unit, landmark, candidates, anchor, cap)
        if np.isnan(costs).all():
            continue
        best = candidates[int(np.nanargmin(costs))]
        table[landmark] = best
        before[landmark] = costs[int(np.searchsorted(candidates, anchor))]
        after[landmark] = float(np.nanmin(costs))
        moved[landmark] = float(np.linalg.norm(mean_face[best] - mean_face[anchor]))
    return Calibration(table=table, moved_mm=moved, cost_before=before, cost_after=after)


def residuals(model: MorphableModel, samples: CalibrationSamples, table: np.ndarray) -> np.ndarray:
    """(S, N) distance (px) between each landmark's true-face vertex projected and the detected
    point; nan for landmarks the table does not cover. Measures an embedding on held-out renders
    without any fitting."""
    uv = _projected(camera_vertices(model, samples), samples)   # no normals needed here
    table = np.asarray(table)
    covered = table >= 0
    out = np.full(samples.detected.shape[:2], np.nan)
    out[:, covered] = np.linalg.norm(uv[:, table[covered]] - samples.detected[:, covered], axis=-1)
    return out


def reliability(model: MorphableModel, samples: CalibrationSamples, table: np.ndarray,
                contour: tuple[int, ...] = ()) -> np.ndarray:
    """(N,) float32 weight per landmark of `table` (module docstring): 1 for `contour` positions,
    0 where the table has no vertex."""
    table = np.asarray(table)
    normalised = residuals(model, samples, table) / eye_distance(samples.detected)[:, None]
    with warnings.catch_warnings():       # landmarks without a vertex are all-nan columns
        warnings.simplefilter("ignore", RuntimeWarning)
        moment = np.nanmedian(normalised ** 2, axis=0)
    inner = (table >= 0) & np.isfinite(moment)
    inner[list(contour)] = False
    weights = np.ones(len(table))
    weights[table < 0] = 0.0
    weights[inner] = np.clip(np.median(moment[inner]) / np.maximum(moment[inner], 1e-12),
                             RELIABILITY_MIN, RELIABILITY_MAX)
    return weights.astype(np.float32)
