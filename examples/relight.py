"""Relight a fitted face under every lighting preset and save the renders side by side.

    .venv/bin/python examples/relight.py results/photo relit.png [--spp 64]

Loads a result folder written by `mfface fit` (model, fitted state, config), keeps the geometry and
the reflectance maps, swaps the SH light for each preset (scaled to the fitted light's exposure),
and renders with Mitsuba.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from mfface.backend import select_variant, torch_device
from mfface.figures import labelled_strip, to_display
from mfface.forward import ForwardModel, RenderSettings
from mfface.images import write_png
from mfface.replay import load_fitted_face, replay_light
from mfface.scenes.light_presets import preset_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result")
    parser.add_argument("out_png")
    parser.add_argument("--spp", type=int, default=64)
    args = parser.parse_args()

    select_variant()
    face = load_fitted_face(args.result, device=torch_device())
    forward = ForwardModel(face.model, torch_device())
    settings = RenderSettings.from_config(face.config, face.crop_size, args.spp)
    gamma = face.config.input.gamma
    panels = []
    with torch.no_grad():
        for light in ("fitted", *preset_names()):
            state = dataclasses.replace(face.state, sh=replay_light(face.state, light))
            image = forward(state, settings).image
            panels.append((light, to_display(image[0].cpu().numpy(), gamma)))
    write_png(args.out_png, labelled_strip(panels, face.crop_size), gamma=None)
    print(f"wrote {args.out_png}: {', '.join(name for name, _ in panels)}")


if __name__ == "__main__":
    main()
