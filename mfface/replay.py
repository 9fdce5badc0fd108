"""Turntables of a finished fit: the fitted face turning in yaw, as GIF and MP4, optionally relit.

Reads a result folder written by `mfface.results.write_results` (params.json, config.toml and
checkpoints/stageN.npz; the latest stage's state is used), loads the model named in params.json from
the model store and renders the face with the camera fixed while the head swings about its own
vertical axis (model +y) through the head centre (the centre of the model-space bounding box):
frame k of N has yaw offset (yaw_range / 2) * sin(2 pi k / N) rad, so the first frame is the fitted
pose and the animation loops seamlessly. Frames are linear renders, gamma-encoded with the fit's
input gamma; the background is black. The model's parts (eyes, teeth, mouth interior) turn with
the face. Outputs (`turntable.gif`, `turntable.mp4`) are written
atomically into the result folder. See docs/replay.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_path
from mfface.camera import head_rotation, to_camera
from mfface.config import ConfigError, FitConfig, load_config
from mfface.figures import to_display
from mfface.checkpoints import Checkpoint, CheckpointError, check_state, load_checkpoint
from mfface.forward import ForwardModel, RenderSettings
from mfface.morphable.model import MorphableModel
from mfface.morphable.store import restore_hint
from mfface.outputs import RESULT_FORMAT
from mfface.scenes.light_presets import UnknownPresetError, exposure, preset_names, preset_sh
from mfface.sh import bands_of
from mfface.state import FaceState

FITTED = "fitted"
GIF_NAME = "turntable.gif"
MP4_NAME = "turntable.mp4"
_STAGE_FILE = re.compile(r"^stage(\d+)\.npz$")
FrameCallback = Callable[[int, int], None]


class ReplayError(ValueError):
    """A result folder or a replay setting the user must fix; the message says what to do."""


@dataclass
class ReplaySettings:
    """What to render: `frames` images, `spp` samples per pixel, `size` px (None = the fit's crop
    size), `fps` frames per second, `light` 'fitted' or a preset name, `yaw_range` the full
    swing in degrees (the head turns yaw_range / 2 to each side), `seed` of the sampler."""
    frames: int = 36
    spp: int = 16
    size: int | None = None
    fps: float = 12.0
    light: str = FITTED
    yaw_range: float = 60.0
    seed: int = 0

    def check(self) -> None:
        """Raise ReplayError for a setting that cannot make a turntable."""
        if self.frames < 2:
            raise ReplayError(f"--frames {self.frames} makes no turntable; use 2 or more frames.")
        if self.spp < 1:
            raise ReplayError(f"--spp {self.spp} renders nothing; use 1 or more samples per pixel.")
        if self.size is not None and self.size < 8:
            raise ReplayError(f"--size {self.size} is too small; use 8 px or more.")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ReplayError(f"--fps {self.fps} is not a frame rate; use a positive number.")
        if not 0 < self.yaw_range <= 180:
            raise ReplayError(f"--yaw-range {self.yaw_range} is out of range; use degrees in (0, 180].")
        if self.light != FITTED and self.light not in preset_names():
            raise ReplayError(f"Unknown light {self.light!r}; use '{FITTED}' or a preset: "
                              f"{', '.join(preset_names())}.")


@dataclass
class FittedFace:
    """One result folder, loaded: the model, the state of its photo (batch 1), the fit's config and
    the crop size in px the fit worked at (the focal in `state` is in pixels of that crop)."""
    folder: Path
    model: MorphableModel
    state: FaceState
    config: FitConfig
    crop_size: int


def result_folders(path: str | Path) -> list[Path]:
    """`path` itself when it is a result folder (it has params.json), else its sub-folders that are
    (sorted by name, hidden ones such as unfinished `.NAME.*.tmp` folders skipped)."""
    path = Path(path)
    if not path.is_dir():
        raise ReplayError(f"{path} does not exist or is not a folder; pass the output folder of "
                          f"`mfface fit`.")
    if (path / "params.json").is_file():
        return [path]
    found = sorted(p for p in path.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and (p / "params.json").is_file())
    if not found:
        raise ReplayError(f"{path} is not a result folder (no params.json) and holds none; pass a "
                          f"folder written by `mfface fit`.")
    return found


def _read_params(folder: Path) -> dict:
    path = folder / "params.json"
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReplayError(f"{path} is not valid JSON ({e}); the result folder is damaged, run "
                          f"`mfface fit` again.") from None
    try:
        ok = (params["format"] == RESULT_FORMAT and isinstance(params["model"]["name"], str)
              and int(params["image"]["crop_size_px"]) > 0 and len(params["pose"]["euler_rad"]) == 3
              and len(params["pose"]["translation_mm"]) == 3)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ReplayError(f"{path} is not an mfface fit's params.json (format, model name, crop size "
                          f"or pose missing); run `mfface fit` again.")
    return params


def latest_checkpoint(folder: Path) -> Path:
    """The checkpoint of the last stage in `folder/checkpoints` (stage3.npz before stage2.npz ...)."""
    found = [(int(m.group(1)), p) for p in (folder / "checkpoints").glob("stage*.npz")
             if (m := _STAGE_FILE.match(p.name))]
    if not found:
        raise ReplayError(f"{folder} has no checkpoints/stageN.npz to replay; run `mfface fit` again "
                          f"so that it keeps its checkpoints.")
    return max(found)[1]


def _own_item(state: FaceState, params: dict) -> FaceState:
    """This photo's item of a (possibly multi-photo) checkpoint: the one whose pose params.json has."""
    if state.batch == 1:
        return state
    euler = torch.tensor(params["pose"]["euler_rad"], dtype=state.euler.dtype)
    translation = torch.tensor(params["pose"]["translation_mm"], dtype=state.translation.dtype)
    distance = ((state.euler.cpu() - euler).abs().sum(1)
                + (state.translation.cpu() - translation).abs().sum(1) * 1e-3)
    return state.item(int(distance.argmin()))


