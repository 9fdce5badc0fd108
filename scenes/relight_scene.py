"""The relighting scene: the face scene plus lamps, rendered by Mitsuba's path tracer.

`RelightRenderer` is a `FaceRenderer` (same mesh, BSDF, envmap, camera and update path, built
from `face_scene.scene_dict`, so whatever the face scene gains, relighting shows too) whose scene
also holds lamps and whose integrator is Mitsuba's `path` with any `max_depth`. It renders
without gradients; the scene is built once per (size, lamps, depth, texture and envmap size) and
then updated, like the fit's.

Everything here is in Mitsuba's world space = camera space (OpenCV: +x image right, +y image down,
+z forward), millimetres, and Mitsuba's radiometric units; `mfface.relight` converts a user's
light rig (light frame, head-centred, relative brightness) into these lamps.

- `PointLamp`: Mitsuba `point`, radiant intensity (radiance units x mm^2): the irradiance at
  distance r is intensity / r^2.
- `DirectionalLamp`: Mitsuba `directional`, `direction` the way the light travels, `irradiance`
  on a surface facing it.
- `AreaLamp`: a `rectangle` of `width` x `height` mm centred at `centre`, emitting `radiance`
  from its front side towards `normal` (one-sided, like a soft box); its edges run along the
  image's horizontal and the direction perpendicular to it (`up` = image up unless the lamp
  faces straight up or down). The rectangle is a real object: it casts shadows and, in view,
  hides what is behind it (the camera sees it black, as emitters are hidden from camera rays).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import mitsuba as mi
import numpy as np

from mfface.scenes import face_scene as fs
from mfface.scenes.bridge import FaceRenderer
from mfface.scenes.parts import PartMesh

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class PointLamp:
    """An isotropic point light at `position` (camera space, mm) of radiant `intensity` (RGB)."""
    position: Vec3
    intensity: Vec3


@dataclass(frozen=True)
class DirectionalLamp:
    """A distant light travelling along `direction` (camera space) with `irradiance` (RGB)."""
    direction: Vec3
    irradiance: Vec3


@dataclass(frozen=True)
class AreaLamp:
    """A one-sided rectangular light: centre (camera space, mm), unit `normal` it emits towards,
    size `width` x `height` mm, constant `radiance` (RGB)."""
    centre: Vec3
    normal: Vec3
    width: float
    height: float
    radiance: Vec3


Lamp = PointLamp | DirectionalLamp | AreaLamp


def _rgb(value: Vec3) -> dict:
    return {"type": "rgb", "value": [float(v) for v in value]}


def _unit(v: Vec3, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    if not (norm > 0 and math.isfinite(norm)):
        raise ValueError(f"{what} {tuple(v)} has no direction; give a non-zero finite vector.")
    return a / norm


def area_lamp_frame(lamp: AreaLamp) -> np.ndarray:
    """4x4 to_world of Mitsuba's `rectangle` ([-1, 1]^2 in local xy, normal local +z) for `lamp`:
    local +z along the lamp's normal, local x horizontal in the image, scaled to width x height."""
    z = _unit(lamp.normal, "area lamp normal")
    up = np.array([0.0, -1.0, 0.0])  # image up in camera space
    if abs(float(z @ up)) > 0.999:   # facing straight up or down: take the image's depth axis
        up = np.array([0.0, 0.0, 1.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    matrix = np.eye(4)
    matrix[:3, 0] = x * lamp.width / 2.0
    matrix[:3, 1] = y * lamp.height / 2.0
    matrix[:3, 2] = z
    matrix[:3, 3] = lamp.centre
    return matrix


def lamp_dict(lamp: Lamp) -> dict:
    """The Mitsuba dict of one lamp (an emitter, or a rectangle shape with an area emitter)."""
    if isinstance(lamp, PointLamp):
        return {"type": "point", "position": [float(v) for v in lamp.position],
                "intensity": _rgb(lamp.intensity)}
    if isinstance(lamp, DirectionalLamp):
        return {"type": "directional", "direction": _unit(lamp.direction, "lamp direction").tolist(),
                "irradiance": _rgb(lamp.irradiance)}
    if isinstance(lamp, AreaLamp):
        if not (lamp.width > 0 and lamp.height > 0):
            raise ValueError(f"area lamp size {lamp.width} x {lamp.height} mm is empty; use a "
                             f"positive width and height.")
        return {"type": "rectangle", "to_world": mi.ScalarTransform4f(area_lamp_frame(lamp).tolist()),
                "emitter": {"type": "area", "radiance": _rgb(lamp.radiance)}}
    raise TypeError(f"not a lamp: {lamp!r}")


class RelightRenderer(FaceRenderer):
    """The face scene with `lamps` added, rendered by Mitsuba's `path` integrator.

    `max_depth` 2 is direct light only (as the fit renders; light samples are shadow-tested, so a
    lamp makes the nose cast a shadow), each further level adds one bounce of light reflected by
    the face. `environment` False gives the envmap no light samples (use it when the envmap is
    black: then every light sample goes to the lamps). The envmap is hidden from camera rays, so
    the image's alpha is the face's coverage; `render` is `FaceRenderer.render` (call it under
    `torch.no_grad()`). `parts` (eyeballs, teeth, mouth interior) are rendered as in the fit.
    """

    def __init__(self, triangles: np.ndarray, uvs: np.ndarray, width: int, height: int,
                 lamps: tuple[Lamp, ...] = (), *, max_depth: int = 2, environment: bool = True,
                 fresnel: str = "schlick", parts: tuple[PartMesh, ...] = ()) -> None:
        super().__init__(triangles, uvs, width, height, integrator="path", max_depth=max_depth,
                         hide_emitters=True, fresnel=fresnel, parts=parts)
        self.lamps = tuple(lamps)
        self.environment = bool(environment)
        for lamp in self.lamps:  # refuse bad lamps now, not at the first render
            lamp_dict(lamp)

    def _build_scene(self, spec: fs.SceneSpec) -> mi.Scene:
        scene = fs.scene_dict(self.triangles, self.uvs, spec, self.parts)
        if not self.environment:
            scene[fs.EMITTER_KEY]["sampling_weight"] = 0.0
        for k, lamp in enumerate(self.lamps):
            scene[f"lamp{k}"] = lamp_dict(lamp)
        return mi.load_dict(scene)
