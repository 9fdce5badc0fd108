"""Stage 2: the photometric fit of identity, expression, pose, SH light and albedo through Mitsuba.

Loss (weights in `Stage2Config`, terms in `mfface.objectives`, landmark loss per `[landmarks]`):
    photo_weight * L1 inside (coverage x skin)  + landmark_weight * landmark loss (px^2, robust)
  + identity_prior * mean(id^2) + expression_prior * mean(exp^2) + sh_energy * mean(sh^2)
  + albedo terms: albedo_prior * mean(c^2) for a statistical albedo model (Basel + AlbedoMM), or, for
    models without one (ICT), a free low-resolution albedo texture with
    albedo_smoothness * TV + albedo_symmetry * L1(point, mirror point).
Coarse to fine: the first `coarse_iterations` render at `coarse_size` px against the
area-averaged photo (`FitTargets.at_size`; focal and principal point scaled alike), the rest at the
crop's size; the landmark loss stays in the crop's pixels, so its weight means the same throughout.
SH light and albedo are optimised from the first iteration; identity (unless `fit_identity` is
off), expression and pose join at `geometry_start` (NextFace's schedule: light and albedo first explain the colours, so that the
geometry is not bent to explain shading). Until then the vertices are computed without gradients:
the scene keeps its mesh (no acceleration-structure rebuild) and the backward pass has no vertex
adjoint, 0.14 instead of 0.22 s an iteration at 256 px. Pose is parametrised as a rotation delta (rad) and a
translation delta in units of the stage-1 depth, so one small learning rate suits both.
Silhouette gradients at the end: the last `silhouette_fraction` of the iterations render with
`direct_projective` when a render at that point leaves skin-mask pixels uncovered
(`outline_short_of_skin`); `prb` has no gradient that moves the outline over them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from mfface.config import FitConfig
from mfface.fitting.errors import check_finite
from mfface.fitting.landmark_stage import StepCallback
from mfface.fitting.light_solve import solve_light
from mfface.fitting.targets import FitTargets
from mfface.forward import ForwardModel, RenderSettings
from mfface.interrupt import raise_if_requested
from mfface.itemwise import itemwise_photometric
from mfface.objectives import (landmark_loss, sh_energy, smoothness_loss, statistical_prior, symmetry_loss,
                               weighted_terms)
from mfface.schedules import cosine_decay, warmup
from mfface.sh import nonnegative
from mfface.state import FaceState
from mfface.textures import MirrorSampler, StatisticalAlbedo, resize_texture

SEED_OFFSET = 1_000_000  # stage 2 renders use seeds SEED_OFFSET + iteration
UNCOVERED_SKIN_PX = 1.0  # skin-mask area (px) left uncovered from which the silhouette iterations run


@dataclass
class StageReport:
    """Per-iteration loss terms of a stage (for the loss-curve figure and the summary)."""
    losses: dict[str, list[float]] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)   # one number each, e.g. the seen texels

    def add(self, terms: dict[str, float]) -> None:
        for name, value in terms.items():
            self.losses.setdefault(name, []).append(value)

    def last(self, name: str = "total") -> float:
        values = self.losses.get(name, [])
        return values[-1] if values else float("nan")

    def final_photo(self) -> float:
        """The photometric term of the stage's last step: stage 3's diffuse solve (`solve_photo`,
        the render its last pass started from) when it ran, else the last iteration's."""
        return self.last("solve_photo" if self.losses.get("solve_photo") else "photo")


class AlbedoSource:
    """The stage-2 diffuse albedo texture: a statistical model's or a free low-resolution texture."""

    def __init__(self, forward: ForwardModel, state: FaceState, resolution: int) -> None:
        model = forward.model
        self.model = model
        self.statistical = model.diffuse_albedo is not None
        if self.statistical:
            self.baked = StatisticalAlbedo(model, resolution, forward.device)
            self.parameter = state.albedo
        else:
            self.parameter = state.diffuse

    def texture(self) -> torch.Tensor:
        """(Bi, R, R, 3) diffuse texture."""
        return self.baked.texture(self.parameter) if self.statistical else self.parameter


def sh_band_scale(n_coefficients: int, decay: float, device: torch.device | str) -> torch.Tensor:
    """(n, 1) step scale per SH coefficient: (1 + l) ** -decay for band l, times 1 / (that of band 1).

    Adam moves every parameter by about lr per step, whatever its gradient's size; optimising
    c / scale instead makes the step lr * scale, so the DC and low bands (most of the light's
    energy) move fast and the high bands, whose noisy gradients would otherwise random-walk into
    ringing, move slowly.
    """
    bands = torch.arange(n_coefficients, device=device).float().sqrt().floor()
    return ((1.0 + bands) ** -decay * 2.0 ** decay)[:, None]


# The weight of each stage-2 term: the Stage2Config field that holds it.
WEIGHTS = {"photo": "photo_weight", "landmarks": "landmark_weight", "identity": "identity_prior",
           "expression": "expression_prior", "light": "sh_energy", "albedo": "albedo_prior",
           "albedo_smoothness": "albedo_smoothness", "albedo_symmetry": "albedo_symmetry"}


