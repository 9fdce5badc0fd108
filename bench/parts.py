"""What the model's parts (eyeballs, teeth, mouth interior) cost and whether the fit should see them.

    MFFACE_HOME=... .venv/bin/python bench/parts.py cost  [--size 256 --spp 4 --iterations 15 --rounds 3]
    MFFACE_HOME=... .venv/bin/python bench/parts.py grad  [--faces 3]
    MFFACE_HOME=... .venv/bin/python bench/parts.py loss  [--faces 4] [--photo PATH]
    MFFACE_HOME=... .venv/bin/python bench/parts.py gaze  RESULT_FOLDER...

- `cost`: seconds per stage-2 iteration (`fit_photometric`, the fit's own code, default settings)
  on one synthetic face, for the model without parts, with parts passed detached (the default)
  and with parts that carry gradients (`ForwardModel(part_gradients=True)`), interleaved round by
  round in one process so that the machine's load affects all three alike; the load average is
  printed with each round.
- `grad`: on synthetic faces after stage 1, the stage-2 photometric loss's gradient with respect
  to identity, expression, pose and light, with detached parts against differentiable parts (same
  seed): |g_attached - g_detached| / |g_attached|, the share of the gradient the parts carry, for
  the loss in the skin mask (as the fit counts it) and, as a check that the parts' gradient path
  works, in the eyes (MediaPipe's eye contours filled).
- `loss`: fits (stages 1-2) of synthetic faces rendered with parts and a random gaze, with the
  photometric loss counted in the skin mask (the default) and in the skin mask plus the eyes
  (MediaPipe's eye contours filled) with differentiable parts: vertex error (skin, aligned with
  scale), gaze error (degrees between the fitted and the true eye directions), PSNR inside the
  skin mask and inside the eyes. `--photo` adds one real photo (PSNR only, and the two renders
  written to bench/out/parts_<name>_{skin,eyes}.png).
- `gaze`: for `mfface fit` result folders of real photos: how far the rendered pupils
  (`model.pupil_centres`, projected) lie from MediaPipe's iris-centre landmarks (468, 473), in
  eye widths, with the fitted eye-look coefficients, with them set to 0 (eyes straight ahead),
  and after refitting only the 8 eye-look coefficients to the iris and eye-contour landmarks
  (what an iris term in stage 1 would do); also the eye-contour landmark error (px) each way.
  Renders (photo crop | fitted gaze | refitted gaze) go to bench/out/parts_gaze_<name>.png.
The last line printed is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from pathlib import Path

import mfface  # noqa: F401  (sets torch's OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfface.config import FitConfig, apply_overrides  # noqa: E402
from mfface.forward import ForwardModel, RenderSettings  # noqa: E402

GAMMA = 2.2
OUT = Path(__file__).resolve().parent / "out"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def gaze_face(model, size: int, seed: int, maker: ForwardModel, spp: int = 64, noise_px: float = 0.5):
    """A synthetic face (`random_face`) with a random gaze added (eye-look coefficients up to 0.6
    for both eyes alike), re-rendered with its parts; returns (photo display-referred (S, S, 3),
    noisy landmarks (478, 2), true state)."""
    from mfface.synthetic import _fill_uncovered, random_face

    face = random_face(model, size, seed, spp=16, forward=maker)
    g = torch.Generator().manual_seed(1000 + seed)
    expression = face.state.expression.clone()
    names = model.expression_names
    horizontal, vertical = (float(x) for x in (torch.rand(2, generator=g) * 1.2 - 0.6))
    side = ("Out_L", "In_R") if horizontal > 0 else ("In_L", "Out_R")
    for suffix in side:
        expression[0, names.index(f"eyeLook{suffix}")] = abs(horizontal)
    for eye in ("L", "R"):
        expression[0, names.index(f"eyeLook{'Up' if vertical > 0 else 'Down'}_{eye}")] = abs(vertical)
    state = dataclasses.replace(face.state, expression=expression)
    index = torch.as_tensor(model.landmarks["mediapipe478"], dtype=torch.long)
    with torch.no_grad():
        out = maker(state, RenderSettings.from_config(FitConfig(), size, spp, seed), index.clamp_min(0))
    points = _fill_uncovered(out.landmarks[0], index).double().numpy()
    linear = out.image[0] + (1.0 - out.coverage[0])[..., None] * torch.tensor([0.25, 0.22, 0.2])
    photo = linear.clamp(0, 1) ** (1 / GAMMA)
    noisy = points + noise_px * torch.randn(points.shape, generator=g, dtype=torch.float64).numpy()
    return photo, noisy, state


def eye_mask(landmarks: np.ndarray, size: int) -> torch.Tensor:
    """(S, S) float mask of MediaPipe's two eye contours (each filled as its convex hull)."""
    from mediapipe.python.solutions import face_mesh_connections as fmc
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for contour in (fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE):
        points = landmarks[sorted({i for e in contour for i in e})]
        hull = ConvexHull(points)
        draw.polygon([tuple(map(float, points[i])) for i in hull.vertices], fill=255)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def gaze_angles(model, expression: torch.Tensor) -> np.ndarray:
    """(2 eyes, 2) yaw, pitch in degrees of the eyeball parts for `expression` (1, K_exp)."""
    rows = [p.gaze for p in model.parts if p.gaze is not None]
    return np.degrees(np.stack([g @ expression[0].detach().numpy() for g in rows]))


