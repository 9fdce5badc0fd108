"""Regenerate `morphable/data/ict_mediapipe478.txt`: MediaPipe's 478 landmarks -> ICT vertices.

Usage: python bench/ict_mediapipe_table.py ICT_SOURCE CANONICAL_MESH [OUT]
ICT_SOURCE is the ICT-FaceKit folder or archive, CANONICAL_MESH MediaPipe's
canonical_face_model.obj. The table holds original ICT vertex indices (face area, before UV
splitting) so that every ICT region variant can use it; -1 marks the 10 iris points.
Prints the distances of the mapped vertices from the aligned canonical mesh (mm).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mfface.morphable.correspondence import mediapipe_correspondence
from mfface.morphable.ict import COMMIT, MEDIAPIPE_TABLE, import_ict_indexed

HEADER = f"""# MediaPipe face-mesh landmark (478, one per line, in order) -> ICT Face Model vertex index
# (original ICT-FaceKit numbering, commit {COMMIT}); -1 = not covered (iris points 468-477).
# Derived data: computed by bench/ict_mediapipe_table.py with mfface.morphable.correspondence
# from MediaPipe's canonical_face_model.obj (Apache-2.0) and ICT's neutral face (MIT).
"""


def table_for(source: Path, canonical_mesh: Path) -> tuple[np.ndarray, np.ndarray]:
    """(478,) original ICT indices and (468,) distances (mm) for the ICT face region."""
    model, to_orig = import_ict_indexed(source, with_mediapipe=False)
    corr = mediapipe_correspondence(model, canonical_mesh)
    table = np.where(corr.indices >= 0, to_orig[np.maximum(corr.indices, 0)], -1)
    return table, corr.distances


def main(argv: list[str]) -> None:
    source, mesh = Path(argv[0]), Path(argv[1])
    default = Path(__file__).resolve().parents[1] / "morphable" / "data" / MEDIAPIPE_TABLE
    out = Path(argv[2]) if len(argv) > 2 else default
    table, dist = table_for(source, mesh)
    out.write_text(HEADER + "\n".join(str(int(v)) for v in table) + "\n")
    print(json.dumps({"median_mm": round(float(np.median(dist)), 3),
                      "p95_mm": round(float(np.percentile(dist, 95)), 3),
                      "max_mm": round(float(dist.max()), 3), "written": str(out)}))


if __name__ == "__main__":
    main(sys.argv[1:])
