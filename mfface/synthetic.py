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

`synth_face(model, size, seed, index, ...)` is the training-data generator of `mfface synth`
(mfface.learning.synth): the wide variation a network needs (every identity component, sparse
expressions, yaw +-60 deg, focal 500-5000 px at 224 px, skin from very dark to very light,
procedural light environments projected to SH, textured, gradient or photo backgrounds, painted
eyes and mouth interior), every draw made from a generator seeded by (seed, index) alone
(`sample_generator`). Its ranges live in `SynthConfig`; docs/datasets.md documents them.
`random_face` keeps its own narrower ranges and its draws, which the fitting benchmark relies on.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mfface.camera import to_camera
from mfface.config import FitConfig
from mfface.forward import ForwardModel, RenderSettings
from mfface.landmarks import (MEDIAPIPE_LEFT_EYE, MEDIAPIPE_LEFT_EYEBROW, MEDIAPIPE_LIPS, MEDIAPIPE_RIGHT_EYE,
                              MEDIAPIPE_RIGHT_EYEBROW)
from mfface.morphable.model import MorphableModel
from mfface.sh import envmap_directions, envmap_to_sh
from mfface.state import FaceState
from mfface.synthetic_config import (BACKGROUND_KINDS, ENVIRONMENTS, AlbedoVariation, BackgroundVariation,
                                     ExpressionVariation, FaceDetailVariation, LightVariation, SynthConfig)

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
    missing = index < 0
    points = torch.where(missing[:, None], points[~missing].mean(0), points)
    for iris, contour in ((RIGHT_IRIS, MEDIAPIPE_RIGHT_EYE), (LEFT_IRIS, MEDIAPIPE_LEFT_EYE)):
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


@dataclass
class DisplacedModel:
    """`displaced_model`'s result: `model` (the copy whose mean face carries the displacement),
    `displacement` (V, 3) mm, and `out_of_span_mm`: the RMS over the skin region of what is left
    of the displacement after its least-squares fit by the identity and expression bases (the
    part no fitted coefficient can reproduce)."""
    model: MorphableModel
    displacement: np.ndarray
    out_of_span_mm: float


def displaced_model(model: MorphableModel, seed: int, amplitude_mm: float, width_mm: float = 25.0,
                    bumps: int = 12) -> DisplacedModel:
    """A copy of `model` whose mean face carries a smooth random displacement: a face shape the
    model's own span does not contain, so that a benchmark does not only test fitting the model
    to itself (`bench/fit_synthetic.py`).

    The displacement is along the mean face's normals: sum_k a_k exp(-|x - c_k|^2 / (2 w^2)) with
    `bumps` centres c_k on random skin vertices, a_k ~ N(0, amplitude_mm^2), w = `width_mm`,
    faded to 0 within 5-15 mm of the eyes and mouth regions (so the eyelids and lips keep
    closing over the model's eyeballs and teeth). Deterministic per `seed`.
    """
    from mfface.morphable.export import vertex_normals

    rng = np.random.default_rng(seed)
    mean = model.mean_shape.astype(np.float64)
    skin = model.regions.get("skin", model.regions.get("face", np.arange(model.n_vertices)))
    centres = mean[rng.choice(skin, bumps, replace=False)]
    heights = rng.normal(0.0, amplitude_mm, bumps)
    squared = ((mean[:, None, :] - centres[None]) ** 2).sum(-1)
    field_mm = (heights * np.exp(-squared / (2.0 * width_mm ** 2))).sum(1)
    keep_clear = np.concatenate([model.regions.get(name, np.zeros(0, dtype=np.int64)) for name in ("eyes", "mouth")])
    if len(keep_clear):
        from scipy.spatial import cKDTree
        gap = cKDTree(mean[keep_clear]).query(mean)[0]
        field_mm *= np.clip((gap - 5.0) / 10.0, 0.0, 1.0)
    displacement = field_mm[:, None] * vertex_normals(mean, model.triangles)
    rows = (skin[:, None] * 3 + np.arange(3)).reshape(-1)
    basis = np.concatenate([model.identity_basis.reshape(model.n_identity, -1),
                            model.expression_basis.reshape(model.n_expression, -1)]).T[rows]
    flat = displacement.reshape(-1)[rows]
    residual = flat - basis @ np.linalg.lstsq(basis, flat, rcond=None)[0]
    out_of_span = float(np.sqrt((residual.reshape(-1, 3) ** 2).sum(1).mean()))
    copy = dataclasses.replace(model, mean_shape=(mean + displacement).astype(model.mean_shape.dtype))
    return DisplacedModel(model=copy, displacement=displacement, out_of_span_mm=out_of_span)


# =================================================================================================
# Training faces with the wide variation a network needs: `synth_face` (used by `mfface synth`).
# Every draw comes from `sample_generator(seed, index)`, in a fixed order, so sample i is the same
# whichever process, shard or resumed run makes it.
# =================================================================================================

SKIN_A = (7.0, 16.0)    # CIE a* (redness) of the skin base colour, uniform
SKIN_B = (9.0, 22.0)    # CIE b* (yellowness), uniform
NEUTRAL_KELVIN = 6504.0  # colour temperature a camera balanced for daylight renders white (D65)
IRIS_RADIUS_MM = 5.85    # half the human iris diameter (11.7 mm)
MAX_BACKGROUND_SIDE = 1024  # background photos are used down-scaled to at most this longer side
FACE_MARGIN = 0.3        # background crops keep this fraction of a face box's size away from it
_LUMINANCE = torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)  # Rec. 709 / linear sRGB
_XYZ_TO_SRGB = torch.tensor([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415],
                             [0.0557, -0.2040, 1.0570]], dtype=torch.float64)



