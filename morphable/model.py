"""The one in-memory morphable-model type that fitting, the network and export all use.

Conventions
- Geometry is in millimetres, in the model's own frame: +x is the face's left (the viewer's right
  when the face looks at the camera), +y up, +z out of the face (towards a frontal camera).
- Coefficients are in units of standard deviation: `identity` and `expression` are ~N(0, 1), so a
  shape is `mean + sum_k coeff_k * std_k * basis_k`.
- Vertices are split at UV seams, so every vertex has exactly one UV; UVs are in [0, 1] with v = 0 at
  the *bottom* of the texture image (OBJ / Mitsuba convention).
- Landmark correspondences are vertex indices into this model's vertices.
- Parts (`ModelPart`: eyeballs, teeth, the mouth interior) are separate meshes beside the face,
  driven by the same coefficients; they are rendered but never fitted, and the face's arrays,
  vertex order and `fingerprint()` do not include them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

FORMAT_VERSION = 2  # 2 added `parts`; version-1 files (no parts) are still read
PART_MATERIALS = ("eyeball", "teeth", "mouth")
PUPIL_COORD = 0.3  # eyeball vertices with a smaller material coordinate ring the pupil


@dataclass
class AlbedoModel:
    """A linear albedo model (diffuse or specular), per vertex (V, 3) or per texel (H, W, 3).

    Values are linear reflectance in [0, 1]; `basis` has shape (K, *mean.shape) and `std` (K,).
    """
    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    domain: Literal["vertex", "texel"] = "vertex"

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[0])


def _linear_shape(buffers: dict[str, torch.Tensor], batch: int, identity: torch.Tensor | None,
                  expression: torch.Tensor | None) -> torch.Tensor:
    """mean + identity @ B_id^T + expression @ B_exp^T as (B, V, 3) mm, from flat (3V,) / (3V, K)
    `buffers` ("mean", "identity", "expression"); None coefficients count as zeros and fewer
    columns than components use the leading ones."""
    flat = buffers["mean"].expand(batch, -1)
    if identity is not None:
        flat = flat + identity @ buffers["identity"][:, :identity.shape[1]].T
    if expression is not None:
        flat = flat + expression @ buffers["expression"][:, :expression.shape[1]].T
    return flat.reshape(batch, -1, 3)


@dataclass
class ModelPart:
    """A mesh beside the face surface (an eyeball, the teeth, the mouth interior), driven by the
    face's own identity and expression coefficients and rendered with its own material.

    Shapes (Vp vertices, Fp triangles): mean (Vp, 3) mm; identity_basis (K_id, Vp, 3) and
    expression_basis (K_exp, Vp, 3), scaled by the face's `identity_std` / `expression_std` (same
    coefficients as the face, same K); triangles (Fp, 3) int32 into this part's vertices,
    counter-clockwise seen from outside.
    `material` is one of PART_MATERIALS; `material_coord` (Vp,) is the coordinate its material is
    looked up by: for 'eyeball', the distance from the eye's optical axis in units of the limbus
    (visible iris) radius, measured in the rest pose (0 the pupil centre, 1 the limbus, > 1 the
    sclera, growing towards the back of the eye); unused (zeros) by 'teeth' and 'mouth'.
    Gaze (eyeballs): when `gaze` (2, K_exp) is set, after the linear shape the part turns rigidly
    about its pivot, `pivot_mean` (3,) mm + identity @ (std-scaled) `pivot_identity` (K_id, 3), by
    yaw = expression @ (std-scaled) gaze[0] rad about model +y (positive: the eye's front turns
    towards +x, the face's left) and pitch = expression @ (std-scaled) gaze[1] rad (positive: the
    front turns up, towards +y); R = R_yaw @ R_pitch (`gaze_rotation`), v -> pivot + R (v - pivot).
    """
    name: str
    material: str
    mean: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    triangles: np.ndarray
    material_coord: np.ndarray
    gaze: np.ndarray | None = None
    pivot_mean: np.ndarray | None = None
    pivot_identity: np.ndarray | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    def problems(self, n_identity: int, n_expression: int) -> list[str]:
        """What is inconsistent in this part for a face of n_identity / n_expression components."""
        v = self.n_vertices
        checks = [
            (re.fullmatch(r"[a-z][a-z0-9_]*", self.name) is not None,
             "name must be lower-case letters, digits and '_'"),
            (self.material in PART_MATERIALS, f"material must be one of {PART_MATERIALS}"),
            (self.mean.ndim == 2 and self.mean.shape[1] == 3, "mean must be (Vp, 3)"),
            (self.identity_basis.shape == (n_identity, v, 3), "identity_basis must be (K_id, Vp, 3)"),
            (self.expression_basis.shape == (n_expression, v, 3), "expression_basis must be (K_exp, Vp, 3)"),
            (self.triangles.ndim == 2 and self.triangles.shape[1] == 3 and self.triangles.shape[0] > 0,
             "triangles must be a non-empty (Fp, 3) array"),
            (self.triangles.size == 0 or (self.triangles.min() >= 0 and self.triangles.max() < v),
             "triangle indices out of range"),
            (self.material_coord.shape == (v,), "material_coord must be (Vp,)"),
        ]
        rotating = [self.gaze is not None, self.pivot_mean is not None, self.pivot_identity is not None]
        checks.append((all(rotating) or not any(rotating), "gaze, pivot_mean and pivot_identity go together"))
        if all(rotating):
            checks += [(self.gaze.shape == (2, n_expression), "gaze must be (2, K_exp)"),
                       (self.pivot_mean.shape == (3,), "pivot_mean must be (3,)"),
                       (self.pivot_identity.shape == (n_identity, 3), "pivot_identity must be (K_id, 3)")]
        return [f"part {self.name!r}: {message}" for ok, message in checks if not ok]

    def leading_identity(self, n_identity: int) -> "ModelPart":
        """This part with only its first `n_identity` identity modes (for a model cut the same way)."""
        return dataclasses.replace(
            self, identity_basis=self.identity_basis[:n_identity].copy(),
            pivot_identity=None if self.pivot_identity is None else self.pivot_identity[:n_identity].copy())


def gaze_rotation(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B, 3, 3) R = R_y(yaw) @ R_x(-pitch): yaw (B,) rad turns +z towards +x,
    pitch (B,) rad turns +z towards +y (the `ModelPart.gaze` convention)."""
    cy, sy, cp, sp = torch.cos(yaw), torch.sin(yaw), torch.cos(pitch), torch.sin(pitch)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    r_yaw = torch.stack([torch.stack([cy, zero, sy], -1), torch.stack([zero, one, zero], -1),
                         torch.stack([-sy, zero, cy], -1)], -2)
    r_pitch = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cp, sp], -1),
                           torch.stack([zero, -sp, cp], -1)], -2)
    return r_yaw @ r_pitch


