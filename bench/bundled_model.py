"""What the built-in compact model (`ict-lite`) costs against the full ICT model.

1. `--vertex`: vertex error of compact models with K identity modes (float16 bases, as shipped)
   on random faces of the full model (identity ~N(0, 1) over all 100 modes, a sparse expression:
   each blend weight is non-zero with probability 0.2, uniform in [0, 1]), over the model's
   'skin' and 'face' vertices, in mm:
   - `trunc`: the same coefficients, the modes beyond K dropped (what the compact model draws
     for the face the full one would);
   - `best`: the closest face the compact model can make (least squares over its K identity
     coefficients, the expression known), i.e. the error floor of a perfect fit.
2. `--fit`: the fit (`Reconstructor`, `FitConfig` plus `--set` overrides, as `mfface fit`) of
   synthetic faces of the *full* model (`mfface.synthetic.random_face`, here with identity drawn
   from all 100 modes at std 1 by default, i.e. the full model's own distribution: the fit
   benchmark's faces use only the first 40 modes, which any K >= 40 represents exactly), once
   with the full model and once with each compact one; per face the vertex error against the truth (skin vertices,
   NoW-style similarity alignment and rigid only), landmark error and PSNR inside the skin mask
   (`bench/fit_synthetic.py`'s measures), beside the trivial baseline (the mean face).
3. `--photos`: the same fits on photos (default: two of one person and one of another from the
   shared people folder): PSNR and landmark error of each, and the difference between the full
   and the compact model's fitted shapes (identity only, and identity + expression; skin vertices
   after similarity alignment), beside the difference between two photos of one person (full
   model) and the full fit's distance from the mean face.
The last line printed is one JSON object with every figure.

    .venv/bin/python bench/bundled_model.py --vertex --fit --photos [--faces 3] [--size 160]
        [--k 50] [--set stage2.iterations=60] [--archive ICT-FaceKit.tar.xz]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_synthetic import fit_one, image_metrics, landmark_error  # noqa: E402

from mfface.config import FitConfig, apply_overrides  # noqa: E402
from mfface.fitting.pipeline import Reconstructor, prepare_image, prepare_photo  # noqa: E402
from mfface.metrics import align_points  # noqa: E402
from mfface.morphable.build_bundled import derive, write_bundle  # noqa: E402
from mfface.morphable.format import load_model_file  # noqa: E402
from mfface.morphable.model import MorphableModel  # noqa: E402

DATA = Path(os.environ.get("MFFACE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
QUICK = {"stage1.iterations": 100, "stage2.iterations": 60, "stage3.iterations": 20}


def compact(full: MorphableModel, k: int, folder: Path) -> MorphableModel:
    """The compact model with k identity modes, written and read back (float16 as shipped)."""
    texts = {"LICENSE": full.license.encode(), "CREDITS.md": b"(bench)"}
    paths = write_bundle(derive(full, k), texts, folder / f"k{k}")
    model = load_model_file(paths["model"])
    model.name = f"ict-lite-k{k}"
    return model


def vertex_error(full: MorphableModel, lite: dict[int, MorphableModel], faces: int) -> dict:
    rng = np.random.default_rng(0)
    ident = rng.normal(size=(faces, full.n_identity))
    expr = np.where(rng.random((faces, full.n_expression)) < 0.2,
                    rng.random((faces, full.n_expression)), 0.0)
    basis = full.identity_basis.reshape(full.n_identity, -1).astype(np.float64)
    exp_part = expr @ full.expression_basis.reshape(full.n_expression, -1).astype(np.float64)
    truth = (ident @ basis + exp_part).reshape(faces, -1, 3)  # offsets from the mean (same in both)
    out = {}
    for k, model in lite.items():
        b = model.identity_basis.reshape(k, -1).astype(np.float64)
        e = expr @ model.expression_basis.reshape(full.n_expression, -1).astype(np.float64)
        mean_shift = (model.mean_shape - full.mean_shape).reshape(-1).astype(np.float64)
        trunc = (ident[:, :k] @ b + e + mean_shift).reshape(faces, -1, 3)
        target = truth.reshape(faces, -1) - e - mean_shift
        coeff, *_ = np.linalg.lstsq(b.T, target.T, rcond=None)
        best = (coeff.T @ b + e + mean_shift).reshape(faces, -1, 3)
        row = {}
        for region in ("skin", "face"):
            idx = full.regions[region]
            for name, approx in (("trunc", trunc), ("best", best)):
                d = np.linalg.norm(approx[:, idx] - truth[:, idx], axis=-1)
                row[f"{name}_{region}_median_mm"] = round(float(np.median(d)), 3)
                row[f"{name}_{region}_p95_mm"] = round(float(np.percentile(d, 95)), 3)
                row[f"{name}_{region}_max_mm"] = round(float(d.max()), 2)
        out[k] = row
        print(json.dumps({"k": k, **row}), flush=True)
    return out


def shape(model: MorphableModel, state, with_expression: bool) -> np.ndarray:
    expression = state.expression if with_expression else None
    with torch.no_grad():
        return model.vertices(state.identity, expression)[0].numpy().astype(np.float64)


def similar_mm(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Median distance (mm) of a's region vertices from b's after similarity alignment."""
    aligned, _ = align_points(a[region], b[region], scale=True)
    return float(np.median(np.linalg.norm(aligned - b[region], axis=1)))


