"""The diffuse map solved from the photo in a few renders: a Jacobi Gauss-Newton solve per texel.

With geometry, light, specular and roughness held fixed, the render is linear in the diffuse map
rho (the BSDF's kd / pi term): I = A rho + S, where column k of A holds texel k's contribution to
each pixel (its bilinear footprint times the diffuse light transport there) and S is the specular
part. The weighted least-squares fit of the photo P over the counted pixels (weights W: skin mask
x coverage) is solved per texel by Jacobi steps

    rho_k <- rho_k + [A^T W (P - I)]_k / ([A^T W E]_k + lambda * mean_k [A^T W E]_k)

where E = A 1 is the render of a white diffuse map without specular (the transport itself). Since
0 <= A_pk <= E_p, [A^T W E]_k >= [A^T W A]_kk: the row sum bounds the diagonal, so the step never
overshoots; `lambda` (`stage3.solve_damping`) keeps texels that few pixels see near their start.
Both products are vector-Jacobian products, i.e. backward passes of the render with output
gradients W (P - I) and W E. The denominator is computed once; every pass renders the current map
with a new seed and takes the step, the first in full and pass j (from 0) with weight 1 / (j + 1), a
running (Robbins-Monro) average, so that the Monte Carlo noise of the residual averages out instead
of being written into the map.

Measured (bench/RESULTS.md, "The diffuse map solved per texel"): after 30 Adam iterations of stage 3,
8 passes at 16 spp (about 6 s at 256 px on 2 CPU cores) fit the photo better than 50 Adam
iterations did, in about their time. The iterations before it matter: they fit the specular and
roughness maps, which the solve keeps.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from mfface.config import FitConfig
from mfface.fitting.targets import FitTargets
from mfface.forward import ForwardModel, RenderSettings
from mfface.objectives import photometric_loss
from mfface.state import FaceState

SEED_OFFSET = 3_000_000  # the solve's renders use seeds SEED_OFFSET + pass (stage 3 uses 2_000_000 + iteration)


def counted_pixels(targets: FitTargets, coverage: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 1) weights of the pixels the solve fits: inside the skin mask and the render."""
    return (targets.skin * (coverage.detach() > 0.5))[..., None].float()


def diffuse_curvature(forward: ForwardModel, targets: FitTargets, state: FaceState, settings: RenderSettings,
                      vertices: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(denominator (B or 1, H, W, 3) of the Jacobi step, pixel weights W (B, S, S, 1)): A^T W E
    plus `damping` times its mean over the texels that any counted pixel sees."""
    with torch.no_grad():
        white, _ = forward.render(dataclasses.replace(state, diffuse=torch.ones_like(state.diffuse),
                                                      specular=torch.zeros_like(state.specular)),
                                  settings, vertices)
    diffuse = state.diffuse.detach().clone().requires_grad_(True)
    image, coverage = forward.render(dataclasses.replace(state, diffuse=diffuse), settings, vertices)
    weights = counted_pixels(targets, coverage)
    transport, = torch.autograd.grad((weights * white * image).sum(), diffuse)
    seen = transport > 0
    level = transport[seen].mean() if bool(seen.any()) else transport.new_tensor(1.0)
    return transport + damping * level, weights


def solve_diffuse(forward: ForwardModel, targets: FitTargets, state: FaceState, config: FitConfig,
                  on_pass: Callable[[int, float], None] | None = None) -> FaceState:
    """`state` with its diffuse map solved from the photos by `stage3.solve_passes` Jacobi
    Gauss-Newton passes at `stage3.solve_spp` (module docstring); unchanged when there are none.
    The map stays in [0, 1]. `on_pass(pass, photo)` hears each pass with the photometric term (as
    stage 3 weighs it) of the render that pass started from."""
    cfg = config.stage3
    if cfg.solve_passes == 0:
        return state
    state = state.detached()
    settings = RenderSettings.from_config(config, targets.size, cfg.solve_spp)
    with torch.no_grad():
        vertices = forward.vertices(state)
    denominator, weights = diffuse_curvature(forward, targets, state, settings.with_seed(SEED_OFFSET),
                                             vertices, cfg.solve_damping)
    current = state.diffuse.detach().clone()
    for step in range(cfg.solve_passes):
        diffuse = current.clone().requires_grad_(True)
        image, coverage = forward.render(dataclasses.replace(state, diffuse=diffuse),
                                         settings.with_seed(SEED_OFFSET + 1 + step), vertices)
        if on_pass is not None:
            on_pass(step, cfg.photo_weight * float(photometric_loss(image.detach(), coverage, targets.images,
                                                                     targets.skin)))
        residual = weights * (targets.images - image.detach())
        gradient, = torch.autograd.grad((residual * image).sum(), diffuse)
        current = (current + gradient / denominator / (step + 1)).clamp(0.0, 1.0)
    return dataclasses.replace(state, diffuse=current)
