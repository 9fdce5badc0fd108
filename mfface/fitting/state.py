"""The fitted quantities of one fit (one image, or several photos of one person) and checkpoints.

Batch conventions: B images; quantities shared across the photos of one person (identity and the
reflectance maps under `--shared-identity`) have batch 1 and broadcast. Units: identity/expression
in std units, euler in radians (see `mfface.camera`), translation in mm (camera space), focal and
principal point in pixels of the cropped, resized image the fit works on, SH coefficients (B, bands**2, 3) in the
light frame, textures (B or 1, H, W, C) linear with row 0 at the top.

Checkpoints are `.npz` files with `allow_pickle=False` (no pickle anywhere): one array per field
plus the stage that produced them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_path

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this fit."""


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


def save_checkpoint(path: str | Path, state: FaceState, stage: int) -> None:
    """Write `state` after `stage` (1, 2 or 3) atomically as an .npz file."""
    arrays = {f.name: getattr(state, f.name).detach().cpu().numpy()
              for f in dataclasses.fields(state) if getattr(state, f.name) is not None}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(CHECKPOINT_VERSION), stage=np.int64(stage), **arrays)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[FaceState, int]:
    """Read a checkpoint: (state, the stage it was written after)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint {path} does not exist.") from None
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"Checkpoint {path} is not a readable mfface checkpoint ({e}).") from None
    if int(arrays.pop("version", -1)) != CHECKPOINT_VERSION or "stage" not in arrays:
        raise CheckpointError(f"Checkpoint {path} is not an mfface checkpoint of version "
                              f"{CHECKPOINT_VERSION}; write it again with this version of mfface.")
    stage = int(arrays.pop("stage"))
    names = {f.name for f in dataclasses.fields(FaceState)}
    required = names - {"albedo", "principal"}
    if not required <= set(arrays) or not set(arrays) <= names:
        raise CheckpointError(f"Checkpoint {path} lacks fields {sorted(required - set(arrays))}.")
    tensors = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    return FaceState(**tensors), stage