def direction_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean angle (deg) between the eye directions of (2, 2) yaw/pitch arrays."""
    def unit(yp):
        y, p = np.radians(yp[:, 0]), np.radians(yp[:, 1])
        return np.stack([np.sin(y) * np.cos(p), np.sin(p), np.cos(y) * np.cos(p)], -1)
    cos = (unit(a) * unit(b)).sum(-1).clip(-1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


def masked_psnr(render: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> float:
    from mfface.metrics import psnr

    return float(psnr(render.clamp(0, 1) ** (1 / GAMMA), photo.clamp(0, 1) ** (1 / GAMMA), mask > 0.5))


# -- cost --------------------------------------------------------------------------------------

def run_cost(model, args) -> dict:
    from mfface.fitting.landmark_stage import run_landmark_stage
    from mfface.fitting.photometric_stage import fit_photometric
    from mfface.fitting.pipeline import Reconstructor, prepare_photo

    config = apply_overrides(FitConfig(), {"stage2.iterations": args.iterations, "stage2.spp": args.spp})
    bare = dataclasses.replace(model, parts=[])
    variants = {"no parts": ForwardModel(bare), "parts, detached": ForwardModel(model),
                "parts, with gradients": ForwardModel(model, part_gradients=True)}
    photo, landmarks, _ = gaze_face(model, args.size, 0, variants["parts, detached"])
    image = prepare_photo(photo, landmarks, "mediapipe478", config, "synthetic0")
    targets = Reconstructor(model, config).targets([image])
    start, _ = run_landmark_stage(model, targets, config, False)
    times: dict[str, list[float]] = {name: [] for name in variants}
    warm = apply_overrides(config, {"stage2.iterations": 2})
    for forward in variants.values():
        fit_photometric(forward, targets, start, warm)  # scene build and kernel compilation
    for r in range(args.rounds):
        for name, forward in variants.items():
            started = time.perf_counter()
            fit_photometric(forward, targets, start, config)
            times[name].append((time.perf_counter() - started) / args.iterations)
        print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items())
              + f" (load {load()})", flush=True)
    return {"size": args.size, "spp": args.spp, "iterations": args.iterations,
            "crop_px": int(image.target.shape[0]),
            "seconds_per_iteration": {n: round(statistics.median(t), 4) for n, t in times.items()}}


# -- grad --------------------------------------------------------------------------------------

def run_grad(model, args) -> dict:
    from mfface.fitting.landmark_stage import run_landmark_stage
    from mfface.fitting.pipeline import Reconstructor, prepare_photo
    from mfface.objectives import photometric_loss

    config = FitConfig()
    detached, attached = ForwardModel(model), ForwardModel(model, part_gradients=True)
    rows = []
    for seed in range(args.faces):
        photo, landmarks, _ = gaze_face(model, args.size, seed, detached)
        image = prepare_photo(photo, landmarks, "mediapipe478", config, f"synthetic{seed}")
        targets = Reconstructor(model, config).targets([image])
        state, _ = run_landmark_stage(model, targets, config, False)
        state = dataclasses.replace(state, principal=targets.principal)
        eyes = eye_mask(image.crop_landmarks, targets.size)[None]
        row = {"seed": seed}
        for region, mask in (("skin", targets.skin), ("eyes", eyes)):
            grads = {}
            for name, forward in (("detached", detached), ("attached", attached)):
                live = state.detached()
                for key in ("identity", "expression", "euler", "translation", "sh"):
                    getattr(live, key).requires_grad_(True)
                out = forward(live, RenderSettings.from_config(config, targets.size, 16, 7))
                photometric_loss(out.image, out.coverage, targets.images, mask).backward()
                grads[name] = {k: getattr(live, k).grad.flatten().clone()
                               for k in ("identity", "expression", "euler", "translation", "sh")}
            for key in grads["detached"]:
                a, b = grads["detached"][key], grads["attached"][key]
                row[f"{region}.{key}"] = round(float((b - a).norm() / b.norm().clamp_min(1e-12)), 5)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"relative_gradient_from_parts": rows}


# -- loss region -------------------------------------------------------------------------------

def fit_variant(model, config, image, eyes: torch.Tensor | None):
    """Stages 1-2 with the photometric loss in the skin mask, or in skin + `eyes` with
    differentiable parts; returns the fitted state and the fit's forward model."""
    from mfface.fitting.pipeline import Reconstructor

    recon = Reconstructor(model, config)
    if eyes is not None:
        image = dataclasses.replace(image, skin=(image.skin + eyes).clamp(0, 1))
        recon.forward = ForwardModel(model, part_gradients=True)
    result = recon.fit([image], skip_stages=(3,))
    return result.stages[2], recon.forward


