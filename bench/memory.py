"""Peak memory (RSS) of a whole `mfface fit` against texture size, crop size and final spp.

Each configuration runs `mfface fit` on a photo in a fresh process (so peaks do not mix) with few
iterations (memory does not grow with iterations) and reports that process's peak resident set
size, read from `resource.getrusage(RUSAGE_CHILDREN)` of a one-child wrapper. The figures feed the
memory model in `mfface.memory` (the fit refuses settings whose estimate exceeds the available
memory); the last line printed is one JSON object with every measurement and the model's estimate
beside it.

    MFFACE_HOME=<store with a model> .venv/bin/python bench/memory.py [--photo PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_PHOTO = Path(__file__).resolve().parents[2] / "shared" / "data" / "images" / "astronaut.png"
# (texture size, crop size, final spp, stage-2/3 spp): the texture sweep at the default crop, then
# crop and spp sweeps.
CASES = [(512, 256, 256, 4), (1024, 256, 256, 4), (2048, 256, 256, 4), (512, 128, 256, 4),
         (512, 512, 256, 4), (512, 256, 1024, 4), (512, 512, 4, 64)]
_CHILD = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, code)
"""


def peak_rss(photo: Path, texture: int, crop: int, spp: int, stage_spp: int, out: Path) -> tuple[int, int]:
    """(peak RSS in bytes, exit code) of one `mfface fit` at these sizes."""
    mfface = Path(sys.executable).with_name("mfface")
    command = [str(mfface), "fit", str(photo), "-o", str(out), "--overwrite",
               "--render-texture-size", str(texture), "--input-max-resolution", str(crop),
               "--render-final-spp", str(spp), "--stage2-spp", str(stage_spp),
               "--stage3-spp", str(stage_spp), "--stage1-iterations", "20",
               "--stage2-iterations", "3", "--stage3-iterations", "3"]
    line = subprocess.run([sys.executable, "-c", _CHILD, *command], capture_output=True, text=True,
                          check=True).stdout.split()
    return int(line[0]), int(line[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    args = parser.parse_args()
    from mfface.config import FitConfig, apply_overrides
    from mfface.memory import estimate_fit_bytes
    from mfface.morphable.store import ModelStore

    model = ModelStore().load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for texture, crop, spp, stage_spp in CASES:
            rss, code = peak_rss(args.photo, texture, crop, spp, stage_spp, Path(tmp))
            config = apply_overrides(FitConfig(), {"render.texture_size": texture,
                                                   "input.max_resolution": crop,
                                                   "render.final_spp": spp})
            estimate = estimate_fit_bytes(config, photos=1)
            rows.append({"texture": texture, "crop": crop, "final_spp": spp, "stage_spp": stage_spp, "exit": code,
                         "peak_rss_mb": round(rss / 2**20), "estimate_mb": round(estimate / 2**20)})
            print(rows[-1], flush=True)
    print(json.dumps({"bench": "memory", "machine": f"{os.cpu_count()} cores", "model": model.name,
                      "runs": rows}))


if __name__ == "__main__":
    main()
