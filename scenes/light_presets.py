"""Named relighting presets: analytic environment maps turned into spherical-harmonics light.

Each preset is a few smooth lobes (von Mises-Fisher shaped: colour * exp(kappa (d . w - 1)) around
direction d) plus a constant ambient term, evaluated on a Mitsuba lat-long envmap and projected to
SH with `mfface.sh.envmap_to_sh`. Directions are in the light frame (docs/light.md): +x image right,
+y image up, +z towards the camera; "left" and "right" are the viewer's (image) sides.

Exposure: `exposure(sh)` is the mean radiance of a white Lambertian convex surface seen from the
camera, i.e. irradiance / pi averaged over the normals facing the camera (n_z > 0 in the light
frame) weighted by n_z (their projected area), and over RGB. `preset_sh` scales every preset to
exposure 1, so presets are equally bright on average; callers can match a preset to another light
by multiplying with that light's exposure.
Torch only (no Mitsuba), although the presets exist for the Mitsuba face scene's envmap. The
table itself needs neither: torch is imported by the functions that compute with it, so that the
CLI lists the presets (its help, shell completion) without loading torch (1.6 s).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENVMAP_SIZE = (64, 128)


@dataclass(frozen=True)
class Lobe:
    """A smooth light lobe: `colour` (linear RGB peak radiance) around `direction` (any length, normalised)."""
    direction: tuple[float, float, float]
    colour: tuple[float, float, float]
    kappa: float  # sharpness; angular radius ~ 1/sqrt(kappa) rad


@dataclass(frozen=True)
class Preset:
    """One named light: a description for users, its lobes and a constant ambient radiance (RGB)."""
    description: str
    lobes: tuple[Lobe, ...]
    ambient: tuple[float, float, float]


WHITE = (1.0, 1.0, 1.0)
PRESETS: dict[str, Preset] = {
    "ambient": Preset("uniform white light from every direction (no shading, shows the albedo)",
                      (), WHITE),
    "front": Preset("soft light from the camera, slightly above",
                    (Lobe((0.0, 0.3, 1.0), WHITE, 3.0),), (0.1, 0.1, 0.1)),
    "studio": Preset("key light above the image left, weaker fill from the image right",
                     (Lobe((-0.6, 0.5, 0.8), WHITE, 8.0), Lobe((0.8, 0.1, 0.6), (0.35, 0.35, 0.35), 4.0)),
                     (0.04, 0.04, 0.04)),
    "left": Preset("hard side light from the image left, little fill",
                   (Lobe((-1.0, 0.2, 0.3), WHITE, 10.0),), (0.03, 0.03, 0.03)),
    "right": Preset("hard side light from the image right, little fill",
                    (Lobe((1.0, 0.2, 0.3), WHITE, 10.0),), (0.03, 0.03, 0.03)),
    "top": Preset("overhead light, dark below",
                  (Lobe((0.0, 1.0, 0.3), WHITE, 8.0),), (0.04, 0.04, 0.04)),
    "sunset": Preset("low warm sun from the image right under a blue sky",
                     (Lobe((0.9, 0.1, 0.45), (3.0, 1.65, 0.75), 10.0),
                      Lobe((0.0, 1.0, 0.0), (0.15, 0.22, 0.4), 1.5)), (0.02, 0.02, 0.03)),
}


class UnknownPresetError(ValueError):
    """A light preset name that does not exist."""


def preset_names() -> tuple[str, ...]:
    """The preset names, in a stable order."""
    return tuple(PRESETS)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownPresetError(f"Unknown light preset {name!r}; choose one of "
                                 f"{', '.join(preset_names())}.")
    return PRESETS[name]


def preset_envmap(name: str, height: int = ENVMAP_SIZE[0], width: int = ENVMAP_SIZE[1]) -> torch.Tensor:
    """Radiance (H, W, 3) float64 of preset `name` on a Mitsuba lat-long envmap (light frame)."""
    import torch

    from mfface.sh import envmap_directions

    preset = _preset(name)
    directions = envmap_directions(height, width, torch.float64)
    env = torch.tensor(preset.ambient, dtype=torch.float64).expand(height, width, 3).clone()
    for lobe in preset.lobes:
        d = torch.tensor(lobe.direction, dtype=torch.float64)
        d = d / d.norm()
        weight = torch.exp(lobe.kappa * (directions @ d - 1.0))
        env += weight[..., None] * torch.tensor(lobe.colour, dtype=torch.float64)
    return env


def irradiance(sh: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Irradiance (..., N, 3) on surfaces with unit `normals` (N, 3) (light frame) under SH light
    (..., n, 3): the clamped (non-negative) envmap the renderer sees times max(0, n . w), integrated
    over the sphere. A white Lambertian surface has radiance irradiance / pi."""
    import torch

    from mfface.sh import envmap_directions, envmap_solid_angles, sh_to_envmap

    env = sh_to_envmap(sh.double(), *ENVMAP_SIZE)
    cosine = (normals.double() @ envmap_directions(*ENVMAP_SIZE, torch.float64).reshape(-1, 3).T)
    weight = cosine.clamp_min(0.0) * envmap_solid_angles(*ENVMAP_SIZE, torch.float64).reshape(1, -1)
    return torch.einsum("nk,...kc->...nc", weight, env.flatten(-3, -2)).to(sh.dtype)


def exposure(sh: torch.Tensor) -> torch.Tensor:
    """Mean Lambertian radiance (...,) of a white convex surface seen by the camera under SH light
    (..., n, 3); see the module docstring."""
    import torch

    from mfface.sh import envmap_directions, envmap_solid_angles

    normals = envmap_directions(17, 32, torch.float64).reshape(-1, 3)
    weight = normals[:, 2].clamp_min(0.0) * envmap_solid_angles(17, 32, torch.float64).reshape(-1)
    radiance = irradiance(sh, normals).double() / math.pi
    return (torch.einsum("n,...nc->...", weight, radiance) / (3.0 * weight.sum())).to(sh.dtype)


def preset_sh(name: str, bands: int = 9) -> torch.Tensor:
    """SH coefficients (bands**2, 3) float32 of preset `name`, scaled to exposure 1."""
    from mfface.sh import envmap_to_sh

    sh = envmap_to_sh(preset_envmap(name), bands)
    return (sh / exposure(sh)).float()
