"""Reflectance where the photo cannot tell: texels no counted pixel sees are filled, not left to drift.

The photometric loss counts pixels inside the skin mask only (no brows, eyes, mouth, hair), and a
photo shows one side of the face; texels of the maps outside what those pixels see get no evidence,
only the priors' pull, and end up arbitrary (yellowish brows on real photos, issue 12). After stage 3
each texel's evidence is measured and the texels without it are filled:
1. from their mirror point on the surface (`MorphableModel.symmetry`) when that one was seen;
2. the rest by push-pull interpolation (weighted averages over a pyramid, coarse to fine) from the
   seen texels, which continues the surrounding skin smoothly.

A texel counts as seen when its surface point (interpolated from the posed vertices, `TexelMap`)
faces the camera and projects into the skin mask of some photo; self-occlusion (the cheek behind
the nose in a profile) is not checked.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from mfface.camera import project
from mfface.forward import ForwardModel
from mfface.fitting.targets import FitTargets
from mfface.morphable.model import MorphableModel
from mfface.morphable.uv import TexelMap, texel_map
from mfface.state import FaceState

def vertex_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (B, V, 3) of vertices (B, V, 3) and triangles (F, 3)."""
    a, b, c = (vertices[:, triangles[:, k]] for k in range(3))
    face = torch.cross(b - a, c - a, dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, triangles[:, k], face)
    return F.normalize(normals, dim=-1)


def seen_texels(forward: ForwardModel, state: FaceState, targets: FitTargets, texels: TexelMap) -> torch.Tensor:
    """(H, W) bool: texels whose surface point faces the camera and lands in the skin mask of at
    least one photo (the point and its normal interpolated from the camera-space vertices)."""
    model = forward.model
    triangles = torch.as_tensor(model.triangles, dtype=torch.long, device=forward.device)
    with torch.no_grad():
        camera = forward.vertices(state)                                   # (B, V, 3)
        points = texels.apply(camera)                                      # (B, H, W, 3)
        normals = texels.apply(vertex_normals(camera, triangles))
        facing = (normals * points).sum(-1) < 0                           # n . (p - camera) < 0
        batch, height, width = points.shape[:3]
        uv = project(points.reshape(batch, -1, 3), state.focal, targets.size, targets.size,
                     state.principal).reshape(batch, height, width, 2)
        col, row = uv[..., 0].floor().long(), uv[..., 1].floor().long()
        inside = (col >= 0) & (col < targets.size) & (row >= 0) & (row < targets.size)
        index = torch.arange(batch, device=camera.device)[:, None, None].expand_as(col)
        skin = targets.skin[index, row.clamp(0, targets.size - 1), col.clamp(0, targets.size - 1)] > 0.5
    return (facing & inside & skin).any(0)


def mirror_texels(model: MorphableModel, texels: TexelMap) -> np.ndarray:
    """(H, W, 2) integer (row, column) of each texel's mirror point on the surface."""
    uvs = np.asarray(model.uvs, dtype=np.float64)
    mirrored = np.einsum("hwk,hwkc->hwc", texels.weights, uvs[model.symmetry[texels.vertex_indices]])
    height, width = texels.mask.shape
    column = np.clip(np.floor(mirrored[..., 0] * width), 0, width - 1)
    row = np.clip(np.floor((1.0 - mirrored[..., 1]) * height), 0, height - 1)   # v = 0 at the bottom
    return np.stack([row, column], axis=-1).astype(np.int64)


def push_pull(texture: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """`texture` (H, W, C) with the texels where `known` (H, W) is False filled by push-pull: known
    values are averaged down a pyramid (weighted by how much of each coarse texel is known) and the
    coarse averages fill the unknown texels on the way back up."""
    if bool(known.all()) or not bool(known.any()):
        return texture
    weight = known.float()[None, None]
    value = (texture.permute(2, 0, 1)[None] * weight)
    levels = []
    while min(weight.shape[-2:]) > 1:
        levels.append((value, weight))
        value, weight = F.avg_pool2d(value, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)
    filled = value / weight.clamp_min(1e-8)
    for value, weight in reversed(levels):
        coarse = F.interpolate(filled, size=value.shape[-2:], mode="bilinear", align_corners=False)
        own = value / weight.clamp_min(1e-8)
        filled = torch.where(weight > 0, own * weight + coarse * (1 - weight), coarse)
    return torch.where(known[..., None], texture, filled[0].permute(1, 2, 0))


def fill_unseen(forward: ForwardModel, targets: FitTargets, state: FaceState,
                names: tuple[str, ...] = ("diffuse", "specular", "roughness")) -> tuple[FaceState, float]:
    """`state` with the unseen texels of its maps filled (module doc), and the seen fraction of the
    covered texels. Maps shared by several photos use what any of them saw."""
    model = forward.model
    texels = texel_map(model.uvs, model.triangles, tuple(state.diffuse.shape[1:3]))
    covered = torch.as_tensor(texels.mask, device=forward.device)
    seen = seen_texels(forward, state, targets, texels) & covered
    known = seen | ~covered            # outside the UV islands nothing is rendered: leave it
    from_mirror = torch.zeros_like(known)
    if model.symmetry is not None:
        mirror = torch.as_tensor(mirror_texels(model, texels), device=forward.device)
        from_mirror = seen[mirror[..., 0], mirror[..., 1]] & ~known
    updates = {}
    for name in names:
        maps = getattr(state, name).detach().clone()
        for b in range(maps.shape[0]):
            texture = maps[b]
            if bool(from_mirror.any()):
                texture = torch.where(from_mirror[..., None], texture[mirror[..., 0], mirror[..., 1]], texture)
            maps[b] = push_pull(texture, known | from_mirror)
        updates[name] = maps
    fraction = float((seen & covered).sum() / covered.sum().clamp_min(1))
    return dataclasses.replace(state, **updates), fraction
