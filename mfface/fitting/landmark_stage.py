"""Stage 1: head pose, focal and expression (optionally identity) from 2D landmarks, no rendering.

Start: a PnP solve per image on the model's landmark vertices (focal searched when unknown). Then
Adam minimises  landmark_loss(project(to_camera(vertices)), landmarks) + expression_prior * mean(e^2)
+ expression_sparsity * mean(|e|)
(+ identity_prior * mean(i^2)) over all B images at once. The learning rate decays with a cosine
schedule to 0 so that the last iterations settle instead of jittering at lr-sized steps.
Parametrisation, so that one lr suits every parameter: euler (rad), log focal, log t_z and the
lateral translation as t_xy / t_z (the image-plane offset, unitless).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mfface.camera import principal_point, project, solve_pnp, to_camera
from mfface.config import FitConfig, LandmarkConfig, Stage1Config
from mfface.fitting.contour import ContourStrips, contour_strips, occluding_choice
from mfface.fitting.errors import check_finite
from mfface.fitting.targets import FitTargets
from mfface.interrupt import raise_if_requested
from mfface.landmarks import scheme_for_count
from mfface.morphable.model import MorphableModel
from mfface.objectives import (landmark_loss, landmark_weights, sparsity_prior, statistical_prior,
                                upper_face_landmarks)
from mfface.schedules import cosine_decay
from mfface.sh import initial_coefficients
from mfface.state import FaceState
from mfface.textures import StatisticalAlbedo

# on_step(iteration, iterations, {term: value}) after each iteration of a stage (progress displays)
StepCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class Stage1Result:
    """Stage-1 estimates for B images (float32 tensors, detached).

    euler (B, 3) rad and translation (B, 3) mm (mfface.camera's pose), focal (B,) px,
    expression (B, K_exp), identity (B, K) or None when identity was not fitted (K = the fitted
    leading components; with shared identity all B rows are equal). `losses` is the total loss per
    iteration; `rms` (B,) the final unweighted landmark reprojection error in px.
    """
    euler: torch.Tensor
    translation: torch.Tensor
    focal: torch.Tensor
    expression: torch.Tensor
    identity: torch.Tensor | None
    rms: torch.Tensor
    losses: list[float] = field(default_factory=list)


# An extra term of the stage-1 loss: (euler (B, 3) rad, translation (B, 3) mm, expression (B, K))
# -> scalar, differentiable; e.g. a temporal smoothness prior over a window of video frames
# (mfface.tracking.temporal). It is evaluated on the same parameters as the landmark loss.
PoseExpressionPrior = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_inputs(model: MorphableModel, landmarks: torch.Tensor, landmark_index: torch.Tensor) -> None:
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, N, 2) px, got {tuple(landmarks.shape)}.")
    if landmark_index.shape != (landmarks.shape[1],):
        raise ValueError(f"landmark_index must be (N,) = ({landmarks.shape[1]},), got "
                         f"{tuple(landmark_index.shape)}.")
    if int(landmark_index.max()) >= model.n_vertices:
        raise ValueError("landmark_index refers to vertices beyond the model's; use the model's own table.")
    if int((landmark_index >= 0).sum()) < 6:
        raise ValueError("stage 1 needs at least 6 landmarks that the model covers (index >= 0).")


def _pnp_init(model_points: np.ndarray, landmarks: np.ndarray, width: int, height: int,
              focal: float | None, principal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image PnP: euler (B, 3), translation (B, 3), focal (B,); principal (B, 2) px."""
    found = [solve_pnp(model_points[b], landmarks[b], width, height, focal, principal=tuple(principal[b]))
             for b in range(len(landmarks))]
    return (np.stack([f.euler for f in found]), np.stack([f.translation for f in found]),
            np.array([f.focal for f in found]))


def fit_landmarks(model: MorphableModel, landmarks: torch.Tensor, landmark_index: torch.Tensor,
                  width: int, height: int, config: Stage1Config, init: Stage1Result | None = None,
                  identity: torch.Tensor | None = None, shared_identity: bool = False,
                  principal: torch.Tensor | None = None, loss: LandmarkConfig | None = None,
                  weights: torch.Tensor | None = None,
                  prior: PoseExpressionPrior | None = None,
                  on_step: StepCallback | None = None) -> Stage1Result:
    """Fit pose, focal and expression (and identity when `config.fit_identity`) to landmarks.

    landmarks (B, N, 2) px in the image convention of mfface.camera; landmark_index (N,) model
    vertex per landmark, -1 = not covered (ignored). `loss` sets the landmark loss (robust scale;
    default `LandmarkConfig()`); `weights` (N,) per landmark, by default 1 and `loss.contour_weight`
    for the down-weighted outline of the scheme that N implies. `identity` (B or 1, K) fixes
    the identity (e.g. known from other photos); otherwise it starts at 0 and is fitted only when
    `config.fit_identity` (one vector for all images when `shared_identity`). `init` replaces the
    PnP start (e.g. the previous video frame). principal (B, 2) px is each image's principal
    point (None = the image centre). `prior` (None = none) adds a term of the B images' pose
    and expression to the loss (`PoseExpressionPrior`), e.g. temporal smoothness across the B
    frames of a video window. `on_step(iteration, iterations, {"total": loss})` is called after
    each iteration (progress display). Runs on landmarks.device.
    """
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    landmark_index = torch.as_tensor(landmark_index, dtype=torch.long, device=landmarks.device)
    _check_inputs(model, landmarks, landmark_index)
    device, batch = landmarks.device, landmarks.shape[0]
    valid = landmark_index >= 0
    target = landmarks[:, valid]
    vertex_index = landmark_index[valid]
    loss = loss or LandmarkConfig()
    scheme = scheme_for_count(landmarks.shape[1])
    strips = (contour_strips(model, scheme, landmark_index.cpu().numpy()) if loss.sliding_contour else None)
    if weights is None:
        weights = landmark_weights(scheme, landmarks.shape[1], loss.contour_weight, device,
                                   model.landmark_reliability.get(scheme))
    weights = weights.to(device)[valid]

    fit_identity = config.fit_identity and identity is None and config.identity_components > 0
    k_id = min(config.identity_components, model.n_identity)
    id_rows = 1 if shared_identity else batch
    if identity is not None:
        identity = torch.as_tensor(identity, dtype=torch.float32, device=device).expand(batch, -1)
    id_param = torch.zeros(id_rows, k_id, device=device, requires_grad=fit_identity)
    exp_param = torch.zeros(batch, model.n_expression, device=device)
    known_focal = config.focal if config.focal > 0 else None
    centre = principal_point(principal, width, height, batch, device)

    if init is None:
        with torch.no_grad():
            # the mean face is made on the CPU when identity is None: index it with CPU indices
            start = model.vertices(identity)[:, vertex_index.cpu()].expand(batch, -1, -1)
        euler0, trans0, focal0 = _pnp_init(start.cpu().double().numpy(), target.cpu().double().numpy(),
                                           width, height, known_focal, centre.cpu().double().numpy())
    else:
        euler0, trans0, focal0 = (init.euler.cpu().numpy(), init.translation.cpu().numpy(),
                                  init.focal.cpu().numpy())
        exp_param = init.expression.to(device).clone()
        if init.identity is not None and identity is None and fit_identity:
            id_param = init.identity[:id_rows, :k_id].to(device).clone()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device).clone()

    euler = tensor(euler0).requires_grad_()
    trans0 = tensor(trans0)
    log_tz = trans0[:, 2:].log().requires_grad_()
    lateral = (trans0[:, :2] / trans0[:, 2:]).requires_grad_()
    log_focal = tensor(focal0).log().requires_grad_(config.fit_focal and known_focal is None)
    exp_param.requires_grad_()
    id_param.requires_grad_(fit_identity)

    # Only the landmark vertices' rows of the model: V can be ~30k, landmarks a few hundred.
    buffers = model.torch_buffers(device)
    sliding = _SlidingRows(strips, valid, len(vertex_index)) if strips is not None else None
    evaluated = vertex_index if sliding is None else torch.cat([vertex_index, sliding.candidates.reshape(-1)])
    rows = (evaluated[:, None] * 3 + torch.arange(3, device=device)).reshape(-1)
    mean_rows = buffers["mean"][rows]
    id_rows_basis = buffers["identity"][rows, :k_id]
    exp_rows_basis = buffers["expression"][rows]
    fixed_identity = (identity @ buffers["identity"][rows, :identity.shape[1]].T
                      if identity is not None else 0.0)

    def evaluate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = mean_rows + exp_param @ exp_rows_basis.T + fixed_identity
        if fit_identity:
            flat = flat + id_param.expand(batch, -1) @ id_rows_basis.T
        verts = flat.reshape(batch, -1, 3)
        tz = log_tz.exp()
        translation = torch.cat([lateral * tz, tz], dim=1)
        points = to_camera(verts, euler, translation)
        if sliding is not None:
            points = sliding.slide(points, euler)
        uv = project(points, log_focal.exp(), width, height, centre)
        total = landmark_loss(uv, target, weights, loss.robust_scale)
        total = total + config.expression_prior * statistical_prior(exp_param)
        total = total + config.expression_sparsity * sparsity_prior(exp_param)
        if fit_identity:
            total = total + config.identity_prior * statistical_prior(id_param)
        if prior is not None:
            total = total + prior(euler, translation, exp_param)
        return total, uv, translation

    params = [p for p in (euler, log_tz, lateral, log_focal, exp_param, id_param) if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    schedule = cosine_decay(optimizer, config.iterations)
    losses = []
    for it in range(config.iterations):
        optimizer.zero_grad()
        total, _, _ = evaluate()
        total.backward()
        optimizer.step()
        model.clamp_expression_(exp_param)
        schedule.step()
        losses.append(float(total.detach()))
        check_finite("stage 1", it, losses[-1])
        raise_if_requested()
        if on_step is not None:
            on_step(it, config.iterations, {"total": losses[-1]})

    with torch.no_grad():
        _, uv, translation = evaluate()
        rms = (uv - target).pow(2).sum(-1).mean(-1).sqrt()
    fitted_identity = None
    if fit_identity:
        fitted_identity = id_param.detach().expand(batch, -1).clone()
    elif identity is not None:
        fitted_identity = identity.clone()
    return Stage1Result(euler=euler.detach().clone(), translation=translation.detach().clone(),
                        focal=log_focal.detach().exp(), expression=exp_param.detach().clone(),
                        identity=fitted_identity, rms=rms, losses=losses)


class _SlidingRows:
    """The sliding outline landmarks (`mfface.fitting.contour`) among stage 1's M covered
    landmarks: their strips' candidates are evaluated after the M landmark vertices."""

    def __init__(self, strips: ContourStrips, valid: torch.Tensor, count: int) -> None:
        self.strips = strips.to(valid.device)
        position = torch.cumsum(valid.long(), 0) - 1        # landmark row -> row among the covered
        self.rows = position[self.strips.rows]
        self.candidates = self.strips.candidates
        self.count = count

    def slide(self, points: torch.Tensor, euler: torch.Tensor) -> torch.Tensor:
        """(B, M, 3) landmark points from (B, M + C K, 3): each outline landmark's point replaced
        by its strip's current choice (`occluding_choice`)."""
        batch, (c, k) = points.shape[0], self.candidates.shape
        strip = points[:, self.count:].reshape(batch, c, k, 3)
        pick = occluding_choice(self.strips, strip, euler)
        chosen = strip.gather(2, pick[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
        return points[:, :self.count].index_copy(1, self.rows, chosen)


@dataclass
class Stage1Report:
    """What stage 1 measured: `rms` per image, the final landmark reprojection error in px, and
    `losses`, the total loss per iteration."""
    rms: list[float]
    losses: list[float]


def initial_state(model: MorphableModel, targets: FitTargets, fitted: Stage1Result,
                  shared_identity: bool, config: FitConfig) -> FaceState:
    """The full state that stage 1 hands on: its geometry, pose and focal, white ambient light and
    a skin-coloured albedo (stage 2's start).

    Under constant light of radiance 1 a Lambertian albedo a renders as a, so the median colour of
    each photo's skin is the albedo start that makes the first render as bright as the photo.
    Maps are `stage2.albedo_resolution` texels square.
    """
    device, batch = targets.images.device, targets.batch
    rows = 1 if shared_identity else batch
    identity = torch.zeros(rows, model.n_identity, device=device)
    if fitted.identity is not None:
        identity[:, :fitted.identity.shape[1]] = fitted.identity[:rows].to(device)
    res = config.stage2.albedo_resolution
    skin_colour = torch.stack([
        targets.images[b][targets.skin[b] > 0.5].median(dim=0).values
        if targets.skin[b].sum() > 0 else torch.full((3,), 0.4, device=device)
        for b in range(batch)])
    skin_colour = skin_colour.mean(0, keepdim=True).expand(rows, 3) if shared_identity else skin_colour
    albedo = None
    if model.diffuse_albedo is not None:
        albedo = torch.zeros(rows, model.diffuse_albedo.n_components, device=device)
        diffuse = StatisticalAlbedo(model, res, device).texture(albedo)
    else:
        diffuse = skin_colour[:, None, None, :].expand(rows, res, res, 3).clone()
    return FaceState(
        identity=identity, expression=fitted.expression.to(device).clone(),
        euler=fitted.euler.to(device).clone(), translation=fitted.translation.to(device).clone(),
        focal=fitted.focal.to(device).clone(),
        sh=initial_coefficients(config.light.sh_bands, 1.0, batch=batch, device=device),
        diffuse=diffuse, specular=torch.full((rows, res, res, 3), config.stage2.specular_init, device=device),
        roughness=torch.full((rows, res, res, 1), config.render.roughness_init, device=device),
        albedo=albedo, principal=targets.principal.clone())


def run_landmark_stage(model: MorphableModel, targets: FitTargets, config: FitConfig,
                       shared_identity: bool, iterations: int | None = None,
                       identity: torch.Tensor | None = None,
                       on_step: StepCallback | None = None) -> tuple[FaceState, Stage1Report]:
    """Stage 1 on `targets`: the fitted start state (`initial_state`) and its report.

    `iterations` overrides `stage1.iterations` (0 keeps only the PnP pose, for --skip-stage 1);
    `identity` (1 or B, K) fixes the shape instead of fitting it; `on_step` as `fit_landmarks`'."""
    stage = config.stage1 if iterations is None else dataclasses.replace(config.stage1, iterations=iterations)
    weights = targets.landmark_weights
    if stage.upper_face_weight != 1.0:
        upper = upper_face_landmarks(model.mean_shape, targets.landmark_index.cpu().numpy(),
                                     scheme_for_count(targets.landmarks.shape[1]))
        weights = weights.clone()
        weights[torch.from_numpy(upper).to(weights.device)] *= stage.upper_face_weight
    fitted = fit_landmarks(model, targets.landmarks, targets.landmark_index, targets.size, targets.size,
                           stage, identity=identity, shared_identity=shared_identity,
                           principal=targets.principal, loss=config.landmarks, weights=weights,
                           on_step=on_step)
    state = initial_state(model, targets, fitted, shared_identity, config)
    return state, Stage1Report([float(r) for r in fitted.rms], fitted.losses)
