"""Stage 3: free per-texel diffuse, specular and roughness maps, geometry and light held fixed.

Starting from stage 2's maps, every texel is free; regularisers keep what the photo cannot
determine plausible (weights in `Stage3Config`, all scaled by `texture_reg_scale`, as in NextFace):
  symmetry     L1 between a surface point and its mirror point (`mfface.texture_priors`);
  consistency  diffuse: L1 of chromaticity to stage 2's diffuse (shading must not leak into colour);
               specular/roughness: L1 to their stage-2 maps;
  smoothness   total variation;
  range        squared distance outside [0, 1] (roughness: [roughness_min, 1]).
"""
from __future__ import annotations

import torch

from mfface.config import FitConfig
from mfface.fitting.errors import check_finite
from mfface.fitting.face_render import FaceRender, photometric_loss
from mfface.fitting.photometric_stage import StageReport, StepCallback
from mfface.fitting.state import FaceState
from mfface.fitting.targets import FitTargets
from mfface.texture_priors import (MirrorSampler, consistency_loss, range_loss, smoothness_loss,
                                   symmetry_loss)

SEED_OFFSET = 2_000_000  # stage 3 renders use seeds SEED_OFFSET + iteration


def fit_texels(render: FaceRender, targets: FitTargets, state: FaceState, config: FitConfig,
               on_step: StepCallback | None = None) -> tuple[FaceState, StageReport]:
    """Run stage 3 from stage 2's `state`; returns the state with refined maps and the losses."""
    cfg = config.stage3
    model = render.model
    state = state.detached()
    reference = {"diffuse": state.diffuse.clone(), "specular": state.specular.clone(),
                 "roughness": state.roughness.clone()}
    maps = {name: getattr(state, name).requires_grad_(True) for name in reference}
    lrs = {"diffuse": cfg.diffuse_lr, "specular": cfg.specular_lr, "roughness": cfg.roughness_lr}
    optimiser = torch.optim.Adam([{"params": [maps[n]], "lr": lrs[n]} for n in maps])
    mirror = (MirrorSampler(model.triangles, model.uvs, model.symmetry, render.device)
              if model.symmetry is not None else None)
    generator = torch.Generator(device=render.device).manual_seed(0)
    bounds = {"diffuse": (0.0, 1.0), "specular": (0.0, 1.0), "roughness": (cfg.roughness_min, 1.0)}
    with torch.no_grad():
        vertices = render.vertices(state)
    report = StageReport()
    for it in range(cfg.iterations):
        image, coverage = render.render(state, vertices, maps["diffuse"], cfg.spp, SEED_OFFSET + it)
        terms = {"photo": cfg.photo_weight * photometric_loss(image, coverage, targets.images, targets.skin)}
        reg = torch.zeros((), device=render.device)
        uv_pairs = mirror.sample(8192, generator) if mirror is not None else None
        for name, texture in maps.items():
            w = {k: getattr(cfg, f"{name}_{k}") for k in ("symmetry", "consistency", "smoothness", "range")}
            if uv_pairs is not None and w["symmetry"] > 0:
                reg = reg + w["symmetry"] * symmetry_loss(texture, *uv_pairs)
            if w["consistency"] > 0:
                closeness = (consistency_loss(texture, reference[name]) if name == "diffuse"
                             else (texture - reference[name]).abs().mean())
                reg = reg + w["consistency"] * closeness
            if w["smoothness"] > 0:
                reg = reg + w["smoothness"] * smoothness_loss(texture)
            if w["range"] > 0:
                reg = reg + w["range"] * range_loss(texture, *bounds[name])
        terms["textures"] = cfg.texture_reg_scale * reg
        total = sum(terms.values())
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        with torch.no_grad():
            for name, texture in maps.items():
                texture.clamp_(*bounds[name])
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        check_finite("stage 3", it, values["total"])
        report.add(values)
        if on_step is not None:
            on_step(it, cfg.iterations, values)
    return state.detached(), report
