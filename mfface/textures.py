"""Texture maps as torch tensors: lookup at UVs, resampling, and mirror points on the surface.

Textures are (B, H, W, C) tensors, row 0 at the top; UVs follow the model convention (v = 0 at the
texture bottom). Mirror points serve the symmetry prior (`mfface.objectives.symmetry_loss`), which
is measured on the surface, not by flipping the texture image: points drawn on random triangles
are compared with the same barycentric point on the mirror triangle (`MorphableModel.symmetry`
maps each vertex to its partner). This holds for any UV layout, also ones that are not
mirror-symmetric in u, which NextFace's horizontal flip assumes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mfface.morphable.model import MorphableModel


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of `texture` (B, H, W, C) at `uv` (N, 2) -> (B, N, C), differentiable."""
    grid = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], dim=-1)
    grid = grid.to(texture.dtype)[None, None].expand(texture.shape[0], -1, -1, -1)
    values = F.grid_sample(texture.permute(0, 3, 1, 2), grid, mode="bilinear",
                           padding_mode="border", align_corners=False)
    return values[:, :, 0].permute(0, 2, 1)


class MirrorSampler:
    """Draws surface points and their mirror images as UV pairs, for the symmetry prior.

    triangles (F, 3), uvs (V, 2) and symmetry (V,) partner indices from the model. Triangles
    whose mirror is degenerate in UV space (a partner on another UV island) are still valid: the
    point and its mirror are both on the face surface.
    """

    def __init__(self, triangles: np.ndarray, uvs: np.ndarray, symmetry: np.ndarray,
                 device: torch.device | str = "cpu") -> None:
        tri = torch.as_tensor(np.asarray(triangles, dtype=np.int64), device=device)
        uv = torch.as_tensor(np.asarray(uvs, dtype=np.float32), device=device)
        sym = torch.as_tensor(np.asarray(symmetry, dtype=np.int64), device=device)
        self.corner_uv = uv[tri]             # (F, 3, 2)
        self.mirror_uv = uv[sym[tri]]        # (F, 3, 2)
        edges = self.corner_uv[:, 1:] - self.corner_uv[:, :1]   # (F, 2, 2)
        area = torch.abs(torch.linalg.det(edges))
        self.weights = area / area.sum()     # uniform in texture space

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` random surface points: (uv (n, 2), mirror uv (n, 2))."""
        device = self.weights.device
        faces = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        r = torch.rand(n, 2, device=device, generator=generator)
        flip = r.sum(dim=1) > 1.0
        r[flip] = 1.0 - r[flip]
        bary = torch.stack([1.0 - r[:, 0] - r[:, 1], r[:, 0], r[:, 1]], dim=1)[:, :, None]
        return (bary * self.corner_uv[faces]).sum(1), (bary * self.mirror_uv[faces]).sum(1)


def resize_texture(texture: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample (B, H, W, C) to (B, size[0], size[1], C)."""
    if tuple(texture.shape[1:3]) == tuple(size):
        return texture
    chw = texture.permute(0, 3, 1, 2)
    return F.interpolate(chw, size=tuple(size), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


class StatisticalAlbedo:
    """A model's statistical diffuse albedo (Basel + AlbedoMM: per-vertex mean and basis) baked into
    `resolution`^2 UV textures: texture(c) = bake(mean + sum_k c_k std_k basis_k), c in std units,
    differentiable in c (`mfface.morphable.uv.texel_map`, a gather with barycentric weights)."""

    def __init__(self, model: "MorphableModel", resolution: int, device: torch.device | str = "cpu") -> None:
        from mfface.morphable.uv import texel_map

        albedo = model.diffuse_albedo
        if albedo is None:
            raise ValueError(f"model {model.name!r} has no statistical albedo.")
        self.map = texel_map(model.uvs, model.triangles, resolution)
        self.mean = torch.as_tensor(albedo.mean.reshape(1, -1), dtype=torch.float32, device=device)
        scaled = albedo.basis.reshape(albedo.n_components, -1) * albedo.std[:, None]
        self.basis = torch.as_tensor(scaled.T, dtype=torch.float32, device=device)  # (V*3, K)

    def texture(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, R, R, 3) linear diffuse textures of coefficients (B, K)."""
        if self.mean.device != coefficients.device:
            self.mean, self.basis = self.mean.to(coefficients.device), self.basis.to(coefficients.device)
        per_vertex = self.mean + coefficients @ self.basis.T
        return self.map.apply(per_vertex.reshape(coefficients.shape[0], -1, 3))
