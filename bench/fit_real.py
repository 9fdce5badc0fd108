"""The fit on real photos: identity consistency, PSNR, light quality and time, per photo and per person.

Photos: `$MFFACE_TEST_DATA/images/people/` (or `../shared/data/images/people`): `<person>_<x>.jpg`,
four of one person and two of another. Each photo is fitted on its own with `FitConfig()` (plus any
`--set section.key=value`), exactly as `mfface fit` does; then each person's photos are fitted
together with `--shared-identity`.

Figures
- identity consistency: each fit's identity with the expression set to zero, as model-space vertices
  within 80 mm of the mean face's nose tip (MediaPipe point 1), compared after similarity alignment
  (NoW-style: a photo does not fix the head's size); the median vertex distance of each pair of
  fits; `intra_mm` (pairs of one person), `inter_mm` (pairs of different people), `ratio` = intra /
  inter (`_s1`: the same for the stage-1 identities, the baseline of the later stages). A shape that
  follows the person makes the ratio small; the mean face would give 0 / 0. For
  the shared fits: distance to the same person's single-photo fits and to the other person's.
- PSNR (dB) of the re-render against the photo inside the skin mask (display-referred, as
  bench/fit_synthetic.py), stage 1's start (stage-2 input) and the final fit.
- light: fraction of the lat-long texels whose unclamped SH radiance is below 1% of the mean
  (`mfface.sh.negative_fraction`), and the unclamped minimum and maximum.
- seconds per fit (wall and process CPU). With `--against BASELINE.toml` each photo is also fitted
  with that config right before its own fit, so that both see the same load (these machines are
  shared, and two runs minutes apart differed by 14%): `baseline_seconds`, `baseline_psnr_db`
  per photo and `time_ratio` / `cpu_time_ratio` (total over the baseline's total) in the summary.
The last line printed is one JSON object with every figure.

    MFFACE_HOME=<store> .venv/bin/python bench/fit_real.py [--set light.nonnegative=false] [--model ict]
        [--against bench/defaults_2026-12-02.toml]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import mfface  # noqa: F401 - sets torch's OpenMP wait policy before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_synthetic import image_metrics, silhouette_iterations  # noqa: E402

from mfface.backend import select_variant  # noqa: E402
from mfface.config import FitConfig, apply_overrides, load_config  # noqa: E402
from mfface.metrics import aligned_distances  # noqa: E402
from mfface.sh import negative_fraction, sh_to_envmap  # noqa: E402

RADIUS_MM = 80.0
NOSE_TIP = 1   # MediaPipe landmark


def parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value not in ("true", "false") else value == "true"
    return overrides


def identity_shape(model, identity: torch.Tensor, region: np.ndarray) -> np.ndarray:
    """Model-space vertices of an identity (1, K) with zero expression, restricted to `region`."""
    return model.vertices(identity.reshape(1, -1).cpu(), None)[0].numpy()[region]


def pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(aligned_distances(a, b, scale=True)))


def light_figures(sh: torch.Tensor) -> dict:
    env = sh_to_envmap(sh.detach().cpu(), 64, 128, clamp=False)
    return {"light_below_1pct": negative_fraction(sh.cpu()), "light_min": float(env.min()),
            "light_max": float(env.max())}


def timed_fit(recon, image) -> tuple:
    """`recon`'s fit of one prepared photo, with its wall and process CPU seconds."""
    started, cpu = time.perf_counter(), time.process_time()
    result = recon.fit([image])
    return result, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML config to start from instead of FitConfig() "
                        "(e.g. bench/defaults_2026-12-02.toml, the defaults before the geometry work)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--model", default=None)
    parser.add_argument("--eval-spp", type=int, default=64)
    parser.add_argument("--no-shared", action="store_true", help="skip the per-person shared fits")
    parser.add_argument("--against", type=Path, metavar="BASELINE_TOML",
                        help="also fit each photo with this config, interleaved, for a side-by-side time")
    args = parser.parse_args()
    from mfface.fitting.pipeline import Reconstructor, prepare_image, prepare_photo
    from mfface.landmarks import LandmarkDetector
    from mfface.morphable.store import ModelStore

    variant = select_variant()
    overrides = parse_set(args.set)
    config = apply_overrides(load_config(args.config) if args.config else FitConfig(), overrides)
    model = ModelStore().load(args.model)
    folder = Path(os.environ.get("MFFACE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    photos = sorted((folder / "images" / "people").glob("*.jpg"))
    nose = model.mean_shape[model.landmarks["mediapipe478"][NOSE_TIP]]
    region = np.flatnonzero(np.linalg.norm(model.mean_shape - nose, axis=1) <= RADIUS_MM)
    recon = Reconstructor(model, config)
    baseline = Reconstructor(model, load_config(args.against)) if args.against else None
    load_start = os.getloadavg()[0]
    rows, shapes, shapes_s1, prepared = [], {}, {}, {}
    with LandmarkDetector.from_config(config.input) as detector:
        for path in photos:
            image = prepare_image(path, config, detector)
            prepared[path.stem] = image
            timed = {}
            if baseline is not None:
                base_result, timed["baseline_seconds"], timed["baseline_cpu_seconds"] = timed_fit(baseline, image)
                timed["baseline_psnr_db"] = image_metrics(base_result, base_result.state, image, args.eval_spp)["psnr_db"]
            result, seconds, timed["cpu_seconds"] = timed_fit(recon, image)
            shapes[path.stem] = identity_shape(model, result.state.identity, region)
            shapes_s1[path.stem] = identity_shape(model, result.stages[1].identity, region)
            row = {"photo": path.stem, "person": path.stem.split("_")[0], "crop_px": image.target.shape[0],
                   "seconds": seconds, "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                   "psnr_db_start": image_metrics(result, result.stages[1], image, args.eval_spp)["psnr_db"],
                   "psnr_db": image_metrics(result, result.state, image, args.eval_spp)["psnr_db"],
                   "silhouette_iterations": silhouette_iterations(result),
                   **light_figures(result.state.sh), **timed}
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    person = {r["photo"]: r["person"] for r in rows}

    def consistency(fitted: dict) -> tuple[list[float], list[float]]:
        intra, inter = [], []
        for a, b in itertools.combinations(sorted(fitted), 2):
            (intra if person[a] == person[b] else inter).append(pair_distance(fitted[a], fitted[b]))
        return intra, inter

    intra, inter = consistency(shapes)
    intra_s1, inter_s1 = consistency(shapes_s1)
    summary = {"model": model.name, "variant": variant, "config": str(args.config or "FitConfig()"),
               "overrides": overrides, "photos": len(rows),
               "machine": f"{os.cpu_count()} cores", "load_start": round(load_start, 2),
               "intra_mm": statistics.median(intra), "inter_mm": statistics.median(inter),
               "ratio": statistics.median(intra) / statistics.median(inter),
               "intra_mm_s1": statistics.median(intra_s1), "inter_mm_s1": statistics.median(inter_s1),
               "ratio_s1": statistics.median(intra_s1) / statistics.median(inter_s1),
               "psnr_db_median": statistics.median(r["psnr_db"] for r in rows),
               "psnr_db_start_median": statistics.median(r["psnr_db_start"] for r in rows),
               "light_below_1pct_median": statistics.median(r["light_below_1pct"] for r in rows),
               "light_below_1pct_max": max(r["light_below_1pct"] for r in rows),
               "seconds_median": statistics.median(r["seconds"] for r in rows), "per_photo": rows}
    if baseline is not None:
        summary["against"] = str(args.against)
        summary["time_ratio"] = sum(r["seconds"] for r in rows) / sum(r["baseline_seconds"] for r in rows)
        summary["cpu_time_ratio"] = (sum(r["cpu_seconds"] for r in rows)
                                     / sum(r["baseline_cpu_seconds"] for r in rows))
    if not args.no_shared:
        shared_rows = []
        for who in sorted(set(person.values())):
            group = [prepared[name] for name in sorted(prepared) if person[name] == who]
            if len(group) < 2:
                continue
            size = min(im.target.shape[0] for im in group)
            if len({im.target.shape[0] for im in group}) > 1:   # fitted together: one crop size
                group = [prepare_photo(im.photo, im.landmarks, im.scheme, config, im.name, im.path, size)
                         for im in group]
            started = time.perf_counter()
            result = recon.fit(group, shared_identity=True)
            shape = identity_shape(model, result.state.identity[0], region)
            own = [pair_distance(shape, shapes[n]) for n in shapes if person[n] == who]
            other = [pair_distance(shape, shapes[n]) for n in shapes if person[n] != who]
            shared_rows.append({"person": who, "photos": len(group), "seconds": time.perf_counter() - started,
                                "to_own_singles_mm": statistics.median(own),
                                "to_other_singles_mm": statistics.median(other)})
            print(json.dumps(shared_rows[-1]), flush=True)
        if shared_rows:
            summary["shared"] = shared_rows
            summary["shared_ratio"] = (statistics.median(r["to_own_singles_mm"] for r in shared_rows)
                                       / statistics.median(r["to_other_singles_mm"] for r in shared_rows))
    summary["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