def sample_generator(seed: int, index: int) -> torch.Generator:
    """The torch generator of sample `index` of a dataset seeded `seed` (both >= 0): seeded with
    64 bits of numpy's SeedSequence((seed, index)), so that every (seed, index) pair is its own
    independent stream and a sample never depends on which other samples were drawn."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed} and {index}.")
    words = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(words[0]) << 32) | int(words[1]))


def _u(g: torch.Generator, low: float, high: float) -> float:
    """One draw U(low, high) as a float."""
    return float(_uniform(g, low, high))


def _log_uniform(g: torch.Generator, low: float, high: float) -> float:
    return math.exp(float(_uniform(g, math.log(low), math.log(high))))


def _choice(g: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(0, len(options), (), generator=g))]


# -- geometry ------------------------------------------------------------------------------------

def draw_expression(g: torch.Generator, model: MorphableModel, config: ExpressionVariation) -> torch.Tensor:
    """(1, K_exp) sparse expression: neutral with probability `neutral`, else 1..max_active
    components, each a blend weight U(0, scale) clipped to `model.expression_range` (a *_L / *_R
    blendshape also sets its partner with probability `symmetric`) or, for PCA expression
    models, N(0, scale^2)."""
    k = model.n_expression
    expression = torch.zeros(1, k)
    neutral = float(torch.rand((), generator=g)) < config.neutral
    if k == 0 or config.max_active == 0 or neutral:
        return expression
    count = int(torch.randint(1, min(config.max_active, k) + 1, (), generator=g))
    chosen = torch.randperm(k, generator=g)[:count].tolist()
    blend = model.expression_range is not None
    for i in chosen:
        value = (_u(g, 0.0, config.scale) if blend
                 else config.scale * float(torch.randn((), generator=g)))
        expression[0, i] = value
        partner = _partner(list(model.expression_names), i)
        if partner is not None and float(torch.rand((), generator=g)) < config.symmetric:
            expression[0, partner] = value + _u(g, -0.15, 0.15)
    if blend:
        expression.clamp_(*model.expression_range)
    return expression


def _partner(names: list[str], i: int) -> int | None:
    """Index of the other side's blendshape of names[i] (..._L <-> ..._R), or None."""
    name = names[i] if i < len(names) else ""
    for a, b in (("_L", "_R"), ("_R", "_L"), ("Left", "Right"), ("Right", "Left")):
        if name.endswith(a):
            other = name[: -len(a)] + b
            return names.index(other) if other in names else None
    return None


def _photo_frame(g: torch.Generator, size: int,
                 offset: float) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """(principal point (2,) in crop px, box (x0, y0, side), source size (w, h)) of a crop whose
    photo centre lies U(-offset, offset) x size from the crop's centre (rounded to half pixels, so
    that the box and photo size are whole pixels: principal = (w / 2 - x0, h / 2 - y0))."""
    shift = torch.round(2.0 * _uniform(g, -offset, offset, (2,)) * size) / 2.0
    starts, lengths = [], []
    for s in shift.tolist():
        start = int(round(-2.0 * s)) if s < 0 else 0
        starts.append(start)
        lengths.append(size + abs(int(round(2.0 * s))))
    principal = torch.tensor([lengths[0] / 2.0 - starts[0], lengths[1] / 2.0 - starts[1]])
    return principal, (starts[0], starts[1], size), (lengths[0], lengths[1])


# -- skin ----------------------------------------------------------------------------------------

def lab_to_linear_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (..., 3) with the D65 white -> linear sRGB (..., 3), not clipped."""
    l, a, b = lab.double().unbind(-1)
    fy = (l + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def inverse(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 6.0 / 29.0, t ** 3, 3.0 * (6.0 / 29.0) ** 2 * (t - 4.0 / 29.0))
    xyz = torch.stack([0.95047 * inverse(fx), inverse(fy), 1.08883 * inverse(fz)], dim=-1)
    return xyz @ _XYZ_TO_SRGB.T


def skin_tone(g: torch.Generator, config: AlbedoVariation) -> tuple[torch.Tensor, float]:
    """(linear RGB base colour (3,), ITA in degrees) of a skin tone: L* uniform in the configured
    range, a* in SKIN_A, b* in SKIN_B. The individual typology angle ITA = atan((L* - 50) / b*)
    sorts skin from very dark (< -30 deg) to very light (> 55 deg); the defaults span about
    -60 to +60 deg."""
    lab = torch.stack([_uniform(g, config.lightness_min, config.lightness_max),
                       _uniform(g, *SKIN_A), _uniform(g, *SKIN_B)])
    ita = math.degrees(math.atan2(float(lab[0]) - 50.0, float(lab[2])))
    return lab_to_linear_rgb(lab).clamp(0.005, 0.95).float(), ita


def _mediapipe_contours() -> dict[str, list[int]]:
    """MediaPipe landmark ids of the regions synth paints: eye contours ('right_eye' belongs to
    iris points 468-472, 'left_eye' to 473-477), brows, and the lips' outer and inner loops."""
    from mfface.masks import _loops

    def ids(edges: frozenset[tuple[int, int]]) -> list[int]:
        return sorted({i for e in edges for i in e})
    lips = _loops(MEDIAPIPE_LIPS)
    return {"right_eye": ids(MEDIAPIPE_RIGHT_EYE), "left_eye": ids(MEDIAPIPE_LEFT_EYE),
            "right_brow": ids(MEDIAPIPE_RIGHT_EYEBROW), "left_brow": ids(MEDIAPIPE_LEFT_EYEBROW),
            "lips_a": lips[0], "lips_b": lips[1]}


# MediaPipe's eye corners (outer, inner) and the inner lips' corners: the axes of eyes and mouth.
_EYE_CORNERS = {"right_eye": (33, 133), "left_eye": (263, 362)}
_MOUTH_CORNERS = (78, 308)


def _feature_masks(model: MorphableModel, size: int) -> torch.Tensor:
    """(3, size, size) soft masks in [0, 1] of the lips, the brows and the lash lines on the
    model's texture (row 0 at the top), drawn through the UVs of its mediapipe478 landmark
    vertices (convex hulls; lash lines along the eye contours) and blurred by ~0.5% of the
    texture; cached on the model per size."""
    key = ("synth_feature_masks", size)
    cache = model._torch_cache
    if key not in cache:
        from PIL import Image, ImageDraw, ImageFilter

        from mfface.masks import _hull

        index = np.asarray(model.landmarks["mediapipe478"])
        texel = np.stack([model.uvs[:, 0] * size, (1.0 - model.uvs[:, 1]) * size], axis=1)
        regions = _mediapipe_contours()

        def points(name: str) -> np.ndarray:
            return texel[index[[i for i in regions[name] if index[i] >= 0]]]
        layers = []
        for names in (("lips_a", "lips_b"), ("right_brow", "left_brow"), ("right_eye", "left_eye")):
            image = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(image)
            for name in names:
                hull = _hull(points(name)) if len(points(name)) >= 3 else None
                if not hull:
                    continue
                if name.endswith("eye"):
                    draw.line(hull + hull[:1], fill=255, width=max(1, round(size / 160)))
                else:
                    draw.polygon(hull, fill=255)
            image = image.filter(ImageFilter.GaussianBlur(max(0.5, size / 200)))
            layers.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0))
        cache[key] = torch.stack(layers)
    return cache[key]


