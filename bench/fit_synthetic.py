"""Quality and speed of the three-stage fit on synthetic faces with known truth and on real photos.

Synthetic: N faces drawn as `mfface synth` draws them (`mfface.synthetic.synth_face`, seed
BENCH_SEED, sample i = face i: identity from the model's prior, sparse expressions, yaw up to 30
deg, focal 500-5000 px at 224 px, skin tones, procedural light environments and backgrounds,
painted eye and mouth openings), rendered at `--photo-spp` from a copy of the model whose mean face
carries a smooth random displacement (`mfface.synthetic.displaced_model`, `--displacement-mm`
amplitude; its part that the model's bases cannot express is printed as `out_of_span_mm`), so the
truth is not in the span the fit searches. The fit gets MediaPipe's landmarks detected on the
render (`--landmarks mediapipe`, the default), or, as a labelled second mode, the model's exactly
projected points (`--landmarks exact`). Each face is fitted with `FitConfig()` (plus any `--set
section.key=value`) through `prepare_photo` and `Reconstructor.fit`, exactly as `mfface fit`
does. Per face it measures
- vertex error: median distance (mm) between fitted and true model-space vertices of the model's
  'skin' region (ICT: its fitting area without eyes and mouth) after rigid alignment, after
  stage 1, 2 and 3, and for two trivial baselines: the model's mean face (`_mean_face`: identity
  and expression 0) and the mean identity with the fit's final expression (`_mean_identity`), in
  two conventions (`mfface.metrics.align_points`):
  `vertex_mm` aligns by rotation, translation and scale, as the NoW benchmark does (one photo
  cannot tell the head's size: scaling the face and its distance by k renders the same image);
  `vertex_mm_noscale` aligns by rotation and translation only, so it adds the size error, and
  `size_ratio` is the true size over the fitted one (the scale the first alignment found);
- landmark error: median distance (px of the fitted crop) between the fitted landmark vertices'
  projections and the true (noise-free) projected landmarks, for the landmarks the model covers;
- PSNR and SSIM (`mfface.metrics`) of the re-render (at `--eval-spp`, low-discrepancy samples whatever the
  fit used: EVAL_SAMPLER) against the photo, both
  display-referred (gamma 2.2, as the photo is stored), inside the skin mask drawn from the
  landmarks (the fit's own mask; a skin pixel the fitted face does not cover counts with the
  render's black); for SSIM the render is replaced by the photo outside the mask so that windows
  straddling the mask edge compare only the face;
- diffuse albedo error: mean abs difference between the fitted and the true diffuse texture at
  the skin vertices' UVs, after scaling the fitted one per channel by the least-squares factor
  (light and albedo trade a per-channel scale: a brighter or tinted light with a darker or
  oppositely tinted albedo renders the same), also relative to the true mean;
- light error: what a white Lambertian surface sees of the fitted light against the true one, after
  the same per-channel scale, and relative to the best ambient light's (`light_rel`: 1 = no better
  than an ambient light of the right brightness and colour);
- seconds per fit (stages 1-3, and each stage).
Photos (`/work/shared/data/images` or $MFFACE_TEST_DATA/images): astronaut.png and takeo.ppm with
MediaPipe landmarks, takeo.ppm with its hand-placed .pts; PSNR/SSIM inside the skin mask, landmark
error against the landmarks fitted to (MediaPipe's, or the .pts), seconds per fit.
The last line printed is one JSON object with every figure.

    MFFACE_HOME=... .venv/bin/python bench/fit_synthetic.py [--faces 8] [--quick] [--set stage2.spp=4]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

# mfface sets torch's OpenMP wait policy on import (its spinning threads steal Dr.Jit's cores), so
# it is imported before numpy and torch.
import mfface  # noqa: F401,E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfface.config import FitConfig, apply_overrides, load_config
from mfface.fitting.pipeline import FitResult, PreparedImage, Reconstructor, prepare_image, prepare_photo
from mfface.metrics import align_points, aligned_distances, psnr, ssim
from mfface.forward import ForwardModel, RenderSettings
from mfface.sh import shading_error
from mfface.state import FaceState
from mfface.textures import resize_texture, sample_texture

GAMMA = 2.2
EVAL_SEED = 4_000_000
# Every re-render measured is made with the low-discrepancy sampler, whatever sampler the fit used,
# so that fits made with different samplers are measured alike: at 64 spp an `independent`
# re-render's own noise held PSNR down by 1-2.6 dB (bench/RESULTS.md, "Samplers").
EVAL_SAMPLER = "ldsampler"
BENCH_SEED = 14  # the synth seed of the benchmark faces (sample i = face i)
QUICK = {"stage1.iterations": 100, "stage2.iterations": 60, "stage3.iterations": 20}


def silhouette_iterations(result) -> int:
    """How many stage-2 iterations rendered with silhouette gradients (`stage2.silhouette_fraction`:
    0 when the outline covered the skin mask, or stage 2 did not run)."""
    report = result.reports.get("stage2")
    return int(report.figures.get("silhouette_iterations", 0)) if report is not None else 0


def image_metrics(result: FitResult, state: FaceState, image: PreparedImage, spp: int) -> dict[str, float]:
    """PSNR, SSIM (display-referred, inside the skin mask) and the fitted coverage of the mask."""
    size = (result.config.render.texture_size,) * 2
    state = dataclasses.replace(state.item(0), **{name: resize_texture(getattr(state, name), size)
                                                  for name in ("diffuse", "specular", "roughness")})
    settings = dataclasses.replace(RenderSettings.from_config(result.config, result.targets.size, spp, EVAL_SEED),
                                   sampler=EVAL_SAMPLER)
    with torch.no_grad():   # textures at one size, so that the scene is not rebuilt per stage
        out = result.forward(state, settings)
    rgb, coverage = out.image, out.coverage
    shown = rgb[0].clamp(0, 1) ** (1 / GAMMA)
    photo = image.target.clamp(0, 1) ** (1 / GAMMA)
    mask = image.skin > 0.5
    composed = torch.where(mask[..., None], shown, photo)
    return {"psnr_db": psnr(shown, photo, mask), "ssim": ssim(composed, photo, mask),
            "mask_covered": float((coverage[0][mask] > 0.5).float().mean())}


def landmark_error(result: FitResult, state: FaceState, reference: np.ndarray) -> float:
    """Median px distance (crop frame) of the fitted covered landmarks from `reference` (N, 2)."""
    index = result.targets.landmark_index
    valid = (index >= 0).cpu().numpy()
    with torch.no_grad():
        points = result.forward.landmarks(state, result.forward.vertices(state), index.clamp_min(0),
                                          result.targets.size)
    return float(np.median(np.linalg.norm(points[0].cpu().numpy()[valid] - reference[valid], axis=1)))


def albedo_error(model, fitted: torch.Tensor, true: torch.Tensor, region: np.ndarray) -> dict[str, float]:
    """Diffuse error at the region's vertex UVs after the per-channel least-squares scale."""
    uv = torch.as_tensor(model.uvs[region], dtype=torch.float32)
    f, t = sample_texture(fitted, uv)[0].double(), sample_texture(true, uv)[0].double()
    scale = (f * t).sum(0) / (f * f).sum(0).clamp_min(1e-12)
    mae = float((f * scale - t).abs().mean())
    return {"albedo_mae": mae, "albedo_rel": mae / float(t.mean()), "albedo_scale": scale.tolist()}


