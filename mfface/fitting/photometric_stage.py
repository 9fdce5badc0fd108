"""Stage 2: the photometric fit of identity, expression, pose, SH light and albedo through Mitsuba.

Loss (weights in `Stage2Config`):
    photo_weight * L1 inside (coverage x skin)  + landmark_weight * landmark loss (px^2, robust)
  + identity_prior * mean(id^2) + expression_prior * mean(exp^2) + sh_energy * mean(sh^2)
  + albedo terms: albedo_prior * mean(c^2) for a statistical albedo model (Basel + AlbedoMM), or, for
    models without one (ICT), a free low-resolution albedo texture with
    albedo_smoothness * TV + albedo_symmetry * L1(point, mirror point).
SH light and albedo are optimised from the first iteration; identity, expression and pose join at
`geometry_start` (NextFace's schedule: light and albedo first explain the colours, so that the
geometry is not bent to explain shading). Pose is parametrised as a rotation delta (rad) and a
translation delta in units of the stage-1 depth, so one small learning rate suits both.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mfface.config import FitConfig
from mfface.fitting.errors import check_finite
from mfface.fitting.face_render import FaceRender, photometric_loss
from mfface.fitting.state import FaceState
from mfface.fitting.targets import FitTargets
from mfface.morphable.uv import texel_map
from mfface.priors import landmark_loss, statistical_prior
from mfface.sh import initial_coefficients, sh_energy
from mfface.texture_priors import MirrorSampler, resize_texture, smoothness_loss, symmetry_loss

StepCallback = Callable[[int, int, dict[str, float]], None]
SEED_OFFSET = 1_000_000  # stage 2 renders use seeds SEED_OFFSET + iteration


@dataclass
class StageReport:
    """Per-iteration loss terms of a stage (for the loss-curve figure and the summary)."""
    losses: dict[str, list[float]] = field(default_factory=dict)

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.losses.setdefault(name, []).append(value)

    def last(self, name: str = "total") -> float:
        values = self.losses.get(name, [])
        return values[-1] if values else float("nan")


class AlbedoSource:
    """The stage-2 diffuse albedo texture: a statistical model's or a free low-resolution texture."""

    def __init__(self, render: FaceRender, state: FaceState, resolution: int) -> None:
        model = render.model
        self.model = model
        self.statistical = model.diffuse_albedo is not None
        if self.statistical:
            albedo = model.diffuse_albedo
            device = render.device
            self.texel_map = texel_map(model.uvs, model.triangles, resolution)
            self.mean = torch.as_tensor(albedo.mean.reshape(-1, 3), dtype=torch.float32, device=device)
            scaled = albedo.basis.reshape(albedo.n_components, -1) * albedo.std[:, None]
            self.basis = torch.as_tensor(scaled.T, dtype=torch.float32, device=device)  # (V*3, K)
            self.parameter = state.albedo
        else:
            self.parameter = state.diffuse

    def texture(self) -> torch.Tensor:
        """(Bi, R, R, 3) diffuse texture."""
        if self.statistical:
            per_vertex = self.mean.reshape(1, -1) + self.parameter @ self.basis.T
            return self.texel_map.apply(per_vertex.reshape(self.parameter.shape[0], -1, 3))
        return self.parameter


def sh_band_scale(n_coefficients: int, decay: float, device: torch.device | str) -> torch.Tensor:
    """(n, 1) step scale per SH coefficient: (1 + l) ** -decay for band l, times 1 / (that of band 1).

    Adam moves every parameter by about lr per step, whatever its gradient's size; optimising
    c / scale instead makes the step lr * scale, so the DC and low bands (most of the light's
    energy) move fast and the high bands, whose noisy gradients would otherwise random-walk into
    ringing, move slowly.
    """
    bands = torch.arange(n_coefficients, device=device).float().sqrt().floor()
    return ((1.0 + bands) ** -decay * 2.0 ** decay)[:, None]


def initial_state(render: FaceRender, targets: FitTargets, euler: torch.Tensor, translation: torch.Tensor,
                  focal: torch.Tensor, expression: torch.Tensor, identity: torch.Tensor | None,
                  shared_identity: bool, config: FitConfig) -> FaceState:
    """The stage-2 start: stage-1 geometry and pose, white ambient light, skin-coloured albedo.

    Under constant light of radiance 1 a Lambertian albedo a renders as a, so the median colour of
    each photo's skin is the albedo start that makes the first render as bright as the photo.
    """
    model, device = render.model, render.device
    batch = targets.batch
    rows = 1 if shared_identity else batch
    ident = torch.zeros(rows, model.n_identity, device=device)
    if identity is not None:
        ident[:, :identity.shape[1]] = identity[:rows].to(device)
    res = config.stage2.albedo_resolution
    skin_colour = torch.stack([
        targets.images[b][targets.skin[b] > 0.5].median(dim=0).values
        if targets.skin[b].sum() > 0 else torch.full((3,), 0.4, device=device)
        for b in range(batch)])
    skin_colour = skin_colour.mean(0, keepdim=True).expand(rows, 3) if shared_identity else skin_colour
    albedo = None
    if model.diffuse_albedo is not None:
        albedo = torch.zeros(rows, model.diffuse_albedo.n_components, device=device)
        mean = torch.as_tensor(model.diffuse_albedo.mean.reshape(-1, 3), dtype=torch.float32, device=device)
        diffuse = texel_map(model.uvs, model.triangles, res).apply(mean).expand(rows, -1, -1, -1).clone()
    else:
        diffuse = skin_colour[:, None, None, :].expand(rows, res, res, 3).clone()
    specular = torch.full((rows, res, res, 3), config.stage2.specular_init, device=device)
    roughness = torch.full((rows, res, res, 1), config.render.roughness_init, device=device)
    sh = initial_coefficients(config.light.sh_bands, 1.0, batch=batch, device=device)
    return FaceState(identity=ident, expression=expression.to(device).clone(), euler=euler.to(device).clone(),
                     translation=translation.to(device).clone(), focal=focal.to(device).clone(),
                     sh=sh, diffuse=diffuse, specular=specular, roughness=roughness, albedo=albedo,
                     principal=targets.principal.clone())