@dataclass
class DrawnAlbedo:
    """A drawn diffuse albedo: texture (1, T, T, 3) linear, row 0 at the top; ITA of its base
    tone in degrees; the statistical albedo coefficients (1, K_alb) when the model has them."""
    texture: torch.Tensor
    ita: float
    coefficients: torch.Tensor | None = None


def draw_albedo(g: torch.Generator, model: MorphableModel, config: AlbedoVariation) -> DrawnAlbedo:
    """The face's diffuse albedo, in [0.005, 0.95].

    Models with a statistical albedo: its mean plus N(0, scale^2) coefficients, baked into the
    texture through the UVs. Others: a `skin_tone` base colour times exp of smooth noise as in
    `random_albedo` (luminance std 0.12 on a 6x6 grid plus 0.05 on 24x24, chroma 0.04), with,
    at strength `features`, lips x (0.85, 0.55, 0.6) x U(0.75, 1), brows x U(0.12, 0.6) x
    (1, 0.92, 0.85) (hair) and lash lines x 0.45 painted through the UVs (`_feature_masks`)."""
    size = config.texture_size
    if model.diffuse_albedo is not None:
        return _statistical_albedo(g, model, config)
    base, ita = skin_tone(g, config)
    log_variation = (0.12 * _smooth_noise(g, 6, size, 1) + 0.05 * _smooth_noise(g, 24, size, 1)
                     + 0.04 * _smooth_noise(g, 6, size, 3))
    factors = (torch.tensor([0.85, 0.55, 0.6]) * _u(g, 0.75, 1.0),
               torch.tensor([1.0, 0.92, 0.85]) * _u(g, 0.12, 0.6),
               torch.tensor([0.45, 0.45, 0.45]))
    if config.features > 0 and "mediapipe478" in model.landmarks:
        for mask, factor in zip(_feature_masks(model, size), factors):
            log_variation = log_variation + config.features * mask[..., None] * factor.log()
    return DrawnAlbedo((base * log_variation.exp()).clamp(0.005, 0.95)[None], ita)


def _statistical_albedo(g: torch.Generator, model: MorphableModel, config: AlbedoVariation) -> DrawnAlbedo:
    """A statistical albedo model's face (see `draw_albedo`), baked by `mfface.textures.
    StatisticalAlbedo` (as the fit and the network bake it; cached on the model per size); ITA
    from the mean colour of its vertices with b* taken as 15."""
    from mfface.textures import StatisticalAlbedo

    key = ("synth_statistical_albedo", config.texture_size)
    if key not in model._torch_cache:
        model._torch_cache[key] = StatisticalAlbedo(model, config.texture_size)
    albedo = model.diffuse_albedo
    coefficients = config.scale * torch.randn(1, albedo.n_components, generator=g)
    with torch.no_grad():
        texture = model._torch_cache[key].texture(coefficients)
    basis = albedo.basis.reshape(albedo.n_components, -1)
    values = albedo.mean.reshape(-1) + (coefficients[0].numpy().astype(np.float64) * albedo.std) @ basis
    luminance = float(torch.from_numpy(values.reshape(-1, 3).mean(0)) @ _LUMINANCE)
    lightness = 116.0 * max(luminance, 1e-6) ** (1.0 / 3.0) - 16.0
    ita = math.degrees(math.atan2(lightness - 50.0, 15.0))
    return DrawnAlbedo(texture.float().clamp(0.005, 0.95), ita, coefficients)


# -- light ---------------------------------------------------------------------------------------

# CIE 1931 colour-matching functions as the multi-lobe Gaussian fit of Wyman, Sloan and Shirley
# (JCGT 2(2), 2013): (weight, mean nm, sigma below the mean, sigma above) per lobe.
_CMF_LOBES = (
    ((1.056, 599.8, 37.9, 31.0), (0.362, 442.0, 16.0, 26.7), (-0.065, 501.1, 20.4, 26.2)),
    ((0.821, 568.8, 46.9, 40.5), (0.286, 530.9, 16.3, 31.1)),
    ((1.217, 437.0, 11.8, 36.0), (0.681, 459.0, 26.0, 13.8)),
)


def _blackbody_xyz(kelvin: float) -> torch.Tensor:
    """CIE XYZ (3,) float64 of a blackbody at `kelvin` (Planck's law, 380-780 nm), Y = 1."""
    wl = torch.linspace(380.0, 780.0, 401, dtype=torch.float64)
    planck = wl ** -5 / torch.expm1(1.4388e7 / (wl * kelvin))
    xyz = []
    for lobes in _CMF_LOBES:
        cmf = torch.zeros_like(wl)
        for weight, mean, below, above in lobes:
            sigma = torch.where(wl < mean, torch.full_like(wl, below), torch.full_like(wl, above))
            cmf = cmf + weight * torch.exp(-0.5 * ((wl - mean) / sigma) ** 2)
        xyz.append((planck * cmf).sum())
    xyz = torch.stack(xyz)
    return xyz / xyz[1]


def kelvin_rgb(kelvin: float, white_kelvin: float = NEUTRAL_KELVIN) -> torch.Tensor:
    """Linear sRGB (3,) float64, luminance 1, of a blackbody light at `kelvin` in a photo
    white-balanced for a blackbody at `white_kelvin` (von Kries scaling in linear sRGB): 1, 1, 1
    when the two are equal; warmer lights come out orange, cooler ones blue."""
    rgb = (_XYZ_TO_SRGB @ _blackbody_xyz(kelvin)).clamp_min(1e-9)
    white = (_XYZ_TO_SRGB @ _blackbody_xyz(white_kelvin)).clamp_min(1e-9)
    ratio = rgb / white
    return ratio / (ratio @ _LUMINANCE)


