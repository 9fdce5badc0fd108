"""2D face landmarks: MediaPipe face detection and face mesh, landmark files, sanity checks.

`LandmarkDetector.detect` finds faces with MediaPipe's full-range face detector over the whole
photo and over overlapping tiles, then runs the face mesh on a square crop around a face and maps
its points back to the photo's pixels (`square_crop` states the mapping). `check_landmarks`
refuses landmarks, detected or read from a file, that cannot describe a face in their image.

Coordinates are input-image pixels, (N, 2) float64, x to the right and y down, with the lead's
camera convention: the top-left corner of pixel (0, 0) is at (0, 0), so pixel i's centre is at
i + 0.5. MediaPipe returns coordinates normalised by the image size; we multiply them by
(width, height) and add nothing (for a crop: by its side, then add its top-left corner in the
photo). Checked on this machine: mirroring an image horizontally and pairing each of the 468 mesh
points with its mirror partner gives x + x_mirrored = 511.97 for the 512-px astronaut (150-px
takeo: 149.77), i.e. x' = W - x, the pixel-corner convention (a pixel-centre-at-i convention
would give W - 1). Upsampling an image by pixel repetition moves the points by +0.5 px per scale
step, so MediaPipe is not exactly scale-equivariant; the remaining half-pixel question is within
its own jitter (0.75 px std of the mirror sum per point).

Schemes: 'mediapipe478' (MediaPipe's face mesh with irises; 468 points = the same without
irises) and 'ibug68' (the 68 iBUG / Multi-PIE points, 0-based here).

iBUG `.pts` files are 1-based with pixel centres at integers (300-W's Matlab convention, also
menpo's reading), so `read_landmarks` subtracts 0.5 from them to reach the convention above; the
other formats are read as given, in that convention.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from mfface.atomic import write_text
from mfface.mirror import mirror_landmarks

if TYPE_CHECKING:
    from mfface.config import InputConfig

SCHEMES = ("mediapipe478", "ibug68")
PTS_OFFSET = 0.5  # px subtracted from 1-based, centre-at-integer .pts coordinates
_SCHEME_BY_COUNT = {478: "mediapipe478", 468: "mediapipe478", 68: "ibug68"}
# Smallest face (px, cheek to cheek) that LandmarkDetector.detect finds in photos of any size:
# the shared photos shrunk into a 4000x3000 scene were all found (32 of 32) down to 44 px, 31 of
# 32 at 40 px, 25 of 32 at 32 px (bench/detection.py, bench/RESULTS.md).
MIN_FACE_PX = 44

# MediaPipe face-mesh index(es) for each of the 68 iBUG points (0-based iBUG order); where two are
# given, the iBUG point is their midpoint. Correspondence after Peizhi Yan's table,
# https://github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks (the dlib 68 points are the iBUG 68).
# MediaPipe's face oval (FACEMESH_FACE_OVAL in mediapipe/python/solutions/face_mesh_connections.py),
# in order around the face: silhouette landmarks that slide over the face as the head turns.
MEDIAPIPE_FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

# The face-mesh edges of the eyes, brows and lips, as MediaPipe 0.10.21 defines them (FACEMESH_*
# in mediapipe/python/solutions/face_mesh_connections.py, Apache-2.0; tests/test_masks.py checks
# them against the installed package): the skin mask's holes need them, and a fit from a landmark
# file does not need MediaPipe otherwise.
MEDIAPIPE_LEFT_EYE: frozenset[tuple[int, int]] = frozenset({
    (249, 390), (263, 249), (263, 466), (373, 374), (374, 380), (380, 381), (381, 382), (382, 362),
    (384, 398), (385, 384), (386, 385), (387, 386), (388, 387), (390, 373), (398, 362), (466, 388),
})
MEDIAPIPE_RIGHT_EYE: frozenset[tuple[int, int]] = frozenset({
    (7, 163), (33, 7), (33, 246), (144, 145), (145, 153), (153, 154), (154, 155), (155, 133),
    (157, 173), (158, 157), (159, 158), (160, 159), (161, 160), (163, 144), (173, 133), (246, 161),
})
MEDIAPIPE_LEFT_EYEBROW: frozenset[tuple[int, int]] = frozenset({
    (276, 283), (282, 295), (283, 282), (293, 334), (295, 285), (296, 336), (300, 293), (334, 296),
})
MEDIAPIPE_RIGHT_EYEBROW: frozenset[tuple[int, int]] = frozenset({
    (46, 53), (52, 65), (53, 52), (63, 105), (65, 55), (66, 107), (70, 63), (105, 66),
})
MEDIAPIPE_LIPS: frozenset[tuple[int, int]] = frozenset({
    (0, 267), (13, 312), (14, 317), (17, 314), (37, 0), (39, 37), (40, 39), (61, 146), (61, 185),
    (78, 95), (78, 191), (80, 81), (81, 82), (82, 13), (84, 17), (87, 14), (88, 178), (91, 181),
    (95, 88), (146, 91), (178, 87), (181, 84), (185, 40), (191, 80), (267, 269), (269, 270),
    (270, 409), (310, 415), (311, 310), (312, 311), (314, 405), (317, 402), (318, 324), (321, 375),
    (324, 308), (375, 291), (402, 318), (405, 321), (409, 291), (415, 308),
})

MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw contour 0-16, from the subject's right (image left) to the left
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,),
    (400,), (379,), (365,), (397, 288), (361,), (323,), (454,), (356,),
    # right brow 17-21, left brow 22-26
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nostrils 31-35
    (168, 6), (197, 195), (5,), (4,), (75,), (97,), (2,), (326,), (305,),
    # right eye 36-41, left eye 42-47
    (33,), (160,), (158,), (133,), (153,), (144,),
    (362,), (385,), (387,), (263,), (373,), (380,),
    # outer lips 48-59, inner lips 60-67
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),
)


class NoFaceError(ValueError):
    """No face was found in an image."""


class LandmarkFileError(ValueError):
    """A landmark file cannot be read or has the wrong content."""


class LandmarkCheckError(LandmarkFileError):
    """Landmarks (read from a file or detected) that cannot describe a face in their image:
    too small or on a line, largely outside the image, or mirrored left/right. A subclass of
    LandmarkFileError, so callers that report bad landmark files report these too."""


def scheme_for_count(n: int) -> str:
    """The landmark scheme implied by a point count: 478/468 -> mediapipe478, 68 -> ibug68."""
    if n not in _SCHEME_BY_COUNT:
        raise LandmarkFileError(f"{n} landmarks match no known scheme; give 478 or 468 (MediaPipe) "
                                "or 68 (iBUG) points.")
    return _SCHEME_BY_COUNT[n]


def mediapipe_to_ibug68(points: np.ndarray) -> np.ndarray:
    """The 68 iBUG points (68, D) from MediaPipe points (468 or 478, D) via MEDIAPIPE_TO_IBUG68."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[0] not in (468, 478):
        raise ValueError(f"expected (468 or 478, D) MediaPipe points, got shape {points.shape}.")
    return np.stack([points[list(idx)].mean(axis=0) for idx in MEDIAPIPE_TO_IBUG68])


