"""The face scene: one UV-mapped triangle mesh with the `mfface` BSDF, an envmap and a pinhole camera,
plus the model's parts (eyeballs, teeth, mouth interior: `mfface.scenes.parts`), each a mesh of its
own (`part_<name>`) with a fixed material.

Camera space is Mitsuba's world space, in the OpenCV convention: camera at the origin, +z forward,
+x to the image right, +y to the image bottom. A point (x, y, z) lands at pixel coordinates
u = f x / z + c_x, v = f y / z + c_y (f: focal in pixels, (c_x, c_y) the principal point,
by default the image centre (W / 2, H / 2); pixel i's centre at i + 0.5). Mitsuba's perspective camera looks down its local +z with
local +x to the image *left* and +y *up*, so its to_world is the 180-degree rotation about z,
diag(-1, -1, 1); the horizontal field of view is x_fov = 2 atan(W / (2 f)), and Mitsuba's
principal-point offsets are ((W / 2 - c_x) / W, (H / 2 - c_y) / H) (fractions of the film, with
the sign its left/up axes give).

Light: a lat-long `envmap` whose to_world is diag(1, -1, -1) (180 degrees about x), so that in its
own (light) frame +y is image-up and +z points from the face towards the camera. Mitsuba 3.9.1
stores its `data` as (He, We + 2, 3): column 0 repeats the last image column and column We + 1 the
first (a periodic halo for bilinear lookups across the u = 0/1 seam); `envmap_with_halo` builds it.

Textures are (Ht, Wt, C) images with row 0 at the top; mesh UVs follow the model convention
(v = 0 at the texture *bottom*). Mitsuba's bitmap lookup puts v = 0 at row 0, so the mesh stores
(u, 1 - v). The film is `rgba`: alpha is the coverage mask (face and parts); the envmap is
hidden from camera rays by default (background 0).

Samples: the sensor's sampler is `ldsampler` by default, Mitsuba's low-discrepancy (0,2)-sequence
with a random scramble per seed, which needs a sample count that is a power of 4 of at least 4
(4, 16, 64, 256, ...; Mitsuba rounds 1 up to 4); `sampler_for` falls back to `multijitter`
(correlated multi-jittered) for other counts instead of letting Mitsuba round the count up to a
power of 4. Multijitter stratifies on an a x b grid and so takes the next count of that form
(`sample_count`: 32 -> 35, 128 -> 132); renders ask for that count, so Mitsuba has nothing to
round and no warning to print on every render. At the fit's 4 spp a low-discrepancy image has about half the variance of an
`independent` one (bench/RESULTS.md, "Samplers"), at the same cost, and each seed still gives an
independent estimate (the fit's forward and backward passes stay decorrelated).

A scene is built once per `SceneSpec` and then changed only through `mi.traverse` parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import drjit as dr
import mitsuba as mi
import numpy as np
import torch

from mfface.scenes import bsdf as _bsdf
from mfface.scenes import direct as _direct
from mfface.scenes import projective as _projective
from mfface.scenes.parts import PartMesh, check_parts, material_atlas, part_uvs

INTEGRATORS = ("prb", "prb_projective", "direct_projective", "path")
SAMPLERS = ("ldsampler", "multijitter", "independent")
MESH_KEY = "face"
SENSOR_KEY = "sensor"
EMITTER_KEY = "light"
# Mitsuba parameter names of the quantities the bridge writes every call.
POSITIONS = f"{MESH_KEY}.vertex_positions"
DIFFUSE = f"{MESH_KEY}.bsdf.diffuse.data"
SPECULAR = f"{MESH_KEY}.bsdf.specular.data"
ROUGHNESS = f"{MESH_KEY}.bsdf.roughness.data"
ENVMAP = f"{EMITTER_KEY}.data"
X_FOV = f"{SENSOR_KEY}.x_fov"
PRINCIPAL_X = f"{SENSOR_KEY}.principal_point_offset_x"
PRINCIPAL_Y = f"{SENSOR_KEY}.principal_point_offset_y"


PARTS_KEY = "parts"  # one mesh holding every part, their vertices concatenated in order
PARTS_POSITIONS = f"{PARTS_KEY}.vertex_positions"


@dataclass(frozen=True)
class SceneSpec:
    """Everything that fixes a scene's kernels: sizes and integrator settings (not the values)."""
    width: int
    height: int
    texture_size: tuple[int, int]   # (Ht, Wt)
    envmap_size: tuple[int, int]    # (He, We), without the halo
    integrator: str = "prb"
    max_depth: int = 2
    hide_emitters: bool = True
    fresnel: str = "schlick"
    sampler: str = "ldsampler"


