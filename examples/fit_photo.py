"""Fit one photo with the Python API, write the results, and print the fitted pose and expression.

    .venv/bin/python examples/fit_photo.py photo.jpg results/ [--set stage2.iterations=100 ...]

The same as `mfface fit photo.jpg -o results/`, spelled out: choose the backend, load the default
model, detect landmarks and crop, run the three stages, write the result folder.
"""
from __future__ import annotations

import argparse
import ast
import math

from mfface.backend import select_variant, torch_device
from mfface.config import FitConfig, apply_overrides
from mfface.fitting.pipeline import Reconstructor, prepare_image
from mfface.landmarks import LandmarkDetector
from mfface.morphable.store import ModelStore
from mfface.results import write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument("out")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override, e.g. stage2.iterations=100")
    args = parser.parse_args()
    overrides = {key: ast.literal_eval(value) for key, value in (s.split("=", 1) for s in args.set)}
    config = apply_overrides(FitConfig(), overrides)

    select_variant()                                      # cuda_ad_rgb when a GPU works
    model = ModelStore().load()                           # the default model (ICT after install)
    with LandmarkDetector() as detector:
        photo = prepare_image(args.photo, config, detector)
    result = Reconstructor(model, config, torch_device()).fit(
        [photo], on_step=lambda stage, i, n, losses: i % 50 == 0 and print(
            f"{stage} {i}/{n} loss {losses['total']:.3f}"))
    folder = write_results(result, args.out)[0]

    state = result.state
    yaw, pitch, roll = (math.degrees(a) for a in state.euler[0].tolist())
    print(f"pose: yaw {yaw:.1f} deg, pitch {pitch:.1f} deg, roll {roll:.1f} deg, "
          f"distance {float(state.translation[0, 2]):.0f} mm, focal {float(state.focal[0]):.0f} px")
    weights = dict(zip(model.expression_names, state.expression[0].tolist()))
    strongest = sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:5]
    print("strongest expressions: " + ", ".join(f"{name} {w:.2f}" for name, w in strongest))
    print(f"results in {folder}")


if __name__ == "__main__":
    main()