def _hue_tint(g: torch.Generator, saturation: tuple[float, float]) -> torch.Tensor:
    """A random linear RGB tint (3,) of luminance 1: a hue at the drawn saturation."""
    import colorsys

    hue, sat = float(torch.rand((), generator=g)), _u(g, *saturation)
    rgb = torch.tensor(colorsys.hsv_to_rgb(hue, sat, 1.0), dtype=torch.float64) ** GAMMA
    return rgb / (rgb @ _LUMINANCE)


def _direction(azimuth: float, elevation: float) -> torch.Tensor:
    """Unit vector (3,) in the light frame's level orientation (+x image right, +y up, +z towards
    the camera): `azimuth` degrees from the camera's side (+z) towards image right, `elevation`
    degrees above the horizon."""
    a, e = math.radians(azimuth), math.radians(elevation)
    return torch.tensor([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)],
                        dtype=torch.float64)


def _lobe(dirs: torch.Tensor, direction: torch.Tensor, kappa: float) -> torch.Tensor:
    """A smooth lobe exp(kappa (d . w - 1)) (H, W) around `direction` (angular radius ~ 1/sqrt(kappa))."""
    return torch.exp(kappa * (dirs @ direction - 1.0))


def _hemisphere(dirs: torch.Tensor, upper: bool) -> torch.Tensor:
    """(H, W) weight of the upper (y > 0) or lower hemisphere, blended over +-3 deg of the horizon."""
    y = dirs[..., 1] if upper else -dirs[..., 1]
    return ((y + 0.05) / 0.1).clamp(0.0, 1.0)


@dataclass
class _Emitter:
    """One light of an environment: its radiance pattern over the sphere (H, W) (any scale), its
    power (radiance integrated over the sphere, relative to the environment's other lights), its
    colour temperature and a tint (luminance 1)."""
    pattern: torch.Tensor
    power: float
    kelvin: float
    tint: torch.Tensor | None = None


# Ground albedo tints (luminance ~1): grass, asphalt or concrete, sand, brick.
_GROUNDS = ((0.75, 1.0, 0.55), (1.0, 1.0, 1.0), (1.0, 0.88, 0.68), (1.0, 0.72, 0.58))


def _environment(kind: str, g: torch.Generator,
                 dirs: torch.Tensor) -> tuple[list[_Emitter], float, tuple[float, torch.Tensor] | None]:
    """The lights of one environment `kind` in the level frame (see `draw_light` for what each
    kind is): (emitters, main light's colour temperature, ground (albedo, tint) or None)."""
    up = _hemisphere(dirs, True)
    y = dirs[..., 1].clamp(0.0, 1.0)
    ground = (_u(g, 0.1, 0.3), torch.tensor(_choice(g, _GROUNDS), dtype=torch.float64))
    if kind == "overcast":
        kelvin = _u(g, 6000.0, 7500.0)
        sky = up * (1.0 + 2.0 * y) / 3.0   # CIE standard overcast sky: (1 + 2 sin(elevation)) / 3
        if float(torch.rand((), generator=g)) < 0.5:  # a building or trees block part of the sky
            blocker = _direction(_u(g, -180.0, 180.0), _u(g, 0.0, 20.0))
            sky = sky * (1.0 - _u(g, 0.4, 0.8) * _lobe(dirs, blocker, _u(g, 1.5, 4.0)))
        return [_Emitter(sky, 1.0, kelvin)], kelvin, ground
    if kind == "sun":
        elevation = _u(g, 5.0, 70.0)
        sun = _direction(_u(g, -180.0, 180.0), elevation)
        sun_kelvin = 3200.0 + (5800.0 - 3200.0) * min(1.0, elevation / 40.0)
        sky_kelvin = _u(g, 9000.0, 16000.0)
        power = _u(g, 2.0, 8.0)
        emitters = [_Emitter(_lobe(dirs, sun, _u(g, 150.0, 500.0)), power, sun_kelvin),
                    _Emitter(_lobe(dirs, sun, 8.0), 0.1 * power, sun_kelvin),  # circumsolar glow
                    _Emitter(up * (0.5 + (1.0 - y) ** 2), 1.0, sky_kelvin)]   # clear sky, bright horizon
        return emitters, sun_kelvin, ground
    if kind == "window":
        key = _direction(_u(g, -100.0, 100.0), _u(g, -5.0, 35.0))
        kelvin = _u(g, 5500.0, 7500.0)
        room = 1.0 + 0.3 * dirs[..., 1]  # ceiling a little brighter than the floor
        return [_Emitter(_lobe(dirs, key, _u(g, 3.0, 10.0)), 1.0, kelvin),
                _Emitter(room, _u(g, 0.15, 0.6), _u(g, 3000.0, 4500.0),
                         _hue_tint(g, (0.05, 0.25)))], kelvin, None
    if kind == "studio":
        side = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
        kelvin = _u(g, 5000.0, 6000.0)
        key = _direction(side * _u(g, 25.0, 70.0), _u(g, 15.0, 45.0))
        fill = _direction(-side * _u(g, 30.0, 80.0), _u(g, -10.0, 20.0))
        rim = _direction(-side * _u(g, 110.0, 160.0), _u(g, 20.0, 50.0))
        return [_Emitter(_lobe(dirs, key, _u(g, 6.0, 20.0)), 1.0, kelvin),
                _Emitter(_lobe(dirs, fill, _u(g, 3.0, 8.0)), _u(g, 0.15, 0.5), kelvin),
                _Emitter(_lobe(dirs, rim, _u(g, 10.0, 30.0)), _u(g, 0.3, 1.0), kelvin),
                _Emitter(torch.ones_like(y), _u(g, 0.02, 0.08), kelvin)], kelvin, None
    if kind == "indoor":
        kelvin = _u(g, 2700.0, 3500.0)
        emitters = []
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            lamp = _direction(_u(g, -180.0, 180.0), _u(g, 40.0, 85.0))
            emitters.append(_Emitter(_lobe(dirs, lamp, _u(g, 5.0, 20.0)),
                                     _u(g, 0.4, 1.0), kelvin))
        wall = _direction(_u(g, -180.0, 180.0), _u(g, -10.0, 20.0))
        emitters.append(_Emitter(_lobe(dirs, wall, _u(g, 1.0, 3.0)), _u(g, 0.15, 0.45),
                                 kelvin, _hue_tint(g, (0.15, 0.45))))  # a coloured wall's bounce
        emitters.append(_Emitter(torch.ones_like(y), _u(g, 0.05, 0.2), kelvin,
                                 _hue_tint(g, (0.0, 0.15))))
        return emitters, kelvin, None
    if kind == "flash":
        kelvin = _u(g, 5200.0, 6000.0)
        room_kelvin = _u(g, 2700.0, 3500.0)
        flash = _direction(_u(g, -8.0, 8.0), _u(g, 0.0, 10.0))
        ceiling = _direction(_u(g, -180.0, 180.0), _u(g, 50.0, 90.0))
        return [_Emitter(_lobe(dirs, flash, _u(g, 15.0, 60.0)), 1.0, kelvin),
                _Emitter(torch.ones_like(y), _u(g, 0.05, 0.3), room_kelvin),
                _Emitter(_lobe(dirs, ceiling, _u(g, 2.0, 6.0)), _u(g, 0.1, 0.4),
                         room_kelvin)], kelvin, None
    raise ValueError(f"unknown environment {kind!r}; use one of {', '.join(ENVIRONMENTS)}.")


