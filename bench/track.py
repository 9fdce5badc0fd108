"""Tracking quality, jitter, speed and memory (`mfface track`), against known truth.

Synthetic video (`mfface.tracking.clips.synthetic_clip`): the default model driven by smooth
random head motion (yaw +-25, pitch +-12, roll +-8 deg) and smooth random curves of 15 ARKit
blendshapes (`clips.DEFAULT_ACTIVE`: jaw, smile, blink, brows, pucker, funnel, wide eyes,
stretch; each resting at 0 about half the time), rendered with Mitsuba through the forward model
(painted skin, procedural light, painted eyes and mouth interior) at `--size` px and `--spp`,
written as an H.264 MP4 and tracked through the same passes as `mfface track`
(`VideoTracker.detect`, `.identity`, `track_landmarks`), with MediaPipe on every frame. Figures:
- head rotation error: the angle of R_true^T R_fitted per frame (deg), median and 90th percentile;
- active blendshape error: |w_fitted - w_true| over every frame of the 15 driven shapes, median
  (and the median over the frames where the truth is above 0.1, and the mean weight the tracker
  puts on the 40 undriven shapes);
- jitter: mean |frame-to-frame acceleration| of the rotation (deg) and of the driven curves, as a
  ratio to the truth's;
- frames/s of MediaPipe (the follow-the-face detection), of the landmark tracking after detection
  (wall clock, and per second of this process's CPU time: the tracker runs on one thread, so the
  latter is what an idle core gives when the machine is shared) and the identity fit's seconds, and of the photometric refinement (`--photometric N` on the
  first `--photometric-frames` frames, its errors on those frames beside the landmark tracker's);
- the identity: the neutral shape's median vertex distance to the truth after a similarity
  alignment with scale (mm), and the focal length, from `select.shape_frames` frames and from the 4
  of the maps (the default before), beside the mean face's distance;
- the trivial baseline (a frontal head, every weight 0) measured the same way;
- the same for variants: no smoothing, stage 1's Adam (`track.solver = adam`), a stronger
  expression prior (`track.expression_prior` 1, 5, 20), no L1 expression prior
  (`track.expression_sparsity` 0) and the defaults before it (prior 5, no L1), the shape and focal
  from the maps' 4 frames (the default before `select.shape_frames`), the true identity
  and focal length (what the identity fit costs), the model's exact projected landmarks instead
  of MediaPipe's (what the detector's disagreement with the model costs).
Real clip: the shared photos (astronaut, obama_a, biden_a) moved by a small smooth affine motion
(`clips.affine_clip`, rotation +-6 deg in the image plane); no truth but the in-plane angle, so:
frames tracked, landmark RMS, jitter, and how the fitted roll follows the applied rotation (the
identity from stage 1 only: the landmark tracker uses nothing else of it).
Memory (`--memory`): a 2-minute 720p clip (3600 frames, the astronaut in motion) generated frame
by frame and tracked by the `mfface track` command in a subprocess; peak RSS (and on a 30 s clip,
to show it does not grow with length).
The last line printed is one JSON object with every figure.

    MFFACE_HOME=... .venv/bin/python bench/track.py [--frames 150] [--size 256] [--spp 32]
        [--photometric 20 --photometric-frames 30] [--real] [--memory]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import mfface  # noqa: F401  (sets torch's OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfface.config import apply_overrides  # noqa: E402
from mfface.tracking.clips import (affine_clip, rotation_error_deg, synthetic_clip,  # noqa: E402
                                   write_video)
from mfface.tracking.config import TrackConfig  # noqa: E402
from mfface.tracking.temporal import jitter  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "track"
DATA = Path(os.environ.get("MFFACE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _r(x: float, digits: int = 4) -> float | None:
    return round(float(x), digits) if np.isfinite(x) else None


def errors(track_euler: np.ndarray, track_expression: np.ndarray, clip, frames: slice = slice(None)) -> dict:
    """The figures of one tracked sequence against the clip's truth (see the module docstring)."""
    truth_euler, truth_expression = clip.euler[frames], clip.expression[frames]
    rot = rotation_error_deg(track_euler, truth_euler)
    active = clip.active
    diff = np.abs(track_expression[:, active] - truth_expression[:, active])
    on = truth_expression[:, active] > 0.1
    inactive = np.delete(np.arange(truth_expression.shape[1]), active)
    out = {"rotation_deg_median": _r(np.median(rot)), "rotation_deg_p90": _r(np.percentile(rot, 90)),
           "blendshape_mae_median": _r(np.median(diff)), "blendshape_mae_median_when_on": _r(np.median(diff[on])),
           "blendshape_mae_mean": _r(diff.mean()), "inactive_mean_weight": _r(track_expression[:, inactive].mean())}
    if len(rot) >= 3:
        out["jitter_rotation_ratio"] = _r(jitter(np.degrees(track_euler)) / jitter(np.degrees(truth_euler)))
        out["jitter_blendshape_ratio"] = _r(jitter(track_expression[:, active]) / jitter(truth_expression[:, active]))
    corr = [np.corrcoef(track_expression[:, k], truth_expression[:, k])[0, 1] for k in active
            if track_expression[:, k].std() > 1e-6 and truth_expression[:, k].std() > 1e-6]
    out["blendshape_correlation_median"] = _r(np.median(corr)) if corr else None
    return out


