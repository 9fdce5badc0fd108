"""Throughput of `mfface prepare` and where the time goes (MediaPipe's own share measured apart).

Usage: python bench/prepare.py [--photos N] [--size 224] [--long-side 512,768,1024] [--workers 1,2]

Photos: N distinct JPEGs (quality 90) made from the shared test photos that show a face
(data/images/astronaut.png and people/*.jpg, found through MFFACE_TEST_DATA like the tests):
each is a random crop of 70-100% of a photo's side, resized so that its longer side is one of
`--long-side` px (web-photo sizes; decoding multi-megapixel originals is left out, as the target
says). Then:
1. per stage, in this process, for every photo (median and mean ms): file read + SHA-256, JPEG
   decode (mfface.images.read_image), conversion to uint8, MediaPipe (LandmarkDetector.detect:
   face detection over the frame and tiles, then the face mesh on a crop around the face), crop
   and resize, skin mask, compression of the sample; and, apart, `find_faces` alone (the
   face-detector part of `detect`);
2. end to end, `prepare_dataset` into a fresh file with each worker count (workers start-up
   included in `total_s`, excluded from the steady `images_per_s`).
Every time is given as wall time and as CPU time (all threads of the process, and of the
workers): on a shared machine the wall times depend on the other load (reported as the load
average before and after), the CPU times much less; `two_idle_cores_images_per_s_from_cpu` is
2 cores / CPU time per photo, the rate two otherwise idle cores would give with perfect scaling.
Prints one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _shared(relative: str) -> Path:
    """A file of the shared test data (MFFACE_TEST_DATA, else ../shared/data); exits if missing."""
    base = Path(os.environ.get("MFFACE_TEST_DATA", ROOT.parent / "shared" / "data"))
    path = base / relative
    if not path.is_file():
        sys.exit(f"shared test data {path} is missing (set MFFACE_TEST_DATA)")
    return path


def make_photos(folder: Path, n: int, long_sides: list[int], seed: int = 0) -> list[Path]:
    """`n` distinct JPEGs from the shared face photos (see the module doc)."""
    from PIL import Image

    sources = [_shared("images/astronaut.png")] + sorted(_shared("images/people/obama_a.jpg").parent.glob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in sources]
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        img = images[k % len(images)]
        w, h = img.size
        f = rng.uniform(0.7, 1.0)
        cw, ch = int(w * f), int(h * f)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x0, y0, x0 + cw, y0 + ch))
        side = long_sides[k % len(long_sides)]
        scale = side / max(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BILINEAR)
        path = folder / f"photo{k:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path.resolve())
    return paths


def _clocks() -> np.ndarray:
    """(wall, CPU of this process's threads) in seconds."""
    return np.array([time.perf_counter(), time.process_time()])


def stage_times(paths: list[Path], size: int, margin: float) -> dict[str, Any]:
    """Median and mean ms per stage over `paths` (one process, one LandmarkDetector)."""
    import torch

    from mfface.images import crop_and_resize, crop_box_around, read_image
    from mfface.landmarks import LandmarkDetector, NoFaceError
    from mfface.learning.dataset_format import sample_columns
    from mfface.masks import skin_mask

    columns = {c.name: c for c in sample_columns(size)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as prepare's processes do (mfface.learning.prepare._results)
    times: dict[str, list[np.ndarray]] = {k: [] for k in (
        "read_sha256", "decode", "to_uint8", "mediapipe_detect", "crop_resize", "skin_mask",
        "compress", "total", "mediapipe_find_faces_alone")}
    no_face = 0
    with LandmarkDetector() as detector:
        for path in paths:
            t = [_clocks()]
            hashlib.sha256(path.read_bytes()).hexdigest()
            t.append(_clocks())
            photo = read_image(path)
            t.append(_clocks())
            display = (photo * 255.0).round_().to(torch.uint8).numpy()
            t.append(_clocks())
            try:
                landmarks = detector.detect(display)
            except NoFaceError:  # a crop that cut the face off: counted, not timed
                no_face += 1
                continue
            t.append(_clocks())
            box = crop_box_around(landmarks, tuple(photo.shape[:2]), margin)
            crop, to_crop = crop_and_resize(photo, box, size)
            crop_landmarks = np.asarray(to_crop.apply(landmarks), dtype=np.float32)
            t.append(_clocks())
            mask = skin_mask(crop_landmarks, crop.shape[0], crop.shape[0])
            t.append(_clocks())
            image = (crop.clamp(0, 1) * 255).round_().to(torch.uint8).numpy()
            if image.shape[0] == size:
                columns["images"].encode(image)
                columns["masks"].encode(mask.astype(np.uint8))
            columns["landmarks"].encode(crop_landmarks)
            t.append(_clocks())
            names = list(times)[:-2]
            for name, a, b in zip(names, t[:-1], t[1:]):
                times[name].append(b - a)
            times["total"].append(t[-1] - t[0])
            # for reference, not part of the total: the face-detector part of detect() alone
            start = _clocks()
            detector.find_faces(display)
            times["mediapipe_find_faces_alone"].append(_clocks() - start)
    torch.set_num_threads(threads)
    result: dict[str, Any] = {}
    for k, v in times.items():
        wall, cpu = np.asarray(v).T * 1e3
        result[k] = {"wall_median_ms": round(float(np.median(wall)), 2),
                     "wall_mean_ms": round(float(wall.mean()), 2),
                     "cpu_mean_ms": round(float(cpu.mean()), 2)}
    result["timed_photos"], result["no_face"] = len(times["total"]), no_face
    return result


def end_to_end(paths: list[Path], size: int, workers: int, folder: Path) -> dict[str, float]:
    """prepare_dataset into a new file with `workers` processes (all started: no per-worker
    minimum of photos)."""
    from mfface.learning import prepare as prepare_module
    from mfface.learning.prepare import PrepareSettings, prepare_dataset

    prepare_module.PHOTOS_PER_WORKER = 1
    out = folder / f"bench-w{workers}.h5"
    cpu0 = os.times()
    started = time.perf_counter()
    summary = prepare_dataset(paths, out, PrepareSettings(size=size, workers=workers))
    total = time.perf_counter() - started
    cpu1 = os.times()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    children = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    return {"workers": workers, "added": summary.added, "failed": len(summary.not_added),
            "total_s": round(total, 2), "startup_s": round(summary.startup, 2),
            "images_per_s": round(summary.images_per_second, 2),
            "images_per_s_with_startup": round(summary.processed / total, 2),
            "cpu_s_main": round(own, 2), "cpu_s_workers": round(children, 2),
            "cpu_ms_per_image": round(1e3 * (own + children) / max(1, summary.processed), 1),
            "bytes_per_sample": round(out.stat().st_size / max(1, summary.added))}


def main() -> None:
    """Make the photos, time the stages and the end-to-end runs, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--long-side", default="512,768,1024")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    long_sides = [int(v) for v in args.long_side.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mfface-bench-prepare-") as tmp:
        folder = Path(tmp)
        (folder / "photos").mkdir()
        paths = make_photos(folder / "photos", args.photos, long_sides)
        megapixels = []
        from PIL import Image
        for p in paths:
            with Image.open(p) as im:
                megapixels.append(im.width * im.height / 1e6)
        stages = stage_times(paths, args.size, 0.25)
        runs = [end_to_end(paths, args.size, int(w), folder) for w in args.workers.split(",")]
    mediapipe = stages["mediapipe_detect"]["cpu_mean_ms"]
    result = {
        "bench": "prepare", "size": args.size, "photos": args.photos, "long_sides": long_sides,
        "mean_megapixels": round(statistics.fmean(megapixels), 3),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "stages": stages,
        "mediapipe_cpu_ms_per_image": round(mediapipe, 2),
        "mediapipe_share_of_cpu": round(mediapipe / stages["total"]["cpu_mean_ms"], 3),
        "two_idle_cores_images_per_s_from_cpu": round(2e3 / stages["total"]["cpu_mean_ms"], 1),
        "end_to_end": runs,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