def _tilt_rotation(g: torch.Generator, tilt_deg: float) -> torch.Tensor:
    """(3, 3) float64 rotation about the camera's x axis then its z axis, each U(-tilt, tilt)."""
    ax, az = (math.radians(_u(g, -tilt_deg, tilt_deg)) for _ in range(2))
    cx, sx, cz, sz = math.cos(ax), math.sin(ax), math.cos(az), math.sin(az)
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return rz @ rx


def draw_light(g: torch.Generator, config: LightVariation, bands: int = 9,
               kinds: Sequence[str] | None = None) -> tuple[torch.Tensor, str, float]:
    """(SH coefficients (1, bands^2, 3) float32 in the light frame, environment kind, exposure)
    of a light drawn from a procedural environment (kinds from `config.environments`, equally
    likely):

    - overcast: CIE overcast sky (radiance (1 + 2 sin elevation) / 3), 6000-7500 K, half the time
      with part of the sky blocked (a building or trees), over a ground that reflects it;
    - sun: a sun 5-70 deg high anywhere around the head (3200 K near the horizon to 5800 K above
      40 deg), 2-8 times the clear blue sky's power (9000-16000 K, brighter at the horizon), a
      circumsolar glow and a reflecting ground;
    - window: a broad window light within 100 deg of the camera's side, 5500-7500 K, and a warm,
      slightly tinted room (3000-4500 K) at 0.15-0.6 of its power;
    - studio: three-point lighting at 5000-6000 K: key 25-70 deg to one side and 15-45 deg up,
      fill on the other side (0.15-0.5), rim light from behind (0.3-1.0) and a dim backdrop;
    - indoor: 1-3 ceiling lamps (2700-3500 K), the bounce off a coloured wall and tinted ambient;
    - flash: an on-camera flash (5200-6000 K) over a dim tungsten room and ceiling bounce.
    Grounds (albedo 0.1-0.3: grass, asphalt, sand, brick) return the sky's and sun's irradiance
    from below. Colours are blackbody colours seen by a camera whose white balance corrects the
    main light by U(white_balance_min, max) (`kelvin_rgb`). The environment is tilted
    (`config.tilt`), evaluated on a 64x128 lat-long map, projected onto `bands` bands
    (`mfface.sh.envmap_to_sh`), windowed, and scaled to an exposure log-uniform in
    [exposure_min, exposure_max] (`mfface.scenes.light_presets.exposure`).
    """
    from mfface.scenes.light_presets import exposure
    from mfface.sh import envmap_solid_angles, window_factors

    kinds = tuple(kinds) if kinds is not None else SynthConfig(light=config).environment_kinds()
    kind = _choice(g, kinds)
    rotation = _tilt_rotation(g, config.tilt)
    dirs = envmap_directions(64, 128, torch.float64) @ rotation  # level-frame direction of each texel
    emitters, main_kelvin, ground = _environment(kind, g, dirs)
    balance = _u(g, config.white_balance_min, config.white_balance_max)
    mired = balance * 1e6 / main_kelvin + (1.0 - balance) * 1e6 / NEUTRAL_KELVIN
    white = 1e6 / mired
    omega = envmap_solid_angles(64, 128, torch.float64)
    envmap = torch.zeros(64, 128, 3, dtype=torch.float64)
    for e in emitters:
        pattern = e.pattern.clamp_min(0.0)
        colour = kelvin_rgb(e.kelvin, white) * (e.tint if e.tint is not None else 1.0)
        envmap += (e.power / float((pattern * omega).sum())) * pattern[..., None] * colour
    if ground is not None:
        albedo, tint = ground
        irradiance = (envmap * (dirs[..., 1].clamp_min(0.0) * omega)[..., None]).sum((0, 1))
        envmap += _hemisphere(dirs, False)[..., None] * (albedo / math.pi) * irradiance * tint
    sh = envmap_to_sh(envmap, bands)
    if config.window != "none":
        sh = sh * window_factors(bands, config.window, torch.float64)[:, None]
    target = _log_uniform(g, config.exposure_min, config.exposure_max)
    sh = sh * (target / float(exposure(sh)))
    return sh.float()[None], kind, target


# -- backgrounds ---------------------------------------------------------------------------------

def _random_colour(g: torch.Generator, low: float = 0.02, high: float = 0.6,
                   saturation: float = 0.5) -> torch.Tensor:
    """A linear RGB colour (3,): luminance log-uniform in [low, high], a random hue at a
    saturation U(0, saturation)."""
    return _hue_tint(g, (0.0, saturation)).float() * _log_uniform(g, low, high)


def gradient_background(g: torch.Generator, size: int) -> torch.Tensor:
    """(size, size, 3) linear: a linear ramp between two random colours in a random direction,
    half the time darkened towards the corners (vignette)."""
    c0, c1 = _random_colour(g), _random_colour(g)
    angle = _u(g, 0.0, 2.0 * math.pi)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 0.5).clamp(0.0, 1.0)[..., None]
    image = c0 + t * (c1 - c0)
    if float(torch.rand((), generator=g)) < 0.5:
        image = image * (1.0 - _u(g, 0.2, 0.6) * (xx ** 2 + yy ** 2)[..., None] * 2.0)
    return image.clamp_min(0.0)


