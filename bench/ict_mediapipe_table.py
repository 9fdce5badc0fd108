"""Regenerate ICT's MediaPipe landmark tables in `morphable/data/`.

    python bench/ict_mediapipe_table.py geometric ICT_SOURCE CANONICAL_MESH [OUT]
    python bench/ict_mediapipe_table.py calibrate ICT_SOURCE TRAIN.h5 HELDOUT.h5 [OUT]

`geometric` writes `ict_mediapipe478.txt`: MediaPipe's canonical_face_model.obj aligned to ICT's
neutral face, each point's nearest vertex (mfface.morphable.correspondence); it prints the
distances of the mapped vertices from the aligned canonical mesh (mm).

`calibrate` writes `ict_mediapipe478_calibrated.txt`, the table ICT models use: the geometric
table moved, landmark by landmark, to the vertex that best explains MediaPipe's points on the
renders of TRAIN.h5 (mfface.morphable.landmark_calibration), and prints the residuals (px,
true face projected vs. detected, no fitting) of both tables on HELDOUT.h5. The datasets are
`mfface synth` renders of the model `ict` with different seeds, e.g.
    mfface synth 400 -o calib256.h5 --size 256 --spp 16 --seed 101
    mfface synth 120 -o held256.h5 --size 256 --spp 16 --seed 202
Both tables hold original ICT vertex indices (face area, before UV splitting) so that every
ICT region variant can use them; -1 marks the 10 iris points.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mfface.learning.dataset_format import read_calibration_samples
from mfface.morphable.correspondence import MEDIAPIPE_CONTOUR, mediapipe_correspondence
from mfface.morphable.ict import (CALIBRATED_TABLE, COMMIT, MEDIAPIPE_TABLE, import_ict_indexed,
                                  mediapipe_table, table_to_model, table_to_original)
from mfface.morphable.landmark_calibration import calibrate_landmarks, reliability, residuals

DATA = Path(__file__).resolve().parents[1] / "morphable" / "data"
HEADER = f"""# MediaPipe face-mesh landmark (478, one per line, in order) -> ICT Face Model vertex index
# (original ICT-FaceKit numbering, commit {COMMIT}); -1 = not covered (iris points 468-477).
"""
GEOMETRIC = """# Derived data: computed by bench/ict_mediapipe_table.py with mfface.morphable.correspondence
# from MediaPipe's canonical_face_model.obj (Apache-2.0) and ICT's neutral face (MIT).
"""
CALIBRATED = """# Derived data: the geometric table (ict_mediapipe478.txt) calibrated by
# bench/ict_mediapipe_table.py (mfface.morphable.landmark_calibration) against MediaPipe's points
# on {count} renders of ICT's face model (mfface synth, seed {seed}). Second column: the landmark's
# reliability weight (landmark_calibration.reliability; contour points 1, uncovered 0).
"""


def write_table(out: Path, header: str, table: np.ndarray, weights: np.ndarray | None = None) -> None:
    rows = [str(int(v)) if weights is None else f"{int(v)} {w:.4f}" for v, w in
            zip(table, weights if weights is not None else table)]
    out.write_text(HEADER + header + "\n".join(rows) + "\n")


def geometric(source: Path, mesh: Path, out: Path) -> dict:
    model, to_orig = import_ict_indexed(source, with_mediapipe=False)
    corr = mediapipe_correspondence(model, mesh)
    table = table_to_original(corr.indices, to_orig)
    write_table(out, GEOMETRIC, table)
    dist = corr.distances
    return {"median_mm": round(float(np.median(dist)), 3), "p95_mm": round(float(np.percentile(dist, 95)), 3),
            "max_mm": round(float(dist.max()), 3), "written": str(out)}


def residual_figures(values: np.ndarray) -> dict:
    """Median and mean over renders of the per-render median residual (px), and the p90 overall."""
    per_render = np.nanmedian(values, axis=1)
    return {"median_px": round(float(np.median(per_render)), 3),
            "mean_px": round(float(np.mean(per_render)), 3),
            "p90_px": round(float(np.nanpercentile(values, 90)), 3)}


def calibrate(source: Path, train: Path, heldout: Path, out: Path) -> dict:
    model, to_orig = import_ict_indexed(source, with_mediapipe=False, parts=False)
    start = table_to_model(mediapipe_table(calibrated=False), to_orig)
    samples = read_calibration_samples(train)
    found = calibrate_landmarks(model, samples, start, model.regions["fit"], MEDIAPIPE_CONTOUR)
    table = table_to_original(found.table, to_orig)
    import h5py
    with h5py.File(train, "r") as f:
        seed = int(f.attrs["synth_seed"])
    weights = reliability(model, samples, found.table, MEDIAPIPE_CONTOUR)
    write_table(out, CALIBRATED.format(count=len(samples), seed=seed), table, weights)
    held = read_calibration_samples(heldout)
    moved = found.moved_mm[start >= 0]
    return {"train_renders": len(samples), "heldout_renders": len(held),
            "moved_mm_median": round(float(np.median(moved)), 3),
            "moved_mm_max": round(float(moved.max()), 3),
            "landmarks_moved": int((moved > 0).sum()),
            "reliability_p10_p50_p90": np.percentile(weights[start >= 0], [10, 50, 90]).round(3).tolist(),
            "heldout_geometric": residual_figures(residuals(model, held, start)),
            "heldout_calibrated": residual_figures(residuals(model, held, found.table)),
            "written": str(out)}


def main(argv: list[str]) -> None:
    from mfface.learning.dataset_format import DatasetError
    from mfface.morphable.format import ModelSourceError

    mode, args = (argv[0], [Path(a) for a in argv[1:]]) if argv else ("", [])
    try:
        if mode == "geometric" and len(args) in (2, 3):
            print(json.dumps(geometric(args[0], args[1], args[2] if len(args) > 2 else DATA / MEDIAPIPE_TABLE)))
        elif mode == "calibrate" and len(args) in (3, 4):
            print(json.dumps(calibrate(args[0], args[1], args[2],
                                       args[3] if len(args) > 3 else DATA / CALIBRATED_TABLE)))
        else:
            sys.exit(__doc__)
    except (DatasetError, ModelSourceError, ValueError) as error:
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    main(sys.argv[1:])