def _check_model(model: MorphableModel, params: dict, checkpoint: Checkpoint, folder: Path) -> None:
    """Raise ReplayError unless the checkpoint was fitted with this very model (fingerprint, when
    recorded) and its state has the shapes the model needs."""
    expected = params["model"].get("n_vertices")
    owner = checkpoint.owner
    if (expected is not None and int(expected) != model.n_vertices) or \
            (owner is not None and owner.model_fingerprint != model.fingerprint()):
        raise ReplayError(f"{folder} was fitted with a different {model.name!r} model than the one "
                          f"available ({model.n_vertices} vertices); {restore_hint(model.name)}, the "
                          f"version the fit used.")
    digest = params["image"].get("digest")
    if owner is not None and digest is not None and digest not in owner.photos:
        raise ReplayError(f"the checkpoint in {folder} belongs to a fit of another photo than "
                          f"{params['image'].get('name')!r}; the result folder is damaged, run "
                          f"`mfface fit` again.")
    try:
        check_state(checkpoint.state, model, f"the checkpoint in {folder}")
    except CheckpointError as e:
        raise ReplayError(str(e)) from None


def load_fitted_face(folder: str | Path, store_root: str | Path | None = None,
                     device: torch.device | str = "cpu",
                     models: dict[str, MorphableModel] | None = None) -> FittedFace:
    """Load a result folder: params.json, config.toml, the latest checkpoint, the model from the
    store (`store_root`, default the user's; `models` caches loaded models by name across calls).
    Raises ReplayError naming what to fix."""
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    folder = Path(folder)
    params = _read_params(folder)
    try:
        config = load_config(folder / "config.toml")
    except ConfigError as e:
        raise ReplayError(f"{e} The result folder {folder} is damaged; run `mfface fit` again.") from None
    try:
        checkpoint = load_checkpoint(latest_checkpoint(folder), device)
    except CheckpointError as e:
        raise ReplayError(str(e)) from None
    name = params["model"]["name"]
    models = {} if models is None else models
    if name not in models:
        try:
            models[name] = ModelStore(store_root).load(name)
        except (ModelNotInstalledError, ModelFormatError, ValueError) as e:
            raise ReplayError(f"Cannot replay {folder}: {e}") from None
    _check_model(models[name], params, checkpoint, folder)
    state = _own_item(checkpoint.state, params)
    return FittedFace(folder, models[name], state, config, int(params["image"]["crop_size_px"]))


def yaw_offsets(frames: int, yaw_range_deg: float) -> torch.Tensor:
    """Yaw offset (frames,) rad of each frame: (range / 2) * sin(2 pi k / frames), a seamless loop."""
    k = torch.arange(frames, dtype=torch.float64)
    return math.radians(yaw_range_deg) / 2.0 * torch.sin(2.0 * math.pi * k / frames)


def head_centre(vertices: torch.Tensor) -> torch.Tensor:
    """The pivot of the turntable: centre (..., 3) of the axis-aligned bounding box of model-space
    vertices (..., V, 3) mm (for a face mask this lies behind the face, near the neck's axis)."""
    return 0.5 * (vertices.amin(-2) + vertices.amax(-2))