def sample_count(sampler: str, spp: int) -> int:
    """The samples per pixel that a render asked for `spp` takes with `sampler`: multijitter's
    a x b grid, a = floor(sqrt(spp)), b = ceil(spp / a), as Mitsuba 3.9 rounds it; `spp` itself
    for the others (ldsampler gets powers of 4 only, `sampler_for`)."""
    if sampler != "multijitter":
        return spp
    a = max(1, math.isqrt(spp))
    return a * -(-spp // a)


def sampler_for(sampler: str, spp: int) -> str:
    """The sampler a render at `spp` samples per pixel uses: `sampler`, except that `ldsampler`
    with a count that is not a power of 4 of at least 4 becomes `multijitter` (module docstring)."""
    power_of_4 = spp >= 4 and spp & (spp - 1) == 0 and spp.bit_length() % 2 == 1
    if sampler == "ldsampler" and not power_of_4:
        return "multijitter"
    return sampler


def check_spec(spec: SceneSpec) -> None:
    """Raise ValueError with one sentence when a setting cannot be rendered."""
    if spec.integrator not in INTEGRATORS:
        raise ValueError(f"Unknown integrator {spec.integrator!r}; use one of {INTEGRATORS}.")
    if spec.fresnel not in _bsdf.FRESNEL_MODES:
        raise ValueError(f"Unknown fresnel mode {spec.fresnel!r}; use one of {_bsdf.FRESNEL_MODES}.")
    if spec.sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {spec.sampler!r}; use one of {SAMPLERS}.")
    if spec.width < 1 or spec.height < 1:
        raise ValueError(f"Image size {spec.width}x{spec.height} is empty; use a positive width and height.")
    if spec.max_depth < 2 and spec.max_depth != -1:
        raise ValueError(f"max_depth={spec.max_depth} renders no light; use 2 (direct light) or more.")


def focal_to_x_fov(focal, width: int):
    """Horizontal field of view in degrees, 2 atan(width / (2 focal)), of a pinhole with `focal`
    pixels over `width` pixels; `focal` a Python float, or a Dr.Jit Float inside a traced render."""
    if dr.is_array_v(focal):
        return dr.rad2deg(2.0 * dr.atan(width / (2.0 * focal)))
    return math.degrees(2.0 * math.atan(width / (2.0 * focal)))


def envmap_with_halo(envmap: torch.Tensor) -> torch.Tensor:
    """(He, We, 3) lat-long radiance -> Mitsuba 3.9.1's (He, We + 2, 3) `data` layout (differentiable)."""
    return torch.cat([envmap[:, -1:], envmap, envmap[:, :1]], dim=1)


def _texture(size: tuple[int, int], channels: int, value: float) -> dict:
    return _bitmap(np.full((size[0], size[1], channels), value, dtype=np.float32))


def _bitmap(data: np.ndarray) -> dict:
    """A raw (no colour conversion), bilinear, clamped bitmap texture of (H, W, C) values."""
    return {"type": "bitmap", "data": mi.TensorXf(np.ascontiguousarray(data, np.float32)), "raw": True,
            "filter_type": "bilinear", "wrap_mode": "clamp"}


def check_topology(triangles: np.ndarray, uvs: np.ndarray) -> None:
    """Raise ValueError with one sentence when triangles (F, 3) and uvs (V, 2) do not form a mesh."""
    if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.shape[0] == 0:
        raise ValueError(f"triangles must be a non-empty (F, 3) integer array, got shape {triangles.shape}.")
    if not np.issubdtype(triangles.dtype, np.integer):
        raise ValueError(f"triangles must hold integer vertex indices, got dtype {triangles.dtype}.")
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"uvs must be a (V, 2) array, got shape {uvs.shape}.")
    n_vertices = uvs.shape[0]
    if triangles.min() < 0 or triangles.max() >= n_vertices:
        raise ValueError(f"triangles index vertices outside 0..{n_vertices - 1}; check the mesh topology.")


def build_mesh(triangles: np.ndarray, uvs: np.ndarray, bsdf: mi.BSDF, name: str = MESH_KEY) -> mi.Mesh:
    """An in-memory mesh with UVs (stored as (u, 1 - v)) and smooth normals recomputed from positions."""
    triangles = np.asarray(triangles)
    uvs = np.asarray(uvs, dtype=np.float32)
    check_topology(triangles, uvs)
    n_vertices = uvs.shape[0]
    props = mi.Properties()
    props["bsdf"] = bsdf
    mesh = mi.Mesh(name, n_vertices, triangles.shape[0], props=props,
                   has_vertex_normals=True, has_vertex_texcoords=True)
    params = mi.traverse(mesh)
    params["faces"] = mi.UInt32(triangles.astype(np.uint32).reshape(-1))
    flipped = np.stack([uvs[:, 0], 1.0 - uvs[:, 1]], axis=1)
    params["vertex_texcoords"] = mi.Float(flipped.reshape(-1))
    # A placeholder position layout that has a valid bounding box until the first update.
    params["vertex_positions"] = mi.Float(np.concatenate(
        [flipped, np.full((n_vertices, 1), 1.0, np.float32)], axis=1).reshape(-1))
    params.update()
    return mesh