def noise_background(g: torch.Generator, size: int) -> torch.Tensor:
    """(size, size, 3) linear textured noise: 3-6 octaves of smooth noise (base grid 2-5 cells,
    each octave twice as fine, amplitude x U(0.35, 0.75) per octave) mapped through a ramp of
    2-3 random colours, plus a faint low-frequency colour variation."""
    base = int(torch.randint(2, 6, (), generator=g))
    octaves = int(torch.randint(3, 7, (), generator=g))
    persistence = _u(g, 0.35, 0.75)
    noise = torch.zeros(size, size, 1)
    for k in range(octaves):
        noise = noise + persistence ** k * _smooth_noise(g, min(base * 2 ** k, size), size, 1)
    t = (noise - noise.min()) / (noise.max() - noise.min()).clamp_min(1e-6)
    colours = torch.stack([_random_colour(g) for _ in range(int(torch.randint(2, 4, (), generator=g)))])
    position = t * (len(colours) - 1)
    lower = position.floor().clamp(max=len(colours) - 2).long()
    frac = position - lower
    image = colours[lower[..., 0]] * (1.0 - frac) + colours[lower[..., 0] + 1] * frac
    image = image * (1.0 + 0.08 * _smooth_noise(g, 3, size, 3))
    return image.clamp_min(0.0)


@dataclass(frozen=True)
class BackgroundPhoto:
    """A photo background crops are cut from: its path, its size in px as used (down-scaled to a
    longer side of at most MAX_BACKGROUND_SIDE), and the faces found in it as boxes
    (x0, y0, x1, y1) px, grown by FACE_MARGIN of their size on every side."""
    path: str
    width: int
    height: int
    faces: tuple[tuple[float, float, float, float], ...] = ()


def read_background(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 display RGB of a background photo, EXIF orientation applied, down-scaled
    (area filter) so that its longer side is at most MAX_BACKGROUND_SIDE (JPEGs are decoded at a
    reduced scale where that suffices). Raises OSError or ValueError when it cannot be read."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (MAX_BACKGROUND_SIDE, MAX_BACKGROUND_SIDE))
        img = ImageOps.exif_transpose(img).convert("RGB")
        scale = MAX_BACKGROUND_SIDE / max(img.size)
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BOX)
        return np.asarray(img, dtype=np.uint8).copy()


class BackgroundPhotos:
    """Photos (e.g. `mfface synth --backgrounds DIR`) that background crops are cut from, away
    from the faces in them. `index` finds the faces once; images are read on demand
    (`read_background`) and the last `cache_size` kept in memory."""

    def __init__(self, photos: Sequence[BackgroundPhoto], cache_size: int = 8) -> None:
        self.photos = list(photos)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.photos)

    @classmethod
    def index(cls, paths: Sequence[Path], detector: Any,
              on_photo: Any = None) -> tuple["BackgroundPhotos", list[tuple[Path, str]]]:
        """(the photos at `paths` with their faces found by `detector` (a LandmarkDetector's
        `find_faces`), [(path, reason) of the files that could not be read]). `on_photo(i, n)`
        is called after each."""
        photos, skipped = [], []
        for i, path in enumerate(paths):
            try:
                image = read_background(path)
            except (OSError, ValueError) as e:
                skipped.append((path, f"{path} could not be read as an image ({e})."))
            else:
                height, width = image.shape[:2]
                faces = []
                for box in detector.find_faces(image):
                    mx, my = FACE_MARGIN * box.width, FACE_MARGIN * box.height
                    faces.append((box.x - mx, box.y - my, box.x + box.width + mx, box.y + box.height + my))
                photos.append(BackgroundPhoto(str(path), width, height, tuple(faces)))
            if on_photo is not None:
                on_photo(i + 1, len(paths))
        return cls(photos), skipped

    def _image(self, photo: BackgroundPhoto) -> np.ndarray:
        if photo.path in self._cache:
            self._cache.move_to_end(photo.path)
            return self._cache[photo.path]
        image = read_background(photo.path)
        if image.shape[:2] != (photo.height, photo.width):
            raise ValueError(f"background photo {photo.path} changed since it was indexed.")
        self._cache[photo.path] = image
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return image

    def crop(self, g: torch.Generator, size: int, attempts: int = 20) -> torch.Tensor | None:
        """(size, size, 3) linear RGB: a square crop of a random photo, side U(0.3, 1) of its
        shorter side, that does not touch any (grown) face box, mirrored half the time, resized
        with an area filter and its exposure scaled by U(0.5, 1.2). None when `attempts` random
        crops all touched a face (or there are no photos)."""
        from PIL import Image

        for _ in range(attempts if self.photos else 0):
            photo = _choice(g, self.photos)
            side = _u(g, 0.3, 1.0) * min(photo.width, photo.height)
            x0 = _u(g, 0.0, photo.width - side)
            y0 = _u(g, 0.0, photo.height - side)
            if any(x0 < fx1 and fx0 < x0 + side and y0 < fy1 and fy0 < y0 + side
                   for fx0, fy0, fx1, fy1 in photo.faces):
                continue
            flip = float(torch.rand((), generator=g)) < 0.5
            gain = _u(g, 0.5, 1.2)
            pil = Image.fromarray(self._image(photo))
            pil = pil.resize((size, size), Image.Resampling.BOX, box=(x0, y0, x0 + side, y0 + side))
            display = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
            if flip:
                display = display.flip(1)
            return display ** GAMMA * gain
        return None


def draw_background(g: torch.Generator, size: int, config: BackgroundVariation,
                    photos: BackgroundPhotos | None = None) -> tuple[torch.Tensor, str]:
    """((size, size, 3) linear background, kind in BACKGROUND_KINDS): a photo crop with
    probability `config.photo` when photos are given (a procedural one when no crop avoids
    the faces), else textured noise with probability `config.noise`, else a gradient."""
    if photos is not None and len(photos) and float(torch.rand((), generator=g)) < config.photo:
        image = photos.crop(g, size)
        if image is not None:
            return image, "photo"
    if float(torch.rand((), generator=g)) < config.noise:
        return noise_background(g, size), "noise"
    return gradient_background(g, size), "gradient"


# -- eyes and mouth ------------------------------------------------------------------------------

# Iris albedos (linear RGB): dark brown, brown, hazel, green, blue, grey; brown twice as likely.
_IRIS_COLOURS = ((0.05, 0.025, 0.012), (0.11, 0.055, 0.022), (0.11, 0.055, 0.022), (0.16, 0.11, 0.04),
                 (0.1, 0.13, 0.06), (0.1, 0.15, 0.24), (0.16, 0.17, 0.18))


