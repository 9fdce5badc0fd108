"""Per-frame head pose and expression from landmarks, identity and camera fixed, smooth in time.

The frames with a face are cut into runs of consecutive frames; each run is fitted `window`
frames at a time with stage 1's objective (the same landmark loss, parametrisation, expression
bounds and prior as `mfface.fitting.landmark_stage.fit_landmarks`) with the identity and the
focal length fixed and a `TemporalPrior` across the window and the frames tracked just before it,
minimised by `WindowSolver` (Levenberg-Marquardt, the default) or by `fit_landmarks` itself
(`solver = "adam"`, its `prior` argument). Each window starts from a PnP solve of every frame's
pose (`fit_landmarks` with 0 iterations: the identity and focal are known, so it is quick and
cannot drift) and the last tracked frame's expression; after more than `reinit_gap` lost frames
(and at the very start) the expression starts at 0 instead, so the tracker recovers when a face
comes back.
Frames whose fitted landmarks miss the detected ones by more than `max_rms` working px are
marked lost too. Lost frames are filled by `interpolate_gaps` (slerp for rotation, linear for
the rest, the nearest tracked frame held at the ends).

Coordinates: the tracker works in "working pixels", the video frame's pixels times `scale`
(`working_scale`), and the camera of the video: focal `focal_px` and principal point at the
frame's centre. Pose and expression follow `mfface.camera` and the model (euler rad, mm).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mfface.config import LandmarkConfig, Stage1Config
from mfface.fitting.landmark_stage import Stage1Result, fit_landmarks
from mfface.interrupt import raise_if_requested
from mfface.morphable.model import MorphableModel
from mfface.objectives import landmark_weights
from mfface.tracking.config import TrackStageConfig
from mfface.tracking.solver import WindowFit, WindowSolver
from mfface.tracking.temporal import TemporalPrior, interpolate_gaps

# Frame status in the outputs.
TRACKED, LOST, UNREADABLE = "tracked", "lost", "unreadable"
WindowCallback = Callable[[int, int], None]


def working_scale(landmarks: np.ndarray, found: np.ndarray, crop_px: int) -> float:
    """Factor from video px to working px: the median face crop side (the fit's crop, 1.5 x the
    landmarks' box) becomes `crop_px` (the fit's `input.max_resolution`)."""
    boxes = [float((p.max(0) - p.min(0)).max()) for p in landmarks[found]]
    if not boxes:
        raise ValueError("no frame has a face, so there is nothing to scale to.")
    return crop_px / (1.5 * float(np.median(boxes)))


@dataclass
class Track:
    """The tracked sequence, one row per grid frame (T frames).

    euler (T, 3) rad, translation (T, 3) mm (camera space, mfface.camera), expression (T, K);
    status (T,) TRACKED / LOST (no face, or fit rms above max_rms) / UNREADABLE (no image);
    rms (T,) the fit's landmark RMS in video px (NaN where not tracked); `seconds` the tracker's
    own time (no detection); `windows` how many windows were fitted."""
    euler: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    status: list[str]
    rms: np.ndarray
    seconds: float = 0.0
    windows: int = 0
    reinitialised: list[int] = field(default_factory=list)

    @property
    def good(self) -> np.ndarray:
        return np.array([s == TRACKED for s in self.status])


def _runs(found: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive True values."""
    runs, start = [], None
    for i, f in enumerate(list(found) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def track_landmarks(model: MorphableModel, landmarks: np.ndarray, found: np.ndarray,
                    landmark_index: np.ndarray, identity: torch.Tensor, focal_px: float,
                    width: int, height: int, scale: float, config: TrackStageConfig,
                    loss: LandmarkConfig | None = None, unreadable: np.ndarray | None = None,
                    on_window: WindowCallback | None = None) -> Track:
    """Track every frame (see the module docstring).

    landmarks (T, N, 2) video px (rows where `found` is False are ignored); landmark_index (N,)
    model vertex per landmark (-1 = not covered); identity (1, K_id) std units; focal_px the
    video's focal length in video px; width x height the video frame; scale video -> working px;
    `unreadable` (T,) frames that had no image (reported as UNREADABLE rather than LOST).
    `on_window(done_frames, total_frames)` after each window. Raises ValueError when no frame has
    a face.
    """
    threads = torch.get_num_threads()
    # A window's tensors are small (B x 468 x 61 values): torch's thread pool costs more than it
    # saves, and on a busy 2-core machine its spinning threads made an iteration 10x slower
    # (measured: 100 ms with 2 threads, 9 ms with 1).
    torch.set_num_threads(1)
    try:
        return _track(model, landmarks, found, landmark_index, identity, focal_px, width, height, scale,
                      config, loss, unreadable, on_window)
    finally:
        torch.set_num_threads(threads)


def _track(model: MorphableModel, landmarks: np.ndarray, found: np.ndarray, landmark_index: np.ndarray,
           identity: torch.Tensor, focal_px: float, width: int, height: int, scale: float,
           config: TrackStageConfig, loss: LandmarkConfig | None, unreadable: np.ndarray | None,
           on_window: WindowCallback | None) -> Track:
    started = time.perf_counter()
    found = np.asarray(found, dtype=bool)
    total = len(found)
    if not found.any():
        raise ValueError("no frame has a face to track.")
    k_exp = model.n_expression
    euler = np.zeros((total, 3))
    translation = np.zeros((total, 3))
    expression = np.zeros((total, k_exp))
    rms = np.full(total, np.nan)
    stage = Stage1Config(iterations=config.adam_iterations, lr=config.lr, expression_prior=config.expression_prior,
                         expression_sparsity=config.expression_sparsity,
                         fit_identity=False, identity_components=0, fit_focal=False,
                         focal=focal_px * scale)
    index = torch.as_tensor(landmark_index, dtype=torch.long)
    principal = torch.tensor([[width * scale / 2.0, height * scale / 2.0]])
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    identity = identity.detach().float().cpu()
    loss = loss or LandmarkConfig()
    weights = landmark_weights("mediapipe478", len(index), loss.contour_weight,
                               reliability=model.landmark_reliability.get("mediapipe478"))
    solver = WindowSolver(model, index, weights,
                          identity, focal_px * scale, w, h, principal, loss.robust_scale,
                          config.expression_prior, config.expression_sparsity)
    last = None                        # the last window's fit (its last row: the last tracked frame)
    last_frame = -10 ** 9
    history: list[int] = []            # tracked frames just before the window, in order
    done, windows, reinitialised = 0, 0, []
    for run_start, run_stop in _runs(found):
        gap = run_start - last_frame - 1
        restart = last is None or gap > config.reinit_gap
        history = history if gap == 0 else []
        for start in range(run_start, run_stop, config.window):
            stop = min(start + config.window, run_stop)
            batch = stop - start
            target = torch.from_numpy(landmarks[start:stop] * scale).float()
            # Pose from a PnP solve per frame (identity and focal known: no drift, any speed of
            # motion), expression warm-started from the last tracked frame.
            init = fit_landmarks(model, target, index, w, h, dataclasses.replace(stage, iterations=0),
                                 identity=identity, principal=principal.expand(batch, 2), loss=loss)
            if last is not None and not (restart and start == run_start):
                init.expression = last.expression[-1:].expand(batch, k_exp).clone()
            elif start == run_start:
                reinitialised.append(start)
            def solve(before: list[int], smooth: bool = True) -> WindowFit | Stage1Result:
                """The window fitted with the temporal prior over `before` and the window itself
                (none at all when not `smooth`)."""
                prior = TemporalPrior(config.rotation_smoothness, config.translation_smoothness,
                                      config.expression_smoothness, config.order,
                                      *(_rows(a, before) for a in (euler, translation, expression))) if smooth else None
                if config.solver == "adam":
                    return fit_landmarks(model, target, index, w, h, stage, init=init, identity=identity,
                                         principal=principal.expand(batch, 2), loss=loss, prior=prior)
                return solver.solve(target, init.euler, init.translation, init.expression, prior,
                                    config.iterations, config.tolerance)

            fitted = solve(history)
            if config.retry_missed:
                fitted = _retry_missed(fitted, solve, history, config.max_rms)
            euler[start:stop] = fitted.euler.numpy()
            translation[start:stop] = fitted.translation.numpy()
            expression[start:stop] = fitted.expression.numpy()
            rms[start:stop] = fitted.rms.numpy() / scale
            last = fitted
            last_frame = stop - 1
            history = (history + list(range(start, stop)))[-2:]
            windows += 1
            done += batch
            raise_if_requested()
            if on_window is not None:
                on_window(done, int(found.sum()))
    unreadable = np.zeros(total, bool) if unreadable is None else np.asarray(unreadable, dtype=bool)
    status = [TRACKED if f and rms[i] * scale <= config.max_rms else (UNREADABLE if unreadable[i] else LOST)
              for i, f in enumerate(found)]
    good = np.array([s == TRACKED for s in status])
    if not good.any():
        raise ValueError(f"the fit missed the detected landmarks by more than track.max_rms = "
                         f"{config.max_rms} px in every frame; raise it, or check the video.")
    euler, translation, expression = interpolate_gaps(good, euler, translation, expression)
    rms[~good] = np.nan
    return Track(euler, translation, expression, status, rms, time.perf_counter() - started, windows,
                 reinitialised)


Fit = WindowFit | Stage1Result   # a solved window: euler, translation, expression, rms per frame


def _missed(fitted: Fit, max_rms: float) -> int:
    """How many of a window's frames miss their landmarks by more than `max_rms` working px."""
    return int((fitted.rms > max_rms).sum())


def _retry_missed(fitted: Fit, solve: Callable[[list[int], bool], Fit], history: list[int],
                  max_rms: float) -> Fit:
    """A window some of whose frames the smoothed fit misses (a cut in the video, or motion faster
    than the temporal prior lets through) is fitted again without the frames before it, then
    without any temporal prior; the fit that misses fewest frames is kept, so the frames after
    a cut are tracked (unsmoothed within that window) instead of marked lost."""
    for before, smooth in (([], True), ([], False)):
        if not _missed(fitted, max_rms) or (smooth and not history):
            continue
        retry = solve(before, smooth)
        if _missed(retry, max_rms) < _missed(fitted, max_rms):
            fitted = retry
    return fitted


def _rows(values: np.ndarray, frames: list[int]) -> torch.Tensor | None:
    """values[frames] as a float32 tensor, None when there are no frames."""
    return torch.from_numpy(values[frames]).float() if frames else None


def with_rows(track: Track, frames: np.ndarray, euler: np.ndarray, translation: np.ndarray,
              expression: np.ndarray) -> Track:
    """A copy of `track` with the given frames' pose and expression replaced (the photometric
    refinement's results)."""
    out = dataclasses.replace(track, euler=track.euler.copy(), translation=track.translation.copy(),
                              expression=track.expression.copy())
    out.euler[frames], out.translation[frames], out.expression[frames] = euler, translation, expression
    return out