def run_synthetic(args, model, tracker_config: TrackConfig) -> dict:
    from mfface.fitting.pipeline import landmark_index
    from mfface.landmarks import LandmarkDetector
    from mfface.tracking.pipeline import VideoTracker, frame_range
    from mfface.tracking.tracker import track_landmarks, working_scale
    from mfface.tracking.video import open_frames

    import pickle

    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # the renders paint the eyes and mouth from the landmark table, and the exact landmarks are its
    # vertices: a clip cached with another table is not this one
    table = hashlib.sha256(np.ascontiguousarray(model.landmarks["mediapipe478"]).tobytes()).hexdigest()[:8]
    cache = OUT / f"synthetic_{model.name}_{table}_{args.frames}_{args.size}_{args.seed}_{args.spp}.pkl"
    if cache.exists():  # rendering is the slow part; the clip is deterministic per these settings
        clip = pickle.loads(cache.read_bytes())
    else:
        clip = synthetic_clip(model, args.frames, args.size, seed=args.seed, spp=args.spp)
        cache.write_bytes(pickle.dumps(clip))
    render_seconds = time.perf_counter() - started
    video = OUT / f"synthetic_{args.frames}_{args.size}_{args.seed}.mp4"
    write_video(video, clip.frames, clip.fps)
    print(f"synthetic clip: {args.frames} frames, {args.size} px, {args.spp} spp, rendered in {render_seconds:.0f} s; "
          f"driven shapes: {', '.join(model.expression_names[k] for k in clip.active)}", flush=True)
    source = open_frames(video)
    tracker = VideoTracker(model, tracker_config)
    first, stop = frame_range(source, tracker_config)
    with LandmarkDetector.from_config(tracker_config.input) as detector:
        found, stats = tracker.detect(source, first, stop, detector)
    started = time.perf_counter()
    identity = tracker.identity(source, first, stop, found)
    identity_seconds = time.perf_counter() - started
    index = landmark_index(model, "mediapipe478", 478)
    scale = working_scale(found.landmarks, found.found, tracker_config.input.max_resolution)
    result = {"frames": args.frames, "size": args.size, "spp": args.spp, "seed": args.seed,
              "mediapipe_fps": _r(int(found.found.sum()) / stats.seconds, 1),
              "mediapipe_followed": stats.followed, "mediapipe_searched": stats.searched,
              "mediapipe_missed": stats.missed, "identity_seconds": _r(identity_seconds, 1),
              "identity_frames": identity.frames, "shape_frames": identity.shape_frames,
              "focal_px": _r(identity.focal_px, 1), "true_focal_px": clip.focal,
              "identity_vertex_mm": shape_error(model, identity.appearance.identity, clip.identity)}
    # the identity before select.shape_frames: shape and focal from the 4 frames of the maps
    few = VideoTracker(model, apply_overrides(tracker_config, {"select.shape_frames": 4, "select.last_stage": 1}))
    identity_4 = few.identity(source, first, stop, found)
    result["identity_4_frames"] = {"frames": identity_4.frames, "focal_px": _r(identity_4.focal_px, 1),
                                   "identity_vertex_mm": shape_error(model, identity_4.appearance.identity,
                                                                     clip.identity)}
    print(f"identity from {len(identity.shape_frames)} frames: focal {result['focal_px']} px (true {clip.focal}), "
          f"neutral shape {result['identity_vertex_mm']} mm; from 4 frames: {result['identity_4_frames']}; "
          f"mean face {shape_error(model, torch.zeros_like(clip.identity), clip.identity)} mm", flush=True)

    def track(label: str, landmarks=None, identity_=None, focal=None, **changes):
        config = dataclasses.replace(tracker_config.track, **changes)
        started, cpu = time.perf_counter(), time.process_time()
        tracked = track_landmarks(model, (found.landmarks if landmarks is None else landmarks).astype(np.float64),
                                  found.found, index, identity.appearance.identity if identity_ is None else identity_,
                                  focal or identity.focal_px, source.width, source.height, scale, config,
                                  tracker_config.landmarks)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        count = int(found.found.sum())
        figures = {**errors(tracked.euler, tracked.expression, clip), "fps": _r(count / seconds, 1),
                   "fps_cpu_time": _r(count / cpu, 1), "tracked": tracked.status.count("tracked")}
        print(f"  {label:34s} " + "  ".join(f"{k} {v}" for k, v in figures.items()), flush=True)
        result[label] = figures
        return tracked

    print("synthetic clip, landmark tracking:", flush=True)
    default = track("default")
    track("no_smoothing", rotation_smoothness=0.0, translation_smoothness=0.0, expression_smoothness=0.0)
    track("velocity_order_1", order=1)
    track("adam", solver="adam")
    for weight in (1.0, 5.0, 20.0):  # how strongly the expression prior must pull undriven shapes to 0
        track(f"expression_prior_{weight:g}", expression_prior=weight)
    track("no_sparsity", expression_sparsity=0.0)
    track("before_sparsity_prior_5", expression_prior=5.0, expression_sparsity=0.0)  # the defaults until 2026-12-02
    track("identity_from_4_frames", identity_=identity_4.appearance.identity, focal=identity_4.focal_px)
    track("true_identity_and_focal", identity_=clip.identity, focal=clip.focal)
    track("exact_model_landmarks", landmarks=clip.landmarks.astype(np.float32), identity_=clip.identity,
          focal=clip.focal)
    # The trivial baseline, measured the same way: a frontal head with every weight 0.
    result["baseline_frontal_neutral"] = errors(np.zeros_like(clip.euler), np.zeros_like(clip.expression), clip)
    print(f"  {'baseline: frontal, all weights 0':34s} " + "  ".join(
        f"{k} {v}" for k, v in result["baseline_frontal_neutral"].items()), flush=True)
    result["truth_jitter_rotation_deg"] = _r(jitter(np.degrees(clip.euler)), 5)
    result["truth_jitter_blendshape"] = _r(jitter(clip.expression[:, clip.active]), 5)
    if args.photometric > 0:
        result["photometric"] = run_photometric(args, model, tracker_config, clip, source, found, identity,
                                                default, scale)
    return result


