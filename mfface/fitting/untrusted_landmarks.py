"""Landmarks that cannot be trusted to shape a face: detect them after stage 1, say so, and fall back
to stronger shape priors.

MediaPipe always returns all its points: on a face cut by the photo's border, turned beyond
profile, or partly covered, many of them are its prior's guesses, and a shape fitted to them is a
confident wrong one. After stage 1 each photo is checked for
- points outside the photo (more than `BORDER_FRACTION` of them): the face is cut by the border;
- a head turned more than `PROFILE_DEG` of yaw: the far side's points are hidden;
- a landmark residual (RMS, px) above `RESIDUAL_EYES` of the outer-eye-corner distance: the points
  do not describe one face of the model (an occluder, a wrong detection).
When a photo has a problem, stage 1 runs again and the later stages run with the identity prior
multiplied by `landmarks.unreliable_prior_scale`, so the shape stays near the mean face, and the
problem goes to the summary and to `params.json` (`fit.landmark_warnings`).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from mfface.config import FitConfig
from mfface.state import FaceState

BORDER_FRACTION = 0.02
PROFILE_DEG = 70.0
RESIDUAL_EYES = 0.1
_EYE_CORNERS = {"mediapipe478": (33, 263), "ibug68": (36, 45)}


def landmark_problems(photo_size: tuple[int, int], landmarks: np.ndarray, crop_landmarks: np.ndarray,
                      scheme: str, yaw_rad: float, rms_px: float) -> list[str]:
    """The problems (module docstring) of one photo's landmarks, as sentences; [] when none.

    photo_size (width, height) px; landmarks (N, 2) in photo px; crop_landmarks (N, 2) in the
    crop's px (where stage 1's `rms_px` was measured); yaw_rad stage 1's yaw.
    """
    problems = []
    width, height = photo_size
    outside = ((landmarks[:, 0] < 0) | (landmarks[:, 0] > width) |
               (landmarks[:, 1] < 0) | (landmarks[:, 1] > height)).mean()
    if outside > BORDER_FRACTION:
        problems.append(f"the face is cut by the photo's border ({outside:.0%} of the landmarks lie outside it)")
    yaw = abs(math.degrees(yaw_rad))
    if yaw > PROFILE_DEG:
        problems.append(f"the head is turned {yaw:.0f} degrees (beyond {PROFILE_DEG:.0f}): the far side's "
                        "landmarks are the detector's guesses")
    a, b = _EYE_CORNERS[scheme]
    eyes = float(np.linalg.norm(crop_landmarks[a] - crop_landmarks[b]))
    if eyes > 0 and rms_px > RESIDUAL_EYES * eyes:
        problems.append(f"the landmarks do not fit one face ({rms_px:.1f} px RMS, {rms_px / eyes:.0%} of the "
                        "eye-corner distance): an occluder or a wrong detection")
    return problems


def with_stronger_priors(config: FitConfig) -> FitConfig:
    """`config` with the identity prior of every stage multiplied by
    `landmarks.unreliable_prior_scale`."""
    scale = config.landmarks.unreliable_prior_scale
    return dataclasses.replace(
        config,
        stage1=dataclasses.replace(config.stage1, identity_prior=config.stage1.identity_prior * scale),
        stage2=dataclasses.replace(config.stage2, identity_prior=config.stage2.identity_prior * scale))


def photo_problems(images: list, state: FaceState, rms_px: list[float]) -> list[list[str]]:
    """`landmark_problems` of each prepared photo (mfface.fitting.pipeline.PreparedImage) after
    stage 1 (`state`, `rms_px` per photo)."""
    return [landmark_problems((int(im.photo.shape[1]), int(im.photo.shape[0])), np.asarray(im.landmarks),
                              np.asarray(im.crop_landmarks), im.scheme, float(state.euler[b, 0]), rms_px[b])
            for b, im in enumerate(images)]
