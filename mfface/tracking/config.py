"""Every setting of `mfface track`, on the same config machinery as `FitConfig` (TOML and flags).

`TrackConfig` extends `FitConfig`: it holds the fit's own sections for the identity fit ([input],
[render], [light], [landmarks], [stage1], [stage2], [stage3]: inherited, so a fit setting has one
home) and, after them, the tracker's: [video] (frames in), [detect] (MediaPipe on video), [select]
(which frames the identity is fitted from), [track] (per-frame pose and expression from landmarks,
with temporal smoothness), [photometric] (the optional per-frame refinement through the renderer)
and [output] (what is written). `mfface track --help` lists every field as `--<section>-<field>`.

Units of the tracker: landmark distances are in "working pixels", the video's pixels scaled so
that the face's crop (the fit's crop, `input.max_resolution` px) has the size it has in a fit.
So the landmark loss, `track.max_rms` and the smoothness weights mean the same for a 4K video as
for a 360p one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from mfface.config import FitConfig, _f


@dataclass
class VideoConfig:
    """The frames: rate and time range."""
    fps: float = _f(0.0, "Frame rate in frames/s; 0 = from the video's timestamps (a folder of numbered "
                    "images: 30).", 0.0, 1000.0)
    start: float = _f(0.0, "Track from this time in seconds (from the first frame).", 0.0)
    end: float = _f(0.0, "Track up to this time in seconds; 0 = to the end.", 0.0)


@dataclass
class DetectConfig:
    """MediaPipe on the frames."""
    follow: bool = _f(True, "Look for the face around where it was in the previous frame (the face mesh "
                      "on a crop there) and search the whole frame only when it is not found there; "
                      "off = the whole-frame search (`LandmarkDetector.detect`) on every frame.")
    follow_margin: float = _f(2.0, "Side of the follow crop / side of the previous frame's landmark box.",
                              1.2, 5.0)


@dataclass
class SelectConfig:
    """The identity: which frames it is fitted from (sharp, frontal, varied) and how far."""
    frames: int = _f(4, "Frames the skin maps are fitted from (stages 2-3 of the fit's shared-identity "
                     "mode, the shape fixed): the best of the chosen frames.", 1, 64)
    shape_frames: int = _f(16, "Frames the shape and focal length are fitted from (stage 1, landmarks only: "
                           "a few seconds); more frames average out the detector's per-frame errors "
                           "(bench/RESULTS.md, \"Shape from many frames\"). At least `frames` are used.", 1, 256)
    candidates: int = _f(150, "At most this many evenly spaced frames with a face are considered.", 1, 100_000)
    max_angle: float = _f(20.0, "Largest yaw or pitch (degrees, rough PnP estimate) of a frame preferred "
                          "as frontal.", 1.0, 90.0)
    last_stage: int = _f(3, "Last stage of the identity fit: 1 = landmarks only (fast; renders then show "
                         "a flat skin colour), 2 = photometric, 3 = per-texel maps.", 1, 3)


@dataclass
class TrackStageConfig:
    """Per-frame head pose and expression from landmarks, identity and focal fixed.

    Frames are optimised `window` at a time with stage 1's objective, each window's poses started
    from PnP and its expressions from the last tracked frame, with temporal terms on the
    frame-to-frame differences (order 1) or accelerations (order 2) of rotation (deg), translation
    (mm) and expression (blend weights or std units); their weights are in working px^2 (the
    landmark loss's unit) per squared unit. Defaults measured in bench/RESULTS.md ("track")."""
    window: int = _f(8, "Frames optimised jointly (smoothness acts across them and the frames before).", 1, 4096)
    solver: Literal["gauss-newton", "adam"] = _f(
        "gauss-newton", "Optimiser of each window: Levenberg-Marquardt with Gauss-Newton steps "
        "(mfface.tracking.solver, converges in a few iterations) or stage 1's Adam (fit_landmarks).")
    iterations: int = _f(20, "Most Levenberg-Marquardt iterations per window (it stops earlier once "
                         "converged).", 1, 100_000)
    tolerance: float = _f(1e-5, "Levenberg-Marquardt stops when the loss changes by less than this "
                          "fraction.", 0.0, 1.0)
    adam_iterations: int = _f(300, "Adam iterations per window (solver = adam).", 1, 1_000_000)
    lr: float = _f(0.02, "Adam learning rate (solver = adam; angles in rad, coefficients in std units).",
                   0.0, 10.0)
    expression_prior: float = _f(1.0, "Weight of the expression prior, mean of c^2 (as stage 1; the fit "
                                 "uses 0.1).", 0.0)
    expression_sparsity: float = _f(6.0, "Weight of the L1 expression prior, mean of |c|: a shape the "
                                    "landmarks do not support stays at exactly 0 where MediaPipe and the "
                                    "model disagree; active shapes are shrunk a little (bench/RESULTS.md, "
                                    "\"Sparse expression curves\").", 0.0)
    rotation_smoothness: float = _f(4.0, "Weight of the squared frame-to-frame change (order 1) or "
                                    "acceleration (order 2) of the rotation (deg).", 0.0)
    translation_smoothness: float = _f(
        0.005, "The same for the translation (mm). Weak: a distant face's depth is seen only through its image "
        "size, and 0.5 made depth and expressions swing together (bench/RESULTS.md, \"Translation "
        "smoothness\").", 0.0)
    expression_smoothness: float = _f(20.0, "The same for the expression (blend weights or std units).", 0.0)
    order: int = _f(2, "What the smoothness terms penalise: 1 = velocity (first differences), 2 = "
                    "acceleration (second differences, keeps steady motion unbiased).", 1, 2)
    max_rms: float = _f(12.0, "A frame whose landmarks the fit misses by more than this RMS (working px) "
                        "is marked lost and interpolated.", 0.0)
    retry_missed: bool = _f(True, "A window whose smoothed fit misses frames by more than max_rms (a cut in the "
                            "video, or motion faster than the smoothness lets through) is fitted again without "
                            "the frames before it, then without smoothing; off = such frames are marked lost.")
    reinit_gap: int = _f(5, "After more lost frames than this in a row, the expression restarts from 0 "
                         "instead of the last tracked frame's.", 0, 1_000_000)
    focal: float = _f(0.0, "Known focal length in px of the video frame; 0 = from the identity fit.", 0.0)


@dataclass
class PhotometricConfig:
    """Optional per-frame refinement through the renderer (pose, expression and light), after the
    landmark tracking: L1 in the skin mask + landmarks + priors + the same temporal terms against
    the previous refined frame."""
    iterations: int = _f(0, "Iterations per frame (`--photometric N`); 0 = landmark tracking only.", 0, 100_000)
    size: int = _f(128, "Side of the face crop it renders and compares, px.", 16, 1024)
    spp: int = _f(8, "Samples per pixel (at 2 the loss's Monte Carlo noise exceeds what the pose "
                  "changes; bench/RESULTS.md, \"Photometric refinement per frame\").", 1, 1024)
    lr: float = _f(0.001, "Adam learning rate of pose (rad, depth units) and expression (0.005 made "
                   "the pose worse and jittery on the synthetic clip).", 0.0, 10.0)
    sh_lr: float = _f(0.005, "Adam learning rate of the SH light (per frame, from the identity fit's); 0 = fixed.",
                      0.0, 10.0)
    photo_weight: float = _f(1000.0, "Weight of the L1 photometric loss inside coverage x skin.", 0.0)
    landmark_weight: float = _f(1.0, "Weight of the landmark loss (crop px^2).", 0.0)
    expression_prior: float = _f(0.001, "Weight of the expression prior, mean of c^2.", 0.0)
    expression_sparsity: float = _f(1.5, "Weight of the L1 expression prior, mean of |c|, as the landmark "
                                    "tracker's (`track.expression_sparsity` 6 in working px^2 is 1.5 in the "
                                    "128 px crop's px^2 of a 256 px fit crop): shapes the tracker left at 0 "
                                    "stay there unless the image asks for them.", 0.0)
    temporal_weight: float = _f(10.0, "Factor on the [track] smoothness weights against the previous frames "
                                "(at 1 the refined curves jittered 1.5-1.7x the truth's).", 0.0)


@dataclass
class OutputConfig:
    """What `mfface track` writes besides animation.json/.csv and the identity folder."""
    video: bool = _f(True, "Write tracked.mp4: the video with the fitted face overlaid | the render.")
    video_height: int = _f(360, "Height of tracked.mp4's panels in px (the video is scaled to it).", 32, 4320)
    render_size: int = _f(192, "Side of the face render in px (scaled into the overlay).", 16, 2048)
    video_spp: int = _f(4, "Samples per pixel of tracked.mp4's renders.", 1, 4096)
    glb: bool = _f(True, "Write animation.glb: the neutral mesh, blendshapes as morph targets, the "
                   "weights and head pose as a glTF animation.")
    curve_names: Literal["model", "arkit"] = _f(
        "model", "Blendshape names in animation.csv/json: the model's own (ICT: ARKit names with _L/_R) "
        "or 'arkit' (Apple's 52 names, e.g. eyeBlinkLeft; ICT's split shapes merged).")


@dataclass
class TrackConfig(FitConfig):
    """All settings of `mfface track`: the identity fit's sections (inherited from `FitConfig`,
    first) and the tracker's."""
    video: VideoConfig = field(default_factory=VideoConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    track: TrackStageConfig = field(default_factory=TrackStageConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def fit_config(self) -> FitConfig:
        """The identity fit's FitConfig (the shared sections, as given), without the tracker's."""
        return FitConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FitConfig)})