def shape_error(model, identity: torch.Tensor, true_identity: torch.Tensor) -> float:
    """Median distance (mm) between the neutral faces of two identities after a similarity
    alignment with scale (the fit benchmark's measure)."""
    from mfface.metrics import aligned_distances

    def neutral(coefficients: torch.Tensor) -> np.ndarray:
        return model.vertices(torch.as_tensor(coefficients, dtype=torch.float32).reshape(1, -1))[0].numpy()
    return _r(float(np.median(aligned_distances(neutral(identity), neutral(true_identity), scale=True))), 3)


def run_photometric(args, model, tracker_config, clip, source, found, identity, default, scale) -> dict:
    """`--photometric N` on the first frames: errors before (landmarks) and after, frames/s; with
    the default L1 expression prior and without it (`photometric.expression_sparsity` 0)."""
    from mfface.tracking.pipeline import VideoTracker
    from mfface.tracking.tracker import Track

    count = min(args.photometric_frames, args.frames)
    window = slice(0, count)
    out = {"iterations": args.photometric, "frames": count,
           "landmarks_only": errors(default.euler[window], default.expression[window], clip, window)}
    print(f"  photometric on {count} frames, landmarks only: {out['landmarks_only']}", flush=True)
    for label, changes in (("refined", {}), ("refined_no_sparsity", {"photometric.expression_sparsity": 0.0})):
        config = apply_overrides(tracker_config, {"photometric.iterations": args.photometric, **changes})
        tracker = VideoTracker(model, config)
        part = Track(default.euler[window].copy(), default.translation[window].copy(),
                     default.expression[window].copy(), default.status[window], default.rms[window].copy())
        started = time.perf_counter()
        refined, photo = tracker.refine(source, 0, count, part, found, identity, identity.focal_px, scale)
        seconds = time.perf_counter() - started
        out[label] = {**errors(refined.euler, refined.expression, clip, window), "fps": _r(count / seconds, 3),
                      "photo_l1_first_iteration": _r(photo["first_iteration"]),
                      "photo_l1_last_iteration": _r(photo["last_iteration"])}
        print(f"  photometric {args.photometric} its, {label}: {out[label]}", flush=True)
    return out


