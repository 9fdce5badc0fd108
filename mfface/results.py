"""Writing a fit's results: one folder per photo, written atomically as a whole.

Layout of `OUT/<photo name>/` (README "Outputs" describes each file):
  mesh.obj, mesh.mtl, mesh_diffuse.png, mesh_specular.png, mesh_roughness.png   model space, mm
  mesh.glb                          the same mesh and maps as binary glTF, in metres
  envmap.exr, envmap.hdr, envmap.png  the fitted light as a 64x128 lat-long map (light frame):
                                    OpenEXR, Radiance RGBE, tone-mapped preview
  render.png                        the fit re-rendered at `render.final_spp`, crop frame
  overview.png                      input | overlay | render | light | diffuse | specular | roughness
  landmarks.png                     detected (green) and fitted (red) landmarks on the input crop
  losses.png                        loss curves of stages 2 and 3
  params.json                       every fitted parameter and the camera (no pickle)
  config.toml                       the configuration the fit ran with
  checkpoints/stage{1,2,3}.npz      resumable states (`mfface fit --checkpoint`); when the fit kept
                                    none, the final state as checkpoints/stageN.npz
The folder appears only when complete: it is written as `.NAME.*.tmp` and renamed at the end.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_dir
from mfface.camera import rotation_matrix
from mfface.config import to_toml
from mfface.figures import draw_landmarks, labelled_strip, loss_curves_png, overlay, to_display
from mfface.checkpoints import save_checkpoint
from mfface.fitting.pipeline import FitResult
from mfface.forward import RenderSettings
from mfface.images import write_png
from mfface.morphable.export import write_glb, write_obj
from mfface.objectives import photometric_loss
from mfface.outputs import RESULT_FORMAT, check_target
from mfface.state import FaceState
from mfface.scenes.exr import write_exr, write_hdr

CAMERA_CONVENTION = ("OpenCV camera space: camera at the origin looking down +z, +x image right, "
                     "+y image down; pixel u = f x / z + c_x, v = f y / z + c_y, (c_x, c_y) the "
                     "principal point (pixel centres at i + 0.5). Model space: mm, +x face's left, +y up, +z out of the face; "
                     "X_camera = R X_model + t.")
FINAL_SEED = 3_000_000


def _envmap_display(envmap: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 envmap, exposed so that its 99th-percentile radiance is white."""
    scale = max(float(np.percentile(envmap, 99)), 1e-6)
    return to_display(envmap / scale, gamma)


def _params(result: FitResult, b: int, state: FaceState, render_rms: float) -> dict:
    image = result.images[b]
    model = result.model
    euler = state.euler[0].cpu().double()
    crop_scale = image.to_crop.scale
    side = image.target.shape[0]
    principal = (np.array([side / 2.0, side / 2.0]) if state.principal is None
                 else state.principal[0].detach().cpu().double().numpy())
    return {
        "format": RESULT_FORMAT, "version": 1,
        "image": {"name": image.name, "path": str(image.path), "digest": image.digest,
                  "size_px": [int(image.photo.shape[1]), int(image.photo.shape[0])],
                  "crop_box_px": {"x0": image.box.x0, "y0": image.box.y0, "size": image.box.size},
                  "crop_size_px": int(image.target.shape[0]), "crop_scale": crop_scale},
        "model": {"name": model.name, "fingerprint": model.fingerprint(), "n_vertices": model.n_vertices,
                  "identity_components": model.n_identity, "expression_names": model.expression_names},
        "camera": {"convention": CAMERA_CONVENTION,
                   "focal_px_crop": float(state.focal[0]),
                   "focal_px_image": float(state.focal[0]) / crop_scale,
                   "principal_px_crop": principal.tolist(),
                   "principal_px_image": image.to_crop.inverse().apply(principal).tolist()},
        "pose": {"euler_rad": euler.tolist(),
                 "yaw_pitch_roll_deg": [math.degrees(a) for a in euler.tolist()],
                 "rotation": rotation_matrix(euler[None])[0].tolist(),
                 "translation_mm": state.translation[0].cpu().tolist()},
        "identity": state.identity[0].cpu().tolist(),
        "expression": dict(zip(model.expression_names or
                               [str(i) for i in range(model.n_expression)],
                               state.expression[0].cpu().tolist())),
        "albedo": None if state.albedo is None else state.albedo[0].cpu().tolist(),
        "light": {"sh_bands": int(round(math.sqrt(state.sh.shape[1]))), "frame": "envmap light frame "
                  "(Mitsuba envmap local frame; +y image-up, +z towards the camera)",
                  "sh_rgb": state.sh[0].cpu().tolist()},
        "fit": {**result.source,
                "shared_identity_with": [im.name for i, im in enumerate(result.images) if i != b],
                "stage1_landmark_rms_px": result.stage1_rms_px[b] if result.stage1_rms_px else None,
                "landmark_warnings": result.landmark_warnings[b] if result.landmark_warnings else [],
                "final_losses": {stage: {k: v[-1] for k, v in rep.losses.items()}
                                 for stage, rep in result.reports.items()},
                "stage_figures": {stage: rep.figures for stage, rep in result.reports.items() if rep.figures},
                "seconds": result.seconds,
                "photometric_l1_in_mask": render_rms},
        "uncertainty": result.uncertainty[b] if result.uncertainty else None,
    }


