"""A Levenberg-Marquardt solver for a window of video frames: stage 1's objective, minimised fast.

The objective is the landmark stage's (`mfface.fitting.landmark_stage.fit_landmarks`, identity
and focal fixed) over B frames, plus the tracker's temporal term:

    F(p) = landmark_loss(project(to_camera(X(e_b), euler_b, t_b)), targets, weights, robust_scale)
         + expression_prior * mean(e^2) + expression_sparsity * mean(|e|) + prior(euler, t, e)

with the same terms (`mfface.objectives`, `mfface.camera`) and the same parametrisation per frame:
euler (rad), log t_z, lateral = t_xy / t_z, expression e (std units, or blend weights bounded by
the model's `expression_range`). Adam needs hundreds to thousands of steps on it, because the
expression shapes move overlapping landmarks (the problem is ill-conditioned: measured on exact
landmarks, 60 Adam steps left a median blend-weight error of 0.15, 1000 steps 0.004); a second-
order method converges in a handful of iterations:

- the landmark term by Gauss-Newton with iteratively reweighted least squares: the Huber-like
  rho(d) of `landmark_loss` is locally omega d^2 with omega = 1 (d <= s) or s / d (d > s); its
  Jacobian per frame (2N x P, P = 6 + K) by forward-mode autodiff (torch.func.jacfwd, vmapped
  over the frames), so frame b's block of the normal matrix is J_b^T W_b J_b;
- the priors (expression prior and the temporal term, which couples the frames) by their exact
  gradient and Hessian (torch.func), whatever their form;
- bounds by a projected step with an active set (a blend weight at 0 or 1 whose gradient pushes
  outwards is held), Levenberg-Marquardt damping on the diagonal, and a step accepted only when
  F decreases. It stops when F changes by less than `tolerance` (relative) or after `iterations`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import hessian

from mfface.camera import project, rotation_matrix, to_camera
from mfface.morphable.model import MorphableModel
from mfface.objectives import landmark_loss, sparsity_prior, statistical_prior

Prior = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class WindowFit:
    """The solved window: euler (B, 3) rad, translation (B, 3) mm, expression (B, K), rms (B,)
    the unweighted landmark reprojection error in px, `losses` F per accepted iteration."""
    euler: torch.Tensor
    translation: torch.Tensor
    expression: torch.Tensor
    rms: torch.Tensor
    losses: list[float]


def _rotation_derivatives(euler: torch.Tensor, step: float = 1e-4) -> torch.Tensor:
    """dR / d euler_j of `rotation_matrix` for euler (B, 3): (B, 3, 3, 3), last axis j, by central
    differences in float64 (error ~1e-9, far below what the landmarks resolve)."""
    e = euler.detach().double()
    out = []
    for j in range(3):
        delta = torch.zeros_like(e)
        delta[:, j] = step
        out.append((rotation_matrix(e + delta) - rotation_matrix(e - delta)) / (2 * step))
    return torch.stack(out, -1).to(euler.dtype)


class WindowSolver:
    """Levenberg-Marquardt over a window of frames (see the module docstring) for one model,
    landmark table, identity and camera. Call `solve` per window."""

    def __init__(self, model: MorphableModel, landmark_index: torch.Tensor, weights: torch.Tensor,
                 identity: torch.Tensor, focal: float, width: int, height: int, principal: torch.Tensor,
                 robust_scale: float, expression_prior: float, expression_sparsity: float = 0.0) -> None:
        index = torch.as_tensor(landmark_index, dtype=torch.long)
        valid = index >= 0
        self.valid = valid
        vertex = index[valid]
        buffers = model.torch_buffers("cpu")
        rows = (vertex[:, None] * 3 + torch.arange(3)).reshape(-1)
        identity = identity.detach().float().cpu().reshape(1, -1)
        self.base = (buffers["mean"][rows] + identity @ buffers["identity"][rows, :identity.shape[1]].T)[0]
        self.basis = buffers["expression"][rows]            # (3M, K)
        self.weights = weights.float()[valid]
        self.focal = torch.tensor([float(focal)])
        self.width, self.height = width, height
        self.principal = principal.float().reshape(1, 2)
        self.robust = robust_scale
        self.expression_prior = expression_prior
        self.expression_sparsity = expression_sparsity
        self.bounds = model.expression_range
        self.k = model.n_expression

    # -- the model ---------------------------------------------------------------------------------

    def unpack(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(euler (B, 3), translation (B, 3) mm, expression (B, K)) of parameters p (B, 6 + K)."""
        log_tz, lateral = p[:, 3:4], p[:, 4:6]
        tz = log_tz.exp()
        return p[:, :3], torch.cat([lateral * tz, tz], dim=1), p[:, 6:]

    def _camera_points(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model-space landmark vertices (B, M, 3) mm, camera-space ones (B, M, 3) mm)."""
        euler, translation, expression = self.unpack(p)
        model_points = (self.base + expression @ self.basis.T).reshape(len(p), -1, 3)
        return model_points, to_camera(model_points, euler, translation)

    def landmarks(self, p: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) px of parameters p (B, 6 + K)."""
        return project(self._camera_points(p)[1], self.focal.expand(len(p)), self.width, self.height,
                       self.principal.expand(len(p), 2))

    def jacobian(self, p: torch.Tensor) -> torch.Tensor:
        """d landmarks / d p: (B, M, 2, 6 + K), analytic: the pinhole's derivative times d X_cam / d p,
        where X_cam = R(euler) (base + basis e) + t(log t_z, lateral)."""
        batch = len(p)
        with torch.no_grad():
            model_points, cam = self._camera_points(p)
            x, y, z = cam.unbind(-1)
            f = self.focal
            zero = torch.zeros_like(z)
            d_proj = torch.stack([torch.stack([f / z, zero, -f * x / z ** 2], -1),
                                  torch.stack([zero, f / z, -f * y / z ** 2], -1)], -2)   # (B, M, 2, 3)
            euler, translation, _ = self.unpack(p)
            d_rot = _rotation_derivatives(euler)                          # (B, 3, 3, 3): dR/d euler_j
            d_euler = torch.einsum("bikj,bmk->bmij", d_rot, model_points)  # (B, M, 3, 3)
            tz = translation[:, 2]
            d_trans = torch.zeros(batch, 3, 3)
            d_trans[:, :, 0] = translation                                 # d t / d log t_z = t
            d_trans[:, 0, 1] = tz                                          # d t_x / d lateral_x
            d_trans[:, 1, 2] = tz
            rotation = rotation_matrix(euler)
            basis = self.basis.reshape(-1, 3, self.k)                      # (M, 3, K)
            d_exp = torch.einsum("bij,mjk->bmik", rotation, basis)         # (B, M, 3, K)
            d_cam = torch.cat([d_euler, d_trans[:, None].expand(-1, cam.shape[1], -1, -1), d_exp], dim=-1)
            return torch.einsum("bmij,bmjp->bmip", d_proj, d_cam)

    def objective(self, p: torch.Tensor, target: torch.Tensor, prior: Prior | None) -> torch.Tensor:
        """F(p), the scalar loss (see the module docstring)."""
        return landmark_loss(self.landmarks(p), target, self.weights, self.robust) + self._priors(p, prior)

    def _expression_priors(self, expression: torch.Tensor) -> torch.Tensor:
        """expression_prior * mean(e^2) + expression_sparsity * mean(|e|)."""
        return (self.expression_prior * statistical_prior(expression)
                + self.expression_sparsity * sparsity_prior(expression))

    def _priors(self, p: torch.Tensor, prior: Prior | None) -> torch.Tensor:
        euler, translation, expression = self.unpack(p)
        total = self._expression_priors(expression)
        if prior is not None:
            total = total + prior(euler, translation, expression)
        return total

    # -- solving -----------------------------------------------------------------------------------

    def pack(self, euler: torch.Tensor, translation: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Parameters (B, 6 + K) of a start (translation with t_z > 0)."""
        tz = translation[:, 2:3]
        return torch.cat([euler, tz.log(), translation[:, :2] / tz, expression], dim=1).float()

    def solve(self, target: torch.Tensor, euler: torch.Tensor, translation: torch.Tensor,
              expression: torch.Tensor, prior: Prior | None = None, iterations: int = 20,
              tolerance: float = 1e-5) -> WindowFit:
        """Minimise F for landmarks target (B, N, 2) px (all N; uncovered ones are dropped) from the
        given start (B, 3), (B, 3) mm, (B, K)."""
        target = target.float()[:, self.valid]
        p = self.pack(euler, translation, expression).detach()
        if self.bounds is not None:
            p[:, 6:] = p[:, 6:].clamp(*self.bounds)
        batch, size = p.shape
        current = float(self.objective(p, target, prior))
        losses = [current]
        damping = 1e-3
        norm = 2.0 / (batch * float(self.weights.sum().clamp_min(1e-12)))
        quadratic = self._prior_hessian(prior, batch)   # in (euler, translation, expression) terms
        for _ in range(iterations):
            uv = self.landmarks(p)
            residual = uv - target                                    # (B, M, 2)
            distance = residual.norm(dim=-1).clamp_min(1e-12)
            omega = torch.ones_like(distance) if self.robust <= 0 else torch.where(
                distance <= self.robust, torch.ones_like(distance), self.robust / distance)
            w = (self.weights * omega * norm)[..., None].expand(-1, -1, 2).reshape(batch, -1)  # (B, 2M)
            jac = self.jacobian(p).reshape(batch, -1, size)           # (B, 2M, P)
            grad = torch.einsum("bmp,bm->bp", jac, w * residual.reshape(batch, -1)).reshape(-1)
            blocks = torch.bmm((jac * w[..., None]).transpose(1, 2), jac)  # J_b^T W_b J_b
            to_q = self._q_jacobian(p)                                # (B, P, P): d (euler, t, e) / d p
            hessian_q = quadratic if quadratic is not None else self._generic_hessian(p, prior)
            hessian_p = torch.einsum("bsp,bscr,crq->bpcq", to_q, hessian_q.reshape(batch, size, batch, size), to_q)
            normal = torch.block_diag(*blocks) + hessian_p.reshape(batch * size, batch * size)
            q = p.clone().requires_grad_(True)
            grad = grad + torch.autograd.grad(self._priors(q, prior), q)[0].reshape(-1)
            free = self._free(p, grad)
            improved = False
            while damping < 1e8:
                step = self._step(normal, grad, free, damping)
                candidate = p + step.reshape(batch, size)
                if self.bounds is not None:
                    candidate[:, 6:] = candidate[:, 6:].clamp(*self.bounds)
                value = float(self.objective(candidate, target, prior))
                if value < current:
                    improved = True
                    damping = max(damping / 3.0, 1e-9)
                    break
                damping *= 4.0
            if not improved:
                break
            change = (current - value) / max(abs(current), 1e-12)
            p, current = candidate, value
            losses.append(current)
            if change < tolerance:
                break
        euler_out, translation_out, expression_out = self.unpack(p)
        rms = (self.landmarks(p) - target).pow(2).sum(-1).mean(-1).sqrt()
        return WindowFit(euler_out.detach(), translation_out.detach(), expression_out.detach(), rms.detach(), losses)

    def _q_jacobian(self, p: torch.Tensor) -> torch.Tensor:
        """Per frame, d (euler, translation, expression) / d p: (B, 6 + K, 6 + K)."""
        _, t, _ = self.unpack(p.detach())
        blocks = torch.eye(p.shape[1]).repeat(len(p), 1, 1)
        zero = torch.zeros_like(t[:, 0])
        blocks[:, 3:6, 3:6] = torch.stack([torch.stack([t[:, 0], t[:, 2], zero], -1),
                                           torch.stack([t[:, 1], zero, t[:, 2]], -1),
                                           torch.stack([t[:, 2], zero, zero], -1)], -2)
        return blocks

    def _prior_hessian(self, prior: Prior | None, batch: int) -> torch.Tensor | None:
        """The priors' Hessian in (euler, translation, expression) terms, (B (6 + K))^2, when it is
        constant: the expression prior's (the sparsity prior is linear where it acts, its Hessian
        0), plus the temporal prior's when it provides its own
        (`hessian(batch, k)`, a quadratic prior); None when a general prior needs autodiff."""
        n = batch * (6 + self.k)
        base = torch.zeros(batch, 6 + self.k)
        base[:, 6:] = 2.0 * self.expression_prior / (batch * self.k)
        total = torch.diag(base.reshape(-1))
        if prior is None:
            return total
        if not hasattr(prior, "hessian"):
            return None
        return total + prior.hessian(batch, self.k).reshape(n, n)

    def _generic_hessian(self, p: torch.Tensor, prior: Prior | None) -> torch.Tensor:
        """The priors' Hessian in (euler, translation, expression) terms by autodiff (any prior)."""
        euler, translation, expression = (a.detach() for a in self.unpack(p))
        size = 6 + self.k

        def priors(q: torch.Tensor) -> torch.Tensor:
            q = q.reshape(len(p), size)
            return self._expression_priors(q[:, 6:]) + prior(q[:, :3], q[:, 3:6], q[:, 6:])
        q = torch.cat([euler, translation, expression], dim=1).reshape(-1)
        return hessian(priors)(q)

    def _free(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """(B * P,) bool: the parameters that may move; a bounded weight at its bound whose
        descent direction leaves the range is held (the active set)."""
        free = torch.ones_like(p, dtype=torch.bool)
        if self.bounds is not None:
            low, high = self.bounds
            g = grad.reshape(p.shape)[:, 6:]
            e = p[:, 6:]
            free[:, 6:] = ~(((e <= low + 1e-7) & (g > 0)) | ((e >= high - 1e-7) & (g < 0)))
        return free.reshape(-1)

    @staticmethod
    def _step(normal: torch.Tensor, grad: torch.Tensor, free: torch.Tensor, damping: float) -> torch.Tensor:
        """The damped Newton step (H + damping diag(H)) d = -g on the free parameters (0 elsewhere)."""
        h = normal[free][:, free]
        diag = h.diagonal().clamp_min(1e-9)
        system = h + torch.diag(damping * diag + 1e-9)
        step = torch.zeros_like(grad)
        try:
            solved = torch.linalg.solve(system.double(), -grad[free].double()).float()
        except RuntimeError:  # singular even with damping: a gradient step instead
            solved = -grad[free] / diag
        step[free] = solved
        return step
