"""Head pose and the pinhole camera, differentiable and batched (torch), plus a PnP initialisation.

Camera space is OpenCV's: camera at the origin, +z forward into the scene, +x to the image right,
+y to the image bottom. A camera-space point (x, y, z) lands at pixel coordinates
    u = f * x / z + c_x,   v = f * y / z + c_y
(f in pixels, pixel i's centre at i + 0.5). The principal point (c_x, c_y) defaults to the image
centre (W / 2, H / 2); a crop of a photo keeps the photo's principal point, which then lies
wherever the crop puts the photo's centre (`mfface.images.Affine2D`).

A pose maps model coordinates (mm; +x the face's left, +y up, +z out of the face) to camera space:
    X_cam = R @ X_model + t,   R = R0 @ R_head(yaw, pitch, roll),   R0 = diag(1, -1, -1)
R0 is the frontal pose (the face looks at the camera, upright); t = (0, 0, d) puts it d mm away.
R_head = Ry(yaw) @ Rx(pitch) @ Rz(roll), rotations about the *model's* axes (intrinsic y-x'-z'',
scipy's Rotation.from_euler("YXZ", [yaw, pitch, roll])), angles in radians:
- yaw about +y (up): positive turns the nose towards the subject's left = the image right;
- pitch about +x (the face's left): positive tips the nose down (a nod);
- roll about +z (out of the face): positive raises the subject's left side = image-right side,
  i.e. the head turns counter-clockwise in the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

R0 = np.diag([1.0, -1.0, -1.0])


def _check_last(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if t.shape[-len(shape):] != shape:
        raise ValueError(f"{name} must end in shape {shape}, got {tuple(t.shape)}.")


def head_rotation(euler: torch.Tensor) -> torch.Tensor:
    """R_head = Ry(yaw) @ Rx(pitch) @ Rz(roll) for euler (B, 3) = (yaw, pitch, roll) rad -> (B, 3, 3)."""
    _check_last("euler", euler, (3,))
    a, b, c = euler.unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    rows = [
        [ca * cc + sa * sb * sc, -ca * sc + sa * sb * cc, sa * cb],
        [cb * sc, cb * cc, -sb],
        [-sa * cc + ca * sb * sc, sa * sc + ca * sb * cc, ca * cb],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def rotation_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Model->camera rotation R = R0 @ R_head(euler) for euler (B, 3) rad -> (B, 3, 3)."""
    r0 = torch.as_tensor(R0, dtype=euler.dtype, device=euler.device)
    return r0 @ head_rotation(euler)