def run_real(args, model, tracker_config: TrackConfig) -> list[dict]:
    """The shared photos in affine motion: frames tracked, RMS, jitter, roll vs the applied angle."""
    from PIL import Image

    from mfface.fitting.pipeline import landmark_index
    from mfface.landmarks import LandmarkDetector
    from mfface.tracking.clips import smooth_curve
    from mfface.tracking.pipeline import VideoTracker, frame_range
    from mfface.tracking.tracker import track_landmarks, working_scale
    from mfface.tracking.video import open_frames

    rows = []
    # The landmark tracker needs only the identity's shape and the focal: stage 1 gives them.
    tracker_config = apply_overrides(tracker_config, {"select.last_stage": 1})
    for name in ("astronaut.png", "people/obama_a.jpg", "people/biden_a.jpg"):
        path = DATA / "images" / name
        if not path.is_file():
            print(f"real clip: {path} missing, skipped", flush=True)
            continue
        photo = np.asarray(Image.open(path).convert("RGB"))
        frames = affine_clip(photo, args.frames, size=(args.size, args.size), seed=args.seed)
        angle = 6.0 * smooth_curve(np.random.default_rng(args.seed), args.frames, 30.0, 0.1, 0.5)  # affine_clip's
        video = OUT / f"real_{Path(name).stem}.mp4"
        write_video(video, frames, 30.0)
        source = open_frames(video)
        tracker = VideoTracker(model, tracker_config)
        first, stop = frame_range(source, tracker_config)
        with LandmarkDetector.from_config(tracker_config.input) as detector:
            found, stats = tracker.detect(source, first, stop, detector)
        identity = tracker.identity(source, first, stop, found)
        scale = working_scale(found.landmarks, found.found, tracker_config.input.max_resolution)
        index = landmark_index(model, "mediapipe478", 478)
        row = {"clip": Path(name).stem, "frames": args.frames, "faces_found": int(found.found.sum()),
               "mediapipe_fps": _r(int(found.found.sum()) / stats.seconds, 1)}
        for label, changes in (("default", {}), ("no_smoothing", {"rotation_smoothness": 0.0,
                                                                   "translation_smoothness": 0.0,
                                                                   "expression_smoothness": 0.0})):
            started = time.perf_counter()
            tracked = track_landmarks(model, found.landmarks.astype(np.float64), found.found, index,
                                      identity.appearance.identity, identity.focal_px, source.width, source.height,
                                      scale, dataclasses.replace(tracker_config.track, **changes),
                                      tracker_config.landmarks)
            seconds = time.perf_counter() - started
            roll = np.degrees(tracked.euler[:, 2])
            # affine_clip turns the image by +angle clockwise on screen (x towards y-down), and a
            # positive roll turns the head counter-clockwise: the roll changes by -angle.
            follow = (roll - roll.mean()) + (angle - angle.mean())
            row[label] = {"tracked": tracked.status.count("tracked"), "fps": _r(args.frames / seconds, 1),
                          "landmark_rms_px_median": _r(np.nanmedian(tracked.rms)),
                          "jitter_rotation_deg": _r(jitter(np.degrees(tracked.euler)), 5),
                          "jitter_expression": _r(jitter(tracked.expression), 5),
                          "roll_vs_applied_rotation_deg_median": _r(np.median(np.abs(follow)))}
        row["applied_rotation_jitter_deg"] = _r(jitter(angle[:, None]), 5)
        print(f"real clip {row}", flush=True)
        rows.append(row)
    return rows


