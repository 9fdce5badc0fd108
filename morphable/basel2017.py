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

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from mfface.morphable.format import ModelSourceError
from mfface.morphable.model import AlbedoModel, MorphableModel
from mfface.morphable.regions import mirror_partners
from mfface.morphable.uv import unwrap_lscm

FACE12 = "model2017-1_face12_nomouth.h5"
FULL = "model2017-1_bfm_nomouth.h5"
ALBEDO_FOR = {FACE12: "albedoModel2020_face12_albedoPart.h5", FULL: "albedoModel2020_bfm_albedoPart.h5"}
BASEL_LICENSE = ("Basel Face Model: licence agreement of the University of Basel, accepted at download "
                 "(non-commercial research use; no redistribution)")
ALBEDO_LICENSE = "AlbedoMM (Smith et al., CVPR 2020): terms of its download at github.com/waps101/AlbedoMM"

Pca = tuple[np.ndarray, np.ndarray, np.ndarray]  # mean (V, 3), basis (K, V, 3), std (K,)
Source = tuple[str, "Path | io.BytesIO"]  # (name for messages, a file h5py / loadmat can open)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(file: Path | io.BytesIO) -> bool:
    """Whether `file` is HDF5 (signature at offset 0 or a power-of-two user-block offset, as MATLAB v7.3)."""
    if isinstance(file, Path):
        return h5py.is_hdf5(file)
    head = file.getbuffer()[:4096].tobytes()
    return any(head[o:o + 8] == _HDF5_SIGNATURE for o in (0, 512, 1024, 2048))


def is_archive(source: Path) -> bool:
    """Whether `source` is a zip or tar (optionally compressed) archive file."""
    return source.is_file() and (zipfile.is_zipfile(source) or tarfile.is_tarfile(source))


def find_member(source: Path, names: Sequence[str]) -> Source | None:
    """The first of `names` (file names, in order of preference) inside a folder (searched
    recursively) or a zip / tar archive (read into memory); None when none is there."""
    if source.is_dir():
        for name in names:
            found = sorted(source.rglob(name))
            if found:
                return str(found[0]), found[0]
        return None
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            members = {m.filename.rsplit("/", 1)[-1]: m for m in archive.infolist() if not m.is_dir()}
            for name in names:
                if name in members:
                    return f"{source}:{members[name].filename}", io.BytesIO(archive.read(members[name]))
        return None
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            members = {m.name.rsplit("/", 1)[-1]: m for m in archive.getmembers() if m.isfile()}
            for name in names:
                if name in members:
                    handle = archive.extractfile(members[name])
                    assert handle is not None
                    return f"{source}:{members[name].name}", io.BytesIO(handle.read())
        return None
    return None


def _dataset(f: h5py.File, key: str, file: str) -> np.ndarray:
    if key not in f:
        raise ModelSourceError(f"{file} has no dataset '{key}': it is not a Basel Face Model 2017 / AlbedoMM "
                         "file in the statismo layout; pass the file as downloaded.")
    return np.asarray(f[key], dtype=np.float64)


def read_pca(f: h5py.File, group: str, file: str) -> Pca:
    """One statismo PCA model `<group>/model/{mean, pcaBasis, pcaVariance}` as (mean, basis, std)."""
    mean = _dataset(f, f"{group}/model/mean", file).reshape(-1)
    basis = _dataset(f, f"{group}/model/pcaBasis", file)
    variance = _dataset(f, f"{group}/model/pcaVariance", file).reshape(-1)
    if mean.size % 3 or basis.ndim != 2 or basis.shape != (mean.size, variance.size):
        raise ModelSourceError(f"{file}: {group}/model has inconsistent shapes (mean {mean.shape}, pcaBasis "
                         f"{basis.shape}, pcaVariance {variance.shape}); expected (3V,), (3V, K), (K,).")
    if (variance < 0).any():
        raise ModelSourceError(f"{file}: {group}/model/pcaVariance has negative entries; the file is damaged.")
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


def assemble_basel(name: str, file: str, identity: Pca, expression: Pca, triangles: np.ndarray,
                   diffuse: AlbedoModel | None, specular: AlbedoModel | None,
                   texture_size: tuple[int, int], provenance: str, license: str) -> MorphableModel:
    """Build a MorphableModel from Basel arrays in mm: orient triangles, unwrap UVs, add regions.

    The expression mean is added to the identity mean. Raises ModelSourceError, naming `file`, when the
    parts disagree in vertex count or the mean face is not face-sized in mm.
    """
    mean, id_basis, id_std = identity
    exp_mean, exp_basis, exp_std = expression
    v = len(mean)
    if exp_mean.shape != (v, 3) or exp_basis.shape[1:] != (v, 3):
        raise ModelSourceError(f"{file}: the expression model has {len(exp_mean)} vertices but the shape model "
                         f"has {v}; both must come from the same file.")
    for label, part in (("diffuse albedo", diffuse), ("specular albedo", specular)):
        if part is not None and part.mean.shape != (v, 3):
            raise ModelSourceError(f"{file}: the {label} has {part.mean.shape[0]} vertices but the shape model "
                             f"has {v}; use the albedo file made for this shape model.")
    tris = np.asarray(triangles, dtype=np.int64)
    if tris.ndim != 2 or tris.shape[1] != 3 or tris.size == 0 or tris.min() < 0 or tris.max() >= v:
        raise ModelSourceError(f"{file}: the triangle list is not a (F, 3) list of indices into {v} vertices.")
    mean_shape = mean + exp_mean
    width = float(np.ptp(mean_shape[:, 0]))
    if not 50.0 <= width <= 500.0:
        raise ModelSourceError(f"{file}: the mean face is {width:g} units wide, not 50-500 mm; the file is "
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
        symmetry=mirror_partners(mean_shape)[0],
        diffuse_albedo=diffuse,
        specular_albedo=specular,
        provenance=provenance,
        license=license,
    )
    model.validate()
    return model


