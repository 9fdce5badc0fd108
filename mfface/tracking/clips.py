"""Test and benchmark clips: a rendered face with known per-frame truth, and a photo in motion.

`synthetic_clip` drives the morphable model with smooth random head motion and smooth random
expression curves (a chosen set of ARKit blendshapes, each a clipped sum of two slow sinusoids,
the others 0) and renders every frame through the fit's forward model, with `mfface.synthetic`'s
painted skin, procedural light and painted eyes and mouth interior, over a grey gradient, so that
MediaPipe finds the face as in a real video. The truth is each frame's FaceState parameters.

`affine_clip` moves a real photo by a small smooth similarity motion (shift, rotation, zoom): a
clip of a real face without ground truth, for jitter, detection and robustness.

Both return uint8 frames (T, H, W, 3) and are deterministic per seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mfface.config import FitConfig
from mfface.forward import ForwardModel, RenderSettings
from mfface.morphable.model import MorphableModel
from mfface.state import FaceState
from mfface.synthetic import (GAMMA, background, draw_albedo, draw_light, draw_openings, iris_landmarks,
                              paint_openings)
from mfface.synthetic_config import AlbedoVariation, FaceDetailVariation, LightVariation

# ARKit blendshapes (ICT names) a phone-recorded actor uses most and landmarks can see.
DEFAULT_ACTIVE = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "browInnerUp_L",
                  "browInnerUp_R", "mouthPucker", "browDown_L", "browDown_R", "mouthFunnel", "eyeWide_L",
                  "eyeWide_R", "mouthStretch_L", "mouthStretch_R")


@dataclass
class SyntheticClip:
    """Frames (T, S, S, 3) uint8 and the truth: euler (T, 3) rad, translation (T, 3) mm,
    expression (T, K), identity (1, K_id), focal px, `active` (indices of the driven shapes),
    landmarks (T, 478, 2) px (projected model vertices), fps."""
    frames: np.ndarray
    euler: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    identity: torch.Tensor
    focal: float
    active: list[int]
    landmarks: np.ndarray
    fps: float


def smooth_curve(rng: np.random.Generator, frames: int, fps: float, low_hz: float = 0.15,
                 high_hz: float = 0.7) -> np.ndarray:
    """(frames,) sum of two sinusoids of random frequency in [low_hz, high_hz], phase and weight,
    scaled to [-1, 1] at most."""
    t = np.arange(frames) / fps
    freq = rng.uniform(low_hz, high_hz, 2)
    phase = rng.uniform(0, 2 * math.pi, 2)
    weight = rng.dirichlet([1.0, 1.0])
    return (weight[:, None] * np.sin(2 * math.pi * freq[:, None] * t + phase[:, None])).sum(0)


def clip_truth(model: MorphableModel, frames: int, fps: float, seed: int, active: tuple[str, ...] = DEFAULT_ACTIVE,
               max_yaw: float = 25.0, max_pitch: float = 12.0, max_roll: float = 8.0,
               peak: float = 0.9) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(euler (T, 3) rad, expression (T, K), active indices): smooth head angles within the given
    degrees and expression curves max(0, peak * curve) for the `active` shapes the model has
    (each is 0 about half of the time, as real curves rest at 0)."""
    rng = np.random.default_rng(seed)
    euler = np.stack([math.radians(m) * smooth_curve(rng, frames, fps) for m in (max_yaw, max_pitch, max_roll)], 1)
    names = list(model.expression_names)
    chosen = [names.index(n) for n in active if n in names]
    expression = np.zeros((frames, model.n_expression))
    for k in chosen:
        expression[:, k] = np.clip(peak * smooth_curve(rng, frames, fps), 0.0, 1.0)
    if model.expression_range is not None:
        expression = np.clip(expression, *model.expression_range)
    return euler, expression, chosen


