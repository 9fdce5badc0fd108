"""Which frames the identity is fitted from: sharp, frontal and varied.

- Sharpness (`sharpness`): the variance of the Laplacian of the face's grey crop resampled to
  SHARPNESS_PX square (so it does not grow with the face's size in pixels); motion blur and
  defocus lower it.
- Frontal: a rough head pose per candidate frame from a PnP solve of the model's mean-face
  landmark vertices (focal guessed as 1.5 x the frame's longer side, which changes the angles
  little); frames with |yaw| and |pitch| up to `max_angle` are preferred.
- Varied: the frames are picked greedily, each one maximising quality x its distance to the frames
  already picked, where quality = sharpness / the candidates' median (at most 2), and distance is
  the RMS difference of the landmarks after a similarity alignment (so different expressions and
  head turns count, position and size in the frame do not), in units of the face's size.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from mfface.camera import solve_pnp
from mfface.landmarks import square_crop
from mfface.metrics import similarity_transform
from mfface.morphable.model import MorphableModel
from mfface.tracking.config import SelectConfig

SHARPNESS_PX = 128


def sharpness(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey face box (landmarks' box, square)
    resampled to SHARPNESS_PX, in (0..255 grey levels)^2."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    side = float((hi - lo).max())
    centre = (lo + hi) / 2.0
    crop = square_crop(Image.fromarray(image), centre[0] - side / 2, centre[1] - side / 2, side, SHARPNESS_PX)
    grey = crop.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    laplacian = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    return float(laplacian.var())


def rough_angles(model: MorphableModel, landmarks: np.ndarray, landmark_index: np.ndarray,
                 width: int, height: int) -> np.ndarray:
    """(yaw, pitch) in degrees of one frame's landmarks (N, 2) px from a PnP solve on the mean face."""
    covered = landmark_index >= 0
    points = model.mean_shape[landmark_index[covered]].astype(np.float64)
    found = solve_pnp(points, landmarks[covered], width, height, focal=1.5 * max(width, height))
    return np.degrees(found.euler[:2])


def _aligned(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks (N, 2) centred and scaled to unit RMS radius (the reference frame of `_distance`)."""
    centred = landmarks - landmarks.mean(0)
    return centred / np.sqrt((centred ** 2).sum(1).mean())


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance of normalised landmark sets after aligning a onto b by a similarity."""
    s, rotation, t = similarity_transform(a, b)
    return float(np.sqrt(((s * a @ rotation.T + t - b) ** 2).sum(1).mean()))


def choose_frames(model: MorphableModel, landmarks: np.ndarray, found: np.ndarray, sharp: np.ndarray,
                  landmark_index: np.ndarray, width: int, height: int, config: SelectConfig) -> list[int]:
    """Indices of the frames the identity is fitted from, max(config.frames, config.shape_frames)
    of them at most, in the order picked: the best first (see the module docstring).

    landmarks (T, N, 2) px, found (T,) bool, sharp (T,) `sharpness` of each frame with a face."""
    frames = np.flatnonzero(found)
    if not len(frames):
        raise ValueError("no frame has a face to fit the identity from.")
    if len(frames) > config.candidates:
        frames = frames[np.unique(np.linspace(0, len(frames) - 1, config.candidates).round().astype(int))]
    angles = np.array([rough_angles(model, landmarks[f], landmark_index, width, height) for f in frames])
    frontal = np.abs(angles).max(1) <= config.max_angle
    if frontal.any():
        frames, angles = frames[frontal], angles[frontal]
    quality = np.minimum(sharp[frames] / max(float(np.median(sharp[frames])), 1e-9), 2.0)
    quality = quality * np.cos(np.radians(np.minimum(np.abs(angles).max(1), 89.0)))  # prefer frontal
    shapes = [_aligned(landmarks[f]) for f in frames]
    chosen = [int(np.argmax(quality))]
    nearest = np.array([_distance(s, shapes[chosen[0]]) for s in shapes])
    while len(chosen) < min(max(config.frames, config.shape_frames), len(frames)):
        score = quality * nearest
        score[chosen] = -1.0
        pick = int(np.argmax(score))
        if score[pick] <= 0:  # the rest are copies of chosen frames
            break
        chosen.append(pick)
        nearest = np.minimum(nearest, [_distance(s, shapes[pick]) for s in shapes])
    return [int(frames[i]) for i in chosen]
