"""The on-disk morphable-model format (`.mfmodel`): one NumPy `.npz` archive.

Layout (format "mfface-model", version `FORMAT_VERSION`):
- `header`: a uint8 array holding UTF-8 JSON: {"format", "version", "name", "texture_size",
  "expression_names", "provenance", "license", "albedo": {"diffuse": domain|None, "specular": ...},
  "landmarks": [names], "landmark_reliability": [names] (optional), "regions": [names]}.
- `mean_shape`, `identity_basis`, `identity_std`, `expression_basis`, `expression_std`, `uvs`:
  float32; `triangles`, `symmetry` (optional): int32.
- `landmark.<name>`, `region.<name>`: int32 vertex indices; `reliability.<name>`: float32, a
  weight per landmark of scheme <name> (MorphableModel.landmark_reliability; files without it load
  with none).
- `diffuse.mean|basis|std`, `specular.mean|basis|std`: float32, only when the model has albedo.
- Version 2 adds the model's parts (eyeballs, teeth, mouth interior; `ModelPart`): the header's
  "parts" lists {"name", "material", "n_vertices", "n_triangles", "gaze"} in order, and each part
  has `part.<name>.mean`, `.identity_basis`, `.expression_basis`, `.material_coord` (float32),
  `.triangles` (int32) and, when "gaze" is true, `.gaze`, `.pivot_mean`, `.pivot_identity`
  (float32). Version-1 files (written before parts existed) are read as models without parts.

Installed models are uncompressed, so that loading is a plain read (an ICT model of ~11k vertices
loads in tens of milliseconds). A *compact* file (`save_model(..., compact=True)`, the model built
into the package) stores the identity and expression bases (the face's and the parts') as float16 and deflates every member;
the header's "storage" says which ("float32" or "float16-deflate"). Readers always return float32.
No pickled objects (`allow_pickle=False`), so a model file cannot run code. The zip members carry
a fixed timestamp, so the same model always gives the same bytes. Files are written atomically: a
temporary file in the same folder, then `os.replace`.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from mfface.atomic import atomic_open
from mfface.morphable.model import FORMAT_VERSION, AlbedoModel, ModelPart, MorphableModel

FORMAT_NAME = "mfface-model"
SUFFIX = ".mfmodel"
READABLE_VERSIONS = (1, FORMAT_VERSION)  # 1: no parts


class ModelFormatError(ValueError):
    """A model file that is not a readable mfface model (corrupt, truncated, wrong version)."""


class ModelSourceError(ValueError):
    """An importer's source (folder, archive) is missing files or damaged."""


STORAGE_FULL = "float32"
STORAGE_COMPACT = "float16-deflate"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same model gives the same bytes


def _header(model: MorphableModel, storage: str) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": model.name,
        "n_vertices": model.n_vertices,
        "n_triangles": int(model.triangles.shape[0]),
        "n_identity": model.n_identity,
        "n_expression": model.n_expression,
        "texture_size": list(model.texture_size),
        "expression_names": list(model.expression_names),
        "expression_range": None if model.expression_range is None else list(model.expression_range),
        "provenance": model.provenance,
        "license": model.license,
        "albedo": {
            "diffuse": model.diffuse_albedo.domain if model.diffuse_albedo else None,
            "specular": model.specular_albedo.domain if model.specular_albedo else None,
        },
        "landmarks": sorted(model.landmarks),
        "landmark_reliability": sorted(model.landmark_reliability),
        "regions": sorted(model.regions),
        "storage": storage,
        "parts": [{"name": part.name, "material": part.material, "n_vertices": part.n_vertices,
                   "n_triangles": int(part.triangles.shape[0]), "gaze": part.gaze is not None}
                  for part in model.parts],
    }


def f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def i32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.int32)


def f16(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float16)