def _read_albedo(source: Source) -> tuple[AlbedoModel, AlbedoModel]:
    """AlbedoMM's diffuse and specular models, linear per-vertex RGB, taken as stored."""
    def as_model(pca: Pca) -> AlbedoModel:
        mean, basis, std = pca
        return AlbedoModel(mean=mean.astype(np.float32), basis=basis.astype(np.float32),
                           std=std.astype(np.float32), domain="vertex")

    name, file = source
    if not is_hdf5(file):
        raise ModelSourceError(f"{name} is not an HDF5 file; pass the AlbedoMM .h5 as downloaded.")
    with h5py.File(file, "r") as f:
        return as_model(read_pca(f, "diffuseAlbedo", name)), as_model(read_pca(f, "specularAlbedo", name))


def _locate(source: Path, albedo: Path | None) -> tuple[Source, Source | None]:
    """The shape model file and the AlbedoMM file to use (explicit, beside it, or None)."""
    if not source.exists():
        raise ModelSourceError(f"{source} does not exist; pass the Basel Face Model 2017 .h5 file, "
                               "its folder or an archive holding it.")
    if source.is_file() and is_hdf5(source):
        shape: Source = (str(source), source)
        beside = source.parent / ALBEDO_FOR.get(source.name, "")
        found = (str(beside), beside) if source.name in ALBEDO_FOR and beside.is_file() else None
    elif source.is_file() and not is_archive(source):
        raise ModelSourceError(f"{source} is neither an HDF5 file nor a zip / tar archive; pass the Basel "
                               "Face Model 2017 .h5 as downloaded.")
    else:
        located = find_member(source, (FACE12, FULL))
        if located is None:
            raise ModelSourceError(f"{source} holds neither {FACE12} nor {FULL}; download the Basel Face "
                                   "Model 2017 from faces.dmi.unibas.ch/bfm/bfm2017.html and pass it.")
        shape = located
        found = find_member(source, (ALBEDO_FOR[Path(shape[0]).name],))
    if albedo is not None:
        if not Path(albedo).is_file():
            raise ModelSourceError(f"albedo model {albedo} does not exist; pass an AlbedoMM .h5 file.")
        found = (str(albedo), Path(albedo))
    return shape, found


def import_bfm2017(source: Path, *, albedo: Path | None = None, texture_size: tuple[int, int] = (512, 512),
                   name: str = "bfm2017") -> MorphableModel:
    """Import the Basel Face Model 2017 (face12 or full 'bfm' variant, mouth closed) into mm.

    source: the .h5 file, or a folder (searched recursively) or zip / tar archive holding
    `model2017-1_face12_nomouth.h5` (preferred) or `model2017-1_bfm_nomouth.h5`. albedo: an AlbedoMM
    .h5; by default the AlbedoMM file matching the variant (`albedoModel2020_face12_albedoPart.h5` /
    `albedoModel2020_bfm_albedoPart.h5`) is used when it lies beside the model (same folder, folder
    tree or archive). With AlbedoMM, diffuse and specular albedo are its linear per-vertex models;
    without it, diffuse albedo is the model's own sRGB colour model, linearised
    (`linearise_colour_model`), and specular albedo is None. Landmarks are left empty (the store adds
    correspondences). Raises ModelSourceError (one sentence, naming the file) for a bad source.
    """
    (label, file), albedo_source = _locate(Path(source), albedo)
    if not is_hdf5(file):
        raise ModelSourceError(f"{label} is not an HDF5 file; pass the Basel Face Model 2017 .h5 as downloaded.")
    with h5py.File(file, "r") as f:
        identity = read_pca(f, "shape", label)
        expression = read_pca(f, "expression", label)
        cells = _dataset(f, "shape/representer/cells", label)
        colour = read_pca(f, "color", label) if albedo_source is None and "color/model/mean" in f else None
    # The real file stores cells as (3, F); accept (F, 3) too.
    triangles = cells.T if cells.ndim == 2 and cells.shape[0] == 3 and cells.shape[1] != 3 else cells
    provenance = f"Basel Face Model 2017 ({Path(label).name})"
    license = BASEL_LICENSE
    if albedo_source is not None:
        diffuse, specular = _read_albedo(albedo_source)
        provenance += f" + AlbedoMM ({Path(albedo_source[0]).name})"
        license += "; " + ALBEDO_LICENSE
    elif colour is not None:
        diffuse, specular = linearise_colour_model(colour[0], colour[1], colour[2]), None
        provenance += ", diffuse albedo from its sRGB colour model, linearised"
    else:
        diffuse = specular = None
    return assemble_basel(name, label, identity, expression, triangles.astype(np.int64), diffuse, specular,
                          texture_size, provenance + ".", license)