@dataclass
class _Openings:
    """Drawn look of the eyes and the mouth's inside (`draw_openings`)."""
    sclera: float      # sclera albedo
    iris: torch.Tensor  # (3,) iris albedo
    pupil: float       # pupil radius / iris radius
    gaze: tuple[float, float]  # iris offset along / across the eye, fractions of its width
    teeth: float       # teeth albedo


def draw_openings(g: torch.Generator, config: FaceDetailVariation) -> _Openings:
    """Random sclera (0.45-0.65), iris colour, pupil size (0.3-0.5 of the iris) and gaze."""
    return _Openings(sclera=_u(g, 0.45, 0.65),
                     iris=torch.tensor(_choice(g, _IRIS_COLOURS)),
                     pupil=_u(g, 0.3, 0.5),
                     gaze=(_u(g, -config.gaze, config.gaze),
                           _u(g, -config.gaze / 3.0, config.gaze / 3.0)),
                     teeth=_u(g, 0.35, 0.55))


def _axes(points: np.ndarray, a: int, b: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(u (2,) unit vector from point a to b turned to point image-right, v (2,) u turned 90 deg
    to point image-down, |b - a|) of landmark pair a, b."""
    d = points[b] - points[a]
    length = float(np.hypot(*d))
    u = d / max(length, 1e-9)
    if u[0] < 0:
        u = -u
    return u, np.array([-u[1], u[0]]), length


def _polygon_mask(polygon: np.ndarray, size: int, grow_px: float) -> torch.Tensor:
    """(size, size) bool: pixels whose centre lies in the convex hull of `polygon` (M, 2),
    grown by about `grow_px` px."""
    from PIL import Image, ImageDraw, ImageFilter

    from mfface.masks import _hull

    hull = _hull(np.asarray(polygon, dtype=np.float64))
    image = Image.new("L", (size, size), 0)
    if hull:
        ImageDraw.Draw(image).polygon(hull, fill=255)
        width = 2 * int(round(grow_px)) + 1
        if width > 1:
            image = image.filter(ImageFilter.MaxFilter(width))
    return torch.from_numpy(np.asarray(image) > 127)


def iris_landmarks(points: np.ndarray, camera_vertices: torch.Tensor, index: np.ndarray,
                   focal: float, euler: torch.Tensor, gaze: tuple[float, float]) -> dict[str, np.ndarray]:
    """The five MediaPipe iris points (centre, image-right, top, image-left, bottom) of each eye:
    {'right_eye': (5, 2), 'left_eye': (5, 2)} px. The centre is the eye contour's centre (as
    `_fill_uncovered` places it) moved by `gaze` (fractions of the eye's width along and across
    it); the others lie an iris radius (IRIS_RADIUS_MM at the eye's depth, foreshortened by
    cos(yaw) along the eye and cos(pitch) across it) away along the eye's axes."""
    regions = _mediapipe_contours()
    yaw, pitch = float(euler[0, 0]), float(euler[0, 1])
    out = {}
    for eye, (a, b) in _EYE_CORNERS.items():
        ids = regions[eye]
        centre = points[ids].mean(0)
        u, v, width = _axes(points, a, b)
        covered = index[ids][index[ids] >= 0]
        depth = float(camera_vertices[covered, 2].mean()) if len(covered) else 1000.0
        radius = IRIS_RADIUS_MM * focal / max(depth, 1e-6)
        ru, rv = radius * abs(math.cos(yaw)), radius * abs(math.cos(pitch))
        c = centre + gaze[0] * width * u + gaze[1] * width * v
        out[eye] = np.stack([c, c + ru * u, c - rv * v, c - ru * u, c + rv * v])
    return out


def paint_openings(layer: torch.Tensor, coverage: torch.Tensor, points: np.ndarray,
                   irises: dict[str, np.ndarray], look: _Openings, light_level: float) -> torch.Tensor:
    """`layer` (S, S, 3) linear (what shows where the face does not cover) with eyes and the
    mouth's inside painted into the mesh's openings: pixels inside the (1.5 px grown) hull of an
    eye contour or of the inner lips that the face does not fully cover. Eyes: sclera, darker
    towards the upper lid, an iris ellipse (`irises`) with a darker rim and a pupil; mouth: a
    band of upper teeth over a dark interior. Albedos times `light_level` (the light's exposure)."""
    size = layer.shape[0]
    regions = _mediapipe_contours()
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    open_ = coverage < 0.999
    out = layer.clone()
    for eye, (a, b) in _EYE_CORNERS.items():
        region = _polygon_mask(points[regions[eye]], size, 1.5) & open_
        if not bool(region.any()):
            continue
        iris = irises[eye]
        u, v, _ = _axes(points, a, b)
        du = (xx - float(iris[0, 0])) * float(u[0]) + (yy - float(iris[0, 1])) * float(u[1])
        dv = (xx - float(iris[0, 0])) * float(v[0]) + (yy - float(iris[0, 1])) * float(v[1])
        ru = max(float(np.hypot(*(iris[1] - iris[0]))), 0.5)
        rv = max(float(np.hypot(*(iris[4] - iris[0]))), 0.5)
        r = torch.sqrt((du / ru) ** 2 + (dv / rv) ** 2)  # 1 on the iris's edge
        edge = ((1.0 - r) * min(ru, rv) + 0.5).clamp(0.0, 1.0)  # ~1 px soft edge
        pupil = ((look.pupil - r) * min(ru, rv) + 0.5).clamp(0.0, 1.0)
        sclera_shade = (0.7 + 0.3 * ((dv / (2.0 * rv)) + 0.5).clamp(0.0, 1.0))[..., None]
        sclera = look.sclera * torch.tensor([1.0, 0.95, 0.9]) * sclera_shade
        iris_colour = look.iris * (0.6 + 0.4 * (1.0 - r.clamp(0.0, 1.0)) ** 0.5)[..., None]
        eye_colour = sclera + edge[..., None] * (iris_colour - sclera)
        eye_colour = eye_colour + pupil[..., None] * (0.01 - eye_colour)
        out = torch.where(region[..., None], light_level * eye_colour, out)
    inner = min((regions["lips_a"], regions["lips_b"]),
                key=lambda ids: float(np.ptp(points[ids], axis=0).prod()))
    mouth = _polygon_mask(points[inner], size, 1.5) & open_
    if bool(mouth.any()):
        u, v, _ = _axes(points, *_MOUTH_CORNERS)
        across = (xx * float(v[0]) + yy * float(v[1]))[mouth]
        top, height = float(across.min()), float(across.max() - across.min())
        t = ((xx * float(v[0]) + yy * float(v[1])) - top) / max(height, 1.0)
        teeth = ((0.35 - t) * max(height, 1.0) + 0.5).clamp(0.0, 1.0)[..., None] if height >= 3 else 0.0
        interior = torch.tensor([0.04, 0.015, 0.012])
        colour = interior + teeth * (look.teeth * torch.tensor([1.0, 0.93, 0.8]) - interior)
        out = torch.where(mouth[..., None], light_level * colour, out)
    return out


