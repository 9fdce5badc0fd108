"""ICT-FaceKit's eyeballs and mouth interior as `ModelPart`s (see docs/models.md, "Parts").

Facts checked on the repository at commit da5f95a6 (README tables "Face Model Topology" and
"Eyeball Details"; ranges below are half-open [start, stop)):
- Eyeball left = sclera vertices [21451, 22221) / polygons [21496, 22296) + iris [22221, 23021) /
  [22296, 23094); right = sclera [23021, 23791) / [23094, 23894) + iris [23791, 24591) /
  [23894, 24692). The "sclera" mesh is the eye's outer shell, a sphere of ~15.4 mm radius whose
  front is the cornea bulge (2 mm in front of the iris); the "iris" mesh is a smaller inner
  globe whose front is the flat iris disk (radius ~6 mm) with a 0.6 mm pupil hole. Both are
  outward-facing closed meshes. The cornea is transparent in life; a direct-light render cannot
  show what lies behind a transparent surface, so the cornea's triangles (in front of the iris
  plane) are left out and the iris disk shows through the opening.
- The eyeLook* shapes move the eyelids and eye sockets (a few degrees) but not the eyeballs
  (their displacement on eyeball vertices is 0), and no identity or expression shape rotates
  them. The eyeballs therefore get a rigid gaze rotation about their centre driven by the
  eyeLook coefficients (`GAZE_DEGREES` per unit coefficient: our choice, ARKit does not define
  angles), so that the eyes follow the eye-look blendshapes.
- Mouth socket [11248, 13294) / [11144, 13226) (faces into the mouth cavity and shares its
  boundary vertices with the face's inner lips), gums and tongue [14062, 17039) / [14034, 17006),
  teeth [17039, 21451) / [17006, 21496), one closed outward-facing mesh per tooth. jawOpen and the other jaw
  shapes move the lower teeth, gums and tongue; identity moves everything.
- The eye sockets (pockets between eyelids and eyeball), lacrimal fluid, eye blend, eye
  occlusion and eyelash meshes are not imported: the first are hidden behind the eyeball, the
  others are translucent overlays for Unreal Engine's eye shaders.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mfface.morphable.format import ModelSourceError
from mfface.morphable.model import ModelPart

# ICT README ranges, half-open: (vertex start, vertex stop), (polygon start, polygon stop).
SCLERA = {"left": ((21451, 22221), (21496, 22296)), "right": ((23021, 23791), (23094, 23894))}
IRIS = {"left": ((22221, 23021), (22296, 23094)), "right": ((23791, 24591), (23894, 24692))}
MOUTH_SOCKET = ((11248, 13294), (11144, 13226))
GUMS_AND_TONGUE = ((14062, 17039), (14034, 17006))
# Teeth: the README's tooth table; the 12 molars (3 per quadrant) are left out, they are hidden
# in the mouth's shadow and would add half of the teeth's vertices. Kept: upper 2nd bicuspid left
# .. 2nd bicuspid right, and the same lower.
TEETH_UPPER = ((17607, 18679), (17593, 18663))
TEETH_LOWER = ((19814, 20884), (19832, 20914))
VERTICES_NEEDED = 24591  # every shape is read up to the right iris's last vertex

# Gaze per unit eye-look coefficient (degrees). In/out: +-30 deg, up/down: +-25 deg, about the
# range a person turns the eyes before turning the head.
GAZE_DEGREES = {"In": 30.0, "Out": 30.0, "Up": 25.0, "Down": 25.0}
PUPIL_HOLE_MAX_MM = 1.5  # sanity bound on the iris mesh's pupil hole radius


def _triangulated(polygons: Sequence[Sequence[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(original vertex indices (Vp,) sorted, triangles (Fp, 3) into them) of fan-triangulated
    polygons given as (vertex, uv) corner lists (winding kept)."""
    corners = [[v for v, _ in polygon] for polygon in polygons]
    original = np.unique(np.array([v for polygon in corners for v in polygon], dtype=np.int64))
    local = {int(v): i for i, v in enumerate(original)}
    triangles = [(local[p[0]], local[p[k]], local[p[k + 1]]) for p in corners for k in range(1, len(p) - 1)]
    return original, np.array(triangles, dtype=np.int32)