@dataclass
class MorphableModel:
    """A linear 3D face model with UVs, regions, landmark correspondences and optional albedo.

    Shapes (V vertices, F triangles, K_id / K_exp components):
      mean_shape (V, 3) float32 mm; identity_basis (K_id, V, 3); identity_std (K_id,);
      expression_basis (K_exp, V, 3); expression_std (K_exp,); triangles (F, 3) int32, counter-
      clockwise seen from outside; uvs (V, 2) float32.
    `texture_size` is the (height, width) of the textures laid out by `uvs`.
    `landmarks` maps a scheme name ('ibug68', 'mediapipe478') to vertex indices; a -1 marks a
    landmark the model does not cover; `landmark_reliability` maps a scheme to a weight per
    landmark (float, median 1 over the inner points): how reliably the detector places it on this
    model, measured by `mfface.morphable.landmark_calibration` (absent: all 1). `regions` maps region names ('face', 'eyes', 'mouth', 'fit',
    'skin') to sorted vertex-index arrays. `symmetry` (V,) gives each vertex's mirror partner.
    `diffuse_albedo` / `specular_albedo` are None when the model has no statistical albedo (ICT).
    `expression_range` bounds each expression coefficient: (0, 1) for blendshape rigs whose
    coefficients are blend weights (ICT's ARKit shapes), None for PCA expression models (Basel).
    `parts` are the meshes rendered beside the face (eyeballs, teeth, mouth interior; empty for
    models that have none): `part_vertices` evaluates them, in `parts` order, concatenated.
    """
    name: str
    mean_shape: np.ndarray
    identity_basis: np.ndarray
    identity_std: np.ndarray
    expression_basis: np.ndarray
    expression_std: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    texture_size: tuple[int, int] = (512, 512)
    expression_names: list[str] = field(default_factory=list)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    landmark_reliability: dict[str, np.ndarray] = field(default_factory=dict)
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    symmetry: np.ndarray | None = None
    expression_range: tuple[float, float] | None = None
    diffuse_albedo: AlbedoModel | None = None
    specular_albedo: AlbedoModel | None = None
    provenance: str = ""
    license: str = ""
    parts: list[ModelPart] = field(default_factory=list)
    # Derived from the arrays above, so not constructor arguments: `dataclasses.replace` gives a
    # model with other arrays a fresh cache instead of the old model's buffers and fingerprint.
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False, init=False)
    _fingerprint: str | None = field(default=None, repr=False, compare=False, init=False)

    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def has_albedo(self) -> bool:
        return self.diffuse_albedo is not None

    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 digits) of the geometry that fitted parameters refer to: mean shape,
        bases, standard deviations, triangles, UVs and albedo arrays, as float32/int32 bytes.

        Checkpoints and network weights record it, so that parameters fitted with one model are
        never applied to another (or to another version of the same one). Computed once.
        `parts` are not included: the fit never sees them (the photometric loss counts skin
        pixels only, and parts get no gradients), so a state fitted before a model gained or
        changed its parts means exactly the same face with them (docs/models.md, "Parts")."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            arrays = [self.mean_shape, self.identity_basis, self.identity_std, self.expression_basis,
                      self.expression_std, self.uvs]
            for albedo in (self.diffuse_albedo, self.specular_albedo):
                if albedo is not None:
                    arrays += [albedo.mean, albedo.basis, albedo.std]
            for array in arrays:
                digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
                digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(self.triangles, dtype=np.int32).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def torch_buffers(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Mean and std-scaled bases as float32 tensors on `device`, made once per device.

        Returns {'mean': (V*3,), 'identity': (V*3, K_id), 'expression': (V*3, K_exp)}: flattened so
        that a batch of shapes is one matrix product.
        """
        key = str(torch.device(device))
        if key not in self._torch_cache:
            def basis(b: np.ndarray, s: np.ndarray) -> torch.Tensor:
                scaled = b.reshape(b.shape[0], 3 * self.n_vertices).astype(np.float32) * s.astype(np.float32)[:, None]
                return torch.from_numpy(np.ascontiguousarray(scaled.T)).to(device)
            self._torch_cache[key] = {
                "mean": torch.from_numpy(self.mean_shape.reshape(-1).astype(np.float32)).to(device),
                "identity": basis(self.identity_basis, self.identity_std),
                "expression": basis(self.expression_basis, self.expression_std),
            }
        return self._torch_cache[key]

    def vertices(self, identity: torch.Tensor | None = None,
                 expression: torch.Tensor | None = None) -> torch.Tensor:
        """Batched, differentiable vertex positions (B, V, 3) in mm.

        identity (B, K_id) and expression (B, K_exp) are in std units; either may be None (zeros)
        or have fewer columns than the model has components (the leading ones are used).
        """
        ref = identity if identity is not None else expression
        device = ref.device if ref is not None else torch.device("cpu")
        buf = self.torch_buffers(device)
        batch = ref.shape[0] if ref is not None else 1
        return _linear_shape(buf, batch, identity, expression)

    @property
    def n_part_vertices(self) -> int:
        """Total vertex count P of all parts (0 when the model has none)."""
        return sum(part.n_vertices for part in self.parts)

    def part_slices(self) -> dict[str, slice]:
        """Each part's rows in `part_vertices`' (B, P, 3) output, by part name."""
        slices, start = {}, 0
        for part in self.parts:
            slices[part.name] = slice(start, start + part.n_vertices)
            start += part.n_vertices
        return slices

    def part_torch_buffers(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The parts' means and std-scaled bases, concatenated in `parts` order, as float32 tensors
        on `device`, made once per device: {'mean': (P*3,), 'identity': (P*3, K_id),
        'expression': (P*3, K_exp)}, plus for rotating parts 'gaze.<name>' (2, K_exp) and
        'pivot.<name>' (1 + K_id, 3) (mean, then std-scaled identity rows)."""
        key = f"parts:{torch.device(device)}"
        if key not in self._torch_cache:
            count = self.n_part_vertices

            def stacked(get, scale: np.ndarray) -> torch.Tensor:
                if not self.parts:
                    return torch.zeros(0, len(scale), device=device)
                flat = np.concatenate([get(p).reshape(len(scale), -1) for p in self.parts], axis=1)
                flat = flat.astype(np.float32) * scale.astype(np.float32)[:, None]
                return torch.from_numpy(np.ascontiguousarray(flat.T)).to(device)

            means = [p.mean.reshape(-1) for p in self.parts] or [np.zeros(0)]
            buffers = {
                "mean": torch.from_numpy(np.concatenate(means).astype(np.float32)).to(device),
                "identity": stacked(lambda p: p.identity_basis, self.identity_std),
                "expression": stacked(lambda p: p.expression_basis, self.expression_std),
            }
            assert buffers["mean"].numel() == 3 * count
            for part in self.parts:
                if part.gaze is not None:
                    gaze = part.gaze.astype(np.float32) * self.expression_std.astype(np.float32)[None]
                    pivot = np.concatenate([part.pivot_mean[None], part.pivot_identity.astype(np.float32)
                                            * self.identity_std.astype(np.float32)[:, None]])
                    buffers[f"gaze.{part.name}"] = torch.from_numpy(gaze).to(device)
                    buffers[f"pivot.{part.name}"] = torch.from_numpy(pivot.astype(np.float32)).to(device)
            self._torch_cache[key] = buffers
        return self._torch_cache[key]

    def part_vertices(self, identity: torch.Tensor | None = None,
                      expression: torch.Tensor | None = None) -> torch.Tensor:
        """Batched part vertices (B, P, 3) in mm, model space, all parts concatenated in `parts`
        order (`part_slices`); (B, 0, 3) for a model without parts. Same arguments and
        conventions as `vertices`: the same coefficients drive the face and its parts; eyeballs
        (parts with `gaze`) then turn about their pivots by the eye-look coefficients.
        Differentiable, although the renderer uses them without gradients."""
        ref = identity if identity is not None else expression
        device = ref.device if ref is not None else torch.device("cpu")
        buf = self.part_torch_buffers(device)
        batch = ref.shape[0] if ref is not None else 1
        out = _linear_shape(buf, batch, identity, expression)
        turned = []
        for part, rows in zip(self.parts, self.part_slices().values()):
            piece = out[:, rows]
            if part.gaze is not None:
                pivot_rows = buf[f"pivot.{part.name}"]
                pivot = pivot_rows[0].expand(batch, 3)
                if identity is not None:
                    pivot = pivot + identity @ pivot_rows[1:1 + identity.shape[1]]
                if expression is not None:
                    angles = expression @ buf[f"gaze.{part.name}"][:, :expression.shape[1]].T  # (B, 2)
                    rotation = gaze_rotation(angles[:, 0], angles[:, 1])
                    piece = (piece - pivot[:, None]) @ rotation.transpose(-1, -2) + pivot[:, None]
            turned.append(piece)
        return torch.cat(turned, dim=1) if turned else out

    def pupil_centres(self, identity: torch.Tensor | None = None,
                      expression: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Model-space pupil centres (B, 3) mm of the eyeball parts, by part name: the mean of each
        eyeball's vertices with material coordinate < PUPIL_COORD (the ring around the pupil).
        This is the point MediaPipe's iris-centre landmarks mark (468: the subject's right eye,
        473: the left; ICT's `eye_right` / `eye_left`). Differentiable in the coefficients, gaze
        included; empty for a model without eyeballs."""
        eyes = [(part, rows) for part, rows in zip(self.parts, self.part_slices().values())
                if part.material == "eyeball"]
        if not eyes:
            return {}
        vertices = self.part_vertices(identity, expression)
        return {part.name: vertices[:, rows][:, torch.from_numpy(part.material_coord < PUPIL_COORD)].mean(1)
                for part, rows in eyes}

    def clamp_expression_(self, expression: torch.Tensor) -> torch.Tensor:
        """Clamp expression coefficients in place to `expression_range` (a no-op when None).

        Optimisers call it after each step: a projected gradient step keeps blend weights valid.
        """
        if self.expression_range is not None:
            with torch.no_grad():
                expression.clamp_(*self.expression_range)
        return expression

    def validate(self) -> None:
        """Raise ValueError when arrays disagree in shape or indices fall outside the mesh."""
        v = self.n_vertices
        checks = [
            (self.mean_shape.shape == (v, 3), "mean_shape must be (V, 3)"),
            (self.identity_basis.shape[1:] == (v, 3), "identity_basis must be (K, V, 3)"),
            (self.identity_std.shape == (self.n_identity,), "identity_std must be (K_id,)"),
            (self.expression_basis.shape[1:] == (v, 3), "expression_basis must be (K, V, 3)"),
            (self.expression_std.shape == (self.n_expression,), "expression_std must be (K_exp,)"),
            (self.triangles.ndim == 2 and self.triangles.shape[1] == 3, "triangles must be (F, 3)"),
            (self.triangles.size == 0 or (self.triangles.min() >= 0 and self.triangles.max() < v),
             "triangle indices out of range"),
            (self.uvs.shape == (v, 2), "uvs must be (V, 2)"),
            (self.symmetry is None or self.symmetry.shape == (v,), "symmetry must be (V,)"),
        ]
        for name, idx in {**self.landmarks, **self.regions}.items():
            checks.append((idx.size == 0 or idx.max() < v, f"indices of {name!r} out of range"))
        for name, weights in self.landmark_reliability.items():
            checks.append((name in self.landmarks and weights.shape == self.landmarks[name].shape
                           and bool(np.all(weights >= 0)),
                           f"landmark_reliability {name!r} must be >= 0, one per landmark of the scheme"))
        names = [part.name for part in self.parts]
        checks.append((len(set(names)) == len(names), "part names must be unique"))
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid morphable model {self.name!r}: {message}")
        for part in self.parts:
            for message in part.problems(self.n_identity, self.n_expression):
                raise ValueError(f"invalid morphable model {self.name!r}: {message}")