def synthetic_clip(model: MorphableModel, frames: int, size: int, seed: int = 0, fps: float = 30.0,
                   spp: int = 16, focal_ratio: float = 2.0, distance_mm: float = 600.0,
                   active: tuple[str, ...] = DEFAULT_ACTIVE, max_yaw: float = 25.0, max_pitch: float = 12.0,
                   max_roll: float = 8.0, identity_scale: float = 0.7, forward: ForwardModel | None = None,
                   device: torch.device | str = "cpu") -> SyntheticClip:
    """Render a `frames`-frame clip of `size` px square at `fps` (see the module docstring).

    The camera has focal `focal_ratio` x size px at the frame's centre; the head is `distance_mm`
    away (plus a slow drift of +-15 mm laterally and +-40 mm in depth), so the face's landmarks span
    about half the frame at the default distance. Light, skin and eyes are drawn once per clip."""
    g = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed + 1)
    euler, expression, chosen = clip_truth(model, frames, fps, seed, active, max_yaw, max_pitch, max_roll)
    drift = np.stack([15.0 * smooth_curve(rng, frames, fps, 0.05, 0.3), 15.0 * smooth_curve(rng, frames, fps, 0.05, 0.3),
                      distance_mm + 40.0 * smooth_curve(rng, frames, fps, 0.05, 0.3)], 1)
    identity = torch.zeros(1, model.n_identity)
    k = min(40, model.n_identity)
    identity[0, :k] = identity_scale * torch.randn(k, generator=g)
    albedo = draw_albedo(g, model, AlbedoVariation(texture_size=128))
    sh, _, light_level = draw_light(g, LightVariation(environments="overcast,window,studio,indoor", tilt=0.0))
    look = draw_openings(g, FaceDetailVariation(gaze=0.05))
    backdrop = background(g, size)
    config = FitConfig()
    forward = forward or ForwardModel(model, device)
    index = torch.as_tensor(model.landmarks["mediapipe478"], dtype=torch.long)
    focal = focal_ratio * size
    base = FaceState(identity=identity, expression=torch.zeros(1, model.n_expression), euler=torch.zeros(1, 3),
                     translation=torch.zeros(1, 3), focal=torch.tensor([focal]), sh=sh, diffuse=albedo.texture,
                     specular=torch.full((1, 128, 128, 3), 0.04), roughness=torch.full((1, 128, 128, 1), 0.4),
                     albedo=albedo.coefficients).to(device)
    images, points_all = [], []
    for t in range(frames):
        state = FaceState(**{**base.__dict__, "euler": torch.tensor(euler[t:t + 1], dtype=torch.float32),
                             "translation": torch.tensor(drift[t:t + 1], dtype=torch.float32),
                             "expression": torch.tensor(expression[t:t + 1], dtype=torch.float32)}).to(device)
        with torch.no_grad():
            out = forward(state, RenderSettings.from_config(config, size, spp, seed * 100_003 + t),
                          index.clamp_min(0).to(device))
        image, coverage = out.image[0].cpu(), out.coverage[0].cpu()
        points = out.landmarks[0].cpu().double().numpy()
        irises = iris_landmarks(points, out.vertices[0].cpu(), index.numpy(), focal, state.euler.cpu(), look.gaze)
        points[468:473], points[473:478] = irises["right_eye"], irises["left_eye"]
        layer = paint_openings(backdrop, coverage, points, irises, look, light_level)
        linear = image + (1.0 - coverage)[..., None] * layer
        images.append((linear.clamp(0, 1) ** (1.0 / GAMMA) * 255.0).round().to(torch.uint8).numpy())
        points_all.append(points)
    return SyntheticClip(np.stack(images), euler, drift, expression, identity, focal, chosen,
                         np.stack(points_all), fps)


def affine_clip(photo: np.ndarray, frames: int, size: tuple[int, int] | None = None, seed: int = 0,
                fps: float = 30.0, shift: float = 0.04, angle: float = 6.0, zoom: float = 0.05) -> np.ndarray:
    """(T, H, W, 3) uint8: `photo` (uint8 (h, w, 3)) moved by a smooth random similarity per frame:
    shift up to `shift` x the frame's size, rotation up to `angle` degrees and zoom up to
    +-`zoom` about the centre (bilinear, black outside), in a frame of `size` (w, h; default the
    photo's)."""
    rng = np.random.default_rng(seed)
    source = Image.fromarray(photo)
    w, h = size or source.size
    if (w, h) != source.size:
        fitted = source.copy()
        fitted.thumbnail((w, h), Image.LANCZOS)
        canvas = Image.new("RGB", (w, h))
        canvas.paste(fitted, ((w - fitted.width) // 2, (h - fitted.height) // 2))
        source = canvas
    curves = [smooth_curve(rng, frames, fps, 0.1, 0.5) for _ in range(4)]
    out = []
    for t in range(frames):
        a = math.radians(angle * curves[0][t])
        s = 1.0 + zoom * curves[1][t]
        dx, dy = shift * w * curves[2][t], shift * h * curves[3][t]
        # PIL's affine maps output (x, y) to input: the inverse of x' = s R (x - c) + c + d.
        cos, sin = math.cos(a) / s, math.sin(a) / s
        cx, cy = w / 2.0, h / 2.0
        ox, oy = cx + dx, cy + dy
        coefficients = (cos, sin, cx - cos * ox - sin * oy, -sin, cos, cy + sin * ox - cos * oy)
        out.append(np.asarray(source.transform((w, h), Image.AFFINE, coefficients, Image.BILINEAR)))
    return np.stack(out)


def rotation_error_deg(euler: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angle (T,) in degrees of the rotation between the head rotations R_head(euler) and
    R_head(truth) of each frame (euler (T, 3) rad): the geodesic distance on SO(3)."""
    from mfface.camera import head_rotation

    a = head_rotation(torch.as_tensor(np.asarray(euler), dtype=torch.float64))
    b = head_rotation(torch.as_tensor(np.asarray(truth), dtype=torch.float64))
    cos = ((a.transpose(-1, -2) @ b).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos.numpy(), -1.0, 1.0)))


def write_frames(folder, frames: np.ndarray, pattern: str = "frame_{:04d}.png", start: int = 1) -> list:
    """Write uint8 frames as numbered PNGs into `folder` (created); returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / pattern.format(start + i)
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths


def write_video(path, frames: np.ndarray, fps: float = 30.0) -> None:
    """Write uint8 frames as an H.264 MP4 (all at once; `mfface.replay.write_mp4`)."""
    from mfface.replay import write_mp4

    write_mp4(path, frames, fps)