def light_error(fitted_sh: torch.Tensor, true_sh: torch.Tensor, albedo_scale: list[float]) -> dict[str, float]:
    """The fitted SH light (1, n, 3) against the true one as a white Lambertian surface sees them
    (`mfface.sh.shading_error`, radiance^2), after dividing the fitted light by the albedo's
    per-channel scale (`albedo_error`: the albedo-light trade), and relative to the error of the
    best ambient light (the true light's constant term alone): 1 = no more right about where the
    light comes from than an ambient light, 0 = exact."""
    scale = torch.as_tensor(albedo_scale, dtype=torch.float64)
    fitted = fitted_sh[0].detach().double().cpu() / scale
    true = true_sh[0].detach().double().cpu()
    ambient = torch.zeros_like(true)
    ambient[0] = true[0]
    error = float(shading_error(fitted, true))
    return {"light_err": error, "light_rel": error / max(float(shading_error(ambient, true)), 1e-12)}


def fit_one(recon: Reconstructor, image: PreparedImage) -> tuple[FitResult, dict[int, FaceState], float]:
    """Fit one image; (result, the state after each stage, seconds)."""
    started = time.perf_counter()
    result = recon.fit([image])
    return result, result.stages, time.perf_counter() - started


def shape_errors(model, fitted_identity, fitted_expression, truth: np.ndarray, region: np.ndarray) -> dict:
    """Median vertex error (mm) of a fitted shape against `truth` (V_region, 3): with scale
    alignment, without, and the size ratio."""
    fitted = model.vertices(fitted_identity, fitted_expression)[0].numpy()[region]
    similar, ratio = align_points(fitted, truth, scale=True)
    return {"vertex_mm": float(np.median(np.linalg.norm(similar - truth, axis=1))),
            "vertex_mm_noscale": float(np.median(aligned_distances(fitted, truth))), "size_ratio": ratio}


