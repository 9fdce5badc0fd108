"""Importer for the Basel Face Model 2017 (statismo HDF5) with the optional AlbedoMM albedo model.

Layout relied on (the statismo layout that NextFace, eos and scalismo read; see docs/basel.md):
  shape/model/{mean (3V,), pcaBasis (3V, K) orthonormal columns, pcaVariance (K,)}
  expression/model/{mean (3V,), pcaBasis (3V, K_exp), pcaVariance (K_exp,)}
  color/model/{mean, pcaBasis, pcaVariance}   per-vertex RGB in [0, 1], sRGB-encoded
  shape/representer/cells (3, F) 0-based triangles
Vectors are flattened x0 y0 z0 x1 ...; a shape is mean + pcaBasis @ (coeff * sqrt(pcaVariance)), in
mm, +x face's left, +y up, +z out of the face (the lead's model frame). The expression mean (a mean
deformation) is added to the mean shape. AlbedoMM (`albedoModel2020_*_albedoPart.h5`) has the same
layout under diffuseAlbedo/ and specularAlbedo/, linear RGB on the same vertices.

The shared Basel assembly (orientation, UV unwrap, regions, symmetry) lives here too and is reused
by the Basel 2009 importer.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy.spatial import cKDTree

from mfface.morphable.model import AlbedoModel, MorphableModel
from mfface.morphable.uv import unwrap_lscm

FACE12 = "model2017-1_face12_nomouth.h5"
FULL = "model2017-1_bfm_nomouth.h5"
ALBEDO_FOR = {FACE12: "albedoModel2020_face12_albedoPart.h5", FULL: "albedoModel2020_bfm_albedoPart.h5"}
BASEL_LICENSE = ("Basel Face Model: licence agreement of the University of Basel, accepted at download "
                 "(non-commercial research use; no redistribution)")
ALBEDO_LICENSE = "AlbedoMM (Smith et al., CVPR 2020): terms of its download at github.com/waps101/AlbedoMM"

Pca = tuple[np.ndarray, np.ndarray, np.ndarray]  # mean (V, 3), basis (K, V, 3), std (K,)


def _dataset(f: h5py.File, key: str, file: Path) -> np.ndarray:
    if key not in f:
        raise ValueError(f"{file} has no dataset '{key}': it is not a Basel Face Model 2017 / AlbedoMM "
                         "file in the statismo layout; pass the file as downloaded.")
    return np.asarray(f[key], dtype=np.float64)


def read_pca(f: h5py.File, group: str, file: Path) -> Pca:
    """One statismo PCA model `<group>/model/{mean, pcaBasis, pcaVariance}` as (mean, basis, std)."""
    mean = _dataset(f, f"{group}/model/mean", file).reshape(-1)
    basis = _dataset(f, f"{group}/model/pcaBasis", file)
    variance = _dataset(f, f"{group}/model/pcaVariance", file).reshape(-1)
    if mean.size % 3 or basis.ndim != 2 or basis.shape != (mean.size, variance.size):
        raise ValueError(f"{file}: {group}/model has inconsistent shapes (mean {mean.shape}, pcaBasis "
                         f"{basis.shape}, pcaVariance {variance.shape}); expected (3V,), (3V, K), (K,).")
    if (variance < 0).any():
        raise ValueError(f"{file}: {group}/model/pcaVariance has negative entries; the file is damaged.")
    v = mean.size // 3
    return mean.reshape(v, 3), basis.T.reshape(-1, v, 3), np.sqrt(variance)


def linearise_colour_model(mean: np.ndarray, basis: np.ndarray, std: np.ndarray) -> AlbedoModel:
    """Turn an sRGB-encoded per-vertex colour PCA (values in [0, 1]) into a linear albedo model.

    The mean is decoded exactly (sRGB transfer function); the basis is scaled by the transfer
    function's derivative at the mean (first-order linearisation), so the model stays linear in its
    coefficients and is exact at the mean.
    """
    m = np.clip(mean, 0.0, 1.0)
    low = m <= 0.04045
    linear = np.where(low, m / 12.92, ((m + 0.055) / 1.055) ** 2.4)
    slope = np.where(low, 1.0 / 12.92, 2.4 / 1.055 * ((m + 0.055) / 1.055) ** 1.4)
    return AlbedoModel(mean=linear.astype(np.float32), basis=(basis * slope).astype(np.float32),
                       std=std.astype(np.float32), domain="vertex")


def orient_outward(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Triangles wound counter-clockwise seen from outside a face mask (normals sum towards +z)."""
    p = vertices[triangles]
    normal_sum = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]).sum(axis=0)
    return triangles[:, [0, 2, 1]] if normal_sum[2] < 0 else triangles


def mirror_partners(vertices: np.ndarray) -> np.ndarray:
    """Each vertex's symmetry partner (V,) int64: the vertex nearest to its mirror image across x=0."""
    _, index = cKDTree(vertices).query(vertices * np.array([-1.0, 1.0, 1.0]))
    return index.astype(np.int64)


