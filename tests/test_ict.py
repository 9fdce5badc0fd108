"""ICT-FaceKit importer: topology, units, bases, landmarks, regions and bad sources."""
from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

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


# -- parts: eyeballs, mouth interior, teeth -------------------------------------------------------

def _coefficients(model, **weights: float) -> torch.Tensor:
    expression = torch.zeros(1, model.n_expression)
    for name, value in weights.items():
        expression[0, model.expression_names.index(name)] = value
    return expression


def _iris_centre(model, part: str, expression: torch.Tensor | None = None) -> np.ndarray:
    """Mean position (3,) mm of the part's pupil-edge vertices (material coordinate < 0.3)."""
    rows = model.part_slices()[part]
    pupil = np.flatnonzero(model.parts[[p.name for p in model.parts].index(part)].material_coord < 0.3)
    vertices = model.part_vertices(None, expression)[0, rows].numpy()
    return vertices[pupil].mean(0)


def test_parts_are_imported_with_counts_materials_and_ranges(ict):
    parts = {p.name: p for p in ict.parts}
    assert list(parts) == ["eye_left", "eye_right", "mouth", "teeth"]
    assert [p.material for p in ict.parts] == ["eyeball", "eyeball", "mouth", "teeth"]
    # sclera 770 + iris 800 vertices, minus the cornea's 189; mouth socket 2046 + 148 shared lip
    # vertices + gums and tongue 2977 (README ranges); teeth without molars.
    assert [p.n_vertices for p in ict.parts] == [1381, 1381, 5097, 2142]
    assert ict.n_part_vertices == 1381 * 2 + 5097 + 2142
    for part in ict.parts:
        assert part.identity_basis.shape == (100, part.n_vertices, 3)
        assert part.expression_basis.shape == (55, part.n_vertices, 3)
    left, right = parts["eye_left"], parts["eye_right"]
    assert left.mean[:, 0].min() > 10 > -10 > right.mean[:, 0].max()  # left eye at +x
    # the eye's material coordinate: pupil (< 0.3) in front, iris up to 1, sclera beyond
    assert left.material_coord.min() < 0.2 and left.material_coord.max() > 3.0
    iris = left.mean[left.material_coord < 1.0]
    assert len(iris) > 200 and iris[:, 2].min() > left.pivot_mean[2] + 10.0  # all in front
    radius = np.linalg.norm(left.mean - left.pivot_mean, axis=1)
    assert 11.0 < radius.min() and radius.max() < 17.5  # mm: an eyeball about its pivot
    # the cornea (up to 2 mm in front of the iris) is cut away: the iris disk is the front
    assert np.ptp(iris[:, 2]) < 1.2 and left.mean[:, 2].max() == pytest.approx(iris[:, 2].max())
    # face arrays, vertex order and fingerprint do not depend on the parts
    assert dataclasses.replace(ict, parts=[]).fingerprint() == ict.fingerprint()


def test_the_mouth_interior_stays_joined_to_the_lips(ict):
    """The mouth socket shares its rim with the face's inner lips: those vertices coincide with
    face vertices under any identity and expression (no crack opens when the jaw moves)."""
    mouth = ict.parts[2]
    distance, nearest = cKDTree(ict.mean_shape).query(mouth.mean)
    shared = distance < 1e-4
    assert 50 < shared.sum() < 300
    g = torch.Generator().manual_seed(3)
    identity = torch.randn(1, 100, generator=g)
    expression = _coefficients(ict, jawOpen=0.8, mouthSmile_L=0.5, mouthFunnel=0.3)
    face = ict.vertices(identity, expression)[0].numpy()
    rows = ict.part_slices()["mouth"]
    inside = ict.part_vertices(identity, expression)[0, rows].numpy()
    np.testing.assert_allclose(inside[shared], face[nearest[shared]], atol=1e-3)