def _to_display_uint8(image: Any, gamma: float) -> np.ndarray:
    """(H, W, 3) uint8 display-encoded RGB for MediaPipe.

    uint8 arrays are taken as already display-encoded; float arrays or torch tensors are the
    library's linear RGB in [0, 1] and are encoded with 1/gamma.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}.")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    encoded = np.clip(image.astype(np.float64), 0.0, 1.0) ** (1.0 / gamma)
    return np.ascontiguousarray(np.round(encoded * 255.0).astype(np.uint8))


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration: MediaPipe's C++ side (TFLite, absl
    logging) writes INFO/WARNING lines straight to it that no Python or environment setting in
    0.10.21 turns off, and they would interleave with the progress display. Python exceptions
    are unaffected (they are printed after the descriptor is restored)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@dataclass(frozen=True)
class FaceBox:
    """A face found by MediaPipe's full-range face detector: its box in input-image pixels
    (pixel-corner convention, see the module docstring), the detector's score in [0, 1], and
    `confirm`, the short-range detector's score for the same face in a crop around it (0: not
    found there; None: not checked)."""
    x: float
    y: float
    width: float
    height: float
    score: float
    confirm: float | None = None

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.width / 2.0, self.y + self.height / 2.0

    def iou(self, other: "FaceBox") -> float:
        """Intersection over union of the two boxes."""
        ix = max(0.0, min(self.x + self.width, other.x + other.width) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.height, other.y + other.height) - max(self.y, other.y))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0


# Full-frame face detection (see LandmarkDetector). MediaPipe's full-range detector sees a 192 px
# letterbox of what it is given and finds faces down to about 1/18-1/25 of that window's longer
# side (measured with the shared photos shrunk into a 1024 px noise scene: 40-58 px). So the whole
# image is searched first, then square tiles of _TILE_MIN_PX * 2^k px (coarse to fine, each
# overlapping its neighbours by a quarter, so that a face up to a quarter of a tile wide, more
# than the coarser level misses, lies wholly inside one), which brings the limit down to about
# _TILE_MIN_PX / 18 px in photos of any size.
_TILE_MIN_PX = 512
_DETECT_INPUT_PX = 192   # detection windows are shrunk (antialiased) to the detector's input size
_CROP_MARGIN = 2.0       # face-mesh crop side / detector box side
_CROP_MIN_PX, _CROP_MAX_PX = 256, 1024  # face-mesh crops are resampled into this range of sides
MIRROR_MATCH = 0.1       # a mirror-image face within this median distance (x its box side) is the same face
_SAME_FACE_IOU = 0.3     # boxes from overlapping tiles that overlap more than this are one face
# Tiles of textured scenes give the full-range detector false faces (scores 0.6-0.7) in which the
# face mesh, whose own short-range detector accepts 0.5, then "finds" a face. In a crop where the
# face fills half the frame the short-range detector scores real faces 0.86-0.95 (the shared
# photos, shrunk to 36-56 px faces in a 4000 px scene) and those false faces at most 0.69, so
# faces it confirms at this score are preferred; unconfirmed ones are tried only when no
# confirmed face is found anywhere.
_CONFIRM_SCORE = 0.75


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of `tile` px every `stride` px, the last one flush with the end."""
    if tile >= length:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def detection_windows(width: int, height: int) -> list[list[tuple[int, int, int, int]]]:
    """Search levels for the full-frame detector, coarse to fine: each a list of windows
    (x, y, w, h) in pixels. Level 0 is the whole image; then square tiles of ..., 2048, 1024,
    512 px (each at most 2/3 of the image's longer side, and no larger than the image), every
    3/4 of a tile side, the last flush with the image's edge."""
    levels = [[(0, 0, width, height)]]
    sides = []
    side = _TILE_MIN_PX
    while side * 1.5 <= max(width, height):
        sides.append(side)
        side *= 2
    for side in reversed(sides):
        tw, th = min(side, width), min(side, height)
        stride = 3 * side // 4
        levels.append([(x, y, tw, th) for y in _tile_starts(height, th, stride)
                       for x in _tile_starts(width, tw, stride)])
    return levels