def euler_from_matrix(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of `rotation_matrix`: (B, 3, 3) model->camera rotations -> (B, 3) (yaw, pitch, roll).

    Pitch is returned in [-pi/2, pi/2]; at pitch = +-pi/2 (gimbal lock) roll is set from the rest.
    """
    _check_last("rotation", rotation, (3, 3))
    r0 = torch.as_tensor(R0, dtype=rotation.dtype, device=rotation.device)
    return euler_from_head(r0 @ rotation)  # R0 is its own inverse


def euler_from_head(h: torch.Tensor) -> torch.Tensor:
    """Inverse of `head_rotation`: (B, 3, 3) head rotations -> (B, 3) (yaw, pitch, roll) rad."""
    _check_last("rotation", h, (3, 3))
    pitch = torch.asin((-h[..., 1, 2]).clamp(-1.0, 1.0))
    yaw = torch.atan2(h[..., 0, 2], h[..., 2, 2])
    roll = torch.atan2(h[..., 1, 0], h[..., 1, 1])
    return torch.stack([yaw, pitch, roll], -1)


def to_camera(vertices: torch.Tensor, euler: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Model-space vertices (B, V, 3) mm -> camera space (B, V, 3) mm: R @ X + t per batch item.

    euler (B, 3) rad, translation (B, 3) mm (camera space).
    """
    _check_last("vertices", vertices, (3,))
    _check_last("translation", translation, (3,))
    rot = rotation_matrix(euler)
    return vertices @ rot.transpose(-1, -2) + translation[..., None, :]


def principal_point(principal: torch.Tensor | None, width: int, height: int, batch: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2) principal points in px: `principal` ((2,), (1, 2) or (B, 2)) or the image centre."""
    if principal is None:
        return torch.tensor([[width / 2.0, height / 2.0]], device=device).expand(batch, 2)
    principal = torch.as_tensor(principal, dtype=torch.float32, device=device).reshape(-1, 2)
    if principal.shape[0] not in (1, batch):
        raise ValueError(f"principal must be (2,), (1, 2) or ({batch}, 2) px, got {tuple(principal.shape)}.")
    return principal.expand(batch, 2)


def project(points: torch.Tensor, focal: torch.Tensor, width: int, height: int,
            principal: torch.Tensor | None = None) -> torch.Tensor:
    """Camera-space points (B, N, 3) mm -> pixel coordinates (B, N, 2): u = f x/z + c_x, v = f y/z + c_y.

    focal (B,) in pixels; principal (B, 2) px, None = the image centre (W/2, H/2). Points must be
    in front of the camera (z > 0); z is clamped at 1e-6 mm.
    """
    _check_last("points", points, (3,))
    z = points[..., 2:3].clamp_min(1e-6)
    centre = principal_point(principal, width, height, points.shape[0], points.device).to(points.dtype)
    return focal.reshape(-1, 1, 1) * points[..., :2] / z + centre[:, None, :]


@dataclass
class PnPResult:
    """A pose and focal from `solve_pnp`: euler (3,) rad, translation (3,) mm, focal px, rms px."""
    euler: np.ndarray
    translation: np.ndarray
    focal: float
    rms: float


def _pnp_fixed_focal(model_points: np.ndarray, image_points: np.ndarray, focal: float,
                     principal: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """EPnP, then Levenberg-Marquardt refinement, for one focal; returns (R, t, rms px)."""
    import cv2

    k = np.array([[focal, 0.0, principal[0]], [0.0, focal, principal[1]], [0.0, 0.0, 1.0]])
    ok, rvec, tvec = cv2.solvePnP(model_points, image_points, k, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return np.eye(3), np.zeros(3), np.inf
    ok, rvec, tvec = cv2.solvePnP(model_points, image_points, k, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        return np.eye(3), np.zeros(3), np.inf
    projected, _ = cv2.projectPoints(model_points, rvec, tvec, k, None)
    rms = float(np.sqrt(np.mean(np.sum((projected[:, 0] - image_points) ** 2, axis=1))))
    return cv2.Rodrigues(rvec)[0], tvec[:, 0], rms


def solve_pnp(model_points: np.ndarray, image_points: np.ndarray, width: int, height: int,
              focal: float | None = None, focal_range: tuple[float, float] = (0.3, 8.0),
              principal: tuple[float, float] | None = None) -> PnPResult:
    """Pose (and focal when `focal` is None) that best projects model points onto image points.

    model_points (N, 3) mm in the model frame, image_points (N, 2) px, N >= 6; `principal` (c_x,
    c_y) px, None = the image centre. With a known focal:
    EPnP + Levenberg-Marquardt. Without: a 1-D search of the RMS reprojection error over
    focal = s * max(width, height), s in `focal_range` (a log grid, then bounded Brent refinement).
    The focal is only well determined when the points have depth relief relative to their
    distance (a face at most ~10 face-widths away); a flat or far target gives a flat minimum.
    """
    from scipy.optimize import minimize_scalar

    obj = np.ascontiguousarray(model_points, dtype=np.float64)
    img = np.ascontiguousarray(image_points, dtype=np.float64)
    if obj.ndim != 2 or obj.shape[1] != 3 or img.shape != (obj.shape[0], 2):
        raise ValueError(f"solve_pnp needs (N, 3) model and (N, 2) image points, got {obj.shape} "
                         f"and {img.shape}.")
    if obj.shape[0] < 6 or not (np.isfinite(obj).all() and np.isfinite(img).all()):
        raise ValueError("solve_pnp needs at least 6 finite point pairs.")
    centre = (width / 2.0, height / 2.0) if principal is None else (float(principal[0]), float(principal[1]))
    if focal is None:
        size = float(max(width, height))
        grid = np.geomspace(*focal_range, 24)
        errors = [_pnp_fixed_focal(obj, img, s * size, centre)[2] for s in grid]
        best = int(np.argmin(errors))
        lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
        found = minimize_scalar(lambda ls: _pnp_fixed_focal(obj, img, np.exp(ls) * size, centre)[2],
                                bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
        focal = float(np.exp(found.x) * size)
    rot, t, rms = _pnp_fixed_focal(obj, img, float(focal), centre)
    if not np.isfinite(rms):
        raise ValueError("solve_pnp found no pose with the face in front of the camera; check that "
                         "the landmarks and model points correspond.")
    euler = euler_from_matrix(torch.from_numpy(rot[None]))[0].numpy()
    return PnPResult(euler=euler, translation=t.astype(np.float64), focal=float(focal), rms=rms)
