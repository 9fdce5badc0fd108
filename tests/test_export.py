"""OBJ/MTL/PNG and GLB export, read back with trimesh and Pillow."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.spatial import cKDTree
from test_uv import face_mesh

from mfface.morphable.export import write_glb, write_obj
from mfface.morphable.uv import unwrap_lscm


def srgb_decode(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@pytest.fixture(scope="module")
def scene() -> dict:
    vertices, triangles = face_mesh(n=9)
    rng = np.random.default_rng(0)
    return {
        "vertices": vertices, "triangles": triangles, "uvs": unwrap_lscm(vertices, triangles),
        "textures": {"diffuse": rng.random((16, 24, 3)).astype(np.float32),
                     "specular": rng.random((16, 24, 3)).astype(np.float32),
                     "roughness": rng.random((16, 24)).astype(np.float32)},
    }


def match(reference: np.ndarray, loaded: np.ndarray) -> np.ndarray:
    """For each reference vertex, the index of the loaded vertex at the same place."""
    distance, index = cKDTree(loaded).query(reference)
    assert distance.max() < 1e-4
    return index


def test_obj_round_trip(tmp_path: Path, scene: dict) -> None:
    written = write_obj(tmp_path / "face.obj", scene["vertices"], scene["triangles"], scene["uvs"],
                        scene["textures"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written) == [
        "face.mtl", "face.obj", "face_diffuse.png", "face_roughness.png", "face_specular.png"]
    mesh = trimesh.load(tmp_path / "face.obj", process=False)
    index = match(scene["vertices"], mesh.vertices)
    np.testing.assert_allclose(mesh.visual.uv[index], scene["uvs"], atol=1e-6)
    assert len(mesh.faces) == len(scene["triangles"])
    diffuse = np.asarray(mesh.visual.material.image.convert("RGB")) / 255.0
    np.testing.assert_allclose(srgb_decode(diffuse), scene["textures"]["diffuse"], atol=0.01)
    roughness = np.asarray(Image.open(tmp_path / "face_roughness.png")) / 255.0
    np.testing.assert_allclose(roughness, scene["textures"]["roughness"], atol=0.5 / 255 + 1e-6)
    mtl = (tmp_path / "face.mtl").read_text()
    for line in ("map_Kd face_diffuse.png", "map_Ks face_specular.png", "map_Pr face_roughness.png"):
        assert line in mtl
    assert "sRGB" in mtl and "linear" in mtl


def test_obj_without_uvs_or_textures_is_plain_geometry(tmp_path: Path, scene: dict) -> None:
    write_obj(tmp_path / "g.obj", torch.from_numpy(scene["vertices"]), scene["triangles"])
    assert [p.name for p in tmp_path.iterdir()] == ["g.obj"]
    mesh = trimesh.load(tmp_path / "g.obj", process=False)
    match(scene["vertices"], mesh.vertices)


def read_glb_json(path: Path) -> dict:
    data = path.read_bytes()
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON" and struct.unpack_from("<I", data, 8)[0] == len(data)
    return json.loads(data[20:20 + length])


def test_glb_round_trip_with_pbr_and_specular_extension(tmp_path: Path, scene: dict) -> None:
    path = write_glb(tmp_path / "face.glb", scene["vertices"], scene["triangles"], scene["uvs"],
                     scene["textures"])
    assert [p.name for p in tmp_path.iterdir()] == ["face.glb"]
    loaded = trimesh.load(path, process=False)
    mesh = next(iter(loaded.geometry.values()))
    index = match(scene["vertices"], mesh.vertices)
    np.testing.assert_allclose(mesh.visual.uv[index], scene["uvs"], atol=1e-6)
    material = mesh.visual.material
    base = np.asarray(material.baseColorTexture.convert("RGB")) / 255.0
    np.testing.assert_allclose(srgb_decode(base), scene["textures"]["diffuse"], atol=0.01)
    packed = np.asarray(material.metallicRoughnessTexture.convert("RGB")) / 255.0
    np.testing.assert_allclose(packed[..., 1], scene["textures"]["roughness"], atol=0.5 / 255 + 1e-6)
    assert np.all(packed[..., 2] == 0) and material.metallicFactor == 0
    tree = read_glb_json(path)
    assert "KHR_materials_specular" in tree["extensionsUsed"]
    ext = tree["materials"][0]["extensions"]["KHR_materials_specular"]
    assert 0.04 * ext["specularColorFactor"][0] == pytest.approx(1.0)
    # the referenced image decodes to the specular map
    view = tree["bufferViews"][tree["images"][tree["textures"][ext["specularColorTexture"]["index"]]["source"]]["bufferView"]]
    data = path.read_bytes()
    binary_start = 20 + struct.unpack_from("<I", data, 12)[0] + 8
    png = data[binary_start + view["byteOffset"]: binary_start + view["byteOffset"] + view["byteLength"]]
    specular = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) / 255.0
    np.testing.assert_allclose(srgb_decode(specular), scene["textures"]["specular"], atol=0.01)


def test_uint8_textures_are_written_as_given(tmp_path: Path, scene: dict) -> None:
    image = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_obj(tmp_path / "u.obj", scene["vertices"], scene["triangles"], scene["uvs"], {"diffuse": image})
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u_diffuse.png")), image)


@pytest.mark.parametrize("writer", [write_obj, write_glb])
def test_bad_inputs_raise_and_write_nothing(tmp_path: Path, scene: dict, writer) -> None:
    v, t, uv = scene["vertices"], scene["triangles"], scene["uvs"]
    target = tmp_path / ("x.obj" if writer is write_obj else "x.glb")
    with pytest.raises(ValueError, match="unknown texture 'albedo'"):
        writer(target, v, t, uv, {"albedo": np.zeros((4, 4, 3))})
    with pytest.raises(ValueError, match="textures need uvs"):
        writer(target, v, t, None, {"diffuse": np.zeros((4, 4, 3))})
    with pytest.raises(ValueError, match="one-channel"):
        writer(target, v, t, uv, {"roughness": np.zeros((4, 4, 3))})
    with pytest.raises(ValueError, match="triangles"):
        writer(target, v, t + len(v), uv)
    with pytest.raises(ValueError, match="uvs must be"):
        writer(target, v, t, uv[:-1])
    assert list(tmp_path.iterdir()) == []
