"""Basel 2017 (+ AlbedoMM) and Basel 2009 importers, on tiny files written in the real layouts."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from test_uv import face_mesh

from mfface.morphable.basel2009 import import_bfm2009
from mfface.morphable.basel2017 import import_bfm2017, linearise_colour_model
from mfface.morphable.format import ModelSourceError


def orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    """(rows, cols) with orthonormal columns, like statismo's pcaBasis."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q


def srgb_decode(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@pytest.fixture(scope="module")
def mesh() -> tuple[np.ndarray, np.ndarray]:
    return face_mesh(n=11)


def write_pca(f: h5py.File, group: str, mean: np.ndarray, k: int, seed: int, scale: float) -> dict:
    basis = orthonormal(mean.size, k, seed)
    variance = (scale * np.linspace(1.0, 0.2, k)) ** 2
    f[f"{group}/model/mean"] = mean.reshape(-1).astype(np.float32)
    f[f"{group}/model/pcaBasis"] = basis.astype(np.float32)
    f[f"{group}/model/pcaVariance"] = variance.astype(np.float32)
    return {"mean": mean.reshape(-1, 3), "basis": basis, "variance": variance}


def write_bfm2017(folder: Path, vertices: np.ndarray, triangles: np.ndarray,
                  name: str = "model2017-1_face12_nomouth.h5", skip: str = "") -> dict:
    """A tiny BFM 2017 file: groups, dataset names and shapes (cells (3, F)) as in the real one."""
    v = len(vertices)
    truth = {}
    with h5py.File(folder / name, "w") as f:
        truth["shape"] = write_pca(f, "shape", vertices, 5, 0, 4.0)
        f["shape/model/noiseVariance"] = np.float32(1.0)
        f["shape/representer/points"] = vertices.T.astype(np.float32)
        if skip != "cells":
            f["shape/representer/cells"] = triangles.T.astype(np.uint32)
        if skip != "expression":
            exp_mean = np.random.default_rng(3).normal(0.0, 0.1, (v, 3))
            truth["expression"] = write_pca(f, "expression", exp_mean, 3, 1, 2.0)
        colour = np.full((v, 3), 0.5) + 0.1 * np.random.default_rng(4).random((v, 3))
        truth["color"] = write_pca(f, "color", colour, 4, 2, 0.05)
    return truth


def write_albedomm(path: Path, v: int) -> dict:
    truth = {}
    with h5py.File(path, "w") as f:
        truth["diffuse"] = write_pca(f, "diffuseAlbedo", np.full((v, 3), 0.3), 4, 5, 0.05)
        truth["specular"] = write_pca(f, "specularAlbedo", np.full((v, 3), 0.1), 4, 6, 0.02)
    return truth


def test_bfm2017_shape_expression_and_topology(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    truth = write_bfm2017(tmp_path, vertices, triangles)
    model = import_bfm2017(tmp_path)  # folder source
    v = len(vertices)
    exp_mean = truth["expression"]["mean"]
    np.testing.assert_allclose(model.mean_shape, vertices + exp_mean, atol=1e-4)
    assert model.identity_basis.shape == (5, v, 3) and model.expression_basis.shape == (3, v, 3)
    np.testing.assert_allclose(model.identity_std, np.sqrt(truth["shape"]["variance"]), rtol=1e-6)
    # one std of component k moves the shape by sqrt(variance_k) * pcaBasis[:, k]
    coeff = torch.zeros(1, 5)
    coeff[0, 2] = 1.0
    moved = model.vertices(identity=coeff)[0].numpy() - model.mean_shape
    expected = np.sqrt(truth["shape"]["variance"][2]) * truth["shape"]["basis"][:, 2].reshape(v, 3)
    np.testing.assert_allclose(moved, expected, atol=1e-5)
    exp_coeff = torch.tensor([[0.0, -1.5, 0.0]])
    moved = model.vertices(expression=exp_coeff)[0].numpy() - model.mean_shape
    expected = -1.5 * np.sqrt(truth["expression"]["variance"][1]) * truth["expression"]["basis"][:, 1].reshape(v, 3)
    np.testing.assert_allclose(moved, expected, atol=1e-5)
    assert sorted(map(tuple, np.sort(model.triangles, axis=1))) == sorted(map(tuple, np.sort(triangles, axis=1)))
    assert model.uvs.shape == (v, 2) and model.uvs.min() >= 0.0 and model.uvs.max() <= 1.0
    assert set(model.regions) == {"face", "skin", "fit"}
    np.testing.assert_array_equal(model.regions["fit"], np.arange(v))
    assert model.landmarks == {}
    assert "model2017-1_face12_nomouth.h5" in model.provenance


def test_bfm2017_triangles_are_turned_to_face_outwards(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    write_bfm2017(tmp_path, vertices, triangles[:, [0, 2, 1]])  # inward winding in the file
    model = import_bfm2017(tmp_path / "model2017-1_face12_nomouth.h5")
    p = model.mean_shape[model.triangles]
    normals = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    assert normals.sum(axis=0)[2] > 0
    np.testing.assert_array_equal(model.triangles, triangles)


def test_bfm2017_symmetry_partners_mirror_across_x(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    write_bfm2017(tmp_path, vertices, triangles)
    model = import_bfm2017(tmp_path)
    s = model.symmetry
    np.testing.assert_array_equal(s[s], np.arange(len(s)))
    mirrored = model.mean_shape[s] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(mirrored - model.mean_shape).max() < 1.0  # mm; the expression mean adds noise
    assert (s != np.arange(len(s))).mean() > 0.8


def test_bfm2017_with_albedomm_uses_its_linear_albedo(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    write_bfm2017(tmp_path, vertices, triangles)
    truth = write_albedomm(tmp_path / "albedoModel2020_face12_albedoPart.h5", len(vertices))
    model = import_bfm2017(tmp_path)
    for part, key in ((model.diffuse_albedo, "diffuse"), (model.specular_albedo, "specular")):
        assert part is not None and part.domain == "vertex"
        np.testing.assert_allclose(part.mean, truth[key]["mean"], atol=1e-6)
        np.testing.assert_allclose(part.std, np.sqrt(truth[key]["variance"]), rtol=1e-6)
        np.testing.assert_allclose(part.basis[1], truth[key]["basis"][:, 1].reshape(-1, 3), atol=1e-6)
    assert "AlbedoMM" in model.provenance


def test_bfm2017_from_a_zip_with_albedomm_inside(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    (tmp_path / "src").mkdir()
    write_bfm2017(tmp_path / "src", vertices, triangles)
    truth = write_albedomm(tmp_path / "src" / "albedoModel2020_face12_albedoPart.h5", len(vertices))
    with zipfile.ZipFile(tmp_path / "basel.zip", "w") as archive:
        for file in (tmp_path / "src").iterdir():
            archive.write(file, f"models/{file.name}")
    model = import_bfm2017(tmp_path / "basel.zip")
    np.testing.assert_allclose(model.specular_albedo.mean, truth["specular"]["mean"], atol=1e-6)
    assert "(model2017-1_face12_nomouth.h5)" in model.provenance
    assert "AlbedoMM" in model.provenance


def test_bfm2017_without_albedomm_linearises_its_colour_model(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    truth = write_bfm2017(tmp_path, vertices, triangles)
    model = import_bfm2017(tmp_path)
    assert model.specular_albedo is None
    diffuse = model.diffuse_albedo
    np.testing.assert_allclose(diffuse.mean, srgb_decode(truth["color"]["mean"]), atol=1e-6)
    # first-order exact: the linear model matches decoding the sRGB model up to O(eps^2)
    std = np.sqrt(truth["color"]["variance"])
    for eps in (1e-2, 1e-3):
        srgb = truth["color"]["mean"] + eps * std[0] * truth["color"]["basis"][:, 0].reshape(-1, 3)
        linear = diffuse.mean + eps * diffuse.std[0] * diffuse.basis[0]
        assert np.abs(srgb_decode(srgb) - linear).max() < 2.0 * eps ** 2


def test_linearised_colour_model_handles_the_dark_segment() -> None:
    model = linearise_colour_model(np.array([[0.02, 0.5, 1.0]]), np.ones((1, 1, 3)), np.ones(1))
    np.testing.assert_allclose(model.mean, srgb_decode(np.array([[0.02, 0.5, 1.0]])), rtol=1e-6)
    assert model.basis[0, 0, 0] == pytest.approx(1.0 / 12.92)


@pytest.mark.parametrize("skip, message", [("expression", "expression/model/mean"),
                                           ("cells", "shape/representer/cells")])
def test_bfm2017_missing_group_names_file_and_dataset(tmp_path: Path, mesh, skip: str, message: str) -> None:
    write_bfm2017(tmp_path, *mesh, skip=skip)
    with pytest.raises(ValueError, match=message) as error:
        import_bfm2017(tmp_path)
    assert "model2017-1_face12_nomouth.h5" in str(error.value)


def test_bfm2017_inconsistent_shapes_and_albedo_raise(tmp_path: Path, mesh) -> None:
    vertices, triangles = mesh
    write_bfm2017(tmp_path, vertices, triangles)
    write_albedomm(tmp_path / "albedoModel2020_face12_albedoPart.h5", len(vertices) + 3)
    with pytest.raises(ValueError, match="use the albedo file made for this shape model"):
        import_bfm2017(tmp_path)
    with h5py.File(tmp_path / "model2017-1_face12_nomouth.h5", "a") as f:
        del f["shape/model/pcaVariance"]
        f["shape/model/pcaVariance"] = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        import_bfm2017(tmp_path, albedo=None)


def test_bfm2017_bad_sources(tmp_path: Path, mesh) -> None:
    with pytest.raises(ModelSourceError, match="model2017-1_face12_nomouth.h5"):
        import_bfm2017(tmp_path)
    with pytest.raises(ModelSourceError, match="does not exist"):
        import_bfm2017(tmp_path / "nothing.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(ModelSourceError, match="neither an HDF5 file nor a zip / tar archive"):
        import_bfm2017(tmp_path / "x.h5")
    write_bfm2017(tmp_path, mesh[0] / 1000.0, mesh[1])  # metres instead of mm
    with pytest.raises(ValueError, match="not 50-500 mm"):
        import_bfm2017(tmp_path)


def bfm2009_fields(vertices: np.ndarray, triangles: np.ndarray) -> dict[str, np.ndarray]:
    """BFM 2009 fields in MATLAB's layout: micrometres, colour 0..255, 1-based (F, 3) tl."""
    v = len(vertices)
    rng = np.random.default_rng(7)
    return {
        "shapeMU": (vertices * 1000.0).reshape(-1, 1), "shapePC": orthonormal(3 * v, 4, 8),
        "shapeEV": np.array([[5000.0], [3000.0], [2000.0], [1000.0]]),
        "texMU": (120.0 + 40.0 * rng.random((v, 3))).reshape(-1, 1), "texPC": orthonormal(3 * v, 3, 9),
        "texEV": np.array([[30.0], [20.0], [10.0]]), "tl": (triangles + 1).astype(np.float64),
        "segbin": np.ones((v, 4)),
    }


def check_bfm2009(model, fields: dict[str, np.ndarray], triangles: np.ndarray) -> None:
    v = model.n_vertices
    np.testing.assert_allclose(model.mean_shape, fields["shapeMU"].reshape(v, 3) / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(model.identity_std, fields["shapeEV"].ravel() / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(model.identity_basis[3], fields["shapePC"][:, 3].reshape(v, 3), atol=1e-6)
    assert model.expression_basis.shape == (0, v, 3) and model.expression_std.shape == (0,)
    np.testing.assert_array_equal(model.triangles, triangles)
    np.testing.assert_allclose(model.diffuse_albedo.mean, srgb_decode(fields["texMU"].reshape(v, 3) / 255.0),
                               atol=1e-6)
    np.testing.assert_allclose(model.diffuse_albedo.std, fields["texEV"].ravel() / 255.0, rtol=1e-6)
    assert model.specular_albedo is None
    assert model.uvs.shape == (v, 2)


def test_bfm2009_mat_v5_micrometres_to_mm(tmp_path: Path, mesh) -> None:
    fields = bfm2009_fields(*mesh)
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", fields)
    check_bfm2009(import_bfm2009(tmp_path), fields, mesh[1])


def test_bfm2009_mat_v73_hdf5_transposed(tmp_path: Path, mesh) -> None:
    fields = bfm2009_fields(*mesh)
    with h5py.File(tmp_path / "01_MorphableModel.mat", "w") as f:
        for key, value in fields.items():
            f[key] = value.T  # MATLAB v7.3 stores column-major: h5py sees the transpose
    check_bfm2009(import_bfm2009(tmp_path / "01_MorphableModel.mat"), fields, mesh[1])


def test_bfm2009_from_the_downloaded_tgz(tmp_path: Path, mesh) -> None:
    fields = bfm2009_fields(*mesh)
    (tmp_path / "PublicMM1").mkdir()
    scipy.io.savemat(tmp_path / "PublicMM1" / "01_MorphableModel.mat", fields)
    with tarfile.open(tmp_path / "BaselFaceModel.tgz", "w:gz") as archive:
        archive.add(tmp_path / "PublicMM1", arcname="PublicMM1")
    check_bfm2009(import_bfm2009(tmp_path / "BaselFaceModel.tgz"), fields, mesh[1])
    check_bfm2009(import_bfm2009(tmp_path), fields, mesh[1])  # folder searched recursively


def test_bfm2009_vertices_without_expression(tmp_path: Path, mesh) -> None:
    fields = bfm2009_fields(*mesh)
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", fields)
    model = import_bfm2009(tmp_path)
    out = model.vertices(identity=torch.zeros(2, 4))
    np.testing.assert_allclose(out[1].numpy(), model.mean_shape, atol=1e-5)


def test_bfm2009_bad_files(tmp_path: Path, mesh) -> None:
    with pytest.raises(ModelSourceError, match="holds no 01_MorphableModel.mat"):
        import_bfm2009(tmp_path)
    with pytest.raises(ModelSourceError, match="does not exist"):
        import_bfm2009(tmp_path / "missing.mat")
    fields = bfm2009_fields(*mesh)
    del fields["texEV"]
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", fields)
    with pytest.raises(ValueError, match="lacks the field"):
        import_bfm2009(tmp_path)
    fields = bfm2009_fields(*mesh)
    fields["tl"] = fields["tl"] - 1
    scipy.io.savemat(tmp_path / "01_MorphableModel.mat", fields)
    with pytest.raises(ValueError, match="1-based"):
        import_bfm2009(tmp_path)
    (tmp_path / "01_MorphableModel.mat").write_text("garbage")
    with pytest.raises(ValueError, match="not a readable MATLAB file"):
        import_bfm2009(tmp_path)