def test_eye_look_turns_the_eyeballs_and_jaw_open_moves_the_teeth(ict):
    """ICT's eyeLook shapes leave the eyeballs in place; the parts turn them (30 deg in/out,
    25 deg up/down per unit coefficient) about the eye centre."""
    rest = {side: _iris_centre(ict, f"eye_{side}") for side in ("left", "right")}
    look_left = _coefficients(ict, eyeLookOut_L=1.0, eyeLookIn_R=1.0)  # both look to the subject's left
    for side in ("left", "right"):
        moved = _iris_centre(ict, f"eye_{side}", look_left) - rest[side]
        assert 6.0 < moved[0] < 9.0 and abs(moved[1]) < 0.5  # mm towards +x, the face's left
    up = _iris_centre(ict, "eye_left", _coefficients(ict, eyeLookUp_L=1.0)) - rest["left"]
    assert 5.0 < up[1] < 8.0 and abs(up[0]) < 0.5
    assert np.allclose(_iris_centre(ict, "eye_right", _coefficients(ict, eyeLookUp_L=1.0)), rest["right"])
    # rigid: every eye vertex keeps its distance from the pivot
    eye = ict.parts[0]
    turned = ict.part_vertices(None, look_left)[0, ict.part_slices()["eye_left"]].numpy()
    np.testing.assert_allclose(np.linalg.norm(turned - eye.pivot_mean, axis=1),
                               np.linalg.norm(eye.mean - eye.pivot_mean, axis=1), atol=1e-3)
    # jawOpen drops the lower teeth by millimetres and leaves the eyes alone
    teeth = ict.part_slices()["teeth"]
    open_jaw = ict.part_vertices(None, _coefficients(ict, jawOpen=1.0))[0].numpy()
    closed = ict.part_vertices()[0].numpy()
    assert (closed[teeth, 1] - open_jaw[teeth, 1]).max() > 10.0
    eyes = slice(0, 2 * 1381)
    np.testing.assert_allclose(open_jaw[eyes], closed[eyes], atol=1e-4)


def test_parts_follow_identity(ict):
    """An identity mode moves the eyeball's pivot with its vertices (the eye turns about its own
    centre for every face shape)."""
    identity = torch.zeros(1, 100)
    identity[0, 0] = 2.0
    eye = ict.parts[0]
    moved = ict.part_vertices(identity)[0, ict.part_slices()["eye_left"]].numpy()
    np.testing.assert_allclose(moved, eye.mean + 2.0 * eye.identity_basis[0], atol=1e-3)
    pivot = eye.pivot_mean + 2.0 * eye.pivot_identity[0]
    assert np.linalg.norm(pivot - eye.pivot_mean) > 0.5
    turned = ict.part_vertices(identity, _coefficients(ict, eyeLookOut_L=1.0))[0, ict.part_slices()["eye_left"]]
    np.testing.assert_allclose(np.linalg.norm(turned.numpy() - pivot, axis=1),
                               np.linalg.norm(moved - pivot, axis=1), atol=1e-3)


def test_pupil_centres_follow_the_gaze(ict):
    """`pupil_centres` is the middle of each eye's pupil: on the optical axis in front of the
    eye's centre, and turned with the eye-look coefficients."""
    rest = ict.pupil_centres()
    assert set(rest) == {"eye_left", "eye_right"} and rest["eye_left"].shape == (1, 3)
    for name in rest:
        eye = ict.parts[[p.name for p in ict.parts].index(name)]
        offset = rest[name][0].numpy() - eye.pivot_mean
        assert 14.0 < offset[2] < 17.0 and np.hypot(offset[0], offset[1]) < 2.5  # ~15.7 mm in front
    turned = ict.pupil_centres(None, _coefficients(ict, eyeLookOut_L=1.0, eyeLookIn_R=1.0))
    for name in rest:
        assert 6.0 < float(turned[name][0, 0] - rest[name][0, 0]) < 9.0
    assert ict.part_vertices().shape[1] == ict.n_part_vertices
    assert dataclasses.replace(ict, parts=[]).pupil_centres() == {}