def synthetic_photo(model, seed: int, index: int, size: int, spp: int, displacement_mm: float, detector):
    """One benchmark face: `synth_face` of the model displaced out of its span (seeded by `index`),
    with yaw up to 30 deg; (face, photo (S, S, 3) display-referred float, MediaPipe's landmarks
    or None when it finds no face, the true model-space vertices (V, 3), out-of-span mm)."""
    from mfface.landmarks import NoFaceError
    from mfface.synthetic import displaced_model, synth_face
    from mfface.synthetic_config import PoseVariation, SynthConfig

    displaced = displaced_model(model, seed * 1000 + index, displacement_mm) if displacement_mm > 0 else None
    render_model = displaced.model if displaced else model
    config = SynthConfig(pose=PoseVariation(max_yaw=30.0))
    face = synth_face(render_model, size, seed, index, spp=spp, config=config)
    photo = torch.from_numpy(face.image.astype(np.float32) / 255.0)
    try:
        detected = detector.detect(face.image, name=f"synthetic face {index}")
    except NoFaceError:
        detected = None
    truth = render_model.vertices(face.state.identity, face.state.expression)[0].numpy()
    return face, photo, detected, truth, displaced.out_of_span_mm if displaced else 0.0


def exact_landmarks(face, table: np.ndarray, size: int) -> np.ndarray:
    """(478, 2) px: the true face's `table` vertices projected with the true camera (iris and other
    uncovered points: the render's own)."""
    from mfface.camera import project

    points = face.landmarks.astype(np.float64).copy()
    covered = table >= 0
    with torch.no_grad():
        uv = project(face.vertices[None, table[covered]].float(), face.state.focal, size, size,
                     face.state.principal)
    points[covered] = uv[0].double().numpy()
    return points


