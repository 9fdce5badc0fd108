"""Image-space masks of the skin a photometric loss may count, drawn from 2D landmarks.

The rendered coverage says where the model is; this mask says where the photo shows skin of the
face: inside the face outline, outside the eyes, the eyebrows and the open mouth. Both schemes the
fitting understands are supported: MediaPipe's 478/468 points (regions taken from MediaPipe's own
`FACEMESH_*` edge sets, so no index table is copied here) and the 68 iBUG / Multi-PIE points.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.spatial import ConvexHull, QhullError

from mfface.landmarks import (MEDIAPIPE_FACE_OVAL, MEDIAPIPE_LEFT_EYE, MEDIAPIPE_LEFT_EYEBROW, MEDIAPIPE_LIPS,
                              MEDIAPIPE_RIGHT_EYE, MEDIAPIPE_RIGHT_EYEBROW, LandmarkCheckError)


class SkinMaskError(LandmarkCheckError):
    """Landmarks from which no skin mask can be drawn: not finite, or a face outline that lies
    on a line or at one point. A LandmarkCheckError (a ValueError), so it is reported as bad
    landmarks; `mfface.landmarks.check_landmarks` refuses such landmarks earlier."""

# iBUG-68 (0-based): jaw 0-16, brows 17-26, eyes 36-41 / 42-47, inner mouth 60-67.
_IBUG_REGIONS = {
    "face": list(range(0, 27)),
    "holes": [list(range(36, 42)), list(range(42, 48)), list(range(17, 22)), list(range(22, 27))],
    "mouth": [list(range(60, 68))],
}


def _loops(edges: frozenset[tuple[int, int]]) -> list[list[int]]:
    """Connected components of an edge set, as vertex lists (MediaPipe's lips are two loops)."""
    adjacency: dict[int, set[int]] = {}
    for a, b in edges:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    seen: set[int] = set()
    components = []
    for start in sorted(adjacency):
        if start in seen:
            continue
        stack, component = [start], []
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            component.append(v)
            stack.extend(adjacency[v] - seen)
        components.append(sorted(component))
    return components


@lru_cache(maxsize=1)
def _mediapipe_regions() -> dict[str, list]:
    return {
        "face": list(MEDIAPIPE_FACE_OVAL),
        "holes": [sorted({i for e in s for i in e}) for s in (
            MEDIAPIPE_LEFT_EYE, MEDIAPIPE_RIGHT_EYE, MEDIAPIPE_LEFT_EYEBROW, MEDIAPIPE_RIGHT_EYEBROW)],
        # MediaPipe's lips are two loops (outer and inner); the inner one, the smaller, is the hole.
        "mouth": _loops(MEDIAPIPE_LIPS),
    }


def _hull(points: np.ndarray) -> list[tuple[float, float]] | None:
    """Convex hull of (M, 2) points as a polygon, or None when they lie on a line or at one
    point (Qhull cannot build a 2D hull of them)."""
    try:
        hull = ConvexHull(points)
    except QhullError:
        return None
    return [tuple(map(float, points[i])) for i in hull.vertices]


def _segment(points: np.ndarray) -> list[tuple[float, float]]:
    """The two extreme points of (M, 2) points along their main direction: the line that
    degenerate (collinear) points span, e.g. a closed eye's or a closed mouth's contour."""
    centred = points - points.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    t = centred @ direction
    return [tuple(map(float, points[int(np.argmin(t))])), tuple(map(float, points[int(np.argmax(t))]))]


def _area(polygon: list[tuple[float, float]]) -> float:
    x, y = np.asarray(polygon).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def skin_mask(landmarks: np.ndarray, height: int, width: int, erode_px: float = 1.0) -> np.ndarray:
    """(H, W) float32 mask in {0, 1}: inside the face outline and outside eyes, brows and mouth.

    `landmarks` (N, 2) are pixel coordinates (x right, y down) in this image, N = 478/468
    (MediaPipe) or 68 (iBUG). The outline and holes are convex hulls of each region's points; the
    mask is eroded by `erode_px` so that the boundary's mixed pixels are not counted. Raises
    SkinMaskError (a ValueError) for another point count, non-finite points, or an outline on a
    line or at a point.
    """
    n = len(landmarks)
    if n in (468, 478):
        regions = _mediapipe_regions()
    elif n == 68:
        regions = _IBUG_REGIONS
    else:
        raise SkinMaskError(f"cannot draw a skin mask from {n} landmarks; use 478 (MediaPipe) or 68 (iBUG)")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise SkinMaskError(f"cannot draw a skin mask from landmarks of shape {pts.shape} that are "
                            "not all finite (x, y) pairs.")
    face = _hull(pts[regions["face"]])
    if face is None:
        raise SkinMaskError("cannot draw a skin mask: the face-outline landmarks lie on a line or at "
                            "one point, so they do not describe a face; check the landmarks.")
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    draw.polygon(face, fill=255)
    # A hole whose points lie on a line (a closed eye or mouth, as hand-placed iBUG files mark
    # them) is cut out as that line; of the mouth loops the smaller is the hole.
    mouths = [_hull(pts[loop]) or _segment(pts[loop]) for loop in regions["mouth"]]
    holes = [_hull(pts[hole]) or _segment(pts[hole]) for hole in regions["holes"]]
    for polygon in holes + [min(mouths, key=_area)]:
        if len(polygon) > 2:
            draw.polygon(polygon, fill=0)
        else:
            draw.line(polygon, fill=0, width=1)
    size = 2 * int(round(erode_px)) + 1
    if size > 1:
        image = image.filter(ImageFilter.MinFilter(size))
    return (np.asarray(image) > 127).astype(np.float32)
