"""Regenerate `mfface/data/mediapipe_mirror478.txt`: the mirror permutation of MediaPipe's 478
landmarks (see mfface.mirror for the derivation).

Usage: python bench/mediapipe_mirror_table.py CANONICAL_MESH [OUT]
CANONICAL_MESH is MediaPipe's canonical_face_model.obj (in the shared test data:
data/mediapipe/canonical_face_model.obj). Prints how many points are their own mirror partner.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mfface.mirror import TABLE_FILE, derive_mirror_permutation, write_table


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    table = derive_mirror_permutation(Path(argv[0]))
    out = Path(argv[1]) if len(argv) > 1 else TABLE_FILE
    write_table(table, out)
    print(json.dumps({"table": str(out), "points": int(len(table)),
                      "self_mirrored": int((table == np.arange(len(table))).sum())}))


if __name__ == "__main__":
    main(sys.argv[1:])
