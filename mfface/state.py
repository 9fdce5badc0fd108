"""What a fit or a network estimates about a face, as torch tensors, and its flat vector layout.

`FaceState` holds one image or several photos of one person. Batch conventions: B images;
quantities shared across the photos of one person (identity and the reflectance maps under
`--shared-identity`) have batch 1 and broadcast. Units: identity/expression in std units, euler in
radians (see `mfface.camera`), translation in mm (camera space), focal and principal point in
pixels of the cropped, resized image, SH coefficients (B, bands**2, 3) in the light frame,
textures (B or 1, H, W, C) linear with row 0 at the top.

`ParameterLayout` lays the non-texture quantities out as one vector, the form a network head
predicts. Checkpoints on disk: `mfface.checkpoints`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mfface.camera import euler_from_head, head_rotation
from mfface.morphable.model import MorphableModel


@dataclass
class FaceState:
    """Everything a fit estimates, as torch tensors (see the module docstring for shapes)."""
    identity: torch.Tensor      # (B or 1, K_id)
    expression: torch.Tensor    # (B, K_exp)
    euler: torch.Tensor         # (B, 3) rad
    translation: torch.Tensor   # (B, 3) mm
    focal: torch.Tensor         # (B,) px
    sh: torch.Tensor            # (B, n, 3)
    diffuse: torch.Tensor       # (B or 1, Ht, Wt, 3)
    specular: torch.Tensor      # (B or 1, Ht, Wt, 3)
    roughness: torch.Tensor     # (B or 1, Ht, Wt, 1)
    albedo: torch.Tensor | None = None  # (B or 1, K_alb) statistical diffuse coefficients, if any
    principal: torch.Tensor | None = None  # (B, 2) px principal point; None = the image centre

    @property
    def batch(self) -> int:
        return int(self.expression.shape[0])

    def finite(self) -> bool:
        """True when no tensor holds NaN or infinity (a diverged fit does)."""
        return all(bool(torch.isfinite(getattr(self, f.name)).all()) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None)

    def detached(self) -> "FaceState":
        """A copy with every tensor detached and cloned (safe to keep across optimisation steps)."""
        return dataclasses.replace(self, **{f.name: (None if getattr(self, f.name) is None
                                                      else getattr(self, f.name).detach().clone())
                                            for f in dataclasses.fields(self)})

    def item(self, b: int) -> "FaceState":
        """The state of image `b` alone (batch 1), shared quantities included."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return t[b:b + 1] if t.shape[0] > 1 else t
        return FaceState(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str) -> "FaceState":
        return FaceState(**{f.name: (None if getattr(self, f.name) is None
                                     else getattr(self, f.name).to(device))
                            for f in dataclasses.fields(self)})


def rotation_6d_to_matrix(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) rotation: the first two columns a1 = r6[:3], a2 = r6[3:],
    Gram-Schmidt orthonormalised, third column their cross product (Zhou et al. 2019, the
    continuous representation networks regress)."""
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-1)


def matrix_to_rotation_6d(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, the inverse of `rotation_6d_to_matrix`."""
    return torch.cat([rotation[..., :, 0], rotation[..., :, 1]], dim=-1)


@dataclass(frozen=True)
class ParameterLayout:
    """The flat parameter vector of a `FaceState`'s non-texture quantities, in this order:

        identity      n_identity      std units
        expression    n_expression    std units (blend weights in [0, 1] for ICT)
        rotation      6               head rotation R_head in the 6D representation (first two
                                      columns); the frontal pose R_head = I is (1,0,0, 0,1,0), and
                                      the model->camera rotation is R0 @ R_head (`mfface.camera`)
        translation   3               camera space, mm
        log_focal     1               natural log of the focal length in px of the crop
        sh            sh_bands^2 * 3  SH coefficients, coefficient-major ((n, 3) flattened)
        albedo        n_albedo        statistical albedo coefficients (0 for models without one)

    A network head predicts this vector; `to_state` turns it into a FaceState (textures and the
    principal point are given separately) and `to_vector` the other way (euler -> 6D)."""
    n_identity: int
    n_expression: int
    sh_bands: int
    n_albedo: int = 0

    @classmethod
    def for_model(cls, model: MorphableModel, sh_bands: int) -> "ParameterLayout":
        n_albedo = model.diffuse_albedo.n_components if model.diffuse_albedo is not None else 0
        return cls(model.n_identity, model.n_expression, sh_bands, n_albedo)

    def sizes(self) -> dict[str, int]:
        """{field: length} in vector order."""
        return {"identity": self.n_identity, "expression": self.n_expression, "rotation": 6,
                "translation": 3, "log_focal": 1, "sh": 3 * self.sh_bands ** 2, "albedo": self.n_albedo}

    def slices(self) -> dict[str, slice]:
        """{field: slice of the vector}."""
        out, start = {}, 0
        for name, length in self.sizes().items():
            out[name] = slice(start, start + length)
            start += length
        return out

    @property
    def size(self) -> int:
        return sum(self.sizes().values())

    def to_vector(self, state: FaceState) -> torch.Tensor:
        """(B, size) vector of `state` (shared identity and albedo broadcast over the batch)."""
        b = state.batch
        parts = {
            "identity": state.identity.expand(b, -1)[:, :self.n_identity],
            "expression": state.expression,
            "rotation": matrix_to_rotation_6d(head_rotation(state.euler)),
            "translation": state.translation,
            "log_focal": state.focal.log()[:, None],
            "sh": state.sh.reshape(b, -1),
            "albedo": (state.albedo.expand(b, -1) if state.albedo is not None
                       else state.expression.new_zeros(b, 0)),
        }
        for name, length in self.sizes().items():
            if parts[name].shape[1] != length:
                raise ValueError(f"state's {name} has {parts[name].shape[1]} values; the layout "
                                 f"expects {length}.")
        return torch.cat([parts[name] for name in self.sizes()], dim=1)

    def to_state(self, vector: torch.Tensor, diffuse: torch.Tensor, specular: torch.Tensor,
                 roughness: torch.Tensor, principal: torch.Tensor | None = None) -> FaceState:
        """The FaceState of a (B, size) vector with the given maps ((B or 1, H, W, C)) and
        principal point ((B, 2) px, None = the image centre); differentiable in `vector`."""
        if vector.dim() != 2 or vector.shape[1] != self.size:
            raise ValueError(f"vector must be (B, {self.size}), got {tuple(vector.shape)}.")
        part = {name: vector[:, s] for name, s in self.slices().items()}
        return FaceState(identity=part["identity"], expression=part["expression"],
                         euler=euler_from_head(rotation_6d_to_matrix(part["rotation"])),
                         translation=part["translation"], focal=part["log_focal"][:, 0].exp(),
                         sh=part["sh"].reshape(vector.shape[0], -1, 3),
                         diffuse=diffuse, specular=specular, roughness=roughness,
                         albedo=part["albedo"] if self.n_albedo else None, principal=principal)
