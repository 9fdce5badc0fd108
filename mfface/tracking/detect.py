"""MediaPipe landmarks on video frames: follow the face from the previous frame, search when lost.

`LandmarkDetector.detect` searches the whole frame (full-range detector over the frame and over
tiles, a confirming detector, then the face mesh on a crop), which is what a photo needs but more
than a video frame does once the face is known: `FaceFollower` runs the face mesh alone
(`detect_whole_image`) on a square crop around the previous frame's landmarks (`square_crop`,
side = `follow_margin` x the landmarks' box) and accepts the face found there when it is centred
in the crop and about as large as before; otherwise, and on the first frame, it falls back to the
whole-frame search. The time spent in MediaPipe is summed in `seconds` (reported separately from
the tracker's own time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mfface.landmarks import LandmarkCheckError, LandmarkDetector, NoFaceError, check_landmarks, square_crop

FOLLOW_CROP_PX = (192, 512)  # the follow crop is resampled into this range of sides
MAX_OFFSET = 0.25            # the found face's box centre within this fraction of the crop of its centre
SIZE_RATIO = (0.6, 1.6)      # and its box side within these factors of the previous frame's


@dataclass
class FollowStats:
    """How the frames' faces were found: `followed` from the previous frame's crop, `searched`
    with the whole-frame search, `missed` not at all; `seconds` in MediaPipe."""
    followed: int = 0
    searched: int = 0
    missed: int = 0
    seconds: float = 0.0


def _box_side(points: np.ndarray) -> float:
    return float((points.max(0) - points.min(0)).max())


class FaceFollower:
    """Landmarks (478, 2) px per video frame, following the face (see the module docstring).

    `find(image)` takes frames in order; `reset()` forgets the previous face (e.g. after frames
    that could not be read)."""

    def __init__(self, detector: LandmarkDetector, follow: bool = True, margin: float = 2.0) -> None:
        self.detector, self.follow, self.margin = detector, follow, margin
        self.previous: np.ndarray | None = None
        self.stats = FollowStats()

    def reset(self) -> None:
        self.previous = None

    def find(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks (478, 2) in `image`'s pixels (uint8 (H, W, 3) display RGB), or None."""
        started = time.perf_counter()
        try:
            points = None
            if self.follow and self.previous is not None:
                points = self._in_crop(image, self.previous)
                if points is not None:
                    self.stats.followed += 1
            if points is None:
                points = self._search(image)
                if points is not None:
                    self.stats.searched += 1
            if points is None:
                self.stats.missed += 1
            self.previous = points
            return points
        finally:
            self.stats.seconds += time.perf_counter() - started

    def _search(self, image: np.ndarray) -> np.ndarray | None:
        try:
            points = self.detector.detect(image)
            return check_landmarks(points, "mediapipe478", image.shape[:2])
        except (NoFaceError, LandmarkCheckError):
            return None

    def _in_crop(self, image: np.ndarray, previous: np.ndarray) -> np.ndarray | None:
        side = self.margin * _box_side(previous)
        cx, cy = (previous.min(0) + previous.max(0)) / 2.0
        x0, y0 = cx - side / 2.0, cy - side / 2.0
        out = int(np.clip(round(side), *FOLLOW_CROP_PX))
        crop = square_crop(Image.fromarray(image), x0, y0, side, out)
        try:
            found = self.detector.detect_whole_image(crop)
        except NoFaceError:
            return None
        centre = (found.min(0) + found.max(0)) / 2.0 / out
        ratio = _box_side(found) * side / out / max(_box_side(previous), 1e-6)
        if np.abs(centre - 0.5).max() > MAX_OFFSET or not SIZE_RATIO[0] <= ratio <= SIZE_RATIO[1]:
            return None
        points = found * (side / out) + (x0, y0)
        try:
            return check_landmarks(points, "mediapipe478", image.shape[:2])
        except LandmarkCheckError:
            return None
