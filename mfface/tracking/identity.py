"""The identity of a video: the fit's shared-identity mode on a few chosen frames, and the camera.

The chosen frames (`mfface.tracking.select.choose_frames`) are cropped like photos
(`prepare_photo`, one crop size for all) and fitted together by `Reconstructor.fit(...,
shared_identity=True)`: one identity and one set of reflectance maps, per-frame pose, expression,
focal and light. What the tracker keeps from it:
- the identity coefficients (fixed while tracking);
- the focal length in video px: each frame's fitted focal (crop px) divided by its crop scale,
  median over the frames (a video has one camera);
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
    """The identity fit of a video: the fit's result, the frames it used, the focal length in
    video px and `appearance`, a batch-1 FaceState with the identity, maps and mean light (its
    pose, expression and camera are placeholders that `frame_state` replaces)."""
    result: FitResult
    frames: list[int]
    focal_px: float
    appearance: FaceState


def prepare_frames(images: dict[int, np.ndarray], landmarks: dict[int, np.ndarray],
                   config: TrackConfig) -> list[PreparedImage]:
    """Crops of the chosen frames ({frame index: uint8 image} and {frame index: (N, 2) px}), all of
    one size, as the fit takes them, named `frame_name(index)`."""
    fit_config = config.fit_config()

    def prepared(size: int | None) -> list[PreparedImage]:
        return [prepare_photo(torch.from_numpy(images[i]).float() / 255.0, landmarks[i], "mediapipe478",
                              fit_config, frame_name(i), size=size) for i in sorted(images)]
    crops = prepared(None)
    sizes = {im.target.shape[0] for im in crops}
    return crops if len(sizes) == 1 else prepared(min(sizes))


def fit_identity(reconstructor: Reconstructor, images: dict[int, np.ndarray], landmarks: dict[int, np.ndarray],
                 config: TrackConfig, on_step: ProgressCallback | None = None) -> VideoIdentity:
    """Fit the identity from the chosen frames ({frame index: uint8 (H, W, 3)} and their landmarks
    {frame index: (N, 2) px})."""
    prepared = prepare_frames(images, landmarks, config)
    skip = tuple(s for s in (2, 3) if s > config.select.last_stage)
    result = reconstructor.fit(prepared, shared_identity=True, skip_stages=skip, on_step=on_step)
    state = result.state
    focal = [float(state.focal[b]) / im.to_crop.scale for b, im in enumerate(prepared)]
    appearance = dataclasses.replace(
        state.item(0), sh=state.sh.mean(0, keepdim=True), principal=None,
        expression=torch.zeros_like(state.expression[:1]))
    return VideoIdentity(result, sorted(images), float(np.median(focal)), appearance.detached())


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
