"""How well the landmarks determined a fit: a Laplace approximation of the posterior at the optimum.

Model: each covered landmark's detected point is its vertex projected plus Gaussian noise, per
coordinate N(0, sigma^2 / w_l), with w_l the landmark's weight (the contour's is lower) times its
visibility (a landmark whose vertex faces away from the camera, or whose point lies outside the
crop, is MediaPipe's guess, weight `HIDDEN_WEIGHT`); identity and expression coefficients have the model's N(0, 1) prior (std units);
pose, distance and focal have flat priors. With J the Jacobian of the projected landmarks by the
parameters theta = (yaw, pitch, roll [rad], log t_z, t_x / t_z, t_y / t_z, log focal, expression,
identity), the posterior covariance is

    Sigma = (J^T W J / sigma^2 + P)^-1          (Gauss-Newton Hessian of the negative log posterior)

with W the weights and P the prior precision (1 on the coefficients, 0 elsewhere). sigma^2 is the
weighted mean squared residual per coordinate at the optimum (at least SIGMA_FLOOR_PX^2).
A coefficient whose posterior std stays near 1 was not determined by the image, only by the
prior; `scale_std` = std of log t_z is the relative uncertainty of the head's size (a face k times
larger at k times the distance projects the same). What the photometric stage added is not
counted: the figures are an upper bound on what stage 1's evidence left open.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mfface.camera import project, to_camera
from mfface.morphable.model import MorphableModel

if TYPE_CHECKING:
    from mfface.fitting.targets import FitTargets
    from mfface.state import FaceState

HIDDEN_WEIGHT = 0.05   # weight factor of a landmark whose vertex faces away or whose point is off the crop
SIGMA_FLOOR_PX = 0.5   # least landmark noise assumed (px per coordinate)
POSE_NAMES = ("yaw", "pitch", "roll", "log_distance", "lateral_x", "lateral_y", "log_focal")


@dataclass
class Posterior:
    """Laplace posterior of one image's fit: `covariance` (P, P) over theta (module docstring;
    the first 7 entries are POSE_NAMES, then the expression, then the identity coefficients),
    `sigma_px` the landmark noise used, `visible` (N,) bool per covered landmark (faces the camera, inside the crop)."""
    covariance: torch.Tensor
    n_expression: int
    n_identity: int
    sigma_px: float
    visible: np.ndarray

    def std(self) -> torch.Tensor:
        return self.covariance.diagonal().clamp_min(0).sqrt()

    def shape_covariance(self) -> torch.Tensor:
        """(K_exp + K_id, K_exp + K_id) covariance of the expression and identity coefficients."""
        return self.covariance[len(POSE_NAMES):, len(POSE_NAMES):]


def _facing(camera_points: torch.Tensor, camera_normals: torch.Tensor) -> torch.Tensor:
    return (camera_points * camera_normals).sum(-1) < 0


def landmark_posterior(model: MorphableModel, identity: torch.Tensor, expression: torch.Tensor,
                       euler: torch.Tensor, translation: torch.Tensor, focal: torch.Tensor,
                       principal: torch.Tensor, landmarks: torch.Tensor, index: torch.Tensor,
                       weights: torch.Tensor, size: int) -> Posterior:
    """The Laplace posterior (module docstring) of one image's fitted parameters.

    identity (K_id,), expression (K_exp,) std units; euler (3,) rad; translation (3,) mm; focal ()
    px; principal (2,) px; landmarks (M, 2) px, index (M,) vertices and weights (M,) of the
    covered landmarks; size the crop side in px.
    """
    from mfface.fitting.unseen import vertex_normals

    f64 = dict(dtype=torch.float64)
    buffers = model.torch_buffers("cpu")
    rows = (index[:, None] * 3 + torch.arange(3)).reshape(-1)   # only the landmark vertices' rows
    mean, id_basis, exp_basis = (buffers[k][rows].double() for k in ("mean", "identity", "expression"))
    k_id, k_exp = id_basis.shape[1], exp_basis.shape[1]
    full_identity = torch.zeros(k_id, **f64)
    full_identity[:identity.numel()] = identity.double()[:k_id]
    t = translation.double()
    theta0 = torch.cat([euler.double(), t[2:].log(), t[:2] / t[2], focal.double().reshape(1).log(),
                        expression.double(), full_identity])
    centre = principal.double().reshape(1, 2)

    def projected(theta: torch.Tensor) -> torch.Tensor:
        e, log_tz, lateral, log_f = theta[:3], theta[3:4], theta[4:6], theta[6:7]
        coeffs_exp, coeffs_id = theta[7:7 + k_exp], theta[7 + k_exp:]
        points = (mean + exp_basis @ coeffs_exp + id_basis @ coeffs_id).reshape(1, -1, 3)
        tz = log_tz.exp()
        camera = to_camera(points, e[None], torch.cat([lateral * tz, tz])[None])
        return project(camera, log_f.exp(), size, size, centre)[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(projected, theta0, vectorize=True)   # (2M, P)
    with torch.no_grad():
        vertices = model.vertices(identity[None].float(), expression[None].float())
        camera = to_camera(vertices, euler[None].float(), translation[None].float())
        normals = vertex_normals(camera, torch.as_tensor(model.triangles, dtype=torch.long))
        inside = ((landmarks >= 0) & (landmarks <= size)).all(-1)   # not extrapolated beyond the crop
        visible = _facing(camera[0, index], normals[0, index]) & inside
        w = weights.double() * torch.where(visible, 1.0, HIDDEN_WEIGHT).double()
        residual = (projected(theta0).reshape(-1, 2) - landmarks.double()).pow(2).sum(-1)
        sigma2 = max(float((w * residual).sum() / (2 * w.sum())), SIGMA_FLOOR_PX ** 2)
        w2 = w.repeat_interleave(2)
        hessian = jacobian.T @ (w2[:, None] * jacobian) / sigma2
        prior = torch.zeros(len(theta0), **f64)
        prior[len(POSE_NAMES):] = 1.0
        hessian = hessian + torch.diag(prior + 1e-9)
        covariance = torch.linalg.inv(hessian)
    return Posterior(covariance=covariance, n_expression=k_exp, n_identity=k_id,
                     sigma_px=math.sqrt(sigma2), visible=visible.numpy())


def vertex_std(model: MorphableModel, posterior: Posterior) -> np.ndarray:
    """(V,) mm: the posterior std of each model-space vertex position (root of the trace of its
    3x3 covariance) from the expression and identity covariance; pose and size excluded."""
    buffers = model.torch_buffers("cpu")
    basis = torch.cat([buffers["expression"], buffers["identity"][:, :posterior.n_identity]], 1)
    covariance = posterior.shape_covariance().float()
    variance = ((basis @ covariance) * basis).sum(1).clamp_min(0)            # (3V,)
    return variance.reshape(-1, 3).sum(1).sqrt().double().numpy()


def summary(model: MorphableModel, posterior: Posterior, region: np.ndarray | None = None) -> dict:
    """The figures `params.json` reports under "uncertainty" (README, "Reading the uncertainty")."""
    std = posterior.std()
    pose = dict(zip(POSE_NAMES, std[:len(POSE_NAMES)].tolist()))
    k_exp = posterior.n_expression
    exp_std = std[len(POSE_NAMES):len(POSE_NAMES) + k_exp]
    id_std = std[len(POSE_NAMES) + k_exp:]
    per_vertex = vertex_std(model, posterior)
    region = np.arange(model.n_vertices) if region is None else region
    names = model.expression_names or [str(i) for i in range(k_exp)]
    return {
        "method": "Laplace approximation of the landmark posterior at the fit (mfface.fitting.uncertainty)",
        "landmark_sigma_px": posterior.sigma_px,
        "visible_landmarks": int(posterior.visible.sum()), "hidden_landmarks": int((~posterior.visible).sum()),
        "yaw_pitch_roll_std_deg": [math.degrees(pose[k]) for k in ("yaw", "pitch", "roll")],
        "scale_std": pose["log_distance"],
        "focal_std": pose["log_focal"],
        "identity_std": id_std.tolist(),
        "identity_determined": float(1.0 - id_std.pow(2).mean()),
        "expression_std": dict(zip(names, exp_std.tolist())),
        "vertex_std_mm": {"median": float(np.median(per_vertex[region])),
                          "p90": float(np.percentile(per_vertex[region], 90))},
    }


def fit_uncertainty(model: MorphableModel, targets: "FitTargets", state: "FaceState") -> list[dict]:
    """`summary` of each image's landmark posterior at the fitted `state` (a shared identity is
    treated per image, so its uncertainty is that of one photo's evidence)."""
    landmarks, index, weights = targets.valid_landmarks()
    region = model.regions.get("skin")
    out = []
    for b in range(targets.batch):
        rows = lambda t: t[min(b, t.shape[0] - 1)].detach().cpu()  # noqa: E731  shared rows: 0
        posterior = landmark_posterior(
            model, rows(state.identity), rows(state.expression), rows(state.euler), rows(state.translation),
            rows(state.focal), rows(targets.principal), landmarks[b].detach().cpu(), index.cpu(),
            weights.cpu(), targets.size)
        out.append(summary(model, posterior, region))
    return out