def _resampled(image: Image.Image, box: tuple[float, float, float, float],
               size: tuple[int, int]) -> np.ndarray:
    """The part `box` (x0, y0, x1, y1 in px, inside the image) of `image` resampled to `size`
    (w, h) with Pillow's antialiased bilinear filter, as a contiguous (h, w, 3) uint8 array.
    Output pixel j's centre samples box x0 + (j + 0.5) * (x1 - x0) / w: the pixel-corner convention."""
    return np.ascontiguousarray(np.asarray(image.resize(size, Image.BILINEAR, box=box)))


def square_crop(image: Image.Image, x0: float, y0: float, side: float, out: int) -> np.ndarray:
    """The square [x0, x0 + side) x [y0, y0 + side) of `image` (px, may extend past the image:
    black there) resampled to (out, out, 3) uint8. A point at crop pixel (u, v) (pixel-corner
    convention) is at (x0 + u * side / out, y0 + v * side / out) in the image."""
    s = out / side
    w, h = image.size
    canvas = np.zeros((out, out, 3), np.uint8)
    i0, i1 = max(0, math.ceil(-x0 * s - 1e-9)), min(out, math.floor((w - x0) * s + 1e-9))
    j0, j1 = max(0, math.ceil(-y0 * s - 1e-9)), min(out, math.floor((h - y0) * s + 1e-9))
    if i1 > i0 and j1 > j0:
        box = (min(max(x0 + i0 / s, 0.0), w), min(max(y0 + j0 / s, 0.0), h),
               min(max(x0 + i1 / s, 0.0), w), min(max(y0 + j1 / s, 0.0), h))
        canvas[j0:j1, i0:i1] = _resampled(image, box, (i1 - i0, j1 - j0))
    return canvas


