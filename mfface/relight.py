"""Relighting a fitted face: HDR environments, lamps, shadows, turntables and the photo itself.

`relight(face, settings)` renders a result folder's face (`mfface.replay.load_fitted_face`)
through the face scene plus lamps (`mfface.scenes.relight_scene.RelightRenderer`, Mitsuba's
path tracer); `write_relit` writes the outputs; `mfface relight` is the command. Conventions,
written down once here and in docs/light.md ("Light rigs"):

- **Light frame.** The environment and the lamps are given in the light frame of docs/light.md
  (Mitsuba's envmap frame: +x image right, +y image up, +z from the face towards the camera),
  fixed to the camera: in a turntable the head turns, the light does not.
- **Environment maps** are lat-long images (width = 2 x height) in exactly the layout of the
  fitted `envmap.exr`: pixel (row i, column j) of an H x W map is the radiance arriving from
  direction (sin phi sin theta, cos theta, -cos phi sin theta), theta = pi i / (H - 1),
  phi = 2 pi (j + 0.5) / W (Mitsuba's `envmap`). So the image's centre column is the light from
  the camera's side (+z) and its left/right edges the light from behind the head.
- **Lamp positions** are millimetres in the light frame's axes with the origin at the head centre
  (`mfface.replay.head_centre`: the centre of the fitted mesh's bounding box, the turntable's
  pivot): `point:0,300,600` is 30 cm above and 60 cm in front of the head. A directional lamp
  gives the direction *towards* the lamp (where its light comes from), like the envmap.
- **Lamp brightness** `colour` (linear RGB) is the radiance a white Lambertian surface facing
  the lamp at the head centre gets from it, times the reference level: the fitted light's
  exposure (`mfface.scenes.light_presets.exposure`: the mean radiance of a white surface facing
  the camera under the fitted light), or 1 with `absolute`. So `colour` 1 lights a facing white
  surface as brightly as the fitted light lights the face on average. Point lamps fall off with
  the squared distance beyond that point; an area lamp (`size` w x h mm, facing the head
  centre) gives that irradiance to first order (exactly for a small lamp).
- **Environment brightness**: the fitted light is used as fitted; a file or a preset is scaled
  to the fitted light's exposure (`absolute`: used as its values say). `exposure` EV then
  multiplies everything by 2^EV.
- **rotate** turns the whole rig (environment and lamps) about the light frame's vertical axis
  through the head centre, counter-clockwise seen from above: at +90 degrees light that came
  from the camera's side comes from the image right.
- **Shadows**: every light sample is shadow-tested (also in the fit), so a lamp makes the nose
  cast a shadow with no option; `bounces` adds light reflected by the face (max_depth 2 + N).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mfface.atomic import write_text
from mfface.figures import to_display
from mfface.forward import ForwardModel, RenderSettings
from mfface.images import ImageReadError, crop_and_resize, linearize, read_image, write_png
from mfface.replay import (FittedFace, head_centre, turned_vertices, write_gif, write_mp4,
                           yaw_offsets)
from mfface.scenes.light_presets import exposure, preset_envmap, preset_names
from mfface.sh import envmap_directions, envmap_solid_angles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FITTED = "fitted"
NONE = "none"
BACKGROUNDS = ("transparent", "environment", "photo", "black")
LAMP_KINDS = ("point", "directional", "area")
DEFAULT_AREA_SIZE = (200.0, 200.0)
PRESET_ENVMAP_SIZE = (128, 256)
MAX_RATIO = 50.0
# Light frame -> camera space (OpenCV): diag(1, -1, -1) (docs/light.md).
LIGHT_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


class RelightError(ValueError):
    """A relighting input or setting the user must fix; the message says what to do."""


# -- lamps ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lamp:
    """One lamp of a light rig (module docstring: frame, units). `kind` 'point', 'directional' or
    'area'; `vector` the position in mm from the head centre (point, area) or the direction
    towards the lamp (directional), light frame; `colour` linear RGB brightness; `size` (w, h) mm
    of an area lamp."""
    kind: str
    vector: tuple[float, float, float]
    colour: tuple[float, float, float]
    size: tuple[float, float] = DEFAULT_AREA_SIZE

    def check(self) -> None:
        """Raise RelightError for a lamp that cannot light anything."""
        if self.kind not in LAMP_KINDS:
            raise RelightError(f"Unknown lamp kind {self.kind!r}; use one of {', '.join(LAMP_KINDS)}.")
        values = (*self.vector, *self.colour, *self.size)
        if not all(math.isfinite(v) for v in values):
            raise RelightError(f"The {self.kind} lamp has a NaN or infinite value; use finite numbers.")
        if min(self.colour) < 0:
            raise RelightError(f"The {self.kind} lamp's colour {self.colour} is negative; light "
                               f"cannot be negative.")
        if math.hypot(*self.vector) < 1e-6:
            what = "direction" if self.kind == "directional" else "position (the head centre)"
            raise RelightError(f"The {self.kind} lamp's {what} {self.vector} gives no direction "
                               f"to the head; put it somewhere else.")
        if self.kind == "area" and not (self.size[0] > 0 and self.size[1] > 0):
            raise RelightError(f"The area lamp's size {self.size[0]} x {self.size[1]} mm is empty; "
                               f"use a positive width and height.")

    def to_toml(self) -> str:
        lines = ["[[lamp]]", f'type = "{self.kind}"',
                 f"{'direction' if self.kind == 'directional' else 'position'} = {_toml_list(self.vector)}",
                 f"colour = {_toml_list(self.colour)}"]
        if self.kind == "area":
            lines.append(f"size = {_toml_list(self.size)}")
        return "\n".join(lines)


LAMP_SYNTAX = ("KIND:X,Y,Z:R,G,B with KIND point, directional or area, X,Y,Z in mm from the head "
               "centre (a direction for directional) in the light frame (+x image right, +y up, "
               "+z towards the camera), R,G,B or one grey value; an area lamp may add :W,H in mm")


def _numbers(text: str, counts: tuple[int, ...], what: str, spec: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        expect = " or ".join(str(c) for c in counts)
        raise RelightError(f"--light {spec!r} does not parse: its {what} {text!r} is not {expect} "
                           f"finite number(s); write {LAMP_SYNTAX}.")
    return values


def parse_lamp(spec: str) -> Lamp:
    """A lamp from the command-line syntax `KIND:X,Y,Z:R,G,B[:W,H]` (see LAMP_SYNTAX)."""
    fields = spec.strip().split(":")
    if len(fields) not in (3, 4) or fields[0].strip().lower() not in LAMP_KINDS:
        raise RelightError(f"--light {spec!r} does not parse; write {LAMP_SYNTAX}.")
    kind = fields[0].strip().lower()
    if len(fields) == 4 and kind != "area":
        raise RelightError(f"--light {spec!r} does not parse: only an area lamp takes a size; "
                           f"write {LAMP_SYNTAX}.")
    vector = _numbers(fields[1], (3,), "position" if kind != "directional" else "direction", spec)
    colour = _numbers(fields[2], (1, 3), "colour", spec)
    size = _numbers(fields[3], (1, 2), "size", spec) if len(fields) == 4 else DEFAULT_AREA_SIZE
    lamp = Lamp(kind, vector, colour * 3 if len(colour) == 1 else colour,
                size * 2 if len(size) == 1 else size)
    lamp.check()
    return lamp


def _vector(value: object, count: int, what: str, where: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and count in (3, 2):
        value = [value] * count
    if (not isinstance(value, list) or len(value) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise RelightError(f"{where}: {what} must be a list of {count} numbers, got {value!r}.")
    return tuple(float(v) for v in value)


def lamp_from_table(table: dict, where: str) -> Lamp:
    """A lamp from a TOML `[[lamp]]` table: type, position (or direction), colour, size."""
    if not isinstance(table, dict):
        raise RelightError(f"{where}: each [[lamp]] must be a table.")
    kind = table.get("type")
    if kind not in LAMP_KINDS:
        raise RelightError(f"{where}: lamp type {kind!r} is not one of {', '.join(LAMP_KINDS)}.")
    key = "direction" if kind == "directional" else "position"
    allowed = {"type", key, "colour", "color"} | ({"size"} if kind == "area" else set())
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RelightError(f"{where}: unknown key(s) {', '.join(unknown)} in a {kind} lamp; use "
                           f"{', '.join(sorted(allowed - {'color'}))}.")
    if key not in table:
        raise RelightError(f"{where}: the {kind} lamp needs a {key} = [x, y, z].")
    colour = table.get("colour", table.get("color", 1.0))
    lamp = Lamp(kind, _vector(table[key], 3, key, where), _vector(colour, 3, "colour", where),
                _vector(table.get("size", list(DEFAULT_AREA_SIZE)), 2, "size", where))
    lamp.check()
    return lamp


def _toml_list(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


# -- settings ---------------------------------------------------------------------------------

@dataclass
class RelightSettings:
    """Everything `relight` does; each field is also a `mfface relight` option and a key of a
    rig TOML file (`load_rig`). See the module docstring for the light conventions.

    envmap: 'fitted' (the fit's light), 'none' (lamps only), a preset name
        (`mfface.scenes.light_presets`) or an .exr / .hdr lat-long file.
    rotate: degrees about the vertical axis; exposure: EV (x 2^EV); absolute: no scaling to
        the fitted light's exposure; lamps: extra lamps.
    bounces: indirect bounces (0 = direct light only, as the fit); spp: samples per pixel;
    size: image side in px (None = the fit's crop size, the photo's camera scaled to it);
    background: 'transparent' (PNG with alpha; black in GIF/MP4), 'environment' (the envmap as
        the camera sees it), 'photo' (the input photo's crop) or 'black';
    turntable: frames of a turntable (0 = none), yaw_range its swing in degrees, fps its rate;
    photo: also relight the input photo itself; photo_file: where it is (None = the path that
        params.json records); envmap_height: rows a file map is resampled to when it has more;
    seed: the sampler's seed.
    """
    envmap: str = FITTED
    rotate: float = 0.0
    exposure: float = 0.0
    absolute: bool = False
    lamps: tuple[Lamp, ...] = ()
    bounces: int = 0
    spp: int = 64
    size: int | None = None
    background: str = "transparent"
    turntable: int = 0
    yaw_range: float = 60.0
    fps: float = 12.0
    photo: bool = False
    photo_file: str | None = None
    envmap_height: int = 512
    seed: int = 0

    def check(self) -> None:
        """Raise RelightError for a setting that cannot be rendered (one line, what to do)."""
        def number(name: str, value: float, lo: float, hi: float, unit: str = "") -> None:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                raise RelightError(f"--{name.replace('_', '-')} {value} is out of range; use "
                                   f"{lo:g} to {hi:g}{unit}.")
        number("spp", self.spp, 1, 16384, " samples per pixel")
        if self.size is not None:
            number("size", self.size, 8, 4096, " px")
        number("bounces", self.bounces, 0, 16)
        number("exposure", self.exposure, -30, 30, " EV")
        number("rotate", self.rotate, -3600, 3600, " degrees")
        number("envmap_height", self.envmap_height, 8, 4096, " rows")
        number("fps", self.fps, 0.1, 120, " frames per second")
        if self.turntable != 0:
            number("turntable", self.turntable, 2, 3600, " frames (or 0 for none)")
        if not 0 < self.yaw_range <= 180:
            raise RelightError(f"--yaw-range {self.yaw_range} is out of range; use degrees in (0, 180].")
        if self.background not in BACKGROUNDS:
            raise RelightError(f"Unknown background {self.background!r}; use one of "
                               f"{', '.join(BACKGROUNDS)}.")
        for lamp in self.lamps:
            lamp.check()
        if self.envmap == NONE and not self.lamps:
            raise RelightError("--envmap none with no --light leaves the face in the dark; add a "
                               "lamp or choose an environment.")

    @property
    def needs_photo(self) -> bool:
        return self.photo or self.background == "photo"

    def to_toml(self) -> str:
        """The settings as a rig TOML file that `load_rig` reads back (paths absolute)."""
        lines = ["# mfface relight settings; re-run with `mfface relight RESULT -o OUT --rig THIS`"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "lamps" or value is None:
                continue
            if f.name in ("envmap", "photo_file") and value not in (FITTED, NONE, *preset_names()):
                value = str(Path(value).resolve())
            lines.append(f"{f.name} = {json.dumps(value) if isinstance(value, str) else _toml_value(value)}")
        return "\n".join(lines + [""] + [lamp.to_toml() + "\n" for lamp in self.lamps])


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_SETTING_TYPES = {f.name: f.type for f in dataclasses.fields(RelightSettings)}


def load_rig(path: str | Path) -> dict:
    """Read a rig TOML file: any RelightSettings key at the top level and `[[lamp]]` tables
    (type, position or direction, colour, size). Returns the settings as keyword arguments
    (lamps as a tuple); a relative `envmap` or `photo_file` is taken from the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise RelightError(f"{path} does not exist; give the path of a rig .toml file.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RelightError(f"{path} is not valid TOML ({' '.join(str(e).split())}).") from None
    values: dict = {}
    for key, value in data.items():
        if key == "lamp":
            if not isinstance(value, list):
                raise RelightError(f"{path}: lamps are [[lamp]] tables.")
            values["lamps"] = tuple(lamp_from_table(t, str(path)) for t in value)
            continue
        if key not in _SETTING_TYPES or key == "lamps":
            raise RelightError(f"{path}: unknown setting {key!r}; use "
                               f"{', '.join(k for k in _SETTING_TYPES if k != 'lamps')} or [[lamp]].")
        default = getattr(RelightSettings(), key)
        kind = type(default) if default is not None else (int if key == "size" else str)
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, str))
        if not ok:
            what = {bool: "true or false", float: "a number", int: "a whole number", str: "a string"}[kind]
            raise RelightError(f"{path}: {key} = {value!r} should be {what}.")
        if key in ("envmap", "photo_file") and value not in (FITTED, NONE, *preset_names()):
            value = str((path.parent / value) if not Path(value).is_absolute() else Path(value))
        values[key] = float(value) if kind is float else value
    return values


# -- environment maps -------------------------------------------------------------------------

def read_envmap(path: str | Path) -> torch.Tensor:
    """Read a lat-long environment map file (.exr or .hdr) as float32 (H, W, 3), checked: it
    exists and decodes, is 2:1, and holds finite non-negative radiance."""
    from mfface.scenes.exr import read_hdr_image

    path = Path(path)
    if not path.exists():
        raise RelightError(f"the environment map {path} does not exist; give an .exr or .hdr "
                           f"file, 'fitted', 'none' or a preset ({', '.join(preset_names())}).")
    try:
        env = read_hdr_image(path)
    except ValueError as e:
        raise RelightError(str(e)) from None
    height, width = env.shape[:2]
    if width != 2 * height or height < 3:
        raise RelightError(f"{path} is {width}x{height} px, not a lat-long environment map: its "
                           f"width must be twice its height (2:1).")
    bad = int((~torch.isfinite(env)).any(-1).sum())
    if bad:
        raise RelightError(f"{path} has {bad} NaN or infinite pixels; fix or re-export the map.")
    if bool((env < 0).any()):
        raise RelightError(f"{path} has {int((env < 0).any(-1).sum())} pixels with negative values "
                           f"(min {float(env.min()):.3g}); light cannot be negative, so clamp or "
                           f"re-export the map.")
    return env


def rotation_y(degrees: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(3, 3) rotation about the light frame's +y by `degrees`, counter-clockwise seen from above
    (right-handed): it takes +z (towards the camera) to +x (image right) at 90 degrees."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype)


def sample_envmap(env: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Radiance (..., 3) of lat-long `env` (H, W, 3) arriving from unit light-frame `directions`
    (..., 3), interpolated bilinearly exactly as Mitsuba's `envmap` does (rows on the poles,
    columns at texel centres, periodic in phi)."""
    height, width = env.shape[:2]
    d = directions.to(torch.float64)
    theta = torch.acos(d[..., 1].clamp(-1.0, 1.0))
    phi = torch.atan2(d[..., 0], -d[..., 2]) % (2.0 * math.pi)
    row = theta / math.pi * (height - 1)
    col = phi / (2.0 * math.pi) * width - 0.5
    r0 = row.floor().clamp(0, height - 2)
    fr = (row - r0).clamp(0.0, 1.0)
    c0 = col.floor()
    fc = col - c0
    r0 = r0.long()
    c0 = c0.long() % width
    c1 = (c0 + 1) % width
    e = env.to(torch.float64)
    top = e[r0, c0] * (1 - fc)[..., None] + e[r0, c1] * fc[..., None]
    bottom = e[r0 + 1, c0] * (1 - fc)[..., None] + e[r0 + 1, c1] * fc[..., None]
    return (top * (1 - fr)[..., None] + bottom * fr[..., None]).to(env.dtype)


def _prefilter(env: torch.Tensor, factor: int) -> torch.Tensor:
    """Box-blur (H, W, 3) by `factor` texels (periodic in columns), against aliasing when a map
    is sampled `factor` times more coarsely."""
    if factor <= 1:
        return env
    x = env.permute(2, 0, 1)[None]
    left, right = (factor - 1) // 2, factor // 2
    x = torch.cat([x[..., -left:] if left else x[..., :0], x, x[..., :right]], dim=-1)
    x = F.pad(x, (0, 0, left, right), mode="replicate")
    return F.avg_pool2d(x, factor, stride=1)[0].permute(1, 2, 0)


def transform_envmap(env: torch.Tensor, height: int | None = None,
                     rotate: float = 0.0) -> torch.Tensor:
    """`env` (H, W, 3) resampled to `height` rows (None: as it is) and turned by `rotate` degrees
    about the vertical axis (`rotation_y`): out(d) = env(R^-1 d)."""
    height = height or env.shape[0]
    if height == env.shape[0] and rotate % 360.0 == 0.0:
        return env
    source = _prefilter(env, max(1, round(env.shape[0] / height)))
    directions = envmap_directions(height, 2 * height, torch.float64)
    turned = directions @ rotation_y(rotate)  # rows: R^T d = R^-1 d
    return sample_envmap(source, turned).to(env.dtype)


def envmap_exposure(env: torch.Tensor) -> float:
    """The exposure (`mfface.scenes.light_presets.exposure`) of a lat-long map (H, W, 3): mean
    radiance of a white Lambertian surface facing the camera under it (normals with n_z > 0,
    weighted by n_z), by quadrature over a 33 x 66 copy of the map."""
    small = transform_envmap(env.double(), 33) if env.shape[0] > 33 else env.double()
    h, w = small.shape[:2]
    omega = envmap_solid_angles(h, w, torch.float64).reshape(-1)
    texels = envmap_directions(h, w, torch.float64).reshape(-1, 3)
    normals = envmap_directions(17, 32, torch.float64).reshape(-1, 3)
    weight = normals[:, 2].clamp_min(0.0) * envmap_solid_angles(17, 32, torch.float64).reshape(-1)
    cosine = (normals @ texels.T).clamp_min(0.0) * omega[None]
    radiance = cosine @ small.reshape(-1, 3) / math.pi            # (N, 3)
    return float((weight[:, None] * radiance).sum() / (3.0 * weight.sum()))


# -- the rig in the scene ---------------------------------------------------------------------

@dataclass
class Rig:
    """A light rig ready to render: `envmap` (H, W, 3) light-frame radiance, scaled and rotated;
    `lamps` in camera space (`mfface.scenes.relight_scene`); `level` the radiance that lamp
    colour 1 stands for; `environment` whether the envmap emits at all."""
    envmap: torch.Tensor
    lamps: tuple
    level: float
    environment: bool


def scene_lamps(lamps: tuple[Lamp, ...], centre: torch.Tensor, level: float,
                rotate: float) -> tuple:
    """Camera-space Mitsuba lamps for light-rig lamps around the camera-space head centre (3,) mm,
    with colour 1 = `level` (module docstring), turned by `rotate` degrees."""
    from mfface.scenes.relight_scene import AreaLamp, DirectionalLamp, PointLamp

    turn = rotation_y(rotate).numpy()
    c = centre.detach().cpu().double().numpy()
    out = []
    for lamp in lamps:
        v = LIGHT_TO_CAMERA @ (turn @ np.asarray(lamp.vector, dtype=np.float64))
        irradiance = tuple(float(math.pi * level * k) for k in lamp.colour)  # facing: E = pi L
        distance = float(np.linalg.norm(v))
        if lamp.kind == "directional":
            out.append(DirectionalLamp(tuple((-v / distance).tolist()), irradiance))
        elif lamp.kind == "point":
            out.append(PointLamp(tuple((c + v).tolist()), tuple(e * distance ** 2 for e in irradiance)))
        else:
            area = lamp.size[0] * lamp.size[1]
            out.append(AreaLamp(tuple((c + v).tolist()), tuple((-v / distance).tolist()), lamp.size[0],
                                lamp.size[1], tuple(e * distance ** 2 / area for e in irradiance)))
    return tuple(out)


def build_rig(face: FittedFace, settings: RelightSettings, centre: torch.Tensor) -> Rig:
    """The environment and lamps of `settings` for `face`, scaled and turned (module docstring)."""
    gain = 2.0 ** settings.exposure
    fitted_level = 1.0 if settings.absolute else max(float(exposure(face.state.sh[0].detach().cpu())), 1e-6)
    source = settings.envmap
    if source == FITTED:
        env = ForwardModel.envmap(face.state.sh.detach().cpu(), face.config.light.envmap_height)[0]
        scale = 1.0
    elif source == NONE:
        env = torch.zeros(8, 16, 3)
        scale = 0.0
    else:
        if source in preset_names():
            env = preset_envmap(source, *PRESET_ENVMAP_SIZE).float()
        else:
            env = read_envmap(source)
            if env.shape[0] > settings.envmap_height:
                env = transform_envmap(env, settings.envmap_height)
        level = envmap_exposure(env)
        if level <= 0:
            raise RelightError(f"the environment map {source} is black; choose one with light, or "
                               f"--envmap none with lamps.")
        scale = 1.0 if settings.absolute else fitted_level / level
    env = transform_envmap(env.double(), rotate=settings.rotate) * (scale * gain)
    lamps = scene_lamps(settings.lamps, centre, fitted_level * gain, settings.rotate)
    return Rig(env.float(), lamps, fitted_level * gain, source != NONE)


# -- rendering --------------------------------------------------------------------------------

def camera_directions(size: int, focal: float, principal: torch.Tensor | None) -> torch.Tensor:
    """Unit light-frame directions (S, S, 3) of the camera rays through the pixel centres."""
    c = torch.tensor([size / 2.0, size / 2.0], dtype=torch.float64) if principal is None \
        else principal.detach().cpu().double().reshape(2)
    i = torch.arange(size, dtype=torch.float64) + 0.5
    v, u = torch.meshgrid(i, i, indexing="ij")
    d = torch.stack([(u - c[0]) / focal, (v - c[1]) / focal, torch.ones_like(u)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    return d * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)


@dataclass
class PhotoSource:
    """The photo a result was fitted to: display-referred pixels (H, W, 3), the crop box
    (x0, y0, size) in its pixels, and the file it came from."""
    pixels: torch.Tensor
    box: tuple[int, int, int]
    path: Path


def load_photo(face: FittedFace, photo_file: str | Path | None = None) -> PhotoSource:
    """The input photo of a result folder: `photo_file`, else the path params.json records;
    checked against the photo digest recorded there, so a moved or changed file is refused."""
    from mfface.fitting.pipeline import photo_digest

    params = json.loads((face.folder / "params.json").read_text(encoding="utf-8"))
    image = params.get("image", {})
    box = image.get("crop_box_px")
    recorded = image.get("path")
    if not isinstance(box, dict) or not all(isinstance(box.get(k), int) for k in ("x0", "y0", "size")):
        raise RelightError(f"{face.folder / 'params.json'} records no crop box, so the photo cannot "
                           f"be matched to the fit; run `mfface fit` again.")
    path = Path(photo_file) if photo_file is not None else (Path(recorded) if recorded else None)
    if path is None:
        raise RelightError(f"{face.folder} does not record its input photo; give it with --photo-file.")
    if not path.is_file():
        where = "" if photo_file is not None else " (the path params.json records)"
        raise RelightError(f"the input photo {path}{where} is gone; give the photo this result "
                           f"was fitted to with --photo-file.")
    try:
        pixels = read_image(path)
    except ImageReadError as e:
        raise RelightError(str(e)) from None
    digest = image.get("digest")
    if digest and photo_digest(pixels) != digest:
        raise RelightError(f"{path} is not the photo {face.folder.name} was fitted to (its pixels "
                           f"differ); give the original with --photo-file.")
    x0, y0, size = box["x0"], box["y0"], box["size"]
    if x0 < 0 or y0 < 0 or x0 + size > pixels.shape[1] or y0 + size > pixels.shape[0]:
        raise RelightError(f"the crop box in {face.folder / 'params.json'} does not fit {path}; "
                           f"give the photo this result was fitted to with --photo-file.")
    return PhotoSource(pixels, (x0, y0, size), path)


def photo_crop(photo: PhotoSource, size: int, gamma: float) -> torch.Tensor:
    """The fit's crop of the photo at `size` px, linear (S, S, 3)."""
    from mfface.images import CropBox

    crop, _ = crop_and_resize(photo.pixels, CropBox(*photo.box), size, enlarge=True)
    return linearize(crop, gamma)


def soft_mask(coverage: torch.Tensor, radius: int) -> torch.Tensor:
    """Coverage (S, S) eroded by `radius` px and blurred over 2 radius + 1 px: 1 well inside the
    face, falling smoothly to 0 before its silhouette (where render and photo may disagree)."""
    if radius < 1:
        return coverage.clamp(0, 1)
    x = coverage.clamp(0, 1)[None, None].float()
    k = 2 * radius + 1
    eroded = -F.max_pool2d(-x, k, stride=1, padding=radius)
    blurred = F.avg_pool2d(F.pad(eroded, (radius,) * 4, mode="replicate"), k, stride=1)
    return blurred[0, 0]


def relight_photo(photo: PhotoSource, fitted: torch.Tensor, relit: torch.Tensor,
                  coverage: torch.Tensor, gamma: float) -> torch.Tensor:
    """The whole photo relit (H, W, 3) linear: inside the face each pixel is multiplied by the
    ratio of the relit to the fitted render (S, S, 3) (same camera), which keeps the photo's
    detail and changes only its shading; the ratio fades to 1 over a soft mask inside the
    silhouette (`soft_mask`, 3% of the size), so hair and background keep their light."""
    size = fitted.shape[0]
    weight = soft_mask(coverage, max(1, round(0.03 * size)))
    inside = coverage > 0.99
    floor = 0.02 * float(fitted[inside].mean()) if bool(inside.any()) else 1e-3
    ratio = ((relit + floor) / (fitted + floor)).clamp(0.0, MAX_RATIO)
    factor = 1.0 + weight[..., None] * (ratio - 1.0)
    x0, y0, side = photo.box
    factor = F.interpolate(factor.permute(2, 0, 1)[None].float(), size=(side, side), mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0)
    out = linearize(photo.pixels.clone(), gamma)
    out[y0:y0 + side, x0:x0 + side] *= factor
    return out


@dataclass
class Relit:
    """What `relight` made. `image` (S, S, 3) linear, background composited except for
    'transparent' (then the colour is premultiplied by `alpha`); `alpha` (S, S) the face's
    coverage (1 everywhere for an opaque background); `coverage` (S, S) the face's coverage in
    any case; `envmap` the light-frame environment used;
    `frames` uint8 display frames (N, S, S, 3) of the turntable, or None; `photo` the relit input
    photo (H, W, 3) linear, or None; `gamma` the fit's display gamma."""
    image: torch.Tensor
    alpha: torch.Tensor
    coverage: torch.Tensor
    envmap: torch.Tensor
    gamma: float
    settings: RelightSettings
    frames: np.ndarray | None = None
    photo: torch.Tensor | None = None


class Relighter:
    """Renders one fitted face under one light rig; the Mitsuba scene is built on the first
    render and reused for every frame (`render(vertices)`)."""

    def __init__(self, face: FittedFace, settings: RelightSettings) -> None:
        settings.check()
        from mfface.scenes.relight_scene import RelightRenderer

        self.face, self.settings = face, settings
        state = face.state
        self.size = settings.size or face.crop_size
        zoom = self.size / face.crop_size
        self.focal = state.focal.detach() * zoom
        self.principal = None if state.principal is None else state.principal.detach() * zoom
        self.shown = dataclasses.replace(state, focal=self.focal, principal=self.principal)  # at `size`
        self.forward = ForwardModel(face.model, state.focal.device)
        with torch.no_grad():
            self.model_vertices = face.model.vertices(state.identity, state.expression)
            self.model_parts = face.model.part_vertices(state.identity, state.expression)
            posed = self.forward.vertices(state)
            self.centre = head_centre(posed)[0]  # the bounding-box centre of the posed face
        self.rig = build_rig(face, settings, self.centre)
        self.gamma = face.config.input.gamma
        model = face.model
        self.renderer = RelightRenderer(model.triangles, model.uvs, self.size, self.size,
                                        self.rig.lamps, max_depth=2 + settings.bounces,
                                        environment=self.rig.environment,
                                        parts=self.forward.part_meshes)
        self.photo: PhotoSource | None = (load_photo(face, settings.photo_file)
                                          if settings.needs_photo else None)
        self._background: torch.Tensor | None = None

    def vertices(self, yaw: float = 0.0) -> torch.Tensor:
        """Camera-space vertices (1, V, 3) of the face, turned by `yaw` rad (turntable)."""
        with torch.no_grad():
            if yaw == 0.0:
                return self.forward.vertices(self.face.state)
            return turned_vertices(self.model_vertices, self.face.state, yaw)

    def part_vertices(self, yaw: float = 0.0) -> torch.Tensor | None:
        """Camera-space vertices (1, P, 3) of the model's parts (eyes, teeth, mouth), turned with
        the face by `yaw` rad; None when the model has none."""
        if not self.face.model.parts:
            return None
        with torch.no_grad():
            if yaw == 0.0:
                return self.forward.part_vertices(self.face.state)
            return turned_vertices(self.model_parts, self.face.state, yaw,
                                   head_centre(self.model_vertices))

    def _render(self, renderer, envmap: torch.Tensor, vertices: torch.Tensor, spp: int,
                parts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Through the forward model (`ForwardModel.render`), with this rig's scene and light;
        `parts` the part vertices that go with `vertices` (None: those of the fitted pose)."""
        settings = RenderSettings(size=self.size, spp=spp, seed=self.settings.seed, integrator="path",
                                  max_depth=renderer.settings["max_depth"])
        with torch.no_grad():
            rgb, alpha = self.forward.render(self.shown, settings, vertices,
                                             envmap=envmap.to(vertices.device)[None], renderer=renderer,
                                             parts=parts)
        return rgb[0].cpu(), alpha[0].cpu()

    def render(self, vertices: torch.Tensor,
               parts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(radiance (S, S, 3) premultiplied by coverage, coverage (S, S)) under the rig, of the
        face `vertices` and the `parts` that go with them (None: those of the fitted pose)."""
        return self._render(self.renderer, self.rig.envmap, vertices, self.settings.spp, parts)

    def background(self) -> torch.Tensor | None:
        """The linear background (S, S, 3) of `settings.background`, None for transparent."""
        kind = self.settings.background
        if kind == "transparent":
            return None
        if self._background is None:
            if kind == "black":
                self._background = torch.zeros(self.size, self.size, 3)
            elif kind == "environment":
                dirs = camera_directions(self.size, float(self.focal.reshape(-1)[0]), self.principal)
                self._background = sample_envmap(self.rig.envmap.double(), dirs).float()
            else:
                assert self.photo is not None
                self._background = photo_crop(self.photo, self.size, self.gamma)
        return self._background

    def composite(self, rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, alpha) with the background behind the premultiplied render."""
        background = self.background()
        if background is None:
            return rgb, alpha
        return rgb + (1.0 - alpha[..., None]) * background, torch.ones_like(alpha)

    def still(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The face in its fitted pose: (image, alpha, coverage) as in `Relit`."""
        rgb, coverage = self.render(self.vertices())
        return (*self.composite(rgb, coverage), coverage)

    def turntable(self, on_frame=None) -> np.ndarray:
        """uint8 display frames (N, S, S, 3) of the head turning (as `mfface replay`), light
        fixed to the camera; a transparent background shows black."""
        frames = []
        n = self.settings.turntable
        for k, yaw in enumerate(yaw_offsets(n, self.settings.yaw_range).tolist()):
            image, _ = self.composite(*self.render(self.vertices(yaw), self.part_vertices(yaw)))
            frames.append(to_display(image.numpy(), self.gamma))
            if on_frame is not None:
                on_frame(k + 1, n)
        return np.stack(frames)

    def relit_photo(self) -> torch.Tensor:
        """The input photo relit (H, W, 3) linear (`relight_photo`), from the relit and the
        fitted render of the face at the same camera, samples and seed."""
        from mfface.scenes.relight_scene import RelightRenderer

        assert self.photo is not None
        model = self.face.model
        fitted_renderer = RelightRenderer(model.triangles, model.uvs, self.size, self.size, (),
                                          max_depth=self.face.config.render.max_depth,
                                          parts=self.forward.part_meshes)
        fitted_env = ForwardModel.envmap(self.face.state.sh.detach().cpu(),
                                         self.face.config.light.envmap_height)[0]
        vertices = self.vertices()
        spp = max(self.settings.spp, 16)
        fitted, coverage = self._render(fitted_renderer, fitted_env, vertices, spp)
        relit, _ = self._render(self.renderer, self.rig.envmap, vertices, spp)
        return relight_photo(self.photo, fitted, relit, coverage, self.gamma)


    def run(self, on_frame=None) -> Relit:
        """Render everything `settings` asks for: the still in the fitted pose, the turntable
        and the relit photo (`on_frame(k, n)` after turntable frame k)."""
        image, alpha, coverage = self.still()
        frames = self.turntable(on_frame) if self.settings.turntable else None
        photo = self.relit_photo() if self.settings.photo else None
        return Relit(image, alpha, coverage, self.rig.envmap, self.gamma, self.settings, frames, photo)


def relight(face: FittedFace, settings: RelightSettings, on_frame=None) -> Relit:
    """Relight a loaded result folder (`mfface.replay.load_fitted_face`) under `settings`: the
    still in the fitted pose, plus the turntable and the relit photo when asked for. Needs the
    Mitsuba variant selected (`mfface.backend.select_variant`). Raises RelightError on bad input
    (all of it is checked when the `Relighter` is made, before anything renders)."""
    return Relighter(face, settings).run(on_frame)


# -- writing ----------------------------------------------------------------------------------

def output_names(settings: RelightSettings) -> list[str]:
    """The files `write_relit` writes for `settings`."""
    names = ["relit.png", "relit.exr", "light.exr", "light.png", "rig.toml"]
    if settings.turntable:
        names += ["turntable.gif", "turntable.mp4"]
    if settings.photo:
        names.append("photo_relit.png")
    return names


def check_outputs(out_dir: str | Path, settings: RelightSettings, overwrite: bool) -> None:
    """Raise RelightError when `out_dir` is not a folder, or holds a file relight would write
    and `overwrite` is not given (so nothing is replaced unasked)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RelightError(f"{out_dir} is a file; give -o a folder for the relit images.")
    taken = [n for n in output_names(settings) if (out_dir / n).exists()]
    if taken and not overwrite:
        raise RelightError(f"{out_dir} already holds {', '.join(taken)}; pass --overwrite to "
                           f"replace them, or choose another folder with -o.")


def _light_preview(envmap: torch.Tensor, gamma: float) -> np.ndarray:
    scale = max(float(torch.quantile(envmap.float().flatten()[:1_000_000], 0.99)), 1e-6)
    return to_display((envmap / scale).numpy(), gamma)


def write_relit(relit: Relit, out_dir: str | Path) -> list[Path]:
    """Write the outputs of `relight` into `out_dir` (created when missing), each file atomically:
    relit.png (8-bit, the fit's gamma; RGBA when the background is transparent), relit.exr
    (linear, RGBA premultiplied), light.exr and light.png (the environment used, light frame),
    rig.toml (the settings, to re-run), turntable.gif/.mp4, photo_relit.png. Returns the paths."""
    from mfface.scenes.exr import write_exr

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, alpha = relit.image, relit.alpha
    written = []
    if relit.settings.background == "transparent":
        straight = torch.where(alpha[..., None] > 1e-6, image / alpha.clamp_min(1e-6)[..., None],
                               torch.zeros_like(image))
        write_png(out_dir / "relit.png", torch.cat([straight, alpha[..., None]], -1), gamma=relit.gamma)
    else:
        write_png(out_dir / "relit.png", image, gamma=relit.gamma)
    write_exr(out_dir / "relit.exr", torch.cat([image, alpha[..., None]], -1))
    write_exr(out_dir / "light.exr", relit.envmap)
    write_png(out_dir / "light.png", _light_preview(relit.envmap, relit.gamma), gamma=None)
    write_text(out_dir / "rig.toml", relit.settings.to_toml())
    written += [out_dir / n for n in ("relit.png", "relit.exr", "light.exr", "light.png", "rig.toml")]
    if relit.frames is not None:
        write_gif(out_dir / "turntable.gif", relit.frames, relit.settings.fps)
        write_mp4(out_dir / "turntable.mp4", relit.frames, relit.settings.fps)
        written += [out_dir / "turntable.gif", out_dir / "turntable.mp4"]
    if relit.photo is not None:
        write_png(out_dir / "photo_relit.png", relit.photo, gamma=relit.gamma)
        written.append(out_dir / "photo_relit.png")
    return written