def _write_npz(handle: IO[bytes], arrays: dict[str, np.ndarray], compress: bool) -> None:
    """Write `arrays` as an `.npz` (as `np.savez` does) with fixed member timestamps, in order."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(handle, mode="w", compression=method, allowZip64=True) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def save_model(model: MorphableModel, path: str | os.PathLike, compact: bool = False) -> Path:
    """Validate `model` and write it to `path` atomically; returns the path written.

    compact: identity/expression bases (and albedo bases) as float16, all members deflated
    (about a third of the size; the float16 rounding is below 0.01 mm for ICT's bases).
    """
    model.validate()
    path = Path(path)
    basis = f16 if compact else f32
    storage = STORAGE_COMPACT if compact else STORAGE_FULL
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(json.dumps(_header(model, storage)).encode("utf-8"), dtype=np.uint8),
        "mean_shape": f32(model.mean_shape),
        "identity_basis": basis(model.identity_basis),
        "identity_std": f32(model.identity_std),
        "expression_basis": basis(model.expression_basis),
        "expression_std": f32(model.expression_std),
        "triangles": i32(model.triangles),
        "uvs": f32(model.uvs),
    }
    if model.symmetry is not None:
        arrays["symmetry"] = i32(model.symmetry)
    for name, idx in model.landmarks.items():
        arrays[f"landmark.{name}"] = i32(idx)
    for name, weights in model.landmark_reliability.items():
        arrays[f"reliability.{name}"] = f32(weights)
    for name, idx in model.regions.items():
        arrays[f"region.{name}"] = i32(idx)
    for key, albedo in (("diffuse", model.diffuse_albedo), ("specular", model.specular_albedo)):
        if albedo is not None:
            arrays[f"{key}.mean"] = f32(albedo.mean)
            arrays[f"{key}.basis"] = basis(albedo.basis)
            arrays[f"{key}.std"] = f32(albedo.std)
    for part in model.parts:
        prefix = f"part.{part.name}"
        arrays[f"{prefix}.mean"] = f32(part.mean)
        arrays[f"{prefix}.identity_basis"] = basis(part.identity_basis)
        arrays[f"{prefix}.expression_basis"] = basis(part.expression_basis)
        arrays[f"{prefix}.triangles"] = i32(part.triangles)
        arrays[f"{prefix}.material_coord"] = f32(part.material_coord)
        if part.gaze is not None:
            arrays[f"{prefix}.gaze"] = f32(part.gaze)
            arrays[f"{prefix}.pivot_mean"] = f32(part.pivot_mean)
            arrays[f"{prefix}.pivot_identity"] = f32(part.pivot_identity)
    with atomic_open(path, "wb") as handle:
        _write_npz(handle, arrays, compress=compact)
    return path


def _corrupt(path: Path, why: str) -> ModelFormatError:
    return ModelFormatError(
        f"{path} is not a readable mfface model ({why}); reinstall it with `mfface models install`.")


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a model file, without reading its arrays (for listings)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive, archive.open("header.npy") as member:
            raw = np.lib.format.read_array(member, allow_pickle=False)
        header = json.loads(raw.tobytes().decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise _corrupt(path, "no mfface model header")
    if header.get("version") not in READABLE_VERSIONS:
        raise ModelFormatError(
            f"{path} has model format version {header.get('version')}, this mfface reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; reinstall the model with `mfface models install`.")
    return header


def _parts(header: dict, arrays: dict[str, np.ndarray]) -> list[ModelPart]:
    """The parts listed in a version-2 header (none in version 1)."""
    parts = []
    for entry in header.get("parts", []):
        prefix = f"part.{entry['name']}"
        rotating = bool(entry["gaze"])
        parts.append(ModelPart(
            name=entry["name"], material=entry["material"], mean=arrays[f"{prefix}.mean"],
            identity_basis=arrays[f"{prefix}.identity_basis"],
            expression_basis=arrays[f"{prefix}.expression_basis"],
            triangles=arrays[f"{prefix}.triangles"], material_coord=arrays[f"{prefix}.material_coord"],
            gaze=arrays[f"{prefix}.gaze"] if rotating else None,
            pivot_mean=arrays[f"{prefix}.pivot_mean"] if rotating else None,
            pivot_identity=arrays[f"{prefix}.pivot_identity"] if rotating else None))
    return parts


def load_model_file(path: str | os.PathLike) -> MorphableModel:
    """Read a model written by `save_model`; raises ModelFormatError when the file is damaged."""
    path = Path(path)
    header = read_header(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        for key, value in arrays.items():  # compact files hold float16 bases; models are float32
            if value.dtype == np.float16:
                arrays[key] = f32(value)
        albedo = {}
        for key in ("diffuse", "specular"):
            domain = header["albedo"][key]
            albedo[key] = None if domain is None else AlbedoModel(
                arrays[f"{key}.mean"], arrays[f"{key}.basis"], arrays[f"{key}.std"], domain)
        model = MorphableModel(
            name=header["name"],
            mean_shape=arrays["mean_shape"],
            identity_basis=arrays["identity_basis"],
            identity_std=arrays["identity_std"],
            expression_basis=arrays["expression_basis"],
            expression_std=arrays["expression_std"],
            triangles=arrays["triangles"],
            uvs=arrays["uvs"],
            texture_size=tuple(header["texture_size"]),
            expression_names=list(header["expression_names"]),
            expression_range=(None if header.get("expression_range") is None
                              else tuple(header["expression_range"])),
            landmarks={name: arrays[f"landmark.{name}"] for name in header["landmarks"]},
            landmark_reliability={name: arrays[f"reliability.{name}"]
                                  for name in header.get("landmark_reliability", [])},
            regions={name: arrays[f"region.{name}"] for name in header["regions"]},
            symmetry=arrays.get("symmetry"),
            diffuse_albedo=albedo["diffuse"],
            specular_albedo=albedo["specular"],
            provenance=header["provenance"],
            license=header["license"],
            parts=_parts(header, arrays),
        )
        model.validate()
    except (OSError, KeyError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from error
    return model
