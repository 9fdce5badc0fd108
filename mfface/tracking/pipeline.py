"""`mfface track`'s pipeline: a video (or frame folder) in, a tracking result folder out.

Passes over the frames (each streamed, one frame in memory at a time):
1. detect: MediaPipe landmarks per frame (`FaceFollower`), and each face's sharpness;
2. identity: the chosen frames (`choose_frames`, `select.shape_frames` of them) are read again,
   held in memory, and fitted together with the fit's shared-identity mode (`fit_identity`): the
   shape and focal length from all of them, the maps from the best few;
3. track: pose and expression per frame from the landmarks (`track_landmarks`), no frames needed;
4. photometric (optional, `photometric.iterations` > 0): each tracked frame refined through the
   renderer (`FrameRefiner`), then lost frames interpolated again;
5. video (optional): tracked.mp4 (`OverlayRenderer`), written while the frames stream by.
Then animation.json, animation.csv, animation.glb, config.toml and the identity result folders.

The result folder `OUT/<video name>/` is written atomically (`mfface.atomic.atomic_dir`): under a
temporary name, renamed when complete, so an interrupted or failed run leaves nothing that looks
finished. An earlier tracking result there is replaced only with `overwrite`, and never anything
that is not one (`check_track_target`).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_dir, write_text
from mfface.config import to_toml
from mfface.fitting.pipeline import Reconstructor, landmark_index, prepare_photo
from mfface.forward import ForwardModel
from mfface.interrupt import raise_if_requested
from mfface.landmarks import LandmarkDetector
from mfface.morphable.model import MorphableModel
from mfface.outputs import OutputError
from mfface.tracking.animation import (TRACK_FORMAT, expression_curves, frame_rows, write_animation_csv,
                                       write_animation_json)
from mfface.tracking.config import TrackConfig
from mfface.tracking.detect import FaceFollower, FollowStats
from mfface.tracking.gltf_animation import write_animation_glb
from mfface.tracking.identity import VideoIdentity, fit_identity, frame_name
from mfface.tracking.refine import FrameRefiner
from mfface.tracking.render import OverlayRenderer
from mfface.tracking.select import choose_frames, sharpness
from mfface.tracking.temporal import interpolate_gaps, jitter
from mfface.tracking.tracker import LOST, TRACKED, UNREADABLE, Track, track_landmarks, working_scale
from mfface.tracking.video import FrameSource, VideoError, mp4_writer

# Every entry `mfface track` writes into its result folder.
TRACK_ENTRIES = frozenset({"animation.json", "animation.csv", "animation.glb", "tracked.mp4", "config.toml",
                           "identity"})
N_LANDMARKS = 478
# on_progress(phase, done, total, note): phase 'detect', 'track', 'photometric', 'video', or
# 'identity <stage>' (stage2 / stage3 iterations of the identity fit).
ProgressCallback = Callable[[str, int, int, str], None]


class TrackError(ValueError):
    """A video that cannot be tracked (no face in any frame, an empty time range); one sentence."""


def check_track_target(folder: Path, overwrite: bool) -> None:
    """Raise OutputError unless `folder` may receive a tracking result: it does not exist, or it
    holds an earlier tracking result (format mfface-track, only files `mfface track` writes) and
    `overwrite` is set."""
    import json

    if not folder.exists() and not folder.is_symlink():
        return
    try:
        ours = (folder.is_dir() and not folder.is_symlink() and json.loads(
            (folder / "animation.json").read_text(encoding="utf-8")).get("format") == TRACK_FORMAT)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        what = "a folder that is not an mfface tracking result" if folder.is_dir() else "a file"
        raise OutputError(f"{folder} already exists and is {what}; mfface will not replace it, so choose "
                          f"another output folder with -o or move it away.")
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in TRACK_ENTRIES)
    if foreign:
        raise OutputError(f"{folder} holds an earlier tracking result plus files mfface did not write "
                          f"({', '.join(foreign[:5])}); move them out of it first.")
    if not overwrite:
        raise OutputError(f"{folder} holds an earlier tracking result; pass --overwrite to replace it, or "
                          f"choose another output folder with -o.")


@dataclass
class TrackReport:
    """What a tracking run did, for the summary table and animation.json's `summary`."""
    folder: Path
    frames: int
    first_frame: int
    fps: float
    status_counts: dict[str, int]
    problems: list[tuple[int, str]]
    detection: FollowStats
    identity_frames: list[int]
    shape_frames: list[int]
    focal_px: float
    working_scale: float
    seconds: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    rms_px: dict[str, float] = field(default_factory=dict)
    jitter: dict[str, float] = field(default_factory=dict)
    photo_l1: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"frames": self.frames, "status_counts": self.status_counts,
                "problems": [{"frame": i, "problem": p} for i, p in self.problems],
                "detection": {"followed": self.detection.followed, "searched": self.detection.searched,
                              "missed": self.detection.missed, "mediapipe_seconds": round(self.detection.seconds, 3)},
                "identity_frames": self.identity_frames, "shape_frames": self.shape_frames, "seconds": _rounded(self.seconds),
                "frames_per_second": _rounded(self.rates), "landmark_rms_px": _rounded(self.rms_px),
                "jitter": _rounded(self.jitter), "photometric_l1": _rounded(self.photo_l1)}