def _bases(original: np.ndarray, shapes: dict[str, np.ndarray], identity_names: list[str],
           expression_names: list[str], scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean (Vp, 3), identity (K_id, Vp, 3), expression (K_exp, Vp, 3) in mm of ICT vertices."""
    mean = shapes["generic_neutral_mesh"][original] * scale
    identity = np.stack([shapes[s][original] * scale for s in identity_names]) - mean
    expression = np.stack([shapes[s][original] * scale for s in expression_names]) - mean
    return mean, identity, expression


def _sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre (3,) of points (N, 3)."""
    a = np.c_[2.0 * points, np.ones(len(points))]
    solution = np.linalg.lstsq(a, (points ** 2).sum(1), rcond=None)[0]
    return solution[:3]


class _EyeFrame:
    """An eyeball measured on one shape (mm): its centre (the pivot), the iris plane (centroid
    and normal of the iris disk) and the limbus radius (where the outer shell passes behind the
    iris plane: the edge of the visible iris)."""

    def __init__(self, shell: np.ndarray, globe: np.ndarray, side: str) -> None:
        back = shell[shell[:, 2] < np.median(shell[:, 2])]
        self.centre = _sphere_centre(back)  # the cornea bulge is left out of the sphere fit
        self.radius = float(np.linalg.norm(back - self.centre, axis=1).mean())
        rel = globe - self.centre
        disk = globe[(rel[:, 2] > 0.6 * self.radius) & (np.hypot(rel[:, 0], rel[:, 1]) < 5.0)]
        if len(disk) < 20:
            raise ModelSourceError(f"ICT's {side} iris mesh has no iris disk in front; use an "
                                   f"unmodified ICT-FaceKit download.")
        self.iris_centre = disk.mean(0)
        normal = np.linalg.svd(disk - self.iris_centre, full_matrices=False)[2][-1]
        self.normal = normal * np.sign(normal[2])  # towards the front (+z)
        pupil_hole = float(self.radial(disk).min())
        front = self.front(shell)
        behind = front & (self.axial(shell) < 0.0)
        self.limbus = float(self.radial(shell[behind]).min()) if behind.any() else 0.0
        if not 4.0 < self.limbus < 8.0 or pupil_hole > PUPIL_HOLE_MAX_MM:
            raise ModelSourceError(f"ICT's {side} eyeball does not have the expected cornea and iris "
                                   f"(limbus radius {self.limbus:.1f} mm); use an unmodified "
                                   f"ICT-FaceKit download.")

    def axial(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (N,) mm in front of the iris plane."""
        return (points - self.iris_centre) @ self.normal

    def radial(self, points: np.ndarray) -> np.ndarray:
        """Distance (N,) mm from the optical axis (the iris centre's normal line)."""
        rel = points - self.iris_centre
        return np.linalg.norm(rel - np.outer(rel @ self.normal, self.normal), axis=1)

    def front(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: in front of the plane through the eye's centre parallel to the iris."""
        return (points - self.centre) @ self.normal > 0.0

    def coordinate(self, points: np.ndarray) -> np.ndarray:
        """The material coordinate t (N,): radial / limbus radius on the front half (0 at the
        pupil centre, 1 at the limbus), continued past the equator as (2 r - radial) / limbus so
        that it keeps growing towards the back of the eye."""
        radial = self.radial(points)
        return np.where(self.front(points), radial, 2.0 * self.radius - radial) / self.limbus


def _eye_gaze(side: str, expression_names: list[str]) -> np.ndarray:
    """(2, K_exp) rad per unit coefficient: row 0 yaw (+: towards +x, the face's left), row 1
    pitch (+: up). The left eye sits at +x, so looking 'out' turns it towards +x."""
    suffix = "_L" if side == "left" else "_R"
    outward = 1.0 if side == "left" else -1.0
    gaze = np.zeros((2, len(expression_names)), dtype=np.float32)
    for direction, degrees in GAZE_DEGREES.items():
        name = f"eyeLook{direction}{suffix}"
        if name not in expression_names:
            raise ModelSourceError(f"ICT's expression shapes lack {name}; use an unmodified "
                                   f"ICT-FaceKit download.")
        k = expression_names.index(name)
        radians = np.radians(degrees)
        if direction == "Out":
            gaze[0, k] = outward * radians
        elif direction == "In":
            gaze[0, k] = -outward * radians
        else:
            gaze[1, k] = radians if direction == "Up" else -radians
    return gaze


def _eyeball(side: str, polygons: list, shapes: dict[str, np.ndarray], identity_names: list[str],
             expression_names: list[str], scale: float) -> ModelPart:
    """One eyeball: the outer shell without its cornea (the polygons whose centre lies in front of
    the iris plane) plus the inner globe with the iris disk; `material_coord` =
    `_EyeFrame.coordinate` of the rest pose."""
    (sv0, sv1), (sp0, sp1) = SCLERA[side]
    (iv0, iv1), (ip0, ip1) = IRIS[side]
    neutral = shapes["generic_neutral_mesh"] * scale
    frame = _EyeFrame(neutral[sv0:sv1], neutral[iv0:iv1], side)
    shell = polygons[sp0:sp1]
    cornea = [frame.axial(neutral[[v for v, _ in p]].mean(0, keepdims=True))[0] > 0.0
              and frame.front(neutral[[v for v, _ in p]].mean(0, keepdims=True))[0] for p in shell]
    kept = [p for p, cut in zip(shell, cornea) if not cut] + list(polygons[ip0:ip1])
    original, triangles = _triangulated(kept)
    mean, identity, expression = _bases(original, shapes, identity_names, expression_names, scale)
    # The pivot moves with identity: the eye centre measured on each identity mode's shape.
    pivot_identity = np.stack([
        _EyeFrame(shapes[s][sv0:sv1] * scale, shapes[s][iv0:iv1] * scale, side).centre - frame.centre
        for s in identity_names])
    return ModelPart(
        name=f"eye_{side}", material="eyeball",
        mean=mean.astype(np.float32), identity_basis=identity.astype(np.float32),
        expression_basis=expression.astype(np.float32), triangles=triangles,
        material_coord=frame.coordinate(mean).astype(np.float32),
        gaze=_eye_gaze(side, expression_names), pivot_mean=frame.centre.astype(np.float32),
        pivot_identity=pivot_identity.astype(np.float32))


def _plain(name: str, material: str, polygon_ranges: Sequence[tuple[int, int]], polygons: list,
           shapes: dict[str, np.ndarray], identity_names: list[str], expression_names: list[str],
           scale: float) -> ModelPart:
    """A part made of ICT polygon ranges, deformed by the bases only (no gaze)."""
    selected = [p for start, stop in polygon_ranges for p in polygons[start:stop]]
    original, triangles = _triangulated(selected)
    mean, identity, expression = _bases(original, shapes, identity_names, expression_names, scale)
    return ModelPart(name=name, material=material, mean=mean.astype(np.float32),
                     identity_basis=identity.astype(np.float32),
                     expression_basis=expression.astype(np.float32), triangles=triangles,
                     material_coord=np.zeros(len(original), dtype=np.float32))


def ict_parts(polygons: list, shapes: dict[str, np.ndarray], identity_names: list[str],
              expression_names: list[str], scale: float) -> list[ModelPart]:
    """The parts of an ICT model: eye_left, eye_right ('eyeball'), mouth (socket, gums and
    tongue: 'mouth') and teeth ('teeth': incisors, canines and bicuspids). `polygons` are all of the neutral mesh's polygons as
    (vertex, uv) corner lists; `shapes` the full-length vertex arrays (ICT units) by file stem
    (at least `VERTICES_NEEDED` rows); `scale` ICT units -> mm."""
    short = [s for s, a in shapes.items() if len(a) < VERTICES_NEEDED]
    if short:
        raise ValueError(f"shapes must hold at least {VERTICES_NEEDED} vertices ({short[0]} has fewer)")
    args = (polygons, shapes, identity_names, expression_names, scale)
    return [_eyeball("left", *args), _eyeball("right", *args),
            _plain("mouth", "mouth", [MOUTH_SOCKET[1], GUMS_AND_TONGUE[1]], *args),
            _plain("teeth", "teeth", [TEETH_UPPER[1], TEETH_LOWER[1]], *args)]
