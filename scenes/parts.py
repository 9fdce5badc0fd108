"""The meshes rendered beside the face (eyeballs, teeth, mouth interior) and their materials.

A part is a triangle mesh whose vertices the bridge updates on every render, like the face's,
with a fixed material of its own. The scene holds all parts as one mesh with one `mfface` BSDF
(`scenes/bsdf.py`) whose textures are an atlas with one row per part (`material_atlas`): Dr.Jit
traces a BSDF call once per BSDF instance in the scene and updates every shape, so one mesh and
BSDF per part cost each render its own traces (bench/RESULTS.md, "GPU").
Reflectance values are linear RGB in [0, 1], chosen to look plausible next to skin albedos of
0.2-0.5 under the fitted light (they are not fitted: the photometric loss never counts them):

- `eyeball`: the diffuse colour is a function of the part's material coordinate t (the angle
  from the eye's optical axis in units of the limbus angle, `ModelPart.material_coord`): a black
  pupil (t < 0.32), a brown iris with a darker collarette, a dark limbal ring at t ~ 1 and a
  white sclera beyond; wet and glossy (specular 0.04, roughness 0.15), so it shows highlights.
- `teeth`: off-white enamel (0.62, 0.56, 0.45), specular 0.05, roughness 0.3.
- `mouth`: mouth socket, gums and tongue, a dark red (0.30, 0.075, 0.06), specular 0.03,
  roughness 0.35 (wet); the cavity's own shadow makes it darker still.

The coordinate t reaches the texture as the mesh's u = clamp(t / COORD_RANGE, 0, 1), and v is the
centre of the part's atlas row: row r of the diffuse atlas (R x PROFILE_SIZE) holds part r's colour
profile over t in [0, COORD_RANGE]; the specular and roughness atlases (R x 1) its constants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COORD_RANGE = 2.0      # t values mapped onto the texture's width; larger t take the last texel
PROFILE_SIZE = 256     # texels of a material's diffuse profile


@dataclass(frozen=True)
class PartMesh:
    """What the renderer needs of a part: its name, material
    (a key of MATERIALS), triangles (F, 3) into its own vertices and the per-vertex material
    coordinate (V,) (see the module docstring)."""
    name: str
    material: str
    triangles: np.ndarray
    material_coord: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.material_coord.shape[0])


@dataclass(frozen=True)
class PartMaterial:
    """A part's reflectance: diffuse colour stops (t, rgb) linearly interpolated over the
    material coordinate t (one stop: a constant colour), specular albedo and roughness."""
    stops: tuple[tuple[float, tuple[float, float, float]], ...]
    specular: float
    roughness: float

    def diffuse_profile(self, size: int = PROFILE_SIZE) -> np.ndarray:
        """(1, size, 3) float32: the diffuse colour at t = COORD_RANGE (i + 0.5) / size."""
        t = COORD_RANGE * (np.arange(size) + 0.5) / size
        where = np.array([s for s, _ in self.stops], dtype=np.float64)
        colours = np.array([c for _, c in self.stops], dtype=np.float64)
        rgb = np.stack([np.interp(t, where, colours[:, k]) for k in range(3)], axis=-1)
        return rgb[None].astype(np.float32)


_PUPIL = (0.012, 0.010, 0.010)
_COLLARETTE = (0.07, 0.035, 0.014)
_IRIS = (0.16, 0.075, 0.03)
_LIMBUS = (0.035, 0.022, 0.015)
_SCLERA = (0.56, 0.52, 0.47)
MATERIALS: dict[str, PartMaterial] = {
    "eyeball": PartMaterial(
        stops=((0.0, _PUPIL), (0.30, _PUPIL), (0.34, _COLLARETTE), (0.50, _COLLARETTE),
               (0.62, _IRIS), (0.86, _IRIS), (0.97, _LIMBUS), (1.03, _LIMBUS), (1.20, _SCLERA)),
        specular=0.04, roughness=0.15),
    "teeth": PartMaterial(stops=((0.0, (0.62, 0.56, 0.45)),), specular=0.05, roughness=0.3),
    "mouth": PartMaterial(stops=((0.0, (0.30, 0.075, 0.06)),), specular=0.03, roughness=0.35),
}


def check_parts(parts: tuple[PartMesh, ...]) -> None:
    """Raise ValueError with one sentence when a part cannot be rendered."""
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"part names must be unique, got {names}.")
    for part in parts:
        if part.material not in MATERIALS:
            raise ValueError(f"part {part.name!r} has material {part.material!r}; use one of "
                             f"{', '.join(MATERIALS)}.")
        if part.material_coord.ndim != 1:
            raise ValueError(f"part {part.name!r}: material_coord must be (V,), got shape "
                             f"{part.material_coord.shape}.")


def part_uvs(part: PartMesh, row: int, rows: int) -> np.ndarray:
    """(V, 2) model-convention UVs (v = 0 at the bottom) that carry t, u = clamp(t / COORD_RANGE),
    at the centre of atlas row `row` of `rows` (row 0 at the top), v = 1 - (row + 0.5) / rows."""
    u = np.clip(np.asarray(part.material_coord, np.float64) / COORD_RANGE, 0.0, 1.0)
    return np.stack([u, np.full_like(u, 1.0 - (row + 0.5) / rows)], axis=1).astype(np.float32)


def material_atlas(parts: tuple[PartMesh, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared BSDF's textures, row r for parts[r]: diffuse (R, PROFILE_SIZE, 3) colour profiles,
    specular (R, 1, 3) and roughness (R, 1, 1) constants; float32 linear values."""
    materials = [MATERIALS[part.material] for part in parts]
    diffuse = np.concatenate([m.diffuse_profile() for m in materials], axis=0)
    specular = np.array([[[m.specular] * 3] for m in materials], np.float32)
    roughness = np.array([[[m.roughness]] for m in materials], np.float32)
    return diffuse, specular, roughness
