"""Checkpoints: a `FaceState` after a fit's stage, on disk, checked before it is used again.

Checkpoints are `.npz` files with `allow_pickle=False` (no pickle anywhere): one array per field,
the stage that produced them, and `owner`, UTF-8 JSON saying what the state belongs to (the model's
name and fingerprint, and a digest of each photo's pixels, `CheckpointOwner`), so that a
checkpoint of another photo or model is refused instead of silently fitted on. Every loaded state
is checked (`check_state`) for the shapes, dtype and finite values the model needs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mfface.atomic import atomic_path
from mfface.morphable.model import MorphableModel
from mfface.state import FaceState

CHECKPOINT_VERSION = 2  # 2 adds `owner`; version-1 files are read (owner None) but not resumed
STAGES = (1, 2, 3)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this fit."""


@dataclass(frozen=True)
class CheckpointOwner:
    """What a checkpoint belongs to: the model (name and `MorphableModel.fingerprint()`) and the
    photos, in fit order, by `photo_digest` of their pixels."""
    model: str
    model_fingerprint: str
    photos: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "model_fingerprint": self.model_fingerprint,
                           "photos": list(self.photos)})

    @staticmethod
    def from_json(text: str) -> "CheckpointOwner":
        data = json.loads(text)
        return CheckpointOwner(str(data["model"]), str(data["model_fingerprint"]),
                               tuple(str(p) for p in data["photos"]))


class Checkpoint(NamedTuple):
    """A loaded checkpoint: the state, the stage (1-3) it was written after, its owner (None for
    version-1 files, which did not record one)."""
    state: FaceState
    stage: int
    owner: CheckpointOwner | None


def save_checkpoint(path: str | Path, state: FaceState, stage: int, owner: CheckpointOwner) -> None:
    """Write `state` after `stage` (1, 2 or 3) and its `owner` atomically as an .npz file."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage}.")
    arrays = {f.name: getattr(state, f.name).detach().cpu().numpy()
              for f in dataclasses.fields(state) if getattr(state, f.name) is not None}
    owner_bytes = np.frombuffer(owner.to_json().encode("utf-8"), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, version=np.int64(CHECKPOINT_VERSION), stage=np.int64(stage), owner=owner_bytes,
                     **arrays)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`, fully read (so CRC errors surface here)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint {path} does not exist.") from None
    except IsADirectoryError:
        raise CheckpointError(f"Checkpoint {path} is a folder; give its stageN.npz file.") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise CheckpointError(f"Checkpoint {path} is damaged or not an mfface checkpoint ({e}); use "
                              f"another one or fit again without --checkpoint.") from None


def _scalar(array: np.ndarray | None) -> int | None:
    """The integer in a one-element integer array, else None."""
    if array is None or array.size != 1 or not np.issubdtype(array.dtype, np.integer):
        return None
    return int(array.reshape(-1)[0])


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Read and structurally check a checkpoint (fields, float32, finite values, stage 1-3).

    Shapes against a model are checked by `check_state`, ownership by `check_owner`."""
    path = Path(path)
    arrays = _read_arrays(path)
    version, stage = _scalar(arrays.pop("version", None)), _scalar(arrays.pop("stage", None))
    if version not in (1, CHECKPOINT_VERSION) or stage is None:
        raise CheckpointError(f"Checkpoint {path} is not an mfface checkpoint of version "
                              f"{CHECKPOINT_VERSION}; write it again with this version of mfface.")
    if stage not in STAGES:
        raise CheckpointError(f"Checkpoint {path} says it was written after stage {stage}, but the "
                              f"stages are 1, 2 and 3; the file is damaged.")
    owner = None
    if "owner" in arrays:
        try:
            owner = CheckpointOwner.from_json(arrays.pop("owner").astype(np.uint8).tobytes().decode("utf-8"))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"Checkpoint {path} has a damaged owner record.") from None
    names = {f.name for f in dataclasses.fields(FaceState)}
    required = names - {"albedo", "principal"}
    if not required <= set(arrays) or not set(arrays) <= names:
        raise CheckpointError(f"Checkpoint {path} lacks fields {sorted(required - set(arrays))} or "
                              f"has unknown ones {sorted(set(arrays) - names)}.")
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise CheckpointError(f"Checkpoint {path}: {name} is {array.dtype}, not float32; the file "
                                  f"was not written by mfface.")
        if not np.isfinite(array).all():
            raise CheckpointError(f"Checkpoint {path}: {name} holds NaN or infinite values (a fit that "
                                  f"diverged); use an earlier stage's checkpoint or fit again.")
    tensors = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    return Checkpoint(FaceState(**tensors), stage, owner)


