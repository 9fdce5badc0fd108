"""The one in-memory morphable-model type that fitting, the network and export all use.

Conventions
- Geometry is in millimetres, in the model's own frame: +x is the face's left (the viewer's right
  when the face looks at the camera), +y up, +z out of the face (towards a frontal camera).
- Coefficients are in units of standard deviation: `identity` and `expression` are ~N(0, 1), so a
  shape is `mean + sum_k coeff_k * std_k * basis_k`.
- Vertices are split at UV seams, so every vertex has exactly one UV; UVs are in [0, 1] with v = 0 at
  the *bottom* of the texture image (OBJ / Mitsuba convention).
- Landmark correspondences are vertex indices into this model's vertices.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

FORMAT_VERSION = 1


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


@dataclass
class MorphableModel:
    """A linear 3D face model with UVs, regions, landmark correspondences and optional albedo.

    Shapes (V vertices, F triangles, K_id / K_exp components):
      mean_shape (V, 3) float32 mm; identity_basis (K_id, V, 3); identity_std (K_id,);
      expression_basis (K_exp, V, 3); expression_std (K_exp,); triangles (F, 3) int32, counter-
      clockwise seen from outside; uvs (V, 2) float32.
    `texture_size` is the (height, width) of the textures laid out by `uvs`.
    `landmarks` maps a scheme name ('ibug68', 'mediapipe478') to vertex indices; a -1 marks a
    landmark the model does not cover. `regions` maps region names ('face', 'eyes', 'mouth', 'fit',
    'skin') to sorted vertex-index arrays. `symmetry` (V,) gives each vertex's mirror partner.
    `diffuse_albedo` / `specular_albedo` are None when the model has no statistical albedo (ICT).
    `expression_range` bounds each expression coefficient: (0, 1) for blendshape rigs whose
    coefficients are blend weights (ICT's ARKit shapes), None for PCA expression models (Basel).
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
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    symmetry: np.ndarray | None = None
    expression_range: tuple[float, float] | None = None
    diffuse_albedo: AlbedoModel | None = None
    specular_albedo: AlbedoModel | None = None
    provenance: str = ""
    license: str = ""
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
        never applied to another (or to another version of the same one). Computed once."""
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
        flat = buf["mean"].expand(batch, -1)
        if identity is not None:
            k = identity.shape[1]
            flat = flat + identity @ buf["identity"][:, :k].T
        if expression is not None:
            k = expression.shape[1]
            flat = flat + expression @ buf["expression"][:, :k].T
        return flat.reshape(batch, -1, 3)

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
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid morphable model {self.name!r}: {message}")
