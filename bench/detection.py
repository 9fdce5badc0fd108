"""Face finding: the smallest face found in a 4000 px wide photo, landmark agreement with the
face mesh alone, and the time per image.

1. Smallest face. Each shared photo (astronaut.png, takeo.ppm, people/*.jpg) is shrunk so that
   its face is W px wide and pasted, whole, at a random place into a 4000x3000 scene of textured
   noise (smooth 16-px blobs of random colour), one face per scene, `--positions` places per
   width. Face width = the x-extent of the 478 landmarks `LandmarkDetector.detect` finds on the
   photo itself (cheek to cheek). A face counts as found when `detect` on the scene returns
   landmarks whose mean distance from the photo's own landmarks, scaled and shifted the same
   way, is under 10% of W. Reported: the found fraction per width and the smallest width at and
   above which every face in every place was found.
2. Normal photos (the shared photos as they are): mean distance (px) between `detect`'s
   landmarks (detector first, face mesh on a crop) and the face mesh on the whole image (the
   old path, `detect_whole_image`; the old path's face nearest the new one, since on obama_d.jpg
   the old path's largest "face" is elsewhere); beside it, the old path's own jitter: its mean
   distance from itself on the photo padded by 7 px at the top-left, shifted back. On takeo
   with its hand-placed .pts: mean iBUG-68 error (px) of both paths.
3. Time: median of `--repeats` calls per photo of `detect` and `detect_whole_image`, and of
   `detect` on a 4000x3000 scene with no face (every search level, then the fallback).

    .venv/bin/python bench/detection.py [--positions 2] [--repeats 5]

The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mfface.images import read_image
from mfface.landmarks import (LandmarkDetector, NoFaceError, _native_stderr_silenced,
                              mediapipe_to_ibug68, read_landmarks)

WIDTHS = (64, 56, 48, 44, 40, 36, 32, 28, 24, 20)
SCENE = (3000, 4000)  # (height, width)


def data_dir() -> Path:
    return Path(os.environ.get("MFFACE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def photos() -> dict[str, np.ndarray]:
    """The shared photos as uint8 display RGB, as `prepare_image` hands them to the detector."""
    images = data_dir() / "images"
    paths = [images / "astronaut.png", images / "takeo.ppm", *sorted((images / "people").glob("*.jpg"))]
    return {p.name: np.round(read_image(p).numpy() * 255.0).astype(np.uint8) for p in paths}


def noise_scene(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)).copy()


def mean_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=1).mean())


def old_faces(detector: LandmarkDetector, rgb: np.ndarray) -> list[np.ndarray]:
    """Every face the face mesh finds on the whole image (the old path's candidates)."""
    with _native_stderr_silenced():
        return detector._mesh_whole(rgb)


def nearest(candidates: list[np.ndarray], lm: np.ndarray) -> np.ndarray:
    return min(candidates, key=lambda c: np.linalg.norm(c.mean(axis=0) - lm.mean(axis=0)))


def smallest_face(detector: LandmarkDetector, images: dict[str, np.ndarray],
                  refs: dict[str, np.ndarray], positions: int) -> dict:
    rng = np.random.default_rng(0)
    H, W = SCENE
    per_width: dict[int, dict] = {}
    for width in WIDTHS:
        found, errors, seconds = [], [], []
        for name, img in images.items():
            ref = refs[name]
            k = width / float(np.ptp(ref[:, 0]))
            size = (max(1, round(img.shape[1] * k)), max(1, round(img.shape[0] * k)))
            small = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
            kx, ky = size[0] / img.shape[1], size[1] / img.shape[0]
            for _ in range(positions):
                x, y = int(rng.integers(0, W - size[0])), int(rng.integers(0, H - size[1]))
                scene = noise_scene(H, W, rng)
                scene[y:y + size[1], x:x + size[0]] = small
                expected = ref * (kx, ky) + (x, y)
                t = time.perf_counter()
                try:
                    lm = detector.detect(scene)
                    err = mean_dist(lm, expected)
                except NoFaceError:
                    err = float("inf")
                seconds.append(time.perf_counter() - t)
                ok = err < 0.1 * width
                found.append(ok)
                if ok:
                    errors.append(err / width)
        median_err = round(100 * statistics.median(errors), 2) if errors else None
        per_width[width] = {"found": f"{sum(found)}/{len(found)}", "median_err_pct_of_width": median_err,
                            "median_s": round(statistics.median(seconds), 3)}
        print(width, per_width[width], flush=True)
    smallest = None
    for width in WIDTHS:  # descending
        n, total = map(int, per_width[width]["found"].split("/"))
        if n < total:
            break
        smallest = width
    return {"scene": f"{W}x{H}", "per_width": per_width, "smallest_width_all_found": smallest}


def normal_photos(detector: LandmarkDetector, images: dict[str, np.ndarray], refs: dict[str, np.ndarray],
                  repeats: int) -> dict:
    out = {}
    for name, img in images.items():
        new = refs[name]
        old_all = old_faces(detector, img)
        old = nearest(old_all, new)
        old_largest = detector.detect_whole_image(img)
        padded = np.pad(img, ((7, 0), (7, 0), (0, 0)))
        jitter = mean_dist(nearest(old_faces(detector, padded), new + 7) - 7, old)
        t_new, t_old = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            detector.detect(img)
            t_new.append(time.perf_counter() - t)
            t = time.perf_counter()
            detector.detect_whole_image(img)
            t_old.append(time.perf_counter() - t)
        out[name] = {"size": f"{img.shape[1]}x{img.shape[0]}", "face_px": round(float(np.ptp(new[:, 0]))),
                     "new_vs_old_px": round(mean_dist(new, old), 2),
                     "old_shift7_jitter_px": round(jitter, 2),
                     "old_largest_is_same_face": bool(mean_dist(old_largest, old) < 1e-9),
                     "new_ms": round(1000 * statistics.median(t_new), 1),
                     "old_ms": round(1000 * statistics.median(t_old), 1)}
        print(name, out[name], flush=True)
    truth, _ = read_landmarks(data_dir() / "images" / "takeo.pts")
    takeo = images["takeo.ppm"]
    pts_err = {"new": mean_dist(mediapipe_to_ibug68(detector.detect(takeo)), truth),
               "old": mean_dist(mediapipe_to_ibug68(detector.detect_whole_image(takeo)), truth)}
    return {"photos": out, "takeo_pts_mean_err_px": {k: round(v, 2) for k, v in pts_err.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--positions", type=int, default=2, help="random places per photo and width")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per photo")
    args = parser.parse_args()
    images = photos()
    t = time.perf_counter()
    detector = LandmarkDetector()
    init_s = time.perf_counter() - t
    try:
        refs = {name: detector.detect(img) for name, img in images.items()}
        normal = normal_photos(detector, images, refs, args.repeats)
        rng = np.random.default_rng(1)
        empty = noise_scene(*SCENE, rng)
        empty_s = []
        for _ in range(2):
            t = time.perf_counter()
            try:
                detector.detect(empty)
            except NoFaceError:
                pass
            empty_s.append(time.perf_counter() - t)
        small = smallest_face(detector, images, refs, args.positions)
    finally:
        detector.close()
    photos_ = normal["photos"].values()
    result = {
        "init_s": round(init_s, 3),
        "load_average": round(os.getloadavg()[0], 2),
        "smallest_face_px_4000": small["smallest_width_all_found"],
        "small_faces": small,
        "median_new_vs_old_px": round(statistics.median(p["new_vs_old_px"] for p in photos_), 2),
        "median_old_shift7_jitter_px": round(statistics.median(p["old_shift7_jitter_px"]
                                                               for p in photos_), 2),
        "median_added_ms": round(statistics.median(p["new_ms"] - p["old_ms"] for p in photos_), 1),
        "no_face_4000x3000_s": round(statistics.median(empty_s), 3),
        **normal,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
