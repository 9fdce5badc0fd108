"""2D face landmarks: MediaPipe face-mesh detection and landmark files.

Coordinates are input-image pixels, (N, 2) float64, x to the right and y down, with the lead's
camera convention: the top-left corner of pixel (0, 0) is at (0, 0), so pixel i's centre is at
i + 0.5. MediaPipe returns coordinates normalised by the image size; we multiply them by
(width, height) and add nothing. Checked on this machine: mirroring an image horizontally and
pairing each of the 468 mesh points with its mirror partner gives x + x_mirrored = 511.97 for the
512-px astronaut (150-px takeo: 149.77), i.e. x' = W - x, the pixel-corner convention (a
pixel-centre-at-i convention would give W - 1). Upsampling an image by pixel repetition
moves the points by +0.5 px per scale step, so MediaPipe is not exactly scale-equivariant; the
remaining half-pixel question is within its own jitter (0.75 px std of the mirror sum per point).

Schemes: 'mediapipe478' (MediaPipe's face mesh with irises; 468 points = the same without
irises) and 'ibug68' (the 68 iBUG / Multi-PIE points, 0-based here).

iBUG `.pts` files are 1-based with pixel centres at integers (300-W's Matlab convention, also
menpo's reading), so `read_landmarks` subtracts 0.5 from them to reach the convention above; the
other formats are read as given, in that convention.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mfface.atomic import write_text

SCHEMES = ("mediapipe478", "ibug68")
PTS_OFFSET = 0.5  # px subtracted from 1-based, centre-at-integer .pts coordinates
_SCHEME_BY_COUNT = {478: "mediapipe478", 468: "mediapipe478", 68: "ibug68"}

# MediaPipe face-mesh index(es) for each of the 68 iBUG points (0-based iBUG order); where two are
# given, the iBUG point is their midpoint. Correspondence after Peizhi Yan's table,
# https://github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks (the dlib 68 points are the iBUG 68).
# MediaPipe's face oval (FACEMESH_FACE_OVAL in mediapipe/python/solutions/face_mesh_connections.py),
# in order around the face: silhouette landmarks that slide over the face as the head turns.
MEDIAPIPE_FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)

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


class LandmarkDetector:
    """MediaPipe face mesh (478 points with irises), kept alive across images.

    Creating a FaceMesh loads its graph, so make one detector and call `detect` for every image.
    Use as a context manager or call `close()` to free it. MediaPipe's native log lines are
    silenced while it loads and runs.
    """

    def __init__(self, max_num_faces: int = 4, min_detection_confidence: float = 0.5) -> None:
        with _native_stderr_silenced():
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, refine_landmarks=True, max_num_faces=max_num_faces,
                min_detection_confidence=min_detection_confidence)
            # The graph's calculators open (and log) in worker threads after the constructor
            # returns; a first image waits for all of them, so their lines land here.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    def detect(self, image: Any, gamma: float = 2.2, name: str = "the image") -> np.ndarray:
        """Landmarks (478, 2) in pixels of the largest face (by landmark bounding-box area).

        `image` is (H, W, 3): uint8 display RGB, or linear float RGB in [0, 1] (numpy or torch),
        encoded with 1/`gamma` before detection. Raises NoFaceError when no face is found.
        """
        rgb = _to_display_uint8(image, gamma)
        h, w = rgb.shape[:2]
        with _native_stderr_silenced():
            result = self._mesh.process(rgb)
        faces = result.multi_face_landmarks or []
        if not faces:
            raise NoFaceError(f"No face was found in {name}; use a photo where the face is "
                              "visible and at least about 100 px wide, or give a landmark file.")
        candidates = [np.array([[p.x * w, p.y * h] for p in f.landmark]) for f in faces]
        areas = [np.prod(c.max(axis=0) - c.min(axis=0)) for c in candidates]
        return candidates[int(np.argmax(areas))]

    def detect_many(self, images: Iterable[Any], gamma: float = 2.2,
                    names: Sequence[str] | None = None) -> list[np.ndarray]:
        """`detect` for each image in turn with the same FaceMesh; names appear in errors."""
        images = list(images)
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return [self.detect(img, gamma, name) for img, name in zip(images, names)]

    def close(self) -> None:
        """Release MediaPipe's graph."""
        with _native_stderr_silenced():
            self._mesh.close()

    def __enter__(self) -> "LandmarkDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
