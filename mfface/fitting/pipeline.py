"""The three-stage reconstruction: photo(s) -> landmarks -> crop -> stage 1 -> stage 2 -> stage 3.

`prepare_image` reads a photo, finds (or reads) its landmarks, crops a square around the face and
shrinks it to `input.max_resolution`; `Reconstructor.fit` runs the stages on one image or on several
photos of one person (`shared_identity`: one identity and one set of reflectance maps, per-photo
pose, expression, focal and light), saving a checkpoint after each stage so a fit can resume.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mfface.checkpoints import CheckpointOwner, check_owner, check_state, load_checkpoint, save_checkpoint
from mfface.config import FitConfig
from mfface.fitting.errors import FitDivergedError, FitInputError
from mfface.fitting.landmark_stage import run_landmark_stage
from mfface.fitting.photometric_stage import StageReport, fit_photometric
from mfface.fitting.targets import FitTargets
from mfface.fitting.texel_stage import fit_texels
from mfface.fitting.uncertainty import fit_uncertainty
from mfface.fitting.untrusted_landmarks import photo_problems, with_stronger_priors
from mfface.forward import ForwardModel
from mfface.images import Affine2D, CropBox, crop_and_resize, crop_box_around, linearize, read_image
from mfface.landmarks import LandmarkDetector, check_landmarks, read_landmarks, scheme_for_count
from mfface.masks import skin_mask
from mfface.morphable.model import MorphableModel
from mfface.morphable.store import restore_hint
from mfface.objectives import landmark_weights
from mfface.sh import with_bands
from mfface.state import FaceState
from mfface.textures import resize_texture

STAGES = (1, 2, 3)
ProgressCallback = Callable[[str, int, int, dict[str, float]], None]




@dataclass
class PreparedImage:
    """One photo ready to fit. `photo` (H, W, 3) display-referred as read (float in [0, 1], or
    uint8 as a video's frames are held: a quarter of the memory); `landmarks` (N, 2) in
    its pixels; the crop: `box`, `to_crop` (input px -> crop px), `target` (S, S, 3) linear,
    `skin` (S, S), `crop_landmarks` (N, 2), and `principal` (2,) the crop pixel where the photo's
    centre lands: the photo's principal point, as a camera of unknown intrinsics is assumed to
    have it (a crop does not move the optical axis; assuming the crop's own centre instead would
    tilt the fitted head of an off-centre face). `digest` identifies the photo's pixels
    (`photo_digest`), so that a checkpoint records which photo it belongs to."""
    name: str
    path: Path
    photo: torch.Tensor
    landmarks: np.ndarray
    scheme: str
    box: CropBox
    to_crop: Affine2D
    target: torch.Tensor
    skin: torch.Tensor
    crop_landmarks: np.ndarray
    principal: np.ndarray
    digest: str = ""


def prepare_image(path: str | Path, config: FitConfig, detector: LandmarkDetector | None = None,
                  landmark_file: str | Path | None = None, size: int | None = None,
                  enlarge: bool = False) -> PreparedImage:
    """Read a photo, detect its landmarks (or read `landmark_file`), crop and linearise it.

    `size` caps the crop's side in pixels (photos fitted together must share it; with `enlarge`
    it is the exact side, as a network's input); by default it is the face's crop size, shrunk to
    `input.max_resolution`.
    """
    path = Path(path)
    photo = read_image(path)
    if landmark_file is not None:
        landmarks, scheme = read_landmarks(landmark_file)
        where = f"{landmark_file} (for {path})"
    else:
        if detector is None:
            raise ValueError("prepare_image needs a LandmarkDetector or a landmark file.")
        display = np.round(photo.numpy() * 255.0).astype(np.uint8)
        landmarks = detector.detect(display, name=str(path))
        scheme = scheme_for_count(len(landmarks))
        where = f"the landmarks detected in {path}"
    landmarks = check_landmarks(landmarks, scheme, (photo.shape[0], photo.shape[1]), where)
    return prepare_photo(photo, landmarks, scheme, config, path.stem, path, size, enlarge)


def prepare_photo(photo: torch.Tensor, landmarks: np.ndarray, scheme: str, config: FitConfig,
                  name: str, path: Path | None = None, size: int | None = None,
                  enlarge: bool = False) -> PreparedImage:
    """Crop and linearise an in-memory photo (H, W, 3) display-referred, float in [0, 1] or uint8
    (kept as it is, not converted whole: only the crop becomes float), whose landmarks (N, 2) in
    its pixels are known (`scheme` 'mediapipe478' or 'ibug68')."""
    try:
        box = crop_box_around(landmarks, (photo.shape[0], photo.shape[1]))
    except ValueError as e:
        raise FitInputError(f"{name}: {e}") from None
    target, to_crop = crop_and_resize(photo, box, size or config.input.max_resolution, enlarge)
    if photo.dtype == torch.uint8:
        target = target / 255.0
    crop_landmarks = np.asarray(to_crop.apply(np.asarray(landmarks, dtype=np.float64)))
    principal = np.asarray(to_crop.apply(np.array([photo.shape[1] / 2.0, photo.shape[0] / 2.0])))
    side = target.shape[0]
    skin = torch.from_numpy(skin_mask(crop_landmarks, side, side))
    return PreparedImage(name=name, path=path or Path(name), photo=photo, landmarks=np.asarray(landmarks),
                         scheme=scheme, box=box, to_crop=to_crop,
                         target=linearize(target, config.input.gamma), skin=skin,
                         crop_landmarks=crop_landmarks, principal=principal, digest=photo_digest(photo))


def photo_digest(photo: torch.Tensor) -> str:
    """SHA-256 (hex, 16 digits) of a photo's pixels (H, W, 3): the same picture gives the same
    digest whatever its file name or whether it is held as uint8 or as float (`read_image`'s
    value / 255), so a checkpoint can say which photo it belongs to."""
    values = photo.detach().cpu()
    if values.dtype == torch.uint8:
        values = values.float() / 255.0
    pixels = np.ascontiguousarray(values.numpy(), dtype=np.float32)
    return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()[:16]


def landmark_index(model: MorphableModel, scheme: str, count: int) -> np.ndarray:
    """Model vertex per landmark (count,) for a scheme ('mediapipe478', 'ibug68'); -1 = not covered."""
    key = "mediapipe478" if scheme.startswith("mediapipe") else scheme
    if key not in model.landmarks:
        raise FitInputError(f"model {model.name!r} has no {key} landmark correspondence; "
                            f"{restore_hint(model.name)}.")
    return np.asarray(model.landmarks[key][:count], dtype=np.int64)


@dataclass
class FitResult:
    """The outcome of one fit: the final state, the state after each stage that ran (`stages`,
    in memory), the inputs, per-stage losses and times."""
    model: MorphableModel
    config: FitConfig
    images: list[PreparedImage]
    state: FaceState
    forward: ForwardModel
    targets: FitTargets
    stages: dict[int, FaceState] = field(default_factory=dict)
    reports: dict[str, StageReport] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stage1_rms_px: list[float] = field(default_factory=list)
    last_stage: int = 0  # the last stage whose result `state` holds (a resumed checkpoint's counts)
    owner: CheckpointOwner | None = None  # what the fit's checkpoints belong to
    source: dict = field(default_factory=lambda: {"method": "fit"})  # how the state was made
    uncertainty: list[dict] = field(default_factory=list)  # per image, mfface.fitting.uncertainty
    landmark_warnings: list[list[str]] = field(default_factory=list)  # per image (untrusted_landmarks)


class Reconstructor:
    """Fits a morphable model to photos; one instance serves many fits (its forward model keeps
    one Mitsuba scene per image size)."""

    def __init__(self, model: MorphableModel, config: FitConfig, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.config = config
        self.device = torch.device(device)
        self.forward = ForwardModel(model, self.device)

    def targets(self, images: list[PreparedImage]) -> FitTargets:
        sizes = {im.target.shape[0] for im in images}
        if len(sizes) != 1:
            raise FitInputError("photos fitted together must be cropped to one size; pass `size` to "
                                "prepare_image.")
        schemes = {im.scheme for im in images}
        if len(schemes) != 1:
            raise FitInputError("photos fitted together must use one landmark scheme; give landmark "
                                "files of the same kind for all of them.")
        count = len(images[0].crop_landmarks)
        index = torch.from_numpy(landmark_index(self.model, images[0].scheme, count)).to(self.device)
        scheme = scheme_for_count(count)
        weights = landmark_weights(scheme, count, self.config.landmarks.contour_weight, self.device,
                                   self.model.landmark_reliability.get(scheme))
        return FitTargets(
            images=torch.stack([im.target for im in images]).to(self.device),
            skin=torch.stack([im.skin for im in images]).to(self.device),
            landmarks=torch.from_numpy(np.stack([im.crop_landmarks for im in images])).float().to(self.device),
            landmark_index=index, landmark_weights=weights,
            principal=torch.from_numpy(np.stack([im.principal for im in images])).float().to(self.device))

    def owner(self, images: list[PreparedImage]) -> CheckpointOwner:
        """What this fit's checkpoints belong to: the model and the photos' digests, in order."""
        return CheckpointOwner(self.model.name, self.model.fingerprint(),
                               tuple(im.digest for im in images))

    def _resumed(self, path: str | Path, owner: CheckpointOwner, targets: FitTargets,
                 shared_identity: bool) -> tuple[FaceState, int]:
        """The checkpoint at `path`, checked against this fit (model, photos, shapes, config)."""
        checkpoint = load_checkpoint(path, self.device)
        check_owner(checkpoint, owner, f"checkpoint {path}")
        state = checkpoint.state
        check_state(state, self.model, f"checkpoint {path}")
        bands = self.config.light.sh_bands
        texture = self.config.render.texture_size
        if state.batch != targets.batch or (state.identity.shape[0] == 1) != (shared_identity or targets.batch == 1):
            raise FitInputError(f"checkpoint {path} holds a fit of {state.batch} photo(s) "
                                f"{'with' if state.identity.shape[0] == 1 else 'without'} a shared "
                                f"identity; resume with the same photos and --shared-identity setting.")
        if state.sh.shape[1] != bands ** 2:
            raise FitInputError(f"checkpoint {path} has {math.isqrt(state.sh.shape[1])} SH bands but the "
                                f"config asks for {bands}; resume with --light-sh-bands "
                                f"{math.isqrt(state.sh.shape[1])}.")
        if checkpoint.stage >= 2 and state.diffuse.shape[1] != texture:
            raise FitInputError(f"checkpoint {path} has {state.diffuse.shape[1]} px textures but the "
                                f"config asks for {texture}; resume with --render-texture-size "
                                f"{state.diffuse.shape[1]}.")
        return state, checkpoint.stage

    def fit(self, images: list[PreparedImage], shared_identity: bool = False,
            skip_stages: tuple[int, ...] = (), resume: str | Path | None = None,
            checkpoint_dir: str | Path | None = None,
            on_step: ProgressCallback | None = None, appearance: FaceState | None = None,
            identity: torch.Tensor | None = None) -> FitResult:
        """Run the stages not in `skip_stages`, from scratch or from the checkpoint `resume`.

        `identity` (1, K) fixes the shape coefficients in every stage (e.g. a video's shape,
        fitted from more frames than its maps; `mfface.tracking.identity`).

        `appearance` (e.g. a network's prediction) gives stage 2 its start maps and ambient light in
        place of stage 1's defaults (`_with_appearance`); the geometry still
        comes from stage 1's landmark fit, which places the face more exactly than a network's
        one-pass guess (bench/RESULTS.md, "network": +1.5 to +6 dB after a short refinement).

        After each stage that ran, `checkpoint_dir/stageN.npz` is written (when given).
        """
        cfg = self.config
        if identity is not None:
            cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, fit_identity=False))
        targets = self.targets(images)
        result = FitResult(self.model, cfg, images, state=None, forward=self.forward, targets=targets)  # type: ignore[arg-type]
        owner = result.owner = self.owner(images)
        done = 0
        state: FaceState | None = None
        if resume is not None:
            state, done = self._resumed(resume, owner, targets, shared_identity)
            result.last_stage = done
        elif appearance is not None:
            check_state(appearance, self.model, "the start appearance")

        def step(stage: str) -> Callable[[int, int, dict[str, float]], None] | None:
            return None if on_step is None else (lambda i, n, losses: on_step(stage, i, n, losses))

        def finish(stage: int, new_state: FaceState, started: float) -> FaceState:
            result.seconds[f"stage{stage}"] = time.perf_counter() - started
            if not new_state.finite():
                raise FitDivergedError(f"the fit diverged in stage {stage} (NaN or infinite values); "
                                       f"lower that stage's learning rates or raise its priors.")
            result.last_stage = stage
            result.stages[stage] = new_state
            if checkpoint_dir is not None:
                save_checkpoint(Path(checkpoint_dir) / f"stage{stage}.npz", new_state, stage, owner)
            return new_state

        if done < 1:
            started = time.perf_counter()
            iterations = 0 if 1 in skip_stages else None
            state, report = run_landmark_stage(self.model, targets, cfg, shared_identity, iterations, identity,
                                               step("stage1"))
            result.landmark_warnings = photo_problems(images, state, report.rms)
            if any(result.landmark_warnings) and cfg.landmarks.unreliable_prior_scale > 1:
                cfg = result.config = with_stronger_priors(cfg)
                state, report = run_landmark_stage(self.model, targets, cfg, shared_identity, iterations,
                                                   identity, step("stage1"))
            result.stage1_rms_px = report.rms
            if appearance is not None:
                state = _with_appearance(state, appearance, cfg)
            state = finish(1, state, started)
        if done < 2 and 2 not in skip_stages:
            started = time.perf_counter()
            state, result.reports["stage2"] = fit_photometric(self.forward, targets, state, cfg, step("stage2"))
            state = finish(2, state, started)
        elif done < 2:
            state = _upsampled(state, cfg)
        if done < 3 and 3 not in skip_stages:
            started = time.perf_counter()
            state, result.reports["stage3"] = fit_texels(self.forward, targets, state, cfg, step("stage3"))
            state = finish(3, state, started)
        result.state = state
        result.uncertainty = fit_uncertainty(self.model, targets, state)
        return result


def _with_appearance(state: FaceState, appearance: FaceState, config: FitConfig) -> FaceState:
    """`state` with the ambient part of `appearance`'s light (its band 0: colour and level; the
    other bands zero, as stage 1's default light) and its maps, resized to
    `stage2.albedo_resolution`, the size of stage 2's free albedo, for which its rates and
    smoothness are set. Measured on held-out faces with a starter network (bench/RESULTS.md,
    "network"): a short stage 2 from the network's directional bands ended 1.5-4.6 dB lower than
    from its ambient term, which its maps match; its 128 px maps kept as they are made the
    refinement slower (another texture size rebuilds the scene)."""
    size = (config.stage2.albedo_resolution,) * 2
    ambient = with_bands(with_bands(appearance.sh.detach(), 1), config.light.sh_bands)
    return dataclasses.replace(state, sh=ambient, **{m: resize_texture(getattr(appearance, m).detach(), size)
                                                     for m in ("diffuse", "specular", "roughness")})


def _upsampled(state: FaceState, config: FitConfig) -> FaceState:
    """Stage 2 skipped: bring the stage-1 start's maps to the texture size for stage 3."""
    size = (config.render.texture_size, config.render.texture_size)
    return dataclasses.replace(state, diffuse=resize_texture(state.diffuse, size),
                               specular=resize_texture(state.specular, size),
                               roughness=resize_texture(state.roughness, size))