def _rounded(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(float(v), 4) if math.isfinite(v) else None) for k, v in values.items()}


@dataclass
class _Detections:
    """Pass 1's findings for frames first .. first + T - 1."""
    landmarks: np.ndarray   # (T, 478, 2) float32 video px, NaN where no face
    found: np.ndarray       # (T,) bool
    unreadable: np.ndarray  # (T,) bool
    sharp: np.ndarray       # (T,) sharpness, 0 where no face
    problems: list[tuple[int, str]]


def frame_range(source: FrameSource, config: TrackConfig) -> tuple[int, int]:
    """[first, stop) grid frames of `video.start` .. `video.end` (s); TrackError when empty."""
    first = int(math.ceil(config.video.start * source.fps - 1e-6))
    stop = source.count if config.video.end <= 0 else min(source.count, int(math.floor(config.video.end * source.fps + 1e-6)) + 1)
    if first >= stop:
        raise TrackError(f"the time range {config.video.start}-{config.video.end or source.duration:g} s holds no "
                         f"frame of {source.path} ({source.count} frames at {source.fps:g} frames/s, "
                         f"{source.duration:.2f} s).")
    return first, stop


class VideoTracker:
    """Tracks videos with one model, config and device; `run` makes one result folder."""

    def __init__(self, model: MorphableModel, config: TrackConfig, device: torch.device | str = "cpu") -> None:
        self.model, self.config = model, config
        self.device = torch.device(device)
        self.reconstructor = Reconstructor(model, config.fit_config(), self.device)
        self.forward: ForwardModel = self.reconstructor.forward
        self.index = landmark_index(model, "mediapipe478", N_LANDMARKS)

    # -- passes ------------------------------------------------------------------------------------

    def detect(self, source: FrameSource, first: int, stop: int, detector: LandmarkDetector,
               on_progress: ProgressCallback | None = None) -> tuple[_Detections, FollowStats]:
        """Pass 1: landmarks and sharpness of every frame in [first, stop)."""
        total = stop - first
        found = _Detections(np.full((total, N_LANDMARKS, 2), np.nan, np.float32), np.zeros(total, bool),
                            np.zeros(total, bool), np.zeros(total), [])
        follower = FaceFollower(detector, self.config.detect.follow, self.config.detect.follow_margin)
        for frame in source.frames(stop):
            if frame.index < first:
                continue
            i = frame.index - first
            if frame.image is None:
                found.unreadable[i] = True
                found.problems.append((frame.index, frame.problem or "unreadable"))
                follower.reset()
            else:
                points = follower.find(frame.image)
                if points is not None:
                    found.landmarks[i], found.found[i] = points, True
                    found.sharp[i] = sharpness(frame.image, points)
            raise_if_requested()
            if on_progress is not None:
                on_progress("detect", i + 1, total, f"{int(found.found[:i + 1].sum())} faces")
        return found, follower.stats

    def identity(self, source: FrameSource, first: int, stop: int, found: _Detections,
                 on_progress: ProgressCallback | None = None) -> VideoIdentity:
        """Pass 2: choose the identity frames, read them again and fit them together."""
        chosen = choose_frames(self.model, found.landmarks, found.found, found.sharp, self.index,
                               source.width, source.height, self.config.select)
        wanted = {first + i for i in chosen}
        images = {}
        for frame in source.frames(max(wanted) + 1):
            if frame.index in wanted and frame.image is not None:
                images[frame.index] = frame.image.copy()
        missing = sorted(wanted - set(images))
        if missing:
            raise TrackError(f"frames {', '.join(map(str, missing))} of {source.path} read differently the "
                             f"second time; the video cannot be read reliably, re-encode it.")

        def on_step(stage: str, i: int, n: int, losses: dict[str, float]) -> None:
            if on_progress is not None:
                on_progress(f"identity {stage}", i + 1, n, f"loss {losses.get('total', float('nan')):.4g}")
        landmarks = {i: found.landmarks[i - first].astype(np.float64) for i in images}
        return fit_identity(self.reconstructor, images, landmarks, [first + i for i in chosen], self.config,
                            on_step)

    def refine(self, source: FrameSource, first: int, stop: int, track: Track, found: _Detections,
               identity: VideoIdentity, focal_px: float, scale: float,
               on_progress: ProgressCallback | None = None) -> tuple[Track, dict[str, float]]:
        """Pass 4: photometric refinement of every tracked frame; lost frames interpolated again."""
        config = self.config
        refiner = FrameRefiner(self.forward, identity.appearance, self.index, config, scale)
        fit_config = config.fit_config()
        before, after = [], []
        total = stop - first
        for frame in source.frames(stop):
            if frame.index < first:
                continue
            i = frame.index - first
            if track.status[i] != TRACKED or frame.image is None:
                refiner.reset()
            else:
                prepared = prepare_photo(torch.from_numpy(frame.image.copy()), found.landmarks[i],
                                         "mediapipe478", fit_config, frame_name(frame.index),
                                         size=config.photometric.size, enlarge=True)
                done = refiner.refine(prepared, frame.index, focal_px, track.euler[i], track.translation[i],
                                      track.expression[i])
                track.euler[i], track.translation[i], track.expression[i] = done.euler, done.translation, done.expression
                before.append(done.photo_before)
                after.append(done.photo_after)
            raise_if_requested()
            if on_progress is not None:
                on_progress("photometric", i + 1, total, f"L1 {after[-1]:.4f}" if after else "")
        track.euler, track.translation, track.expression = interpolate_gaps(
            track.good, track.euler, track.translation, track.expression)
        return track, {"first_iteration": float(np.median(before)) if before else float("nan"),
                       "last_iteration": float(np.median(after)) if after else float("nan")}

    def video(self, path: Path, source: FrameSource, first: int, stop: int, track: Track,
              identity: VideoIdentity, focal_px: float, on_progress: ProgressCallback | None = None) -> None:
        """Pass 5: tracked.mp4 at the source's frame rate."""
        out = self.config.output
        renderer = OverlayRenderer(self.forward, identity.appearance, self.config.fit_config(), source.width,
                                   source.height, focal_px, out.video_height, out.render_size, out.video_spp)
        labels = {LOST: "face lost: interpolated", UNREADABLE: "unreadable frame: interpolated"}
        total = stop - first
        with mp4_writer(path, source.fps) as append:
            for frame in source.frames(stop):
                if frame.index < first:
                    continue
                i = frame.index - first
                append(renderer.frame(frame.image, frame.index, track.euler[i], track.translation[i],
                                      track.expression[i], labels.get(track.status[i], "")))
                raise_if_requested()
                if on_progress is not None:
                    on_progress("video", i + 1, total, "")

    # -- the whole run ---------------------------------------------------------------------------

    def run(self, source: FrameSource, folder: Path, detector: LandmarkDetector, overwrite: bool = False,
            on_progress: ProgressCallback | None = None) -> TrackReport:
        """Track `source` into the result folder `folder` (see the module docstring)."""
        config = self.config
        check_track_target(folder, overwrite)
        first, stop = frame_range(source, config)
        seconds: dict[str, float] = {}
        rates: dict[str, float] = {}
        started = time.perf_counter()
        found, stats = self.detect(source, first, stop, detector, on_progress)
        seconds["detect"] = time.perf_counter() - started
        total = stop - first
        if not found.found.any():
            raise TrackError(f"no face was found in any of the {total} frames of {source.path}; faces are "
                             f"found when visible and at least about 44 px wide.")
        rates["mediapipe"] = (total - int(found.unreadable.sum())) / max(stats.seconds, 1e-9)
        started = time.perf_counter()
        identity = self.identity(source, first, stop, found, on_progress)
        seconds["identity"] = time.perf_counter() - started
        focal_px = config.track.focal or identity.focal_px
        scale = working_scale(found.landmarks, found.found, config.input.max_resolution)
        identity_coefficients = identity.appearance.identity.cpu()

        def on_window(done: int, count: int) -> None:
            if on_progress is not None:
                on_progress("track", done, count, "")
        track = track_landmarks(self.model, found.landmarks.astype(np.float64), found.found, self.index,
                                identity_coefficients, focal_px, source.width, source.height, scale,
                                config.track, config.landmarks, found.unreadable, on_window)
        seconds["track"] = track.seconds
        rates["track"] = int(found.found.sum()) / max(track.seconds, 1e-9)
        rms = {"median": float(np.nanmedian(track.rms)) if track.good.any() else float("nan"),
               "p95": float(np.nanpercentile(track.rms, 95)) if track.good.any() else float("nan")}
        photo = {}
        if config.photometric.iterations > 0:
            started = time.perf_counter()
            track, photo = self.refine(source, first, stop, track, found, identity, focal_px, scale, on_progress)
            seconds["photometric"] = time.perf_counter() - started
            rates["photometric"] = int(track.good.sum()) / max(seconds["photometric"], 1e-9)
        times = (first + np.arange(total)) / source.fps
        report = TrackReport(folder, total, first, source.fps,
                             {s: track.status.count(s) for s in (TRACKED, LOST, UNREADABLE)}, found.problems,
                             stats, identity.frames, identity.shape_frames, focal_px, scale, seconds, rates, rms,
                             {"rotation_deg": jitter(np.degrees(track.euler)), "expression": jitter(track.expression)},
                             photo)
        with atomic_dir(folder) as tmp:
            if config.output.video:
                started = time.perf_counter()
                self.video(tmp / "tracked.mp4", source, first, stop, track, identity, focal_px, on_progress)
                seconds["video"] = time.perf_counter() - started
                rates["video"] = total / max(seconds["video"], 1e-9)
            self.write(tmp, source, times, track, identity, focal_px, report)
        return report

    def write(self, tmp: Path, source: FrameSource, times: np.ndarray, track: Track, identity: VideoIdentity,
              focal_px: float, report: TrackReport) -> None:
        """animation.json/.csv/.glb, config.toml and the identity result folders into `tmp`."""
        from mfface.results import write_results

        model, config = self.model, self.config
        blendshapes = model.expression_range is not None
        names = model.expression_names or [f"expression_{k}" for k in range(model.n_expression)]
        curves = expression_curves(track.expression, names, blendshapes, config.output.curve_names)
        rows = frame_rows(times, track.status, track.euler, track.translation, track.rms, curves, report.first_frame)
        write_results(identity.result, tmp / "identity")
        header = {
            "source": {"path": str(source.path), "kind": source.kind, "width_px": source.width,
                       "height_px": source.height, "fps": source.fps, "frames_in_source": source.count,
                       "first_frame": report.first_frame, "frames": report.frames},
            "model": {"name": model.name, "fingerprint": model.fingerprint(), "n_vertices": model.n_vertices,
                      "expression_kind": curves.kind, "expression_names": names},
            "curves": {"naming": curves.naming, "names": curves.names, "kind": curves.kind,
                       "range": list(model.expression_range) if blendshapes else None,
                       "untracked": curves.untracked},
            "camera": {"focal_px": focal_px, "principal_px": [source.width / 2.0, source.height / 2.0],
                       "convention": "OpenCV: camera at the origin, +x right, +y down, +z forward; "
                                     "u = f x / z + c_x, v = f y / z + c_y in the video's pixels"},
            "pose_convention": "X_camera = R0 R_head X_model + t, R0 = diag(1, -1, -1); R_head = Ry(yaw) "
                               "Rx(pitch) Rz(roll) about the model's axes (+x the face's left, +y up, +z out "
                               "of the face), mm; quaternion (x, y, z, w) of R_head",
            "identity": {"frames": identity.frames, "shape_frames": identity.shape_frames,
                         "folders": [f"identity/{frame_name(i)}" for i in identity.frames],
                         "coefficients": identity.appearance.identity[0].cpu().tolist()},
            "summary": report.as_json(),
        }
        write_animation_json(tmp / "animation.json", header, rows)
        write_animation_csv(tmp / "animation.csv", rows, curves)
        if config.output.glb:
            state = identity.appearance
            maps = {"diffuse": state.diffuse[0].cpu().numpy(), "specular": state.specular[0].cpu().numpy(),
                    "roughness": state.roughness[0, ..., 0].cpu().numpy()}
            write_animation_glb(tmp / "animation.glb", model, state.identity, maps, times, track.euler,
                                track.translation, track.expression, focal_px, source.width, source.height, names)
        write_text(tmp / "config.toml", to_toml(config))


__all__ = ["TRACK_ENTRIES", "TrackError", "TrackReport", "VideoError", "VideoTracker", "check_track_target",
           "frame_range"]