def run_synthetic(model, fit_model, config: FitConfig, faces: int, size: int, photo_spp: int,
                  eval_spp: int, first_seed: int, landmarks: str, displacement_mm: float) -> list[dict]:
    """Render faces of `model` (displaced) and fit them with `fit_model` (the same geometry, its
    own landmark table)."""
    from mfface.landmarks import LandmarkDetector

    region = model.regions["skin"]
    recon = Reconstructor(fit_model, config)
    rows = []
    with LandmarkDetector.from_config(config.input, 1) as detector:
        for index in range(first_seed, first_seed + faces):
            face, photo, detected, truth_all, out_of_span = synthetic_photo(
                model, BENCH_SEED, index, size, photo_spp, displacement_mm, detector)
            if landmarks == "mediapipe" and detected is None:
                print(json.dumps({"index": index, "skipped": "MediaPipe found no face"}), flush=True)
                continue
            exact = exact_landmarks(face, fit_model.landmarks["mediapipe478"], size)
            used = detected if landmarks == "mediapipe" else exact
            image = prepare_photo(photo, used, "mediapipe478", config, f"synthetic{index}")
            result, states, seconds = fit_one(recon, image)
            truth = truth_all[region]
            clean = np.asarray(image.to_crop.apply(exact))
            row = {"index": index, "crop_px": image.target.shape[0], "seconds": seconds,
                   "yaw_deg": round(float(np.degrees(face.state.euler[0, 0])), 1),
                   "out_of_span_mm": round(out_of_span, 3),
                   "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                   "silhouette_iterations": silhouette_iterations(result)}
            if detected is not None:
                row["mediapipe_px"] = float(np.median(np.linalg.norm(
                    np.asarray(image.to_crop.apply(detected)) - clean, axis=1)[:468]))
            zeros = torch.zeros(1, model.n_identity)
            last = max(states)
            baselines = {"mean_face": (zeros, torch.zeros(1, model.n_expression)),
                         "mean_identity": (zeros, states[last].expression)}
            for name, (identity, expression) in baselines.items():
                row.update({f"{k}_{name}": v for k, v in shape_errors(model, identity, expression, truth,
                                                                      region).items()})
            for stage, st in states.items():
                row.update({f"{k}_s{stage}": v for k, v in shape_errors(model, st.identity, st.expression,
                                                                        truth, region).items()})
                row[f"landmark_px_s{stage}"] = landmark_error(result, st, clean)
            for stage in (2, 3):
                if stage in states:
                    row.update({f"{k}_s{stage}": v for k, v in image_metrics(result, states[stage], image,
                                                                             eval_spp).items()})
            row.update(albedo_error(model, result.state.diffuse, face.state.diffuse, region))
            row.update(light_error(result.state.sh, face.state.sh, row["albedo_scale"]))
            row.update(vertex_mm=row[f"vertex_mm_s{last}"], vertex_mm_noscale=row[f"vertex_mm_noscale_s{last}"],
                       size_ratio=row[f"size_ratio_s{last}"], landmark_px=row[f"landmark_px_s{last}"],
                       psnr_db=row.get(f"psnr_db_s{last}"), ssim=row.get(f"ssim_s{last}"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def run_photos(model, config: FitConfig, folder: Path, eval_spp: int) -> list[dict]:
    from mfface.landmarks import LandmarkDetector

    jobs = [("astronaut.png", None), ("takeo.ppm", None), ("takeo.ppm", "takeo.pts")]
    recon = Reconstructor(model, config)
    rows = []
    with LandmarkDetector.from_config(config.input) as detector:
        for name, landmark_file in jobs:
            path = folder / name
            if not path.is_file() or (landmark_file and not (folder / landmark_file).is_file()):
                print(f"skipping {name}: not found in {folder}", flush=True)
                continue
            image = prepare_image(path, config, detector,
                                  landmark_file=folder / landmark_file if landmark_file else None)
            result, states, seconds = fit_one(recon, image)
            last = max(states)
            row = {"photo": name, "landmarks": landmark_file or "mediapipe", "crop_px": image.target.shape[0],
                   "seconds": seconds, "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                   "landmark_px": landmark_error(result, result.state, image.crop_landmarks)}
            for stage in (2, 3):
                if stage in states:
                    row.update({f"{k}_s{stage}": v for k, v in image_metrics(result, states[stage], image,
                                                                             eval_spp).items()})
            row.update(psnr_db=row.get(f"psnr_db_s{last}"), ssim=row.get(f"ssim_s{last}"))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def with_geometric_table(model, ict_source: Path):
    """`model` (an ICT model) with the geometric MediaPipe table instead of the calibrated one,
    to measure what the calibration changes (docs/models.md)."""
    from mfface.morphable.correspondence import MEDIAPIPE_CONTOUR, contour_subset
    from mfface.morphable.ict import import_ict_indexed, mediapipe_table, table_to_model

    _, to_orig = import_ict_indexed(ict_source, with_mediapipe=False, parts=False)
    table = table_to_model(mediapipe_table(calibrated=False), to_orig)
    landmarks = {**model.landmarks, "mediapipe478": table,
                 "mediapipe478_contour": contour_subset(table, MEDIAPIPE_CONTOUR)}
    return dataclasses.replace(model, landmarks=landmarks)


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs section.key=value, got {item!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=8, help="synthetic faces (seeds first-seed..)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="synthetic photo side in px")
    parser.add_argument("--photo-spp", type=int, default=256, help="spp of the synthetic photos")
    parser.add_argument("--eval-spp", type=int, default=256, help="spp of the re-renders measured")
    parser.add_argument("--landmarks", choices=("mediapipe", "exact"), default="mediapipe",
                        help="synthetic faces' landmarks: MediaPipe on the render (default), or the "
                             "model's exactly projected points (a labelled second mode)")
    parser.add_argument("--displacement-mm", type=float, default=3.0,
                        help="amplitude of the smooth out-of-span displacement (0: in the model's span)")
    parser.add_argument("--quick", action="store_true",
                        help=f"2 faces, 64 spp photos/evaluation, iterations {QUICK} (development only)")
    parser.add_argument("--config", type=Path, help="TOML config to start from instead of FitConfig() "
                        "(e.g. bench/defaults_2026-12-02.toml, the defaults before the geometry work)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override (JSON value), repeatable")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-photos", action="store_true")
    parser.add_argument("--model", default=None, help="installed model (default: the store's default)")
    parser.add_argument("--geometric-table", type=Path, metavar="ICT_SOURCE",
                        help="fit with ICT's geometric MediaPipe table instead of the calibrated one "
                             "(the photos are rendered with the calibrated one either way)")
    args = parser.parse_args()

    from mfface.backend import select_variant
    from mfface.morphable.store import ModelStore

    variant = select_variant()
    overrides = {**(QUICK if args.quick else {}), **_parse_set(args.set)}
    config = apply_overrides(load_config(args.config) if args.config else FitConfig(), overrides)
    if args.quick:
        args.faces, args.photo_spp, args.eval_spp = min(args.faces, 2), 64, 64
    store = ModelStore()
    model = store.load(args.model)
    fit_model = with_geometric_table(model, args.geometric_table) if args.geometric_table else model
    load = os.getloadavg()
    print(f"model {model.name}, variant {variant}, torch threads {torch.get_num_threads()}, "
          f"load {load[0]:.2f}, overrides {overrides or 'none (defaults)'}", flush=True)
    synthetic = [] if args.no_synthetic else run_synthetic(
        model, fit_model, config, args.faces, args.size, args.photo_spp, args.eval_spp, args.first_seed, args.landmarks,
        args.displacement_mm)
    folder = Path(os.environ.get("MFFACE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "images"
    photos = [] if args.no_photos else run_photos(fit_model, config, folder, args.eval_spp)
    summary = {"model": model.name, "variant": variant, "config": str(args.config or "FitConfig()"),
               "overrides": overrides, "faces": len(synthetic),
               "size": args.size, "photo_spp": args.photo_spp, "eval_spp": args.eval_spp,
               "landmarks": args.landmarks,
               "table": "geometric" if args.geometric_table else "calibrated", "displacement_mm": args.displacement_mm, "load_start": round(load[0], 2),
               "load_end": round(os.getloadavg()[0], 2)}
    for key in ("vertex_mm", "vertex_mm_s1", "vertex_mm_s2", "vertex_mm_mean_face", "vertex_mm_mean_identity",
                "vertex_mm_noscale", "vertex_mm_noscale_s1", "vertex_mm_noscale_s2",
                "vertex_mm_noscale_mean_face", "landmark_px", "landmark_px_s1", "mediapipe_px", "out_of_span_mm",
                "psnr_db", "psnr_db_s2", "ssim", "ssim_s2", "albedo_mae", "albedo_rel", "light_err", "light_rel",
                "seconds"):
        summary[f"synthetic_median_{key}"] = _median(synthetic, key)
    gains = [1 - r["vertex_mm_s2"] / r["vertex_mm_s1"] for r in synthetic if "vertex_mm_s2" in r]
    ratios = [r["vertex_mm"] / r["vertex_mm_mean_face"] for r in synthetic]
    summary["synthetic_median_stage2_gain"] = round(statistics.median(gains), 4) if gains else None
    summary["synthetic_median_ratio_to_mean_face"] = round(statistics.median(ratios), 4) if ratios else None
    summary["photos"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                         for r in photos]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
