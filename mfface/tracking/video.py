"""Video frames in, one at a time: a video file (through imageio-ffmpeg's bundled ffmpeg) or a folder
of numbered images, on a uniform time grid, with the frames that cannot be read marked.

Frames are streamed (one decoded frame in memory at a time), so a long video runs in bounded
memory. Every source is put on a uniform grid of `fps` frames per second: frame index i is at time
i / fps seconds from the first frame. Where the source has no readable frame for a grid index it is
marked with a reason (`FrameSource.problems`) and yielded with `image=None`, so that the caller can
report it, skip it and interpolate over it:

- a video is probed once (`ffmpeg -vf showinfo -fps_mode passthrough`, decoding every frame) for
  the presentation time of each frame the decoder delivers; a frame the decoder drops (corrupt
  data) leaves a gap in those times, and the grid index of each delivered frame is
  round((pts - pts_0) * fps). The frame rate is the median frame interval's inverse unless given.
  Frames are then read with `imageio_ffmpeg.read_frames` with the same passthrough timing, so the
  k-th frame read is the k-th frame probed.
- a folder of images is ordered by the last number in each file name (`frame_0007.png` is frame 7);
  a missing number is a missing frame, an unreadable image or one of another size a corrupt one.

Images are (H, W, 3) uint8, display-referred RGB, as decoded.
"""
from __future__ import annotations

import math
import re
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mfface.atomic import atomic_path
from mfface.images import IMAGE_SUFFIXES, PIL_FORMATS, ImageReadError, read_image
from mfface.replay import even_frames

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
DEFAULT_FPS = 30.0  # frames per second of a folder of images when none is given
_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:\s*(-?[0-9.eE+-]+).*?\bs:(\d+)x(\d+)")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class VideoError(ValueError):
    """A video or frame folder that cannot be tracked; the message says which and what to do."""


@dataclass
class Frame:
    """One grid frame: `index` (0-based), `time` in seconds from the first frame, `image` (H, W, 3)
    uint8 display RGB, or None with `problem` saying why it cannot be used."""
    index: int
    time: float
    image: np.ndarray | None
    problem: str | None = None


@dataclass
class FrameSource(ABC):
    """Frames of a video or image folder on a uniform grid (see the module docstring).

    `count` grid frames of `width` x `height` px at `fps`; `problems` {grid index: reason} for the
    frames known in advance to be unusable (missing, dropped by the decoder, unreadable files are
    found only while reading and reported in the yielded Frame); `decode_errors` how many error
    lines the decoder wrote while probing."""
    path: Path
    kind: str
    fps: float
    width: int
    height: int
    count: int
    problems: dict[int, str] = field(default_factory=dict)
    decode_errors: int = 0

    @property
    def duration(self) -> float:
        """Seconds from the first to the last grid frame."""
        return (self.count - 1) / self.fps if self.count else 0.0

    @abstractmethod
    def frames(self, stop: int | None = None) -> Iterator[Frame]:
        """Yield the grid frames 0 .. min(stop, count) - 1 in order (streamed)."""


@dataclass
class VideoFile(FrameSource):
    """A video file; `_grid` lists the grid index of each frame the decoder delivers, in order."""
    _grid: list[int] = field(default_factory=list)

    def frames(self, stop: int | None = None) -> Iterator[Frame]:
        import imageio_ffmpeg

        stop = self.count if stop is None else min(stop, self.count)
        reader = imageio_ffmpeg.read_frames(str(self.path), output_params=_PASSTHROUGH)
        try:
            meta = next(reader)
            width, height = meta["size"]
            if (width, height) != (self.width, self.height):
                raise VideoError(f"{self.path}: ffmpeg reads {width}x{height} frames but probed "
                                 f"{self.width}x{self.height}; re-encode the video.")
            expected = 0
            for k, raw in enumerate(reader):
                if k >= len(self._grid):
                    break
                index = self._grid[k]
                if index < 0:       # a duplicate timestamp: the frame before it holds this index
                    continue
                if index >= stop:
                    break
                for missing in range(expected, index):
                    yield self._missing(missing)
                image = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                yield Frame(index, index / self.fps, image)
                expected = index + 1
            for missing in range(expected, stop):
                yield self._missing(missing)
        finally:
            reader.close()

    def _missing(self, index: int) -> Frame:
        reason = self.problems.get(index, "the decoder delivered no frame for it")
        return Frame(index, index / self.fps, None, reason)


@dataclass
class FrameFolder(FrameSource):
    """A folder of numbered images; `_files` {grid index: path}."""
    _files: dict[int, Path] = field(default_factory=dict)

    def frames(self, stop: int | None = None) -> Iterator[Frame]:
        stop = self.count if stop is None else min(stop, self.count)
        for index in range(stop):
            time = index / self.fps
            path = self._files.get(index)
            if path is None:
                yield Frame(index, time, None, self.problems.get(index, "missing"))
                continue
            try:
                pixels = read_image(path)
            except ImageReadError as e:
                yield Frame(index, time, None, f"unreadable: {e}")
                continue
            if tuple(pixels.shape[:2]) != (self.height, self.width):
                yield Frame(index, time, None, f"{path.name} is {pixels.shape[1]}x{pixels.shape[0]} px, "
                                               f"not {self.width}x{self.height} like the first frame")
                continue
            yield Frame(index, time, np.round(pixels.numpy() * 255.0).astype(np.uint8))


# -- opening -------------------------------------------------------------------------------------

