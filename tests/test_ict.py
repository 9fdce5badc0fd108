"""ICT-FaceKit importer: topology, units, bases, landmarks, regions and bad sources."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import data_file
from mfface.morphable.format import ModelSourceError
from mfface.morphable.ict import COMMIT, import_ict, import_ict_indexed

ICT_ARCHIVE = "ICT-FaceKit.tar.xz"
def test_sizes_names_and_units(ict):
    assert ict.name == "ict"
    assert ict.n_vertices == 9547 and ict.triangles.shape == (18460, 3)
    assert ict.n_identity == 100 and ict.n_expression == 55
    assert ict.expression_names[:2] == ["browDown_L", "browDown_R"]
    assert {"cheekRaiser_L", "cheekRaiser_R", "jawOpen"} <= set(ict.expression_names)
    assert not any(n.startswith("PupilDilate") for n in ict.expression_names)
    height = np.ptp(ict.mean_shape[:, 1])
    assert 250 < height < 300  # mm: chin-to-crown of the face area (cm * 10)
    assert ict.uvs.min() >= 0 and ict.uvs.max() <= 1
    assert ict.diffuse_albedo is None and ict.specular_albedo is None
    assert COMMIT in ict.provenance and "MIT License" in ict.license


def test_identity_modes_are_std_scaled_pca(ict):
    """std = 1 and basis = mode - neutral: RMS displacement falls with the mode index."""
    assert np.all(ict.identity_std == 1) and np.all(ict.expression_std == 1)
    rms = np.sqrt((ict.identity_basis.astype(np.float64) ** 2).sum(-1).mean(-1))
    assert rms[0] > 10 * rms[-1]
    assert np.corrcoef(np.arange(100), np.log(rms))[0, 1] < -0.9
    assert 1.0 < rms[0] < 10.0  # mm: one std of the first mode moves the face by millimetres


def test_vertices_follow_the_bases(ict):
    coeff = torch.zeros(2, 100)
    coeff[1, 3] = 2.0
    expr = torch.zeros(2, 55)
    expr[1, ict.expression_names.index("jawOpen")] = 1.0
    verts = ict.vertices(coeff, expr).numpy()
    np.testing.assert_allclose(verts[0], ict.mean_shape, atol=1e-4)
    jaw = ict.expression_basis[ict.expression_names.index("jawOpen")]
    np.testing.assert_allclose(verts[1], ict.mean_shape + 2 * ict.identity_basis[3] + jaw, atol=1e-3)
    chin = ict.landmarks["ibug68"][8]
    assert jaw[chin, 1] < -10  # opening the jaw drops the chin by centimetres


def test_frame_winding_and_uv_split(ict):
    lm = ict.mean_shape[ict.landmarks["ibug68"]]
    assert lm[36, 0] < 0 < lm[45, 0]  # subject's right eye corner on -x
    assert lm[30, 2] > lm[0, 2]  # nose tip in front of the jaw (+z out of the face)
    assert lm[27, 1] > lm[8, 1]  # nose bridge above the chin (+y up)
    v = ict.mean_shape.astype(np.float64)[ict.triangles]
    area = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    # counter-clockwise seen from outside: the summed area vector of an open face mask points +z
    total = area.sum(0)
    assert total[2] > 0.8 * np.linalg.norm(total)
    uv = ict.uvs[ict.triangles]
    assert np.abs(uv - uv.mean(1, keepdims=True)).max() < 0.1  # no triangle spans a UV seam


def test_landmarks_regions_and_symmetry(ict):
    mp = ict.landmarks["mediapipe478"]
    assert mp.shape == (478,) and np.all(mp[468:] == -1) and np.all(mp[:468] >= 0)
    contour = ict.landmarks["mediapipe478_contour"]
    assert (contour >= 0).sum() == 36 and np.all(contour[contour >= 0] == mp[contour >= 0])
    assert np.all(ict.landmarks["ibug68_contour"][17:] == -1)
    r = ict.regions
    assert set(r["skin"]) <= set(r["fit"]) <= set(r["face"])
    assert not set(r["skin"]) & (set(r["eyes"]) | set(r["mouth"]))
    assert set(ict.landmarks["ibug68"][48:60]) <= set(r["mouth"])
    assert set(ict.landmarks["ibug68"][36:48]) <= set(r["eyes"])
    partner = ict.symmetry
    mirrored = ict.mean_shape[partner] * np.array([-1, 1, 1])
    assert np.median(np.linalg.norm(mirrored - ict.mean_shape, axis=1)) < 1e-3
    assert np.all(partner[partner[ict.landmarks["ibug68"]]] == ict.landmarks["ibug68"])
    ib = ict.landmarks["ibug68"]
    assert partner[ib[36]] == ib[45] and partner[ib[48]] == ib[54]


def test_original_indices_keep_landmarks(ict_indexed):
    model, to_orig = ict_indexed
    readme_first = [1225, 1888, 1052]
    assert list(to_orig[model.landmarks["ibug68"][:3]]) == readme_first
    assert to_orig.max() < 9409


def test_bad_sources(tmp_path):
    with pytest.raises(ModelSourceError, match="unknown ICT region"):
        import_ict(tmp_path, region="ears")
    with pytest.raises(ModelSourceError, match="does not contain ICT-FaceKit"):
        import_ict(tmp_path)
    with pytest.raises(ModelSourceError, match="does not exist"):
        import_ict(tmp_path / "missing.zip")


def test_zip_and_folder_layouts_are_read(tmp_path):
    """Both layouts reach the OBJ parser (a one-vertex mesh is then rejected by count)."""
    mesh = "v 0 0 0\nvt 0 0\nf 1/1 1/1 1/1\n"
    folder = tmp_path / "ICT-FaceKit" / "FaceXModel"
    folder.mkdir(parents=True)
    (folder / "generic_neutral_mesh.obj").write_text(mesh)
    (folder / "vertex_indices.json").write_text(json.dumps({"expressions": []}))
    with pytest.raises(ModelSourceError, match="1 vertices instead of ICT's 26719"):
        import_ict(tmp_path / "ICT-FaceKit")
    archive = tmp_path / "ict.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(f"ICT-FaceKit-{COMMIT}/FaceXModel/generic_neutral_mesh.obj", mesh)
    with pytest.raises(ModelSourceError, match="1 vertices instead of ICT's 26719"):
        import_ict(archive)


def test_truncated_archive(tmp_path):
    data = Path(data_file(ICT_ARCHIVE)).read_bytes()[:3_000_000]
    broken = tmp_path / "ICT-FaceKit.tar.xz"
    broken.write_bytes(data)
    with pytest.raises(ModelSourceError, match="damaged or incomplete"):
        import_ict(broken)