def run_memory(args) -> dict:
    """Peak RSS of `mfface track` on generated 720p clips of 30 s and 2 min (streamed both ways)."""
    from PIL import Image

    from mfface.tracking.video import mp4_writer

    photo = Image.open(DATA / "images" / "astronaut.png").convert("RGB")
    out = {}
    for seconds in (30, 120):
        video = OUT / f"memory_{seconds}s_720p.mp4"
        if not video.exists():
            frames = seconds * 30
            chunk = 150
            with mp4_writer(video, 30.0) as append:
                for start in range(0, frames, chunk):  # affine motion in chunks: bounded memory here too
                    canvas = Image.new("RGB", (1280, 720), (70, 80, 90))
                    canvas.paste(photo.resize((400, 400)), (440, 160))
                    for frame in affine_clip(np.asarray(canvas), min(chunk, frames - start), seed=start):
                        append(frame)
        command = [str(Path(sys.executable).parent / "mfface"), "track", str(video), "-o", str(OUT / "memory"),
                   "--overwrite", *args.memory_options]
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
        wall = time.perf_counter() - started
        peak = [line for line in done.stderr.splitlines() if "Maximum resident set size" in line]
        rss_gb = int(peak[0].split(":")[1]) / 2 ** 20 if peak else float("nan")
        out[f"{seconds}s"] = {"frames": seconds * 30, "peak_rss_gb": _r(rss_gb, 3), "seconds": _r(wall, 1),
                              "exit_code": done.returncode}
        print(f"memory: {seconds} s 720p clip: peak RSS {rss_gb:.3f} GB, {wall:.0f} s, exit {done.returncode}",
              flush=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--spp", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--set", action="append", default=[], help="section.key=value for TrackConfig")
    parser.add_argument("--photometric", type=int, default=0)
    parser.add_argument("--photometric-frames", type=int, default=30)
    parser.add_argument("--real", action="store_true", help="also the shared photos in affine motion")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--memory", action="store_true", help="peak RSS on generated 720p clips")
    parser.add_argument("--memory-options", nargs=argparse.REMAINDER, default=[],
                        help="options passed to `mfface track` in the memory run (the rest of the line)")
    args = parser.parse_args()
    from mfface.backend import select_variant
    from mfface.morphable.store import ModelStore

    variant = select_variant()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value not in ("gauss-newton", "adam", "model", "arkit") else value
    config = apply_overrides(TrackConfig(), overrides)
    model = ModelStore().load(args.model)
    load = os.getloadavg()
    print(f"model {model.name}, variant {variant}, cores {os.cpu_count()}, load {load[0]:.2f}, "
          f"overrides {overrides or 'none'}", flush=True)
    summary = {"model": model.name, "variant": variant, "overrides": overrides, "cores": os.cpu_count(),
               "load_start": round(load[0], 2)}
    if not args.no_synthetic:
        summary["synthetic"] = run_synthetic(args, model, config)
    if args.real:
        summary["real"] = run_real(args, model, config)
    if args.memory:
        summary["memory"] = run_memory(args)
    summary["load_end"] = round(os.getloadavg()[0], 2)
    summary["max_rss_gb_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
