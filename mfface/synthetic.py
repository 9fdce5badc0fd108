"""Synthetic face photos with known ground truth, for tests and the quality benchmark.

`random_face(model, size, seed)` draws (with a seeded torch.Generator, so a seed always gives the
same face) an identity, a sparse expression, a head pose, a focal length and distance, a smooth
skin-like diffuse texture, constant specular and roughness and a spherical-harmonics light, and
renders them with the fitting's own forward model (`mfface.forward.ForwardModel`) over a
grey gradient background. The photo is gamma-encoded (2.2) like a file read from disk, so
`mfface.fitting.pipeline.prepare_photo(face.photo, face.landmarks, 'mediapipe478', config, name)`
linearises it back to the rendered radiance.

Landmarks are the model's `mediapipe478` vertices projected with the true camera. The model does
not cover the iris points 468-477; each of them is placed at the projected centre (mean) of its
eye's MediaPipe eye-contour vertices (468-472 right eye, 473-477 left eye, MediaPipe's naming).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mfface.camera import to_camera
from mfface.config import FitConfig
from mfface.forward import ForwardModel, RenderSettings
from mfface.morphable.model import MorphableModel
from mfface.sh import envmap_directions, envmap_to_sh
from mfface.state import FaceState

GAMMA = 2.2
RIGHT_IRIS = range(468, 473)
LEFT_IRIS = range(473, 478)
# Linear-RGB diffuse albedo of a dark and a light skin tone; a face's base colour lies between.
DARK_SKIN = (0.25, 0.14, 0.09)
LIGHT_SKIN = (0.62, 0.45, 0.36)
LOBE_EXPONENT = 8  # directional light: radiance ~ max(0, cos)^8 around its direction


@dataclass
class SyntheticFace:
    """A rendered face and its ground truth.

    photo (S, S, 3) display-referred in [0, 1] (the linear render ** (1/2.2)), like a read photo;
    landmarks (478, 2) px, MediaPipe order (iris points: see the module docstring), with the noise
    requested; clean_landmarks (478, 2) the same without noise; state the true FaceState (batch 1,
    textures at `texture_size`); vertices (V, 3) model-space mm; coverage (S, S) rendered coverage.
    """
    photo: torch.Tensor
    landmarks: np.ndarray
    clean_landmarks: np.ndarray
    state: FaceState
    vertices: torch.Tensor
    coverage: torch.Tensor


def _uniform(g: torch.Generator, low: float, high: float, shape: tuple[int, ...] = ()) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=g)


def _smooth_noise(g: torch.Generator, grid: int, size: int, channels: int) -> torch.Tensor:
    """(size, size, channels) N(0, ~1) noise varying on the scale of size / grid texels (bicubic)."""
    coarse = torch.randn(1, channels, grid, grid, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)


def random_albedo(g: torch.Generator, size: int) -> torch.Tensor:
    """A smooth skin-like linear diffuse texture (1, size, size, 3) in [0.02, 0.95].

    Base colour between DARK_SKIN and LIGHT_SKIN, times exp of low-frequency noise: a shared
    (luminance) part with std 0.12 on a 6x6 grid plus 0.05 on a 24x24 grid, and a per-channel
    (chroma) part with std 0.04.
    """
    t = float(torch.rand((), generator=g))
    base = torch.tensor(DARK_SKIN) + t * (torch.tensor(LIGHT_SKIN) - torch.tensor(DARK_SKIN))
    log_variation = (0.12 * _smooth_noise(g, 6, size, 1) + 0.05 * _smooth_noise(g, 24, size, 1)
                     + 0.04 * _smooth_noise(g, 6, size, 3))
    return (base * log_variation.exp()).clamp(0.02, 0.95)[None]


def random_light(g: torch.Generator, bands: int = 9) -> torch.Tensor:
    """SH coefficients (1, bands**2, 3) of an ambient light plus one soft directional lobe.

    Ambient radiance in [0.5, 0.9] with a +-8% colour tint; the lobe (max(0, cos)^8) comes from the
    camera's side (azimuth within 60 deg of the light frame's +z, elevation -20..50 deg above the
    horizon, +y = image up) and shades a facing Lambertian surface 0.4-1.4x as much as the ambient
    light. The lobe is projected onto `bands` bands (the truncated series is what the renderer sees).
    """
    ambient = float(_uniform(g, 0.5, 0.9)) * (1.0 + _uniform(g, -0.08, 0.08, (3,)))
    ratio = float(_uniform(g, 0.4, 1.4))
    azimuth, elevation = math.radians(float(_uniform(g, -60, 60))), math.radians(float(_uniform(g, -20, 50)))
    direction = torch.tensor([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                              math.cos(azimuth) * math.cos(elevation)])
    # A facing Lambertian surface receives radiance peak * 2 / (k + 1) from a narrow cos^k lobe.
    peak = ratio * ambient.mean() * (LOBE_EXPONENT + 1) / 2.0
    tint = 1.0 + _uniform(g, -0.08, 0.08, (3,))
    dirs = envmap_directions(64, 128, torch.float64)
    lobe = (dirs @ direction.double()).clamp_min(0.0) ** LOBE_EXPONENT
    envmap = ambient.double() + peak * lobe[..., None] * tint.double()
    return envmap_to_sh(envmap, bands).float()[None]


def random_expression(g: torch.Generator, n_expression: int, scale: float) -> torch.Tensor:
    """(1, K_exp) weights: 1-3 random blendshapes set to U(0, scale), the rest 0."""
    expression = torch.zeros(1, n_expression)
    count = int(torch.randint(1, 4, (), generator=g))
    chosen = torch.randperm(n_expression, generator=g)[:count]
    expression[0, chosen] = _uniform(g, 0.0, scale, (count,))
    return expression


def background(g: torch.Generator, size: int) -> torch.Tensor:
    """(size, size, 3) linear vertical grey gradient, levels in [0.1, 0.45], slightly tinted."""
    top, bottom = float(_uniform(g, 0.1, 0.45)), float(_uniform(g, 0.1, 0.45))
    ramp = torch.linspace(top, bottom, size)[:, None, None].expand(size, size, 1)
    return ramp * (1.0 + _uniform(g, -0.05, 0.05, (3,)))


def _fill_uncovered(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`points` (478, 2) with the landmarks the model does not cover (index -1) filled in: iris
    points at their eye-contour centres (module docstring), any other at the covered points' mean."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    missing = index < 0
    points = torch.where(missing[:, None], points[~missing].mean(0), points)
    for iris, contour in ((RIGHT_IRIS, fmc.FACEMESH_RIGHT_EYE), (LEFT_IRIS, fmc.FACEMESH_LEFT_EYE)):
        eye = sorted({i for edge in contour for i in edge})
        for i in iris:
            if missing[i]:
                points[i] = points[eye].mean(0)
    return points


def _distance_for_fill(model_space: torch.Tensor, euler: torch.Tensor, focal: float,
                       offset: torch.Tensor, fill_px: float) -> torch.Tensor:
    """Translation (1, 3) mm that makes the points' larger projected extent `fill_px` pixels and
    puts their centre `offset` (2,) px from the image centre (two fixed-point steps suffice)."""
    depth = torch.tensor(1000.0)
    for _ in range(3):
        cam = to_camera(model_space[None], euler, torch.stack([torch.tensor(0.0), torch.tensor(0.0), depth])[None])
        uv = focal * cam[0, :, :2] / cam[0, :, 2:3]
        extent = (uv.max(0).values - uv.min(0).values).max()
        depth = depth * extent / fill_px
    cam = to_camera(model_space[None], euler, torch.stack([torch.tensor(0.0), torch.tensor(0.0), depth])[None])
    uv = focal * cam[0, :, :2] / cam[0, :, 2:3]
    centre = (uv.max(0).values + uv.min(0).values) / 2.0
    lateral = (offset - centre) * depth / focal
    return torch.cat([lateral, depth.reshape(1)])[None]


def random_face(model: MorphableModel, size: int, seed: int, *, spp: int = 64,
                identity_scale: float = 0.7, identity_components: int = 40,
                expression_scale: float = 0.6, max_yaw_deg: float = 25.0, max_pitch_deg: float = 12.0,
                max_roll_deg: float = 8.0, fill: tuple[float, float] = (0.6, 0.7),
                focal_range: tuple[float, float] = (1.2, 3.0), landmark_noise_px: float = 0.0,
                texture_size: int | None = None, device: torch.device | str = "cpu",
                forward: ForwardModel | None = None) -> SyntheticFace:
    """Render a random face of `model` into a `size` x `size` photo; deterministic per `seed`.

    identity ~ N(0, identity_scale^2) on the first `identity_components` components; 1-3
    blendshapes in [0, expression_scale]; yaw/pitch/roll uniform within +-max_*_deg; focal =
    size * U(focal_range) px; the distance makes the face's landmarks span U(fill) of the image,
    shifted up to 5% of the image from its centre; specular U(0.03, 0.06) and roughness U(0.3, 0.5)
    uniform over the face; light from `random_light`; textures `texture_size` (default: the
    model's) square. Rendered at `spp` samples with direct light (FitConfig's render settings).
    `landmark_noise_px` adds N(0, noise^2) to each landmark coordinate. `forward` (a ForwardModel
    of this model) reuses its Mitsuba scenes instead of building one per call.
    """
    if size < 16:
        raise ValueError(f"size={size} px is too small for a face; use at least 16.")
    if "mediapipe478" not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no mediapipe478 landmarks; reinstall it with "
                         f"`mfface models install {model.name}`.")
    if landmark_noise_px < 0:
        raise ValueError(f"landmark_noise_px must be >= 0, got {landmark_noise_px}.")
    g = torch.Generator().manual_seed(int(seed))
    tex = int(texture_size or model.texture_size[0])
    k_id = min(identity_components, model.n_identity)
    identity = torch.zeros(1, model.n_identity)
    identity[0, :k_id] = identity_scale * torch.randn(k_id, generator=g)
    expression = random_expression(g, model.n_expression, expression_scale)
    euler = torch.tensor([[math.radians(float(_uniform(g, -m, m)))
                           for m in (max_yaw_deg, max_pitch_deg, max_roll_deg)]])
    focal = size * float(_uniform(g, *focal_range))
    vertices = model.vertices(identity, expression)[0]
    index = torch.as_tensor(model.landmarks["mediapipe478"], dtype=torch.long)
    covered = vertices[index[index >= 0]]
    offset = _uniform(g, -0.05, 0.05, (2,)) * size
    translation = _distance_for_fill(covered, euler, focal, offset, size * float(_uniform(g, *fill)))
    diffuse = random_albedo(g, tex)
    specular = torch.full((1, tex, tex, 3), float(_uniform(g, 0.03, 0.06)))
    roughness = torch.full((1, tex, tex, 1), float(_uniform(g, 0.3, 0.5)))
    config = FitConfig()
    sh = random_light(g, config.light.sh_bands)
    state = FaceState(identity=identity, expression=expression, euler=euler, translation=translation,
                      focal=torch.tensor([focal]), sh=sh, diffuse=diffuse, specular=specular,
                      roughness=roughness).to(device)
    if forward is None:
        forward = ForwardModel(model, device)
    elif forward.model is not model:
        raise ValueError(f"the ForwardModel passed is for model {forward.model.name!r}; pass one "
                         f"made for {model.name!r}.")
    with torch.no_grad():
        out = forward(state, RenderSettings.from_config(config, size, spp, seed), index.clamp_min(0).to(device))
        image, coverage, points = out.image, out.coverage, out.landmarks[0].cpu()
    points = _fill_uncovered(points, index)
    linear = image[0].cpu() + (1.0 - coverage[0].cpu())[..., None] * background(g, size)
    photo = linear.clamp(0.0, 1.0) ** (1.0 / GAMMA)
    clean = points.double().numpy()
    noisy = clean + landmark_noise_px * torch.randn(clean.shape, generator=g, dtype=torch.float64).numpy()
    return SyntheticFace(photo=photo, landmarks=noisy, clean_landmarks=clean, state=state,
                         vertices=vertices.to(device), coverage=coverage[0])
