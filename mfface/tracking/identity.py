"""The identity of a video: the shape and camera from many chosen frames, the maps from a few.

The chosen frames (`mfface.tracking.select.choose_frames`, best first) are cropped like photos
(`prepare_photo`, one crop size for all) and fitted in two passes of the fit's shared-identity
mode (`Reconstructor.fit(..., shared_identity=True)`):
- the shape: stage 1 (landmarks only) on all of them (`select.shape_frames`), one identity and
  per-frame pose, expression and focal. The detector's errors differ from frame to frame, so more
  frames give a better shape and focal length, and stage 1 costs seconds, not minutes;
- the appearance: stages 1-3 on the best `select.frames` of them with that identity fixed: the
  reflectance maps and per-frame light (skipped when `select.last_stage` is 1).
What the tracker keeps:
- the identity coefficients (fixed while tracking);
- the focal length in video px: each frame's fitted focal (crop px) divided by its crop scale,
  median over the shape pass's frames (a video has one camera);
- an appearance for renders: the shared maps and the mean of the frames' SH light.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from mfface.fitting.pipeline import FitResult, PreparedImage, ProgressCallback, Reconstructor, prepare_photo
from mfface.state import FaceState
from mfface.tracking.config import TrackConfig


def frame_name(index: int) -> str:
    """The name of frame `index` in outputs (its identity result folder): frame_000123."""
    return f"frame_{index:06d}"


@dataclass
class VideoIdentity:
    """The identity fit of a video: the fit's result (the appearance pass, or the shape pass when
    there is none), the frames it used, the frames the shape came from, the focal length in video
    px and `appearance`, a batch-1 FaceState with the identity, maps and mean light (its pose,
    expression and camera are placeholders that `frame_state` replaces)."""
    result: FitResult
    frames: list[int]
    shape_frames: list[int]
    focal_px: float
    appearance: FaceState


def prepare_frames(images: dict[int, np.ndarray], landmarks: dict[int, np.ndarray],
                   config: TrackConfig) -> list[PreparedImage]:
    """Crops of the chosen frames ({frame index: uint8 image} and {frame index: (N, 2) px}), all of
    one size, as the fit takes them, named `frame_name(index)`. The frames stay uint8 and shared
    with `images` (a float copy of 16 4K frames would hold 1.6 GB)."""
    fit_config = config.fit_config()

    def prepared(size: int | None) -> list[PreparedImage]:
        return [prepare_photo(torch.from_numpy(images[i]), landmarks[i], "mediapipe478",
                              fit_config, frame_name(i), size=size) for i in sorted(images)]
    crops = prepared(None)
    sizes = {im.target.shape[0] for im in crops}
    return crops if len(sizes) == 1 else prepared(min(sizes))


def fit_identity(reconstructor: Reconstructor, images: dict[int, np.ndarray], landmarks: dict[int, np.ndarray],
                 chosen: list[int], config: TrackConfig, on_step: ProgressCallback | None = None) -> VideoIdentity:
    """Fit the identity from the chosen frames (`chosen`, best first; their uint8 (H, W, 3) images
    {frame index: image} and landmarks {frame index: (N, 2) px}): the shape pass on all of them,
    the appearance pass on the first `select.frames` (see the module docstring). `on_step` gets the
    stages of the two passes as 'shape stage1', 'maps stage1', 'maps stage2', ..."""
    def labelled(name: str) -> ProgressCallback | None:
        return None if on_step is None else (lambda stage, i, n, losses: on_step(f"{name} {stage}", i, n, losses))
    shape_prepared = prepare_frames(images, landmarks, config)
    shape = reconstructor.fit(shape_prepared, shared_identity=True, skip_stages=(2, 3), on_step=labelled("shape"))
    focal = [float(shape.state.focal[b]) / im.to_crop.scale for b, im in enumerate(shape_prepared)]
    result, frames = shape, sorted(images)
    if config.select.last_stage > 1:
        frames = sorted(chosen[:config.select.frames])
        skip = tuple(s for s in (2, 3) if s > config.select.last_stage)
        result = reconstructor.fit(prepare_frames({i: images[i] for i in frames}, landmarks, config),
                                   shared_identity=True, skip_stages=skip, on_step=labelled("maps"),
                                   identity=shape.state.identity[:1])
    state = result.state
    appearance = dataclasses.replace(
        state.item(0), sh=state.sh.mean(0, keepdim=True), principal=None,
        expression=torch.zeros_like(state.expression[:1]))
    return VideoIdentity(result, frames, sorted(images), float(np.median(focal)), appearance.detached())


def frame_state(appearance: FaceState, euler: np.ndarray, translation: np.ndarray, expression: np.ndarray,
                focal: float, principal: tuple[float, float], sh: torch.Tensor | None = None) -> FaceState:
    """A batch-1 FaceState of one frame: `appearance`'s identity, maps and light (or `sh` (1, n, 3)),
    with the frame's pose (euler (3,) rad, translation (3,) mm), expression (K,), and a camera of
    focal `focal` px and principal point `principal` px (of the image it is rendered into)."""
    device = appearance.identity.device

    def row(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device).reshape(1, -1)
    return dataclasses.replace(appearance, euler=row(euler), translation=row(translation),
                               expression=row(expression), focal=torch.tensor([float(focal)], device=device),
                               principal=torch.tensor([list(principal)], dtype=torch.float32, device=device),
                               sh=appearance.sh if sh is None else sh)


def crop_camera(focal: float, width: int, height: int, box: tuple[float, float, float], size: int
                ) -> tuple[float, tuple[float, float]]:
    """(focal, principal point) in px of a `size` px render of the square `box` (x0, y0, side) of
    a width x height frame whose camera has `focal` px and its principal point at the centre."""
    x0, y0, side = box
    k = size / side
    return focal * k, ((width / 2.0 - x0) * k, (height / 2.0 - y0) * k)
