"""Stage 3: free per-texel diffuse, specular and roughness maps, geometry and light held fixed.

Starting from stage 2's maps, every texel is free: Adam iterations on all three maps, then the
diffuse map solved per texel from the photo (`mfface.fitting.texel_solve`, `stage3.solve_passes`),
which reaches in a few renders the fit to the photo that many more Adam iterations would approach
(bench/RESULTS.md, "The diffuse map solved per texel"). In the iterations, regularisers keep what
the photo cannot determine plausible (weights in `Stage3Config`, all scaled by `texture_reg_scale`, as in NextFace):
  symmetry     L1 between a surface point and its mirror point (`mfface.textures.MirrorSampler`);
  consistency  diffuse: L1 of chromaticity to stage 2's diffuse (shading must not leak into colour);
               specular/roughness: L1 to their stage-2 maps;
  smoothness   total variation;
  range        squared distance outside [0, 1] (roughness: [roughness_min, 1]).
Each is a term of its own in the report ("diffuse_symmetry", ...; `mfface.objectives`). The
landmarks are not a term: geometry is fixed here, so they could not change anything.
"""
from __future__ import annotations

import torch

from mfface.config import FitConfig
from mfface.fitting.errors import check_finite
from mfface.fitting.photometric_stage import StageReport, StepCallback
from mfface.fitting.texel_solve import solve_diffuse
from mfface.fitting.targets import FitTargets
from mfface.fitting.unseen import fill_unseen
from mfface.forward import ForwardModel, RenderSettings
from mfface.interrupt import raise_if_requested
from mfface.itemwise import itemwise_photometric
from mfface.objectives import (closeness_loss, consistency_loss, range_loss, smoothness_loss, symmetry_loss,
                               weighted_terms)
from mfface.schedules import cosine_decay
from mfface.state import FaceState
from mfface.textures import MirrorSampler

SEED_OFFSET = 2_000_000  # stage 3 renders use seeds SEED_OFFSET + iteration
MAPS = ("diffuse", "specular", "roughness")
PRIORS = ("symmetry", "consistency", "smoothness", "range")
# The weight of each stage-3 term: the Stage3Config field that holds it ("diffuse_symmetry", ...).
WEIGHTS = {"photo": "photo_weight", **{f"{m}_{p}": f"{m}_{p}" for m in MAPS for p in PRIORS}}


def fit_texels(forward: ForwardModel, targets: FitTargets, state: FaceState, config: FitConfig,
               on_step: StepCallback | None = None) -> tuple[FaceState, StageReport]:
    """Run stage 3 from stage 2's `state`: the iterations, then the diffuse solve, then the unseen
    texels filled; returns the state with refined maps and the iterations' losses."""
    cfg = config.stage3
    model = forward.model
    state = state.detached()
    reference = {name: getattr(state, name).clone() for name in MAPS}
    maps = {name: getattr(state, name).requires_grad_(True) for name in MAPS}
    lrs = {"diffuse": cfg.diffuse_lr, "specular": cfg.specular_lr, "roughness": cfg.roughness_lr}
    optimiser = torch.optim.Adam([{"params": [maps[n]], "lr": lrs[n]} for n in maps])
    schedule = cosine_decay(optimiser, cfg.iterations) if cfg.lr_decay else None
    mirror = (MirrorSampler(model.triangles, model.uvs, model.symmetry, forward.device)
              if model.symmetry is not None else None)
    generator = torch.Generator(device=forward.device).manual_seed(0)
    bounds = {"diffuse": (0.0, 1.0), "specular": (0.0, 1.0), "roughness": (cfg.roughness_min, 1.0)}
    settings = RenderSettings.from_config(config, targets.size, cfg.spp)
    with torch.no_grad():
        vertices = forward.vertices(state)
    report = StageReport()
    steps = cfg.iterations + cfg.solve_passes   # what the progress callback counts: iterations, then passes
    for it in range(cfg.iterations):
        uv_pairs = mirror.sample(8192, generator) if mirror is not None else None
        priors = {}
        for name, texture in maps.items():
            ref, low_high = reference[name], bounds[name]
            if uv_pairs is not None:
                priors[f"{name}_symmetry"] = lambda t=texture: symmetry_loss(t, *uv_pairs)
            priors[f"{name}_consistency"] = (
                (lambda t=texture, r=ref: consistency_loss(t, r)) if name == "diffuse"
                else (lambda t=texture, r=ref: closeness_loss(t, r)))
            priors[f"{name}_smoothness"] = lambda t=texture: smoothness_loss(t)
            priors[f"{name}_range"] = lambda t=texture, b=low_high: range_loss(t, *b)
        terms = weighted_terms(cfg, WEIGHTS, {
            "photo": lambda: itemwise_photometric(forward, state, settings.with_seed(SEED_OFFSET + it), vertices,
                                                  targets.images, targets.skin), **priors})
        terms = {k: (v if k == "photo" else cfg.texture_reg_scale * v) for k, v in terms.items()}
        total = sum(terms.values())
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            for name, texture in maps.items():
                texture.clamp_(*bounds[name])
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        check_finite("stage 3", it, values["total"])
        raise_if_requested()
        report.add(values)
        if on_step is not None:
            on_step(it, steps, values)
    def on_pass(index: int, photo: float) -> None:
        report.add({"solve_photo": photo})
        if on_step is not None:
            on_step(cfg.iterations + index, steps, {"total": photo, "photo": photo})

    state = solve_diffuse(forward, targets, state.detached(), config, on_pass=on_pass)
    if cfg.fill_unseen:
        state, report.figures["seen_texel_fraction"] = fill_unseen(forward, targets, state)
    return state, report