def run_loss(model, args) -> dict:
    from mfface.fitting.pipeline import prepare_image, prepare_photo
    from mfface.metrics import align_points

    config = FitConfig()
    maker = ForwardModel(model)
    region = model.regions["skin"]
    rows = []
    for seed in range(args.faces):
        photo, landmarks, truth = gaze_face(model, args.size, seed, maker)
        image = prepare_photo(photo, landmarks, "mediapipe478", config, f"synthetic{seed}")
        eyes = eye_mask(image.crop_landmarks, image.target.shape[0])
        true_vertices = model.vertices(truth.identity, truth.expression)[0].numpy()[region]
        true_gaze = gaze_angles(model, truth.expression)
        row = {"seed": seed, "true_gaze_deg": true_gaze.round(1).tolist()}
        for name, extra in (("skin", None), ("skin+eyes", eyes)):
            started = time.perf_counter()
            state, forward = fit_variant(model, config, image, extra)
            with torch.no_grad():
                out = forward(state, RenderSettings.from_config(config, image.target.shape[0], 64, 99))
            fitted = model.vertices(state.identity, state.expression)[0].detach().numpy()[region]
            aligned, _ = align_points(fitted, true_vertices, scale=True)
            row[name] = {
                "seconds": round(time.perf_counter() - started, 1),
                "vertex_mm": round(float(np.median(np.linalg.norm(aligned - true_vertices, axis=1))), 4),
                "gaze_error_deg": round(direction_error(gaze_angles(model, state.expression), true_gaze), 2),
                "psnr_skin_db": round(masked_psnr(out.image[0], image.target, image.skin), 2),
                "psnr_eyes_db": round(masked_psnr(out.image[0], image.target, eyes), 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary: dict = {"faces": rows}
    for name in ("skin", "skin+eyes"):
        summary[f"median_{name}"] = {k: round(statistics.median(r[name][k] for r in rows), 4)
                                     for k in ("vertex_mm", "gaze_error_deg", "psnr_skin_db", "psnr_eyes_db")}
    if args.photo:
        from mfface.images import write_png
        from mfface.landmarks import LandmarkDetector

        with LandmarkDetector() as detector:
            image = prepare_image(args.photo, config, detector)
        eyes = eye_mask(image.crop_landmarks, image.target.shape[0])
        photo_row = {"photo": Path(args.photo).name}
        OUT.mkdir(exist_ok=True)
        for name, extra in (("skin", None), ("skin+eyes", eyes)):
            state, forward = fit_variant(model, config, image, extra)
            with torch.no_grad():
                out = forward(state, RenderSettings.from_config(config, image.target.shape[0], 64, 99))
            photo_row[name] = {"psnr_skin_db": round(masked_psnr(out.image[0], image.target, image.skin), 2),
                               "psnr_eyes_db": round(masked_psnr(out.image[0], image.target, eyes), 2),
                               "gaze_deg": gaze_angles(model, state.expression).round(1).tolist(),
                               "sh_dc": state.sh[0, 0].detach().round(decimals=3).tolist()}
            shown = out.image[0] + (1 - out.coverage[0])[..., None] * image.target
            write_png(OUT / f"parts_{Path(args.photo).stem}_{name.replace('+', '_')}.png",
                      torch.cat([image.target, shown], 1), gamma=GAMMA)
        print(json.dumps(photo_row), flush=True)
        summary["photo"] = photo_row
    return summary


def run_gaze(model, args) -> dict:
    """See the module docstring (`gaze`)."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    from mfface.camera import project, to_camera
    from mfface.fitting.pipeline import prepare_image
    from mfface.images import write_png
    from mfface.landmarks import LandmarkDetector
    from mfface.relight import load_photo, photo_crop
    from mfface.replay import load_fitted_face

    iris = {"eye_right": 468, "eye_left": 473}
    corners = {"eye_right": (33, 133), "eye_left": (362, 263)}
    contour = sorted({i for e in fmc.FACEMESH_LEFT_EYE | fmc.FACEMESH_RIGHT_EYE for i in e})
    rows = []
    with LandmarkDetector() as detector:
        for folder in map(Path, args.results):
            face = load_fitted_face(folder)
            model, state, size = face.model, face.state, face.crop_size
            params = json.loads((folder / "params.json").read_text())
            image = prepare_image(params["image"]["path"], face.config, detector)
            marks = torch.from_numpy(image.crop_landmarks).float()
            index = torch.as_tensor(model.landmarks["mediapipe478"][contour])
            look = [i for i, n in enumerate(model.expression_names) if n.startswith("eyeLook")]

            def measure(expression: torch.Tensor) -> tuple[dict, torch.Tensor]:
                centres = model.pupil_centres(state.identity, expression)
                out, loss = {}, torch.zeros(())
                for name, k in iris.items():
                    cam = to_camera(centres[name][:, None], state.euler, state.translation)
                    px = project(cam, state.focal, size, size, state.principal)[0, 0]
                    width = (marks[corners[name][0]] - marks[corners[name][1]]).norm()
                    out[name] = round(float((px - marks[k]).norm() / width), 3)
                    loss = loss + ((px - marks[k]) ** 2).sum()
                lids = project(to_camera(model.vertices(state.identity, expression)[:, index], state.euler,
                                         state.translation), state.focal, size, size, state.principal)[0]
                lid_error = ((lids - marks[contour]) ** 2).sum(-1)
                out["eye_contour_rms_px"] = round(float(lid_error.mean().sqrt()), 3)
                return out, loss / 2 + lid_error.mean()

            straight = state.expression.clone()
            straight[:, look] = 0.0
            free = state.expression[:, look].clone().requires_grad_(True)
            optimiser = torch.optim.Adam([free], lr=0.02)
            for _ in range(300):
                expression = state.expression.index_put((torch.zeros(len(look), dtype=torch.long),
                                                         torch.tensor(look)), free[0])
                optimiser.zero_grad()
                measure(expression)[1].backward()
                optimiser.step()
                with torch.no_grad():
                    free.clamp_(0.0, 1.0)
            refitted = state.expression.detach().clone()
            refitted[:, look] = free.detach()
            row = {"result": folder.name,
                   "fitted": measure(state.expression)[0], "straight": measure(straight)[0],
                   "refitted": measure(refitted)[0],
                   "gaze_deg_fitted": gaze_angles(model, state.expression).round(1).tolist(),
                   "gaze_deg_refitted": gaze_angles(model, refitted).round(1).tolist()}
            print(json.dumps(row), flush=True)
            rows.append(row)
            settings = RenderSettings.from_config(face.config, size, 64, 5)
            forward = ForwardModel(model)
            panels = [photo_crop(load_photo(face), size, face.config.input.gamma)]
            for expression in (state.expression, refitted):
                with torch.no_grad():
                    panels.append(forward(dataclasses.replace(state, expression=expression), settings).image[0])
            OUT.mkdir(exist_ok=True)
            write_png(OUT / f"parts_gaze_{folder.name}.png", torch.cat(panels, 1), gamma=face.config.input.gamma)
    return {"results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("cost", "grad", "loss", "gaze"))
    parser.add_argument("results", nargs="*", help="gaze: result folders of `mfface fit`")
    parser.add_argument("--size", type=int, default=256, help="synthetic photo side in px")
    parser.add_argument("--spp", type=int, default=4, help="cost: stage-2 samples per pixel")
    parser.add_argument("--iterations", type=int, default=15, help="cost: stage-2 iterations per round")
    parser.add_argument("--rounds", type=int, default=3, help="cost: interleaved rounds")
    parser.add_argument("--faces", type=int, default=3, help="grad/loss: synthetic faces (seeds 0..)")
    parser.add_argument("--photo", default=None, help="loss: also fit this photo both ways")
    parser.add_argument("--model", default=None, help="model name (default: the store's default)")
    args = parser.parse_args()

    from mfface.backend import select_variant
    from mfface.morphable.store import ModelStore

    variant = select_variant()
    model = ModelStore().load(args.model)
    if not model.parts:
        raise SystemExit(f"model {model.name!r} has no parts; use ict-lite or reinstall ict.")
    started = load()
    print(f"model {model.name}, variant {variant}, torch threads {torch.get_num_threads()}, load {started}",
          flush=True)
    figures = {"cost": run_cost, "grad": run_grad, "loss": run_loss, "gaze": run_gaze}[args.what](model, args)
    print(json.dumps({"what": args.what, "model": model.name, "variant": variant, "load_start": started,
                      "load_end": load(), **figures}))


if __name__ == "__main__":
    main()