# -- the sample ----------------------------------------------------------------------------------

@dataclass
class SynthFace:
    """One synthetic training face (`synth_face`).

    image (S, S, 3) uint8, display-referred (linear ** (1/2.2), rounded), the crop a dataset
    stores; state the true FaceState (batch 1, textures at albedo.texture_size, principal point
    set) it was rendered from; landmarks (478, 2) float32 px, the model's mediapipe478 vertices
    projected exactly (iris points: `iris_landmarks`); coverage (S, S) rendered coverage;
    vertices (V, 3) camera-space mm; environment and background kinds; box (x0, y0, side) and
    source_size (w, h) of the virtual photo the crop was cut from (principal point =
    (w / 2 - x0, h / 2 - y0)); ita the skin tone's individual typology angle in degrees."""
    image: np.ndarray
    state: FaceState
    landmarks: np.ndarray
    coverage: torch.Tensor
    vertices: torch.Tensor
    environment: str
    background: str
    box: tuple[int, int, int]
    source_size: tuple[int, int]
    ita: float


def synth_face(model: MorphableModel, size: int, seed: int, index: int, *, spp: int = 64,
               config: SynthConfig | None = None, backgrounds: BackgroundPhotos | None = None,
               device: torch.device | str = "cpu") -> SynthFace:
    """Draw and render sample `index` of the synthetic dataset seeded `seed` (see SynthConfig
    for the ranges; every draw from `sample_generator(seed, index)`).

    Rendered at `spp` samples with FitConfig's render settings (direct light) and a sampler seed
    drawn from the same generator, over a background (`draw_background`), with the eye and mouth
    openings painted (`paint_openings`). Each call renders in a Mitsuba scene of its own: a scene
    that was updated from an earlier face traces a few rays differently (its BVH depends on the
    update history), so a shared scene would make a sample depend on the one rendered before it.
    Bit-identical results on the CPU also need Dr.Jit on one thread (`mfface.learning.synth`
    runs it so): with several, summation order varies with the thread schedule.
    """
    if size < 16:
        raise ValueError(f"size={size} px is too small for a face; use at least 16.")
    if "mediapipe478" not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no mediapipe478 landmarks; reinstall it with "
                         f"`mfface models install {model.name}`.")
    config = config or SynthConfig()
    config.check()
    fit_config = FitConfig()
    g = sample_generator(seed, index)
    render_seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=g))
    # geometry and camera
    identity = config.identity.scale * torch.randn(1, model.n_identity, generator=g)
    expression = draw_expression(g, model, config.expression)
    pose = config.pose
    euler = torch.tensor([[math.radians(_u(g, -m, m))
                           for m in (pose.max_yaw, pose.max_pitch, pose.max_roll)]])
    cam = config.camera
    focal = size / cam.reference_size * _log_uniform(g, cam.focal_min, cam.focal_max)
    principal, box, source_size = _photo_frame(g, size, cam.principal_offset)
    fill = _u(g, cam.fill_min, cam.fill_max)
    centre = size / 2.0 + _uniform(g, -cam.centre_jitter, cam.centre_jitter, (2,)) * size
    index_mp = torch.as_tensor(model.landmarks["mediapipe478"], dtype=torch.long)
    model_space = model.vertices(identity, expression)[0]
    translation = _distance_for_fill(model_space[index_mp[index_mp >= 0]], euler, focal,
                                     centre - principal, size * fill)
    # appearance
    albedo = draw_albedo(g, model, config.albedo)
    tex = config.albedo.texture_size
    mat = config.material
    specular = torch.full((1, tex, tex, 3), _u(g, mat.specular_min, mat.specular_max))
    roughness = torch.full((1, tex, tex, 1), _u(g, mat.roughness_min, mat.roughness_max))
    sh, environment, light_level = draw_light(g, config.light, fit_config.light.sh_bands)
    layer, background = draw_background(g, size, config.background, backgrounds)
    look = draw_openings(g, config.face)
    state = FaceState(identity=identity, expression=expression, euler=euler, translation=translation,
                      focal=torch.tensor([focal]), sh=sh, diffuse=albedo.texture, specular=specular,
                      roughness=roughness, albedo=albedo.coefficients,
                      principal=principal[None].clone()).to(device)
    forward = ForwardModel(model, device)  # a scene of its own: see the docstring
    with torch.no_grad():
        out = forward(state, RenderSettings.from_config(fit_config, size, spp, render_seed),
                      index_mp.clamp_min(0).to(device))
    image, coverage = out.image[0].cpu(), out.coverage[0].cpu()
    vertices = out.vertices[0].cpu()
    points = _fill_uncovered(out.landmarks[0].cpu(), index_mp).double().numpy()
    irises = iris_landmarks(points, vertices, index_mp.numpy(), focal, euler, look.gaze)
    points[468:473], points[473:478] = irises["right_eye"], irises["left_eye"]
    if config.face.openings:
        layer = paint_openings(layer, coverage, points, irises, look, light_level)
    linear = image + (1.0 - coverage)[..., None] * layer
    display = linear.clamp(0.0, 1.0) ** (1.0 / GAMMA)
    pixels = (display * 255.0).round().to(torch.uint8).numpy()
    return SynthFace(image=pixels, state=state, landmarks=points.astype(np.float32), coverage=coverage,
                     vertices=vertices, environment=environment, background=background, box=box,
                     source_size=source_size, ita=albedo.ita)