def turned_vertices(model_vertices: torch.Tensor, state: FaceState, yaw: float,
                    centre: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space vertices (1, V, 3) mm of model-space ones (1, V, 3) with the head turned by
    `yaw` rad about its own vertical axis (model +y) through `centre` (1, 3) mm, by default
    `head_centre(model_vertices)`, then posed by `state`. Positive yaw turns the nose towards the
    subject's left, like the pose's own yaw. The model's parts (eyes, teeth, mouth) turn with the
    face when they are given the face's centre: `turned_vertices(parts, state, yaw,
    head_centre(face))`."""
    centre = (head_centre(model_vertices) if centre is None else centre)[:, None, :]
    turn = head_rotation(torch.tensor([[yaw, 0.0, 0.0]], dtype=model_vertices.dtype,
                                      device=model_vertices.device))
    turned = (model_vertices - centre) @ turn.transpose(-1, -2) + centre
    return to_camera(turned, state.euler, state.translation)


def replay_light(state: FaceState, light: str) -> torch.Tensor:
    """SH light (1, n, 3) for the turntable: the fitted one, or preset `light` with as many bands,
    scaled to the fitted light's exposure so that the relit face is about as bright as the fit."""
    if light == FITTED:
        return state.sh
    try:
        sh = preset_sh(light, bands_of(state.sh.shape[1]))
    except UnknownPresetError as e:
        raise ReplayError(str(e)) from None
    level = float(exposure(state.sh[0].detach().cpu()))
    return (sh * max(level, 1e-6)).to(dtype=state.sh.dtype, device=state.sh.device)[None]


def render_turntable(face: FittedFace, settings: ReplaySettings,
                     on_frame: FrameCallback | None = None) -> np.ndarray:
    """Render the turntable: uint8 display frames (N, S, S, 3), S = settings.size or the crop size.

    Calls `on_frame(k + 1, N)` after frame k. Needs the Mitsuba variant selected
    (`mfface.backend.select_variant`).
    """
    settings.check()
    size = settings.size or face.crop_size
    state = face.state
    forward = ForwardModel(face.model, state.focal.device)
    render_settings = RenderSettings.from_config(face.config, size, settings.spp, settings.seed)
    zoom = size / face.crop_size
    shown = dataclasses.replace(state, focal=state.focal * zoom, sh=replay_light(state, settings.light),
                                principal=None if state.principal is None else state.principal * zoom)
    frames = []
    with torch.no_grad():
        model_vertices = face.model.vertices(state.identity, state.expression)
        model_parts = face.model.part_vertices(state.identity, state.expression)
        centre = head_centre(model_vertices)
        for k, yaw in enumerate(yaw_offsets(settings.frames, settings.yaw_range).tolist()):
            vertices = turned_vertices(model_vertices, state, yaw, centre)
            parts = turned_vertices(model_parts, state, yaw, centre) if face.model.parts else None
            rgb, _ = forward.render(shown, render_settings, vertices, parts=parts)
            frames.append(to_display(rgb[0].cpu().numpy(), face.config.input.gamma))
            if on_frame is not None:
                on_frame(k + 1, settings.frames)
    return np.stack(frames)


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Frames (N, H, W, 3) padded by repeating the last row / column to even H and W (H.264 with
    4:2:0 chroma needs even sizes)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 frames (N, H, W, 3) as a looping GIF atomically (Pillow; 10 ms time steps)."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)


def write_mp4(path: str | Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 frames (N, H, W, 3) as H.264 MP4 (yuv420p, odd sizes padded) atomically, with
    imageio-ffmpeg's bundled ffmpeg."""
    import imageio.v2 as iio2

    with atomic_path(path) as tmp:
        writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                 pixelformat="yuv420p", macro_block_size=2,
                                 output_params=["-movflags", "+faststart"])
        try:
            for frame in even_frames(frames):
                writer.append_data(frame)
        finally:
            writer.close()


def write_turntable(face: FittedFace, settings: ReplaySettings,
                    on_frame: FrameCallback | None = None) -> tuple[Path, Path]:
    """Render `face`'s turntable and write turntable.gif and turntable.mp4 into its result folder;
    returns their paths. Needs the Mitsuba variant selected (`mfface.backend.select_variant`)."""
    frames = render_turntable(face, settings, on_frame)
    gif, mp4 = face.folder / GIF_NAME, face.folder / MP4_NAME
    write_gif(gif, frames, settings.fps)
    write_mp4(mp4, frames, settings.fps)
    return gif, mp4