def assemble_basel(name: str, file: Path, identity: Pca, expression: Pca, triangles: np.ndarray,
                   diffuse: AlbedoModel | None, specular: AlbedoModel | None,
                   texture_size: tuple[int, int], provenance: str, license: str) -> MorphableModel:
    """Build a MorphableModel from Basel arrays in mm: orient triangles, unwrap UVs, add regions.

    The expression mean is added to the identity mean. Raises ValueError, naming `file`, when the
    parts disagree in vertex count or the mean face is not face-sized in mm.
    """
    mean, id_basis, id_std = identity
    exp_mean, exp_basis, exp_std = expression
    v = len(mean)
    if exp_mean.shape != (v, 3) or exp_basis.shape[1:] != (v, 3):
        raise ValueError(f"{file}: the expression model has {len(exp_mean)} vertices but the shape model "
                         f"has {v}; both must come from the same file.")
    for label, part in (("diffuse albedo", diffuse), ("specular albedo", specular)):
        if part is not None and part.mean.shape != (v, 3):
            raise ValueError(f"{file}: the {label} has {part.mean.shape[0]} vertices but the shape model "
                             f"has {v}; use the albedo file made for this shape model.")
    tris = np.asarray(triangles, dtype=np.int64)
    if tris.ndim != 2 or tris.shape[1] != 3 or tris.size == 0 or tris.min() < 0 or tris.max() >= v:
        raise ValueError(f"{file}: the triangle list is not a (F, 3) list of indices into {v} vertices.")
    mean_shape = mean + exp_mean
    width = float(np.ptp(mean_shape[:, 0]))
    if not 50.0 <= width <= 500.0:
        raise ValueError(f"{file}: the mean face is {width:g} units wide, not 50-500 mm; the file is "
                         "not a Basel face model in the expected units.")
    tris = orient_outward(mean_shape, tris)
    everything = np.arange(v, dtype=np.int64)
    model = MorphableModel(
        name=name,
        mean_shape=mean_shape.astype(np.float32),
        identity_basis=id_basis.astype(np.float32),
        identity_std=id_std.astype(np.float32),
        expression_basis=exp_basis.astype(np.float32),
        expression_std=exp_std.astype(np.float32),
        triangles=tris.astype(np.int32),
        uvs=unwrap_lscm(mean_shape, tris),
        texture_size=texture_size,
        regions={"face": everything, "skin": everything.copy(), "fit": everything.copy()},
        symmetry=mirror_partners(mean_shape),
        diffuse_albedo=diffuse,
        specular_albedo=specular,
        provenance=provenance,
        license=license,
    )
    model.validate()
    return model


def _find_shape_file(source: Path) -> Path:
    if source.is_file():
        return source
    if source.is_dir():
        for candidate in (FACE12, FULL):
            if (source / candidate).is_file():
                return source / candidate
        raise FileNotFoundError(f"{source} holds neither {FACE12} nor {FULL}; download the Basel Face "
                                "Model 2017 from faces.dmi.unibas.ch/bfm/bfm2017.html and put it there.")
    raise FileNotFoundError(f"{source} does not exist; pass the Basel Face Model 2017 .h5 file or its folder.")


def _read_albedo(path: Path) -> tuple[AlbedoModel, AlbedoModel]:
    with h5py.File(path, "r") as f:
        parts = [read_pca(f, group, path) for group in ("diffuseAlbedo", "specularAlbedo")]
    return tuple(AlbedoModel(mean=m.astype(np.float32), basis=b.astype(np.float32),  # type: ignore[return-value]
                             std=s.astype(np.float32), domain="vertex") for m, b, s in parts)


def import_bfm2017(source: Path, *, albedo: Path | None = None, texture_size: tuple[int, int] = (512, 512),
                   name: str = "bfm2017") -> MorphableModel:
    """Import the Basel Face Model 2017 (face12 or full 'bfm' variant, mouth closed) into mm.

    source: the .h5 file or a folder holding `model2017-1_face12_nomouth.h5` (preferred) or
    `model2017-1_bfm_nomouth.h5`. albedo: an AlbedoMM .h5; by default the AlbedoMM file matching the
    variant (`albedoModel2020_face12_albedoPart.h5` / `..._bfm_...`) is used when it lies beside the
    model. With AlbedoMM, diffuse and specular albedo are its linear per-vertex models; without it,
    diffuse albedo is the model's own sRGB colour model, linearised (`linearise_colour_model`), and
    specular albedo is None. Landmarks are left empty (the store adds correspondences).
    """
    path = _find_shape_file(Path(source))
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not an HDF5 file; pass the Basel Face Model 2017 .h5 as downloaded.")
    beside = path.parent / ALBEDO_FOR[path.name] if path.name in ALBEDO_FOR else None
    if albedo is None and beside is not None and beside.is_file():
        albedo = beside
    with h5py.File(path, "r") as f:
        identity = read_pca(f, "shape", path)
        expression = read_pca(f, "expression", path)
        cells = _dataset(f, "shape/representer/cells", path)
        colour = read_pca(f, "color", path) if albedo is None and "color/model/mean" in f else None
    # The real file stores cells as (3, F); accept (F, 3) too.
    triangles = cells.T if cells.ndim == 2 and cells.shape[0] == 3 and cells.shape[1] != 3 else cells
    provenance = f"Basel Face Model 2017 ({path.name})"
    license = BASEL_LICENSE
    if albedo is not None:
        if not Path(albedo).is_file():
            raise FileNotFoundError(f"albedo model {albedo} does not exist; pass an AlbedoMM .h5 file.")
        diffuse, specular = _read_albedo(Path(albedo))
        provenance += f" + AlbedoMM ({Path(albedo).name})"
        license += "; " + ALBEDO_LICENSE
    elif colour is not None:
        diffuse, specular = linearise_colour_model(colour[0], colour[1], colour[2]), None
        provenance += ", diffuse albedo from its sRGB colour model, linearised"
    else:
        diffuse = specular = None
    return assemble_basel(name, path, identity, expression, triangles.astype(np.int64), diffuse, specular,
                          texture_size, provenance, license)
