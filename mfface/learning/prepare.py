"""`mfface prepare`: turn photos into a face dataset (mfface.learning.dataset_format) to train on.

Per photo: read it (mfface.images.read_image: display-referred, EXIF orientation applied), detect
MediaPipe's 478 landmarks (mfface.landmarks.LandmarkDetector, checked with check_landmarks), cut
the square box around them (crop_box_around, margin `margin`) and resample it to exactly `size`
px (crop_and_resize shrinks with antialiasing; a face box smaller than `size` is enlarged
bilinearly, visible as boxes[:, 2] < size), move the landmarks into crop pixels and draw the skin
mask there (mfface.masks.skin_mask). Stored: the uint8 crop, landmarks, mask, box, source size,
and the source file's path, size, mtime and SHA-256.

Resuming: a photo is already in the dataset when its absolute path is, with the same file size
and modification time, or, when those changed, the same content (SHA-256 of the file's bytes:
a copied or touched file is not prepared again). A photo whose content changed since it was
added is listed in the report as `changed` and the stored sample is kept. A photo that failed
before (it is in the file's report) is tried again only when its size or modification time
changed since, or when `retry_failed` is set.

Distributed runs: under a launcher that sets RANK and WORLD_SIZE (torchrun), rank r takes every
WORLD_SIZE-th photo of the sorted list, starting at r, and writes its own shard
(`dataset_format.shard_path`); the ranks never talk to each other. `merge_datasets` joins them.

Work is spread over `workers` processes (spawned, each with its own MediaPipe graphs; a worker
costs a few seconds to start, so at most one per PHOTOS_PER_WORKER photos is started); the
compression of each sample happens there too, and this process only writes. The order of the
samples is that of the sorted photo list whatever the number of workers.
"""
from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mfface.images import IMAGE_SUFFIXES
from mfface.distributed import rank_info
from mfface.learning.dataset_format import (DatasetError, DatasetSpec, DatasetWriter, ReportEntry,
                                            sample_columns, shard_path)
from mfface.learning.dataset_run import (DEFAULT_SIZE, LANDMARK_DETECTOR, RunSummary, capped_workers,
                                         pool_results, write_results_as_they_come)

DEFAULT_MARGIN = 0.25
# Fewer photos than this per worker: fewer workers. A spawned worker takes 5-12 s to start
# (importing torch and MediaPipe, bench/prepare.py), which pays off only over some hundred photos.
PHOTOS_PER_WORKER = 128


class PrepareError(ValueError):
    """Inputs or settings `prepare` cannot work with; the message says what to do."""


@dataclass(frozen=True)
class PrepareSettings:
    """`size`: crop side in px; `margin`: crop_box_around's margin (side = landmark box's larger
    side * (1 + 2 margin)); `workers`: processes that read and detect (1: this process)."""
    size: int = DEFAULT_SIZE
    margin: float = DEFAULT_MARGIN
    workers: int = 1

    def check(self) -> None:
        """Raise PrepareError for settings out of range."""
        if not 32 <= self.size <= 2048:
            raise PrepareError(f"--size must be between 32 and 2048 px, got {self.size}.")
        if not (np.isfinite(self.margin) and 0.0 <= self.margin <= 2.0):
            raise PrepareError(f"--margin must be between 0 and 2, got {self.margin}.")
        if self.workers < 1:
            raise PrepareError(f"--workers must be at least 1, got {self.workers}.")


def _visible(path: Path) -> bool:
    """Not a hidden file (name starting with '.')."""
    return not path.name.startswith(".")


