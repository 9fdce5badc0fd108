"""Time ICT import from the archive, loading the installed model, and one batched vertices() call.

Usage: python bench/models.py [ICT_ARCHIVE]  (default: ../shared/data/ICT-FaceKit.tar.xz)
The last line printed is one JSON object with the figures (seconds).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mfface.morphable.store import ModelStore

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ICT-FaceKit.tar.xz"


def main(argv: list[str]) -> None:
    archive = Path(argv[0]) if argv else DEFAULT
    with tempfile.TemporaryDirectory() as root:
        store = ModelStore(root)
        t0 = time.perf_counter()
        info = store.install("ict", source=archive)
        t_install = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = store.load("ict")
        t_load = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(0)
        identity = torch.randn(8, model.n_identity, generator=gen)
        expression = torch.rand(8, model.n_expression, generator=gen)
        model.vertices(identity, expression)  # builds the torch buffers once
        t0 = time.perf_counter()
        verts = model.vertices(identity, expression)
        t_vertices = time.perf_counter() - t0
    print(json.dumps({
        "install_from_archive_s": round(t_install, 2), "load_s": round(t_load, 3),
        "vertices_batch8_s": round(t_vertices, 4), "n_vertices": model.n_vertices,
        "file_mb": round(info.size_bytes / 1e6, 1), "vertices_shape": list(verts.shape),
        "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(sys.argv[1:])
