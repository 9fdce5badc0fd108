"""The SH light solved from the photo in a few renders: weighted least squares in its low bands.

With geometry and maps held fixed, a direct-light render is linear in the envmap, and the envmap
is linear in the SH coefficients before `sh_to_envmap` clamps it: per colour channel c,

    I_c = sum_k B_k,c x_k,c        (k < bands**2)

where B_k is the render under the basis function Y_k alone. Mitsuba samples the envmap by its
radiance, which must be non-negative, so each Y_k is rendered shifted by its minimum m_k <= 0:
B_k = render(Y_k - m_k) + m_k U, with U the render under a constant unit envmap (Y_0 is itself
constant, B_0 = Y_0 U). All use one seed, so their Monte Carlo noise is shared. The light is
then the per-channel least-squares fit of the photo P over the counted pixels (skin x coverage),
iteratively reweighted towards the fit's L1 loss (weights 1 / max(|r|, delta)), with a small
ridge; the SH coefficients above `bands` are set to 0, and the light is projected onto the
non-negative lights when `light.nonnegative`.

Why: Adam moves the light by about its learning rate per step, so a start light far from the
photo's (a network's guess, or the ambient default) costs stage 2 many iterations, and one whose
direction is wrong can trap it (bench/RESULTS.md, "The light solved at stage 2's start").
"""
from __future__ import annotations

import dataclasses

import torch

from mfface.config import FitConfig
from mfface.fitting.targets import FitTargets
from mfface.fitting.texel_solve import counted_pixels
from mfface.forward import ForwardModel, RenderSettings
from mfface.sh import bands_of, envmap_basis, n_coefficients, nonnegative
from mfface.state import FaceState

SEED = 4_000_000
IRLS_ROUNDS = 3          # reweightings towards L1 after the first least-squares fit
IRLS_DELTA = 0.01        # residual (linear radiance) below which a pixel counts as an inlier in full
RIDGE = 1e-4             # of the normal matrix's mean diagonal


def basis_renders(forward: ForwardModel, state: FaceState, settings: RenderSettings,
                  n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_k (B, n, S, S, 3): the renders under each SH basis function alone, coverage (B, S, S))."""
    height = settings.envmap_height
    fields = envmap_basis(height, 2 * height, bands_of(n), state.sh.dtype, state.sh.device)   # (H, W, n)
    with torch.no_grad():
        vertices, parts = forward.vertices(state), forward.part_vertices(state)

        def render(envmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return forward.render(state, settings, vertices, envmap=envmap.expand(1, -1, -1, 3), parts=parts)

        uniform, coverage = render(torch.ones_like(fields[None, ..., :1]))
        images = []
        for k in range(n):
            field = fields[None, ..., k:k + 1]
            lowest = float(field.min())
            images.append(render(field - lowest)[0] + lowest * uniform)
    return torch.stack(images, 1), coverage


def least_squares_light(basis: torch.Tensor, photo: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, n, 3) coefficients x minimising sum_p w_p |P_p - sum_k B_kp x_k| per image and channel,
    approximated by iteratively reweighted least squares. basis (B, n, S, S, 3), photo (B, S, S, 3),
    weights (B, S, S, 1)."""
    columns = basis.flatten(2, 3)                          # (B, n, P, 3)
    target = photo.flatten(1, 2)                           # (B, P, 3)
    base = weights.flatten(1, 2).expand_as(target)         # (B, P, 3)
    pixel_weights = base
    n = basis.shape[1]
    for _ in range(IRLS_ROUNDS + 1):
        normal = torch.einsum("bkpc,bpc,bjpc->bckj", columns, pixel_weights, columns)
        right = torch.einsum("bkpc,bpc,bpc->bck", columns, pixel_weights, target)
        ridge = RIDGE * normal.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
        coeffs = torch.linalg.solve(normal + ridge * torch.eye(n, dtype=normal.dtype, device=normal.device), right)   # (B, 3, n)
        residual = target - torch.einsum("bkpc,bck->bpc", columns, coeffs)
        pixel_weights = base / residual.abs().clamp_min(IRLS_DELTA)
    return coeffs.transpose(1, 2)


def solve_light(forward: ForwardModel, targets: FitTargets, state: FaceState, config: FitConfig) -> FaceState:
    """`state` with its SH light replaced by the photo's least-squares light in the first
    `stage2.light_solve_bands` bands (module docstring), from renders of `light_solve_size` px at
    `light_solve_spp`; unchanged when `light_solve_bands` is 0."""
    cfg = config.stage2
    if cfg.light_solve_bands == 0:
        return state
    n = n_coefficients(cfg.light_solve_bands)
    seen = targets.at_size(min(cfg.light_solve_size, targets.size))
    view = dataclasses.replace(state.detached(), focal=state.focal * (seen.size / targets.size),
                               principal=seen.principal)
    settings = RenderSettings.from_config(config, seen.size, cfg.light_solve_spp, SEED)
    basis, coverage = basis_renders(forward, view, settings, n)
    low = least_squares_light(basis.double(), seen.images.double(), counted_pixels(seen, coverage).double())
    sh = torch.zeros_like(state.sh)
    sh[:, :n] = low.to(sh.dtype)
    if config.light.nonnegative:
        sh = nonnegative(sh, config.light.floor, config.light.envmap_height)
    return dataclasses.replace(state, sh=sh)