def state_problem(state: FaceState, model: MorphableModel) -> str | None:
    """Why `state` cannot be used with `model` (shapes, signs), or None when it can.

    Expected: expression (B, <= K_exp); identity (1 or B, <= K_id); euler, translation (B, 3) with
    the face in front of the camera (z > 0); focal (B,) > 0; sh (B, n, 3), n a square; diffuse,
    specular (1 or B, H, W, 3) and roughness (1 or B, H, W, 1) of one size; albedo (1 or B, K_alb)
    exactly when the model has a statistical albedo; principal (B, 2) when present.
    """
    b = state.expression.shape[0] if state.expression.ndim == 2 else 0
    shared = (1, b)
    h, w = (state.diffuse.shape[1:3] if state.diffuse.ndim == 4 else (0, 0))
    n_sh = state.sh.shape[1] if state.sh.ndim == 3 else 0
    checks = [
        (b >= 1 and state.expression.shape[1] <= model.n_expression,
         f"expression {tuple(state.expression.shape)}, model has {model.n_expression} expression components"),
        (state.identity.ndim == 2 and state.identity.shape[0] in shared
         and state.identity.shape[1] <= model.n_identity,
         f"identity {tuple(state.identity.shape)}, model has {model.n_identity} identity components"),
        (tuple(state.euler.shape) == (b, 3), f"euler {tuple(state.euler.shape)}"),
        (tuple(state.translation.shape) == (b, 3), f"translation {tuple(state.translation.shape)}"),
        (tuple(state.focal.shape) == (b,), f"focal {tuple(state.focal.shape)}"),
        (state.sh.ndim == 3 and state.sh.shape[0] == b and state.sh.shape[2] == 3 and n_sh >= 1
         and math.isqrt(n_sh) ** 2 == n_sh, f"sh {tuple(state.sh.shape)}"),
        (h >= 1 and w >= 1 and state.diffuse.shape[0] in shared and state.diffuse.shape[3] == 3,
         f"diffuse {tuple(state.diffuse.shape)}"),
        (tuple(state.specular.shape[1:]) == (h, w, 3) and state.specular.shape[0] in shared,
         f"specular {tuple(state.specular.shape)}"),
        (tuple(state.roughness.shape[1:]) == (h, w, 1) and state.roughness.shape[0] in shared,
         f"roughness {tuple(state.roughness.shape)}"),
        ((state.albedo is None) == (model.diffuse_albedo is None)
         and (state.albedo is None or (state.albedo.ndim == 2 and state.albedo.shape[0] in shared
                                       and state.albedo.shape[1] == model.diffuse_albedo.n_components)),
         "albedo coefficients do not match the model's albedo"),
        (state.principal is None or tuple(state.principal.shape) == (b, 2),
         f"principal {None if state.principal is None else tuple(state.principal.shape)}"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    if not bool((state.translation[:, 2] > 0).all()) or not bool((state.focal > 0).all()):
        return "the face is not in front of the camera (depth or focal <= 0)"
    return None


def check_state(state: FaceState, model: MorphableModel, source: str) -> None:
    """Raise CheckpointError when `state` (read from `source`) does not fit `model`."""
    problem = state_problem(state, model)
    if problem is not None:
        raise CheckpointError(f"{source} does not fit model {model.name!r} ({problem}); it was written "
                              f"for another model or is damaged.")


def check_owner(checkpoint: Checkpoint, expected: CheckpointOwner, source: str) -> None:
    """Raise CheckpointError unless `checkpoint` was written for `expected`'s model and photos."""
    owner = checkpoint.owner
    if owner is None:
        raise CheckpointError(f"{source} was written by an older mfface that did not record its photo "
                              f"and model, so it cannot be resumed safely; fit again without --checkpoint.")
    if owner.model_fingerprint != expected.model_fingerprint:
        raise CheckpointError(f"{source} belongs to a fit with model {owner.model!r} (another model or "
                              f"version of it than {expected.model!r}); resume with the model it was "
                              f"written with (--model {owner.model}).")
    if owner.photos != expected.photos:
        raise CheckpointError(f"{source} belongs to a fit of other photos (or the same photos in another "
                              f"order); resume with the photos it was written for.")