@dataclass
class _FaceCrop:
    """A square crop around a detector box: (out, out, 3) pixels; crop (u, v) in [0, 1]
    normalised is image (x0 + u * side, y0 + v * side)."""
    pixels: np.ndarray
    x0: float
    y0: float
    side: float

    @classmethod
    def around(cls, pil: Image.Image, box: FaceBox) -> "_FaceCrop":
        side = _CROP_MARGIN * max(box.width, box.height)
        cx, cy = box.centre
        x0, y0 = cx - side / 2.0, cy - side / 2.0
        out = int(np.clip(round(side), _CROP_MIN_PX, _CROP_MAX_PX))
        return cls(square_crop(pil, x0, y0, side, out), x0, y0, side)


class LandmarkDetector:
    """MediaPipe face detection + face mesh (478 points with irises), kept alive across images.

    `detect` finds faces first with MediaPipe's full-range face detector, over the whole frame
    and then over overlapping tiles (`detection_windows`), so that faces down to about
    MIN_FACE_PX wide are found in photos of any size; it confirms each with the short-range
    detector on a square crop around it (twice the box, resampled to 256-1024 px), runs the face
    mesh on that crop and maps its points back to image pixels. Where no face is found that way
    the face mesh runs on the whole image (`detect_whole_image`, the face mesh alone). Creating
    the graphs costs time, so make one detector and call `detect` for every image; use it as a
    context manager or call `close()` to free it. MediaPipe's native log lines are silenced
    while it loads and runs.

    With `mirror_average` (the default), the face mesh also runs on the mirror image of each
    crop, and each face's points are averaged with those of the same face found there, flipped
    back and renumbered (`mfface.mirror`): the "flip test" of landmark detectors.
    MediaPipe's errors that change side with the image cancel, so the result is exactly
    mirror-equivariant. The mirror image goes to a second face-mesh graph in a worker thread,
    beside the first (MediaPipe releases the GIL), so the face mesh takes 1.35x its time per
    frame, not 2x, when a core is free. Measured in bench/RESULTS.md ("detection").
    """

    def __init__(self, max_num_faces: int = 4, min_detection_confidence: float = 0.5,
                 mirror_average: bool = True) -> None:
        self.max_num_faces = max_num_faces
        with _native_stderr_silenced():
            import mediapipe as mp

            def face_mesh() -> Any:
                return mp.solutions.face_mesh.FaceMesh(
                    static_image_mode=True, refine_landmarks=True, max_num_faces=max_num_faces,
                    min_detection_confidence=min_detection_confidence)
            self._mesh = face_mesh()
            # the mirror image's graph and the thread it runs in (see the class docstring)
            self._mirror_mesh = face_mesh() if mirror_average else None
            self._mirror_thread = ThreadPoolExecutor(1, "mediapipe-mirror") if mirror_average else None
            self._detector = mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=min_detection_confidence)
            self._confirmer = mp.solutions.face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=min_detection_confidence)
            # The graphs' calculators open (and log) in worker threads after the constructors
            # return; a first image waits for all of them, so their lines land here.
            blank = np.zeros((64, 64, 3), np.uint8)
            for graph in self._graphs():
                graph.process(blank)

    def _graphs(self) -> list[Any]:
        return [g for g in (self._mesh, self._mirror_mesh, self._detector, self._confirmer) if g is not None]

    @classmethod
    def from_config(cls, config: "InputConfig", max_num_faces: int | None = None) -> "LandmarkDetector":
        """A detector set up as a FitConfig's `input` section says (`max_faces`, `mirror_average`)."""
        return cls(max_num_faces or config.max_faces, mirror_average=config.mirror_average)

    def find_faces(self, image: Any, gamma: float = 2.2) -> list[FaceBox]:
        """The faces `detect` tries first, largest first, with their `confirm` scores: those
        confirmed at the coarsest search level that has any, or else every unconfirmed face
        found; [] when the detector finds none."""
        pil = Image.fromarray(_to_display_uint8(image, gamma))
        with _native_stderr_silenced():
            for boxes, _ in self._candidates(pil):
                return boxes
        return []

    def _candidates(self, pil: Image.Image) -> Iterator[tuple[list[FaceBox], list[_FaceCrop]]]:
        """Groups of detected faces (largest first, at most max_num_faces) with their crops, in
        the order `detect` tries them: the confirmed faces of each search level, coarse to fine,
        then all unconfirmed ones."""
        unconfirmed: list[tuple[FaceBox, _FaceCrop]] = []
        for level in detection_windows(pil.width, pil.height):
            confirmed: list[tuple[FaceBox, _FaceCrop]] = []
            for box in self._detect_in(pil, level):
                crop = _FaceCrop.around(pil, box)
                box = dataclasses.replace(box, confirm=self._confirm(crop))
                if box.confirm >= _CONFIRM_SCORE:
                    confirmed.append((box, crop))
                elif box.confirm > 0:
                    unconfirmed.append((box, crop))
            if confirmed:
                yield _top(confirmed, self.max_num_faces)
        if unconfirmed:
            unconfirmed.sort(key=lambda f: -f[0].width * f[0].height)
            yield _top(unconfirmed, self.max_num_faces)

    def _detect_in(self, pil: Image.Image, windows: list[tuple[int, int, int, int]]) -> list[FaceBox]:
        """Full-range detector boxes over `windows` (x, y, w, h), in image px, one per face
        (non-maximum suppression across overlapping windows), largest first."""
        found: list[FaceBox] = []
        for x, y, w, h in windows:
            k = min(1.0, _DETECT_INPUT_PX / max(w, h))
            size = (max(1, round(w * k)), max(1, round(h * k)))
            result = self._detector.process(_resampled(pil, (x, y, x + w, y + h), size))
            for d in result.detections or []:
                b = d.location_data.relative_bounding_box
                found.append(FaceBox(x + b.xmin * w, y + b.ymin * h, b.width * w, b.height * h,
                                     float(d.score[0])))
        kept: list[FaceBox] = []
        for box in sorted(found, key=lambda b: -b.score):
            if all(box.iou(k) <= _SAME_FACE_IOU for k in kept):
                kept.append(box)
        return sorted(kept, key=lambda b: -b.width * b.height)

    def _confirm(self, crop: _FaceCrop) -> float:
        """The short-range detector's best score for a face centred in the crop (0: none)."""
        best = 0.0
        for d in self._confirmer.process(crop.pixels).detections or []:
            b = d.location_data.relative_bounding_box
            if abs(b.xmin + b.width / 2 - 0.5) < 0.2 and abs(b.ymin + b.height / 2 - 0.5) < 0.2:
                best = max(best, float(d.score[0]))
        return best

    def _mesh_in(self, crop: _FaceCrop) -> np.ndarray | None:
        """Face-mesh landmarks (478, 2) in image px of the face centred in the crop, or None."""
        faces = self._mesh_faces(crop.pixels)
        if not faces:
            return None
        # The face this crop was made for is the one centred in it (normalised coordinates); a
        # neighbour's face cut by the crop's edge is not it.
        offsets = [np.abs((f.min(axis=0) + f.max(axis=0)) / 2.0 - 0.5).max() for f in faces]
        best = int(np.argmin(offsets))
        if offsets[best] > 0.25:
            return None
        return faces[best] * crop.side + (crop.x0, crop.y0)

    def detect(self, image: Any, gamma: float = 2.2, name: str = "the image") -> np.ndarray:
        """Landmarks (478, 2) in pixels of the largest face (by landmark bounding-box area).

        `image` is (H, W, 3): uint8 display RGB, or linear float RGB in [0, 1] (numpy or torch),
        encoded with 1/`gamma` before detection. Faces come from the full-range detector (see
        the class docstring), confirmed ones first, coarse search levels first; of the first
        group in which the face mesh finds any face, the largest is returned. Where none, the
        face mesh runs on the whole image. Raises NoFaceError when no face is found.
        """
        rgb = _to_display_uint8(image, gamma)
        pil = Image.fromarray(rgb)
        with _native_stderr_silenced():
            for _, crops in self._candidates(pil):
                found = [lm for lm in map(self._mesh_in, crops) if lm is not None]
                if found:
                    return _largest(found)
            found = self._mesh_whole(rgb)
        if not found:
            raise NoFaceError(_no_face_message(name))
        return _largest(found)

    def detect_whole_image(self, image: Any, gamma: float = 2.2, name: str = "the image") -> np.ndarray:
        """Landmarks (478, 2) of the largest face that the face mesh finds in the whole image,
        without the full-range detector (the face mesh's own detector sees a 128 px letterbox of
        the image, so only faces larger than about a sixth of the frame are found); the
        fallback of `detect`, and what `detect` did before it had the detector."""
        rgb = _to_display_uint8(image, gamma)
        with _native_stderr_silenced():
            found = self._mesh_whole(rgb)
        if not found:
            raise NoFaceError(_no_face_message(name))
        return _largest(found)

    def _mesh_whole(self, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        return [face * (w, h) for face in self._mesh_faces(rgb)]

    def _mesh_faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        """The face mesh's faces in `rgb`: (478, 2) each, normalised by the image's width and
        height; with `mirror_average`, each averaged with its partner in the mirror image."""
        if self._mirror_thread is None:
            return _normalised(self._mesh.process(rgb))
        mirror_job = self._mirror_thread.submit(self._mirror_mesh.process, np.ascontiguousarray(rgb[:, ::-1]))
        faces = _normalised(self._mesh.process(rgb))
        mirrored = [mirror_landmarks(f, 1.0) for f in _normalised(mirror_job.result())]
        return [_averaged_with_partner(face, mirrored) for face in faces]

    def detect_many(self, images: Iterable[Any], gamma: float = 2.2,
                    names: Sequence[str] | None = None) -> list[np.ndarray]:
        """`detect` for each image in turn with the same graphs; names appear in errors."""
        images = list(images)
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return [self.detect(img, gamma, name) for img, name in zip(images, names)]

    def close(self) -> None:
        """Release MediaPipe's graphs."""
        if self._mirror_thread is not None:
            self._mirror_thread.shutdown()
        with _native_stderr_silenced():
            for graph in self._graphs():
                graph.close()

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _normalised(result: Any) -> list[np.ndarray]:
    """The (478, 2) points in [0, 1] image units of each face in a face-mesh result."""
    return [np.array([[p.x, p.y] for p in f.landmark]) for f in result.multi_face_landmarks or []]


def _averaged_with_partner(face: np.ndarray, mirrored: list[np.ndarray]) -> np.ndarray:
    """`face` averaged with the mirror-image face that is the same face (the one whose points are
    nearest, median distance within MIRROR_MATCH of the face's box side); unchanged when none is."""
    side = float((face.max(0) - face.min(0)).max())
    distances = [float(np.median(np.linalg.norm(m - face, axis=1))) for m in mirrored]
    if not distances or min(distances) > MIRROR_MATCH * side:
        return face
    return 0.5 * (face + mirrored[int(np.argmin(distances))])


def _top(faces: list[tuple[FaceBox, _FaceCrop]], n: int) -> tuple[list[FaceBox], list[_FaceCrop]]:
    """The n largest (box, crop) pairs (already largest first) as two lists."""
    faces = faces[:n]
    return [b for b, _ in faces], [c for _, c in faces]


def _largest(candidates: list[np.ndarray]) -> np.ndarray:
    """The landmark set with the largest bounding-box area."""
    areas = [np.prod(c.max(axis=0) - c.min(axis=0)) for c in candidates]
    return candidates[int(np.argmax(areas))]


def _no_face_message(name: str) -> str:
    """NoFaceError's sentence: the real size limit of `LandmarkDetector.detect`."""
    return (f"No face was found in {name}; faces are found when they are visible and at least "
            f"about {MIN_FACE_PX} px wide (cheek to cheek), in photos of any size; use such a "
            "photo, or give a landmark file.")


# Sanity limits of check_landmarks.
MIN_LANDMARK_SPAN_PX = 16.0   # the points' bounding box must be at least this wide and high
MIN_LANDMARK_SPREAD = 0.05    # minor / major principal spread below this: the points lie on a line
MAX_OUTSIDE_FRACTION = 0.25   # at most this fraction of the points may lie outside the image
MIRROR_LIMIT = -0.3           # handedness (sine of the angle, see landmark_handedness) below this: mirrored
# iBUG-68 pairs (subject's right, subject's left): outer and inner eye corners, outer and inner
# brow ends, nostril wings, mouth corners. The subject's right side is on the image's left in a
# photo of a face seen from the front (iBUG and MediaPipe alike, see MEDIAPIPE_TO_IBUG68).
_IBUG_LEFT_RIGHT_PAIRS: tuple[tuple[int, int], ...] = (
    (36, 45), (39, 42), (17, 26), (21, 22), (31, 35), (48, 54))
_IBUG_EYES, _IBUG_MOUTH = tuple(range(36, 48)), tuple(range(48, 60))


def landmark_handedness(points: np.ndarray, scheme: str) -> float:
    """sin of the angle from the subject's right-to-left vector r to the eyes-to-mouth vector d
    in the image, i.e. cross(r, d) / (|r| |d|) with x right and y down: about +1 for a face
    seen from the front (any in-plane rotation), about -1 for mirrored landmarks (the subject's
    right-side points on the image's right), near 0 when undetermined (a profile, r ~ 0).
    r is the mean of `_IBUG_LEFT_RIGHT_PAIRS`' differences, d mouth centre minus eyes centre;
    MediaPipe points are first mapped to iBUG-68 (`mediapipe_to_ibug68`)."""
    pts = np.asarray(points, dtype=np.float64)
    if scheme == "mediapipe478":
        pts = mediapipe_to_ibug68(pts)
    elif scheme != "ibug68":
        raise ValueError(f"unknown landmark scheme {scheme!r}; use one of {', '.join(SCHEMES)}.")
    right, left = (np.array(i) for i in zip(*_IBUG_LEFT_RIGHT_PAIRS))
    r = (pts[left] - pts[right]).mean(axis=0)
    d = pts[list(_IBUG_MOUTH)].mean(axis=0) - pts[list(_IBUG_EYES)].mean(axis=0)
    norm = float(np.linalg.norm(r) * np.linalg.norm(d))
    return float(r[0] * d[1] - r[1] * d[0]) / norm if norm > 0 else 0.0


def check_landmarks(points: Any, scheme: str | None, image_size: tuple[int, int],
                    name: str = "the landmarks") -> np.ndarray:
    """Refuse landmarks that cannot describe a face in an image of `image_size` (height, width).

    `points` (N, 2) are pixels of that image (x right, y down); `scheme` 'mediapipe478' or
    'ibug68' (None: from N). Raises LandmarkCheckError, with `name` (the file or photo) in one
    sentence that says what is wrong and what to check, when the points
    - are not (N, 2) finite numbers of a known scheme;
    - span less than MIN_LANDMARK_SPAN_PX in x or y (e.g. all equal, or normalised 0-1 values),
      or lie on one line (minor principal spread < MIN_LANDMARK_SPREAD of the major);
    - lie outside the image for more than MAX_OUTSIDE_FRACTION of them;
    - are mirrored left/right (`landmark_handedness` < MIRROR_LIMIT: the subject's right-side
      points lie on the image's right, which a fit can only explain as a head seen from behind).
    Returns the points as a float64 (N, 2) array.
    """
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandmarkCheckError(f"{name}: the landmarks are not numbers; give x y pixel "
                                 "coordinates per point.") from None
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise LandmarkCheckError(f"{name}: the landmarks have shape {pts.shape}; they must be "
                                 "N x 2 (x y per point).")
    if not np.isfinite(pts).all():
        raise LandmarkCheckError(f"{name}: some landmarks are not finite numbers; every point "
                                 "needs numeric x and y.")
    try:
        expected = scheme_for_count(len(pts))
    except LandmarkFileError as e:
        raise LandmarkCheckError(f"{name}: {e}") from None
    if scheme is not None and scheme != expected:
        raise LandmarkCheckError(f"{name}: {len(pts)} landmarks are {expected!r}, not {scheme!r}.")
    height, width = image_size
    span = pts.max(axis=0) - pts.min(axis=0)
    if span.min() < MIN_LANDMARK_SPAN_PX:
        raise LandmarkCheckError(
            f"{name}: the landmarks span only {span[0]:.1f} x {span[1]:.1f} px, too small for a "
            f"face (at least {MIN_LANDMARK_SPAN_PX:.0f} px each way); check that they are pixel "
            "coordinates of this image, not normalised 0-1 values or all the same point.")
    spread = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
    if spread[1] < MIN_LANDMARK_SPREAD * spread[0]:
        raise LandmarkCheckError(
            f"{name}: the landmarks lie on one line, so they cannot describe a face; check that "
            "the file holds x and y of each point (not one coordinate twice).")
    outside = ((pts[:, 0] < 0) | (pts[:, 0] > width) | (pts[:, 1] < 0) | (pts[:, 1] > height)).sum()
    if outside > MAX_OUTSIDE_FRACTION * len(pts):
        raise LandmarkCheckError(
            f"{name}: {outside} of {len(pts)} landmarks ({100.0 * outside / len(pts):.0f}%) lie "
            f"outside the {width}x{height} image (at most {100 * MAX_OUTSIDE_FRACTION:.0f}% may); "
            "check that they belong to this image at its full size, with x before y.")
    if landmark_handedness(pts, expected) < MIRROR_LIMIT:
        raise LandmarkCheckError(
            f"{name}: the landmarks are mirrored left/right (the subject's right eye, brow and "
            "mouth corner lie on the image's right of the left ones, which a fit would take for "
            "a head seen from behind); they were probably made for a mirrored copy of this photo "
            "or list the sides swapped.")
    return pts


def _points_array(values: Any, path: Path) -> np.ndarray:
    try:
        points = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandmarkFileError(f"{path} does not hold numbers; write one 'x y' pair per point.") from None
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise LandmarkFileError(f"{path} holds an array of shape {points.shape}; landmarks must be "
                                "N x 2 (x y per point).")
    if not np.all(np.isfinite(points)):
        raise LandmarkFileError(f"{path} has non-finite coordinates; every point needs numeric x and y.")
    return points


def _read_pts(path: Path) -> np.ndarray:
    """iBUG .pts: 'version: 1', 'n_points: N', '{', N 'x y' lines, '}' -- or just 'x y' lines."""
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    declared = None
    rows = []
    for ln in lines:
        key = ln.split(":", 1)[0].strip().lower()
        if key == "n_points":
            declared = int(ln.split(":", 1)[1])
        elif key == "version" or ln in ("{", "}"):
            continue
        else:
            rows.append(ln.split())
    if any(len(r) != 2 for r in rows):
        raise LandmarkFileError(f"{path} is not a .pts file: every point line must be 'x y'.")
    points = _points_array(rows, path)
    if declared is not None and declared != len(points):
        raise LandmarkFileError(f"{path} declares n_points: {declared} but lists {len(points)} points.")
    return points


def read_landmarks(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Read a landmark file; returns (points (N, 2) px, scheme).

    Formats by suffix: `.pts` (iBUG, with or without the version/n_points/{ } header; shifted by
    -PTS_OFFSET to pixel-corner coordinates), `.json`
    ({"scheme": "mediapipe478"|"ibug68", "points": [[x, y], ...]}; scheme optional), `.txt`
    (N lines 'x y'), `.npy` (N x 2). The scheme is inferred from N (478/468 -> mediapipe478,
    68 -> ibug68) and must agree with a scheme given in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise LandmarkFileError(f"Landmark file {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pts":
            points = _read_pts(path) - PTS_OFFSET
            declared = None
        elif suffix == ".json":
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "points" not in data:
                raise LandmarkFileError(f"{path} must be a JSON object with a 'points' list.")
            points = _points_array(data["points"], path)
            declared = data.get("scheme")
        elif suffix == ".txt":
            points = _points_array([ln.replace(",", " ").split()
                                    for ln in path.read_text().splitlines() if ln.strip()], path)
            declared = None
        elif suffix == ".npy":
            points = _points_array(np.load(path, allow_pickle=False), path)
            declared = None
        else:
            raise LandmarkFileError(f"{path} has an unknown suffix; use .pts, .json, .txt or .npy.")
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        if isinstance(e, LandmarkFileError):
            raise
        raise LandmarkFileError(f"{path} cannot be parsed as a {suffix} landmark file ({e}).") from None
    scheme = scheme_for_count(len(points))
    if declared is not None and declared != scheme:
        raise LandmarkFileError(f"{path} says scheme {declared!r} but has {len(points)} points, "
                                f"which is {scheme!r}; fix the scheme or the points.")
    return points, scheme


def write_landmarks_json(path: str | os.PathLike, points: np.ndarray, scheme: str | None = None) -> None:
    """Write points (N, 2) px and their scheme as JSON, atomically (temp file, then os.replace)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"landmarks must be (N, 2), got shape {points.shape}.")
    scheme = scheme or scheme_for_count(len(points))
    if scheme not in SCHEMES:
        raise ValueError(f"unknown landmark scheme {scheme!r}; use one of {', '.join(SCHEMES)}.")
    write_text(path, json.dumps({"scheme": scheme, "points": points.round(4).tolist()}))