def collect_photos(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The photos named by `inputs`, as sorted, de-duplicated absolute paths.

    A file is taken as given (whatever its suffix; reading it tells whether it is an image);
    a folder is walked recursively for files with an image suffix (mfface.images.IMAGE_SUFFIXES,
    any case), skipping hidden files and folders (names starting with '.'), not following
    links to folders. Raises PrepareError for an input that does not exist or when no image is
    found at all."""
    found: set[Path] = set()
    for given in map(Path, inputs):
        if given.is_dir():
            for root, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    path = Path(root) / name
                    if _visible(path) and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                        found.add(path.resolve())
        elif given.exists():
            found.add(given.resolve())
        else:
            raise PrepareError(f"{given} does not exist; give image files or folders of images.")
    if not found:
        named = ", ".join(str(p) for p in inputs) or "(nothing given)"
        raise PrepareError(f"no images found in {named}; give PNG, JPEG, PPM, TIFF or WebP files "
                           "or folders that contain them.")
    return sorted(found)


def distributed_rank(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from RANK and WORLD_SIZE as torchrun sets them (`mfface.distributed`);
    (0, 1) without them."""
    try:
        info = rank_info(environ)
    except ValueError as e:
        raise PrepareError(str(e)) from None
    return info.rank, info.world


def default_workers(environ: dict[str, str] | None = None) -> int:
    """One worker per CPU core this process may use, shared among the ranks on this machine
    (LOCAL_WORLD_SIZE as torchrun sets it, else WORLD_SIZE, else 1)."""
    env = os.environ if environ is None else environ
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        local = int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


def worker_count(settings: PrepareSettings, photos: int) -> int:
    """Processes used for `photos` photos: settings.workers, but at most one per
    PHOTOS_PER_WORKER photos (at least 1; 1 means this process)."""
    return capped_workers(settings.workers, photos, PHOTOS_PER_WORKER)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class PhotoSample:
    """A prepared photo: its path and the values of every dataset column (large ones encoded)."""
    path: Path
    values: dict[str, Any]


@dataclass
class PhotoFailure:
    """A photo that could not be prepared: its path, a REPORT_KINDS kind, a sentence, and the
    file's size and mtime (ns) as tried (0 when it could not be read)."""
    path: Path
    kind: str
    reason: str
    file_size: int = 0
    mtime_ns: int = 0

    def entry(self) -> ReportEntry:
        return ReportEntry(str(self.path), self.kind, self.reason, self.file_size, self.mtime_ns)


def process_photo(path: Path, size: int, margin: float, detector: Any) -> PhotoSample | PhotoFailure:
    """Prepare one photo (see the module doc) with `detector` (a LandmarkDetector)."""
    import torch

    from mfface.images import ImageReadError, crop_and_resize, crop_box_around, read_image
    from mfface.landmarks import LandmarkCheckError, NoFaceError, check_landmarks
    from mfface.masks import skin_mask

    try:
        stat = path.stat()
    except OSError as e:
        return PhotoFailure(path, "unreadable", f"{path} could not be read ({e.strerror or e}).")
    tried = (stat.st_size, stat.st_mtime_ns)
    try:
        digest = file_digest(path)
        photo = read_image(path)
    except ImageReadError as e:
        return PhotoFailure(path, "unreadable", str(e), *tried)
    except OSError as e:
        return PhotoFailure(path, "unreadable", f"{path} could not be read ({e.strerror or e}).", *tried)
    height, width = photo.shape[:2]
    display = (photo * 255.0).round_().to(torch.uint8).numpy()
    try:
        landmarks = detector.detect(display, name=str(path))
        landmarks = check_landmarks(landmarks, "mediapipe478", (height, width),
                                    f"the landmarks detected in {path}")
        box = crop_box_around(landmarks, (height, width), margin)
    except NoFaceError as e:
        return PhotoFailure(path, "no_face", str(e), *tried)
    except (LandmarkCheckError, ValueError) as e:
        return PhotoFailure(path, "bad_landmarks", str(e), *tried)
    crop, to_crop = crop_and_resize(photo, box, size, enlarge=True)
    crop_landmarks = np.asarray(to_crop.apply(landmarks), dtype=np.float32)
    try:
        mask = skin_mask(crop_landmarks, size, size)
    except ValueError as e:
        return PhotoFailure(path, "bad_landmarks", f"{path}: {e}", *tried)
    image = (crop.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).numpy()
    columns = {c.name: c for c in sample_columns(size)}
    values = {
        "images": columns["images"].encode(image),
        "landmarks": columns["landmarks"].encode(crop_landmarks),
        "masks": columns["masks"].encode(mask.astype(np.uint8)),
        "boxes": np.array([box.x0, box.y0, box.size], dtype=np.int32),
        "source_sizes": np.array([width, height], dtype=np.int32),
        "paths": str(path),
        "file_sizes": np.int64(stat.st_size),
        "file_mtimes_ns": np.int64(stat.st_mtime_ns),
        "sha256": digest,
    }
    return PhotoSample(path, values)


# One LandmarkDetector per worker process, made by _init_worker.
_WORKER: dict[str, Any] = {}


def _init_worker(size: int, margin: float) -> None:
    """Worker start: Ctrl-C is the parent's to handle; one torch thread (see `_results`); make
    this process's detector."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from mfface.landmarks import LandmarkDetector

    torch.set_num_threads(1)

    _WORKER.update(size=size, margin=margin, detector=LandmarkDetector())


def _work(path: Path) -> PhotoSample | PhotoFailure:
    """process_photo in a worker process, with that process's detector."""
    return process_photo(path, _WORKER["size"], _WORKER["margin"], _WORKER["detector"])


def _results(paths: list[Path], settings: PrepareSettings) -> Iterator[PhotoSample | PhotoFailure]:
    """process_photo for each path in order, here or in `settings.workers` spawned processes.

    Each process runs torch on one thread meanwhile: the per-photo tensor operations are small,
    and with two threads on a busy 2-core machine each one waited on the other (measured: 46 ms
    instead of 3-5 ms to convert a 0.45-megapixel photo to uint8, bench/prepare.py)."""
    if not paths:
        return
    workers = worker_count(settings, len(paths))
    if workers == 1:
        import torch

        from mfface.landmarks import LandmarkDetector

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with LandmarkDetector() as detector:
                for path in paths:
                    yield process_photo(path, settings.size, settings.margin, detector)
        finally:
            torch.set_num_threads(threads)
        return
    yield from pool_results(_work, paths, workers, _init_worker, (settings.size, settings.margin))


@dataclass(kw_only=True)
class PrepareSummary(RunSummary):
    """What one `prepare` run did: RunSummary's counts and times (an item is a photo), plus
    the photos found, skipped and not added."""
    found: int                  # photos in this rank's share
    failed_before: int = 0      # skipped: failed in an earlier run and unchanged since
    not_added: list[ReportEntry] = field(default_factory=list)  # this run's, with reasons

    @property
    def processed(self) -> int:
        """Photos read and tried this run (added or failed; `changed` ones are not tried)."""
        return self.added + sum(1 for e in self.not_added if e.kind != "changed")


ProgressCallback = Callable[[int, int, "PhotoSample | PhotoFailure"], None]


def prepare_dataset(photos: Sequence[Path], output: str | os.PathLike, settings: PrepareSettings,
                    shard: tuple[int, int] | None = None, retry_failed: bool = False,
                    on_start: Callable[[int], None] | None = None,
                    on_result: ProgressCallback | None = None) -> PrepareSummary:
    """Add `photos` to the dataset `output` (created, or appended to and resumed).

    `shard` = (rank, world_size) marks the file as that rank's shard (the caller chooses the
    photos and the file name: `share`, `shard_path`). `on_start(n)` is called with the number
    of photos to process, `on_result(done, n, result)` after each. Photos of the file's report
    that did not change since are skipped unless `retry_failed`. A KeyboardInterrupt (Ctrl-C,
    or SIGTERM turned into one by the caller) commits the samples finished so far and is then
    re-raised; any other exception leaves `output` as it was. Raises PrepareError /
    DatasetError for refused inputs or outputs, before any photo is processed."""
    settings.check()
    output = Path(output)
    spec = DatasetSpec(size=settings.size, source="photos", match={"crop_margin": float(settings.margin)},
                       attrs={"landmark_detector": LANDMARK_DETECTOR})
    summary = PrepareSummary(output=output, found=len(photos),
                             rank=shard[0] if shard else 0, world_size=shard[1] if shard else 1)
    with DatasetWriter(output, spec, tool="prepare", shard=shard) as writer:
        failed = {e.path: e for e in writer.earlier_report}
        todo: list[Path] = []
        for path in photos:
            key = writer.keys.get(str(path))
            if key is None:
                earlier = failed.get(str(path))
                if earlier is not None and not retry_failed and earlier.kind != "changed" \
                        and _unchanged(path, earlier.file_size, earlier.mtime_ns):
                    summary.failed_before += 1
                else:
                    todo.append(path)
                continue
            try:
                stat = path.stat()
                same = (stat.st_size, stat.st_mtime_ns) == (key.file_size, key.mtime_ns) \
                    or file_digest(path) == key.sha256
            except OSError:
                same = True  # gone or unreadable now: the stored sample stands
            if same:
                summary.already += 1
            else:
                writer.report.append(ReportEntry(
                    str(path), "changed", f"{path} changed since it was added to {output.name} "
                    f"(sample {key.row} kept); write a new dataset to include the new version."))
        summary.not_added = writer.report
        summary.workers = worker_count(settings, len(todo))

        def store(result: PhotoSample | PhotoFailure) -> None:
            if isinstance(result, PhotoSample):
                writer.append(result.values)
            else:
                writer.report.append(result.entry())

        write_results_as_they_come(writer, _results(todo, settings), len(todo), summary, store,
                                   on_start, on_result)
    return summary


def _unchanged(path: Path, size: int, mtime_ns: int) -> bool:
    """Whether `path` still has this size and modification time (False when unknown or gone)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return size > 0 and (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns)


def share(photos: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """Rank `rank`'s photos of a `world_size`-process run: every world_size-th, from `rank`."""
    return list(photos[rank::world_size])


def output_for_rank(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The file a rank writes: `output` itself in a one-process run, else its shard."""
    return Path(output) if world_size == 1 else shard_path(output, rank, world_size)


__all__ = ["PrepareError", "PrepareSettings", "PrepareSummary", "DatasetError", "collect_photos",
           "distributed_rank", "default_workers", "worker_count", "prepare_dataset", "process_photo", "share",
           "output_for_rank", "DEFAULT_SIZE", "DEFAULT_MARGIN"]