def outline_short_of_skin(forward: ForwardModel, state: FaceState, settings: RenderSettings,
                          vertices: torch.Tensor, skin: torch.Tensor) -> bool:
    """Whether the render leaves at least `UNCOVERED_SKIN_PX` of some photo's skin mask (skin > 0.5)
    uncovered, as area: the sum of 1 - coverage over those pixels. The outline stops short of the
    skin there, and only silhouette gradients move it (`stage2.silhouette_fraction`). One render
    without gradients. An area, not "any pixel below full coverage": at 4 spp that test flipped
    between runs on a photo whose outline just meets the mask (obama_c: 0.02-0.08 px uncovered at
    64 spp), while the faces that gain from the silhouette iterations leave 3-14 px."""
    with torch.no_grad():
        _, coverage = forward.render(state, settings, vertices.detach())
    uncovered = ((skin > 0.5) * (1.0 - coverage)).flatten(1).sum(1)
    return bool((uncovered >= UNCOVERED_SKIN_PX).any())


def fit_photometric(forward: ForwardModel, targets: FitTargets, state: FaceState, config: FitConfig,
                    on_step: StepCallback | None = None) -> tuple[FaceState, StageReport]:
    """Run stage 2 from `state`; returns the fitted state (diffuse at texture size) and the losses."""
    cfg = config.stage2
    model = forward.model
    state = solve_light(forward, targets, state.detached(), config)
    lm_target, lm_index, lm_weights = targets.valid_landmarks()
    depth = state.translation[:, 2:3].clone()
    euler0, translation0 = state.euler.clone(), state.translation.clone()
    d_euler = torch.zeros_like(euler0, requires_grad=True)
    d_trans = torch.zeros_like(translation0, requires_grad=True)
    state.identity.requires_grad_(cfg.fit_identity)
    state.expression.requires_grad_(True)
    band_scale = sh_band_scale(state.sh.shape[1], cfg.sh_band_decay, forward.device)
    sh_param = (state.sh / band_scale).requires_grad_(True)
    albedo = AlbedoSource(forward, state, cfg.albedo_resolution)
    albedo.parameter.requires_grad_(True)
    mirror = None
    if not albedo.statistical and model.symmetry is not None:
        mirror = MirrorSampler(model.triangles, model.uvs, model.symmetry, forward.device)
    generator = torch.Generator(device=forward.device).manual_seed(0)
    coarse = cfg.coarse_size if 0 < cfg.coarse_size < targets.size else targets.size
    coarse_targets = targets.at_size(coarse)
    robust = config.landmarks.robust_scale

    light_opt = torch.optim.Adam([{"params": [sh_param], "lr": cfg.sh_lr},
                                  {"params": [albedo.parameter], "lr": cfg.albedo_lr}])
    shape = [state.identity, state.expression] if cfg.fit_identity else [state.expression]
    geometry_opt = torch.optim.Adam([{"params": shape, "lr": cfg.geometry_lr},
                                     {"params": [d_euler, d_trans], "lr": cfg.pose_lr}])
    light_schedule = cosine_decay(light_opt, cfg.iterations) if cfg.lr_decay else None
    geometry_schedule = warmup(geometry_opt, cfg.geometry_warmup,
                               cfg.iterations - cfg.geometry_start if cfg.lr_decay else None)
    report = StageReport()
    silhouette_start = cfg.iterations - round(cfg.silhouette_fraction * cfg.iterations)
    projective = False
    for it in range(cfg.iterations):
        geometry_on = it >= cfg.geometry_start
        state.sh = sh_param * band_scale
        state.euler = euler0 + d_euler
        state.translation = translation0 + d_trans * depth
        state.diffuse = albedo.texture()
        seen = coarse_targets if it < cfg.coarse_iterations else targets
        scale = seen.size / targets.size
        view = dataclasses.replace(state, focal=state.focal * scale, principal=seen.principal)
        settings = RenderSettings.from_config(config, seen.size, cfg.spp, SEED_OFFSET + it)
        with torch.set_grad_enabled(geometry_on):   # before it: no BVH rebuild, no geometry adjoint
            vertices = forward.vertices(view)
        if it == silhouette_start:
            projective = outline_short_of_skin(forward, view, settings, vertices, seen.skin)
            report.figures["silhouette_iterations"] = cfg.iterations - it if projective else 0
        if projective:
            settings = dataclasses.replace(settings, integrator="direct_projective")
        landmarks = forward.landmarks(view, vertices, lm_index, seen.size)
        terms = weighted_terms(cfg, WEIGHTS, {
            # photo by photo through one scene (a batch of them: shared identity; mfface.itemwise)
            "photo": lambda: itemwise_photometric(forward, view, settings, vertices, seen.images, seen.skin),
            "landmarks": lambda: landmark_loss(landmarks / scale, lm_target, lm_weights, robust),
            "identity": lambda: statistical_prior(state.identity),
            "expression": lambda: statistical_prior(state.expression),
            "light": lambda: sh_energy(state.sh),
            **({"albedo": lambda: statistical_prior(albedo.parameter)} if albedo.statistical else {
                "albedo_smoothness": lambda: smoothness_loss(albedo.parameter),
                **({"albedo_symmetry": lambda: symmetry_loss(albedo.parameter,
                                                             *mirror.sample(4096, generator))}
                   if mirror is not None else {})}),
        })
        total = sum(terms.values())
        light_opt.zero_grad(set_to_none=True)
        geometry_opt.zero_grad(set_to_none=True)
        total.backward()
        light_opt.step()
        if config.light.nonnegative:
            with torch.no_grad():
                sh_param.copy_(nonnegative(sh_param * band_scale, config.light.floor,
                                           config.light.envmap_height) / band_scale)
        if light_schedule is not None:
            light_schedule.step()
        if geometry_on:
            geometry_opt.step()
            geometry_schedule.step()
            model.clamp_expression_(state.expression)
        if not albedo.statistical:
            with torch.no_grad():
                albedo.parameter.clamp_(0.0, 1.0)
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        check_finite("stage 2", it, values["total"])
        raise_if_requested()
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