def fit_photometric(render: FaceRender, targets: FitTargets, state: FaceState, config: FitConfig,
                    on_step: StepCallback | None = None) -> tuple[FaceState, StageReport]:
    """Run stage 2 from `state`; returns the fitted state (diffuse at texture size) and the losses."""
    cfg = config.stage2
    model = render.model
    state = state.detached()
    lm_target, lm_index, lm_weights = targets.valid_landmarks()
    depth = state.translation[:, 2:3].clone()
    euler0, translation0 = state.euler.clone(), state.translation.clone()
    d_euler = torch.zeros_like(euler0, requires_grad=True)
    d_trans = torch.zeros_like(translation0, requires_grad=True)
    state.identity.requires_grad_(True)
    state.expression.requires_grad_(True)
    band_scale = sh_band_scale(state.sh.shape[1], cfg.sh_band_decay, render.device)
    sh_param = (state.sh / band_scale).requires_grad_(True)
    albedo = AlbedoSource(render, state, cfg.albedo_resolution)
    albedo.parameter.requires_grad_(True)
    mirror = None
    if not albedo.statistical and model.symmetry is not None:
        mirror = MirrorSampler(model.triangles, model.uvs, model.symmetry, render.device)
    generator = torch.Generator(device=render.device).manual_seed(0)

    light_opt = torch.optim.Adam([{"params": [sh_param], "lr": cfg.sh_lr},
                                  {"params": [albedo.parameter], "lr": cfg.albedo_lr}])
    geometry_opt = torch.optim.Adam([{"params": [state.identity, state.expression], "lr": cfg.geometry_lr},
                                     {"params": [d_euler, d_trans], "lr": cfg.pose_lr}])
    report = StageReport()
    for it in range(cfg.iterations):
        geometry_on = it >= cfg.geometry_start
        state.sh = sh_param * band_scale
        state.euler = euler0 + d_euler
        state.translation = translation0 + d_trans * depth
        vertices = render.vertices(state)
        image, coverage = render.render(state, vertices, albedo.texture(), cfg.spp, SEED_OFFSET + it)
        terms = {
            "photo": cfg.photo_weight * photometric_loss(image, coverage, targets.images, targets.skin),
            "landmarks": cfg.landmark_weight * landmark_loss(
                render.landmarks(state, vertices, lm_index), lm_target, lm_weights,
                config.stage1.robust_scale),
            "identity": cfg.identity_prior * statistical_prior(state.identity),
            "expression": cfg.expression_prior * statistical_prior(state.expression),
            "light": cfg.sh_energy * sh_energy(state.sh),
        }
        if albedo.statistical:
            terms["albedo"] = cfg.albedo_prior * statistical_prior(albedo.parameter)
        else:
            terms["albedo"] = cfg.albedo_smoothness * smoothness_loss(albedo.parameter)
            if mirror is not None:
                uv, mirror_uv = mirror.sample(4096, generator)
                terms["albedo"] = terms["albedo"] + cfg.albedo_symmetry * symmetry_loss(
                    albedo.parameter, uv, mirror_uv)
        total = sum(terms.values())
        light_opt.zero_grad(set_to_none=True)
        geometry_opt.zero_grad(set_to_none=True)
        total.backward()
        light_opt.step()
        if geometry_on:
            geometry_opt.step()
            model.clamp_expression_(state.expression)
        if not albedo.statistical:
            with torch.no_grad():
                albedo.parameter.clamp_(0.0, 1.0)
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        check_finite("stage 2", it, values["total"])
        report.add(values)
        if on_step is not None:
            on_step(it, cfg.iterations, values)

    with torch.no_grad():
        state.sh = sh_param * band_scale
        state.euler = euler0 + d_euler
        state.translation = translation0 + d_trans * depth
        size = (config.render.texture_size, config.render.texture_size)
        state.diffuse = resize_texture(albedo.texture(), size)
        state.specular = resize_texture(state.specular, size)
        state.roughness = resize_texture(state.roughness, size)
    return state.detached(), report