def strict_json(value: object) -> object:
    """`value` with every non-finite float replaced by None, so that `json.dumps(allow_nan=False)`
    writes strict JSON (NaN and Infinity are not JSON; strict parsers reject them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_results(result: FitResult, out_dir: str | Path, checkpoint_src: Path | None = None,
                  overwrite: bool = False) -> list[Path]:
    """Write one result folder per photo under `out_dir`; returns the folders.

    An earlier result at a folder's path is replaced only with `overwrite`, and never anything
    else (`mfface.outputs.check_target`); each folder is written atomically."""
    out_dir = Path(out_dir)
    cfg = result.config
    gamma = cfg.input.gamma
    forward = result.forward
    model = result.model
    settings = RenderSettings.from_config(cfg, result.targets.size, cfg.render.final_spp, FINAL_SEED)
    folders = []
    for b, image in enumerate(result.images):
        state = result.state.item(b)
        with torch.no_grad():
            out = forward(state, settings, result.targets.landmark_index.clamp_min(0))
            model_vertices = model.vertices(state.identity, state.expression)[0]
            envmap = forward.envmap(state.sh, cfg.light.envmap_height)[0]
            l1 = float(photometric_loss(out.image, out.coverage, image.target[None].to(out.image.device),
                                        image.skin[None].to(out.image.device)))
        rgb, coverage = out.image[0].cpu().numpy(), out.coverage[0].cpu().numpy()
        fitted_lm = out.landmarks
        target = image.target.numpy()
        maps = {n: getattr(state, n)[0].cpu().numpy() for n in ("diffuse", "specular", "roughness")}
        env = envmap.cpu().numpy()
        valid = result.targets.landmark_index.cpu().numpy() >= 0
        folder = out_dir / image.name
        check_target(folder, overwrite)
        with atomic_dir(folder) as tmp:
            write_obj(tmp / "mesh.obj", model_vertices, model.triangles, model.uvs, maps)
            write_glb(tmp / "mesh.glb", model_vertices * 1e-3, model.triangles, model.uvs, maps)
            write_exr(tmp / "envmap.exr", env)
            write_hdr(tmp / "envmap.hdr", env)  # Radiance, for engines that do not read EXR
            write_png(tmp / "envmap.png", _envmap_display(env, gamma), gamma=None)
            write_png(tmp / "render.png", rgb, gamma=gamma)
            panels = [("input", to_display(target, gamma)),
                      ("overlay", to_display(overlay(target, rgb, coverage), gamma)),
                      ("render", to_display(rgb, gamma)),
                      ("light", _envmap_display(env, gamma)),
                      ("diffuse", to_display(maps["diffuse"], gamma)),
                      ("specular", to_display(maps["specular"], gamma)),
                      ("roughness", to_display(maps["roughness"][..., 0], 1.0))]
            write_png(tmp / "overview.png", labelled_strip(panels, target.shape[0]), gamma=None)
            write_png(tmp / "landmarks.png", draw_landmarks(
                to_display(target, gamma), image.crop_landmarks[valid], fitted_lm[0].cpu().numpy()[valid]),
                gamma=None)
            curves = {f"{stage} {name}": values for stage, rep in result.reports.items()
                      for name, values in rep.losses.items()}
            loss_curves_png(tmp / "losses.png", curves, title=image.name)
            (tmp / "params.json").write_text(json.dumps(strict_json(_params(result, b, state, l1)),
                                                        indent=1, allow_nan=False))
            (tmp / "config.toml").write_text(to_toml(cfg))
            if checkpoint_src is not None and any(checkpoint_src.glob("stage*.npz")):
                (tmp / "checkpoints").mkdir()
                for stage_file in sorted(checkpoint_src.glob("stage*.npz")):
                    shutil.copy2(stage_file, tmp / "checkpoints" / stage_file.name)
            else:  # the final state at least, so that the folder can be replayed and resumed
                save_checkpoint(tmp / "checkpoints" / f"stage{max(result.last_stage, 1)}.npz",
                                result.state, max(result.last_stage, 1), result.owner)
        folders.append(folder)
    return folders
