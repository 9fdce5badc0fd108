"""Importer for the Basel Face Model 2009 (`01_MorphableModel.mat`).

Fields relied on: shapeMU (3V, 1), shapePC (3V, K), shapeEV (K, 1) standard deviations; texMU,
texPC, texEV the same for per-vertex RGB colour in 0..255 (sRGB-encoded); tl (F, 3) 1-based triangles.
Vectors are flattened x0 y0 z0 x1 ...; a shape is shapeMU + shapePC @ (coeff * shapeEV), in
micrometres, converted here to mm. MATLAB v5 files are read with scipy.io.loadmat; v7.3 files (HDF5
inside) with h5py, where every matrix is stored transposed. BFM 2009 has no expression model: the
imported model has an empty (0, V, 3) expression basis.
"""
from __future__ import annotations

from pathlib import Path

import io

import h5py
import numpy as np
import scipy.io

from mfface.morphable.basel2017 import (BASEL_LICENSE, assemble_basel, find_member, is_archive,
                                        is_hdf5, linearise_colour_model)
from mfface.morphable.format import ModelSourceError
from mfface.morphable.model import MorphableModel

FILE = "01_MorphableModel.mat"
FIELDS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
MICROMETRE_TO_MM = 1e-3


def _read_fields(label: str, file: Path | io.BytesIO) -> dict[str, np.ndarray]:
    """The BFM 2009 fields as float64 arrays in MATLAB's (rows, columns) layout."""
    if is_hdf5(file):  # MATLAB v7.3: HDF5 with column-major matrices, i.e. transposed here
        with h5py.File(file, "r") as f:
            return {k: np.asarray(f[k], dtype=np.float64).T for k in FIELDS if k in f}
    try:
        data = scipy.io.loadmat(file, variable_names=list(FIELDS))
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError) as error:
        raise ModelSourceError(f"{label} is not a readable MATLAB file ({error}); pass {FILE} as "
                               "downloaded.") from None
    return {k: np.asarray(data[k], dtype=np.float64) for k in FIELDS if k in data}


def _pca(fields: dict[str, np.ndarray], prefix: str, scale: float, path: str
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = fields[f"{prefix}MU"].reshape(-1)
    basis = fields[f"{prefix}PC"]
    std = fields[f"{prefix}EV"].reshape(-1)
    if mean.size % 3 or basis.ndim != 2 or basis.shape != (mean.size, std.size):
        raise ModelSourceError(f"{path}: {prefix}MU {fields[prefix + 'MU'].shape}, {prefix}PC {basis.shape} and "
                         f"{prefix}EV {fields[prefix + 'EV'].shape} are inconsistent; expected (3V, 1), "
                         "(3V, K), (K, 1).")
    v = mean.size // 3
    return mean.reshape(v, 3) * scale, basis.T.reshape(-1, v, 3), np.abs(std) * scale


def import_bfm2009(source: Path, *, texture_size: tuple[int, int] = (512, 512),
                   name: str = "bfm2009") -> MorphableModel:
    """Import the Basel Face Model 2009 in mm, with its colour model as linear diffuse albedo.

    source: `01_MorphableModel.mat`, or a folder (searched recursively) or zip / tar archive holding
    it (the download `BaselFaceModel.tgz` works as it is). The colour model (0..255, sRGB) is scaled to
    [0, 1] and linearised (`linearise_colour_model`); there is no specular albedo and no expression
    model (empty basis). Landmarks are left empty (the store adds correspondences). Raises
    ModelSourceError (one sentence, naming the file) for a bad source.
    """
    source = Path(source)
    if not source.exists():
        raise ModelSourceError(f"{source} does not exist; download the Basel Face Model 2009 from "
                               f"faces.dmi.unibas.ch/bfm and pass {FILE}, its folder or the archive.")
    located = find_member(source, (FILE,))
    if located is None and (source.is_dir() or is_archive(source)):
        raise ModelSourceError(f"{source} holds no {FILE}; pass the Basel Face Model 2009 folder or archive.")
    path, file = located if located is not None else (str(source), source)
    fields = _read_fields(path, file)
    missing = [k for k in FIELDS if k not in fields]
    if missing:
        raise ModelSourceError(f"{path} lacks the field(s) {', '.join(missing)}; pass the Basel Face Model "
                               f"2009 file {FILE} as downloaded.")
    identity = _pca(fields, "shape", MICROMETRE_TO_MM, path)
    colour = _pca(fields, "tex", 1.0 / 255.0, path)
    v = len(identity[0])
    if colour[0].shape != (v, 3):
        raise ModelSourceError(f"{path}: texMU has {len(colour[0])} vertices but shapeMU has {v}; the file is damaged.")
    tl = fields["tl"]
    if tl.ndim == 2 and tl.shape[0] == 3 and tl.shape[1] != 3:
        tl = tl.T
    if tl.size and tl.min() < 1:
        raise ModelSourceError(f"{path}: tl holds index {tl.min():g}, but BFM 2009 triangles are 1-based; the "
                         "file is damaged or not the original.")
    expression = (np.zeros((v, 3)), np.zeros((0, v, 3)), np.zeros(0))
    diffuse = linearise_colour_model(*colour)
    return assemble_basel(name, path, identity, expression, tl.astype(np.int64) - 1, diffuse, None,
                          texture_size, f"Basel Face Model 2009 ({Path(path).name}), micrometres -> mm, colour "
                          "model linearised as diffuse albedo.", BASEL_LICENSE)