def rigid_mm(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    aligned, _ = align_points(a[region], b[region], scale=False)
    return float(np.median(np.linalg.norm(aligned - b[region], axis=1)))


def fit_synthetic(full: MorphableModel, models: dict[str, MorphableModel], config: FitConfig,
                  faces: int, size: int, photo_spp: int, eval_spp: int, truth_components: int,
                  truth_scale: float) -> list[dict]:
    from mfface.forward import ForwardModel
    from mfface.synthetic import random_face

    region = full.regions["skin"]
    maker = ForwardModel(full)
    recons = {name: Reconstructor(model, config) for name, model in models.items()}
    rows = []
    for seed in range(faces):
        face = random_face(full, size, seed, spp=photo_spp, landmark_noise_px=0.5, forward=maker,
                           identity_components=truth_components, identity_scale=truth_scale)
        truth = face.vertices.numpy().astype(np.float64)
        mean = full.mean_shape.astype(np.float64)
        row = {"seed": seed, "mean_face_mm": similar_mm(mean, truth, region),
               "mean_face_mm_noscale": rigid_mm(mean, truth, region)}
        for name, recon in recons.items():
            model = models[name]
            image = prepare_photo(face.photo, face.landmarks, "mediapipe478", config, f"synthetic{seed}")
            result, states, seconds = fit_one(recon, image)
            fitted = shape(model, result.state, True)
            clean = np.asarray(image.to_crop.apply(face.clean_landmarks))
            s1 = shape(model, states[1], True)
            row[name] = {"vertex_mm": similar_mm(fitted, truth, region),
                         "vertex_mm_noscale": rigid_mm(fitted, truth, region),
                         "vertex_mm_s1": similar_mm(s1, truth, region),
                         "landmark_px": landmark_error(result, result.state, clean),
                         "psnr_db": image_metrics(result, result.state, image, eval_spp)["psnr_db"],
                         "seconds": round(seconds, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def fit_photos(full: MorphableModel, models: dict[str, MorphableModel], config: FitConfig,
               photos: list[str], eval_spp: int) -> dict:
    from mfface.landmarks import LandmarkDetector

    region = full.regions["skin"]
    recons = {name: Reconstructor(model, config) for name, model in models.items()}
    rows, shapes = [], {}
    with LandmarkDetector.from_config(config.input) as detector:
        for photo in photos:
            path = DATA / "images" / "people" / photo
            image = prepare_image(path, config, detector)
            row = {"photo": photo, "crop_px": image.target.shape[0]}
            for name, recon in recons.items():
                model = models[name]
                result, _, seconds = fit_one(recon, image)
                shapes[photo, name] = (shape(model, result.state, False), shape(model, result.state, True))
                row[name] = {"psnr_db": image_metrics(result, result.state, image, eval_spp)["psnr_db"],
                             "landmark_px": landmark_error(result, result.state, image.crop_landmarks),
                             "seconds": round(seconds, 1)}
                if name != "ict":
                    for i, what in enumerate(("identity", "with_expression")):
                        row[name][f"vs_full_{what}_mm"] = similar_mm(shapes[photo, name][i],
                                                                     shapes[photo, "ict"][i], region)
            row["full_from_mean_face_mm"] = similar_mm(full.mean_shape.astype(np.float64),
                                                       shapes[photo, "ict"][0], region)
            print(json.dumps(row), flush=True)
            rows.append(row)
    same_person = {}
    by_person: dict[str, list[str]] = {}
    for photo in photos:
        by_person.setdefault(photo.split("_")[0], []).append(photo)
    for person, names in by_person.items():
        if len(names) >= 2:
            for model_name in models:
                same_person[f"{person}:{model_name}"] = similar_mm(
                    shapes[names[0], model_name][0], shapes[names[1], model_name][0], region)
    return {"rows": rows, "same_person_identity_mm": same_person}


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=DATA / "ICT-FaceKit.tar.xz")
    parser.add_argument("--vertex", action="store_true", help="vertex error on random faces")
    parser.add_argument("--vertex-k", default="20,30,40,50,60,80,100")
    parser.add_argument("--vertex-faces", type=int, default=200)
    parser.add_argument("--fit", action="store_true", help="fit synthetic faces of the full model")
    parser.add_argument("--photos", action="store_true", help="fit people photos")
    parser.add_argument("--photo-list", default="obama_a.jpg,obama_b.jpg,biden_a.jpg")
    parser.add_argument("--k", default="50", help="compact models to fit (comma-separated K)")
    parser.add_argument("--faces", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--photo-spp", type=int, default=64)
    parser.add_argument("--eval-spp", type=int, default=64)
    parser.add_argument("--truth-components", type=int, default=100,
                        help="identity modes of the synthetic truth (random_face's default is 40)")
    parser.add_argument("--truth-scale", type=float, default=1.0,
                        help="identity std of the synthetic truth (random_face's default is 0.7)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    from mfface.backend import select_variant
    from mfface.morphable.ict import import_ict

    select_variant()
    started = time.perf_counter()
    full = import_ict(args.archive)
    summary: dict = {"load_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.vertex:
            ks = [int(k) for k in args.vertex_k.split(",")]
            lite = {k: compact(full, k, Path(tmp)) for k in ks}
            summary["vertex"] = vertex_error(full, lite, args.vertex_faces)
        models = {"ict": full}
        models.update({f"k{k}": compact(full, int(k), Path(tmp)) for k in args.k.split(",")})
    overrides = {**QUICK}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    config = apply_overrides(FitConfig(), overrides)
    summary.update(overrides=overrides, size=args.size, photo_spp=args.photo_spp, eval_spp=args.eval_spp,
                   truth_components=args.truth_components, truth_scale=args.truth_scale)
    if args.fit:
        rows = fit_synthetic(full, models, config, args.faces, args.size, args.photo_spp, args.eval_spp,
                             args.truth_components, args.truth_scale)
        summary["fit_median"] = {"mean_face_mm": _median([r["mean_face_mm"] for r in rows]),
                                 "mean_face_mm_noscale": _median([r["mean_face_mm_noscale"] for r in rows])}
        for name in models:
            summary["fit_median"][name] = {key: _median([r[name][key] for r in rows])
                                           for key in rows[0][name]}
        summary["fit_rows"] = rows
    if args.photos:
        summary["photos"] = fit_photos(full, models, config, args.photo_list.split(","), args.eval_spp)
    summary["load_end"] = round(os.getloadavg()[0], 2)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