def parts_mesh(parts: tuple[PartMesh, ...], fresnel: str) -> mi.Mesh:
    """One Mitsuba mesh (`PARTS_KEY`) of all parts, their vertices concatenated in order, with one
    `mfface` BSDF over their material atlas (`scenes.parts.material_atlas`; part r's UVs in atlas row
    r). One shape and one BSDF instead of one per part: every shape is updated and every BSDF
    instance traced on each render. Positions are set by the bridge on every render."""
    diffuse, specular, roughness = material_atlas(parts)
    bsdf = mi.load_dict({"type": _bsdf.PLUGIN_NAME, "diffuse": _bitmap(diffuse), "specular": _bitmap(specular),
                         "roughness": _bitmap(roughness), "fresnel": fresnel})
    offsets = np.cumsum([0] + [part.n_vertices for part in parts])
    triangles = np.concatenate([np.asarray(part.triangles) + offset for part, offset in zip(parts, offsets)])
    uvs = np.concatenate([part_uvs(part, row, len(parts)) for row, part in enumerate(parts)])
    return build_mesh(triangles, uvs, bsdf, name=PARTS_KEY)


def integrator_plugin(spec: SceneSpec) -> str:
    """The Mitsuba integrator that renders `spec.integrator`: `prb` at max_depth 2 (direct light)
    is `direct_prb`, its loop-free equal (same images and gradients, fewer traces;
    `mfface.scenes.direct`); the projective ones are Mitsuba's with the silhouette pass's own
    sample count (`mfface.scenes.projective`)."""
    if spec.integrator == "prb" and spec.max_depth == 2:
        return _direct.PLUGIN_NAME
    return _projective.PLUGIN_NAMES.get(spec.integrator, spec.integrator)


def scene_dict(triangles: np.ndarray, uvs: np.ndarray, spec: SceneSpec,
               parts: tuple[PartMesh, ...] = ()) -> dict:
    """The face scene for `spec` as a Mitsuba scene dict, with placeholder values (grey textures,
    white light, 60 deg fov): the face mesh (`MESH_KEY`), the parts' mesh (`PARTS_KEY`), the
    envmap (`EMITTER_KEY`), the camera (`SENSOR_KEY`) and the integrator. Every scene that shows
    the face is built from this dict (`build_scene`, and the relighting scene in
    `mfface.scenes.relight_scene`, which adds lamps), so what is added here (more geometry,
    materials) appears in all of them."""
    check_spec(spec)
    check_parts(tuple(parts))
    _bsdf.register()
    _direct.register()
    _projective.register()
    bsdf = mi.load_dict({
        "type": _bsdf.PLUGIN_NAME,
        "diffuse": _texture(spec.texture_size, 3, 0.5),
        "specular": _texture(spec.texture_size, 3, 0.04),
        "roughness": _texture(spec.texture_size, 1, 0.5),
        "fresnel": spec.fresnel,
    })
    he, we = spec.envmap_size
    integrator = {"type": integrator_plugin(spec), "max_depth": spec.max_depth,
                  "hide_emitters": spec.hide_emitters}
    if spec.integrator.endswith("_projective"):
        integrator["sppp"] = _projective.SILHOUETTE_SPP
        if spec.max_depth <= 2:
            # Direct light only: no indirect visibility discontinuities to sample (Mitsuba warns
            # that sppi is wasted otherwise).
            integrator["sppi"] = 0
    scene = {
        "type": "scene",
        "integrator": integrator,
        MESH_KEY: build_mesh(triangles, uvs, bsdf),
        EMITTER_KEY: {"type": "envmap", "bitmap": mi.Bitmap(np.ones((he, we, 3), np.float32)),
                      "to_world": mi.ScalarTransform4f.scale([1.0, -1.0, -1.0])},
        SENSOR_KEY: {
            "type": "perspective",
            "fov": 60.0,
            "fov_axis": "x",
            "near_clip": 1.0,
            "far_clip": 1e5,
            "to_world": mi.ScalarTransform4f.scale([-1.0, -1.0, 1.0]),
            # the count is set by every render call; 4 is valid for every sampler
            "sampler": {"type": spec.sampler, "sample_count": 4},
            "film": {"type": "hdrfilm", "width": spec.width, "height": spec.height,
                     "pixel_format": "rgba", "rfilter": {"type": "box"},
                     # projective integrators need samples beyond the border for shapes that
                     # enter or leave the view
                     "sample_border": spec.integrator.endswith("_projective")},
        },
    }
    if parts:
        scene[PARTS_KEY] = parts_mesh(tuple(parts), spec.fresnel)
    return scene


def build_scene(triangles: np.ndarray, uvs: np.ndarray, spec: SceneSpec,
                parts: tuple[PartMesh, ...] = ()) -> mi.Scene:
    """The face scene for `spec`, with placeholder values (grey textures, white light, 60 deg fov)
    and the meshes of `parts`."""
    return mi.load_dict(scene_dict(triangles, uvs, spec, parts))