_PASSTHROUGH = ["-map", "0:v:0", "-fps_mode", "passthrough", "-an", "-sn", "-dn"]


def open_frames(path: str | Path, fps: float = 0.0) -> FrameSource:
    """The frame source at `path`: a video file or a folder of numbered images.

    `fps` > 0 sets the frame rate (for a video it overrides the one measured from its timestamps;
    a folder has DEFAULT_FPS otherwise). Raises VideoError for a missing path, a file that is not
    a video, an image instead of a video, a video without frames and an empty folder.
    """
    path = Path(path)
    if fps < 0 or not math.isfinite(fps):
        raise VideoError(f"the frame rate must be a positive number, not {fps}.")
    if path.is_dir():
        return _open_folder(path, fps)
    if not path.exists():
        raise VideoError(f"{path} does not exist; give a video file (MP4, MOV, AVI, WebM, ...) or a "
                         f"folder of numbered frames.")
    if not path.is_file():
        raise VideoError(f"{path} is not a regular file; give a video file or a folder of numbered frames.")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise VideoError(f"{path} is a single image; give a video, or a folder of numbered frames "
                         f"(`mfface fit` reconstructs a photo).")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes); give a video with frames.")
    return _open_video(path, fps)


def _open_video(path: Path, fps: float) -> VideoFile:
    """Probe `path` with ffmpeg's showinfo filter: every delivered frame's pts and size."""
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path),
               "-vf", "showinfo", *_PASSTHROUGH, "-f", "null", "-"]
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    except OSError as e:
        raise VideoError(f"cannot run ffmpeg to read {path} ({e}); reinstall imageio-ffmpeg.") from None
    log = done.stderr.decode("utf-8", "replace")
    found = [(float(m.group(3)), int(m.group(4)), int(m.group(5))) for m in _SHOWINFO.finditer(log)]
    if not found:
        if "Video:" not in log:
            raise VideoError(f"{path} is not a video that ffmpeg can read (no video stream found); "
                             f"give an MP4, MOV, AVI, WebM or MKV file, or a folder of numbered frames.")
        raise VideoError(f"{path} has no frames that can be decoded (a zero-length or broken video).")
    sizes = {(w, h) for _, w, h in found}
    if len(sizes) > 1:
        raise VideoError(f"{path} changes its frame size mid-stream ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                         f"re-encode it to one size.")
    times = np.array([t for t, _, _ in found], dtype=np.float64)
    times -= times[0]
    if fps <= 0:
        steps = np.diff(times)
        steps = steps[steps > 1e-6]
        fps = round(1.0 / float(np.median(steps)), 3) if len(steps) else DEFAULT_FPS
    grid, seen = [], set()
    for t in times:
        index = int(round(t * fps))
        grid.append(-1 if index in seen or index < 0 else index)
        seen.add(index)
    count = max(seen) + 1
    problems = {i: "dropped by the decoder (corrupt or missing data)" for i in range(count) if i not in seen}
    errors = sum(1 for line in log.splitlines() if "rror" in line)
    width, height = next(iter(sizes))
    return VideoFile(path, "video", float(fps), width, height, count, problems, errors, grid)


def _open_folder(path: Path, fps: float) -> FrameFolder:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoError(f"{path} holds no PNG, JPEG, PPM, TIFF or WebP frames; give a folder of "
                         f"numbered images or a video file.")
    numbered: dict[int, Path] = {}
    for file in files:
        match = _NUMBER.search(file.stem)
        if match is None:
            raise VideoError(f"{file} has no frame number in its name; name the frames with their "
                             f"numbers (frame_0001.png, frame_0002.png, ...).")
        number = int(match.group(1))
        if number in numbered:
            raise VideoError(f"{numbered[number].name} and {file.name} have the same frame number {number}; "
                             f"keep one of them.")
        numbered[number] = file
    first = min(numbered)
    grid = {n - first: p for n, p in numbered.items()}
    count = max(grid) + 1
    problems = {i: "missing (no file with this frame number)" for i in range(count) if i not in grid}
    width = height = 0
    for index in sorted(grid):
        try:
            with _pil_open(grid[index]) as image:
                width, height = _upright_size(image)
            break
        except OSError:
            continue
    if not width:
        raise VideoError(f"none of the images in {path} can be read; check the files.")
    return FrameFolder(path, "frames", float(fps or DEFAULT_FPS), width, height, count, problems, 0, grid)


def _pil_open(path: Path):
    from PIL import Image

    return Image.open(path, formats=PIL_FORMATS)


def _upright_size(image) -> tuple[int, int]:
    """(width, height) of an opened PIL image as `read_image` returns it (EXIF orientation applied)."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (width, height)


# -- writing -------------------------------------------------------------------------------------

@contextmanager
def mp4_writer(path: str | Path, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """Write an H.264 MP4 (yuv420p) frame by frame with imageio-ffmpeg's bundled ffmpeg,
    atomically: yields `append(frame)` for uint8 (H, W, 3) frames of one size; the file appears
    at `path` only when the block ends without an exception. The encoding of
    `mfface.replay.write_mp4` (which takes all frames at once); odd sizes are padded by repeating
    the last row / column."""
    import imageio.v2 as iio2

    with atomic_path(path) as tmp:
        writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                                 pixelformat="yuv420p", macro_block_size=2,
                                 output_params=["-movflags", "+faststart"])

        def append(frame: np.ndarray) -> None:
            writer.append_data(even_frames(frame[None])[0])
        try:
            yield append
        finally:
            writer.close()
