"""OBJ/MTL/PNG and GLB export (read back with trimesh and Pillow, checked against the glTF
specification and the Khronos validator), and `mfface export --blender`."""
from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.spatial import cKDTree
from conftest import REPO
from test_uv import face_mesh

from mfface.morphable.export import vertex_normals, write_glb, write_obj
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


# -- normals ---------------------------------------------------------------------------------------

def sphere(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=3.0)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def test_vertex_normals_are_smooth_unit_and_outward() -> None:
    vertices, triangles = sphere()
    normals = vertex_normals(vertices, triangles)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    radial = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", normals, radial).min() > 0.995
    # an unused vertex still gets a unit normal (glTF requires unit NORMALs)
    extra = vertex_normals(np.vstack([vertices, [[9.0, 9.0, 9.0]]]), triangles)
    assert np.linalg.norm(extra[-1]) == pytest.approx(1.0)


def test_obj_and_glb_carry_the_normals(tmp_path: Path, scene: dict) -> None:
    expected = vertex_normals(scene["vertices"], scene["triangles"])
    write_obj(tmp_path / "n.obj", scene["vertices"], scene["triangles"], scene["uvs"], scene["textures"])
    lines = (tmp_path / "n.obj").read_text().splitlines()
    vn = np.array([[float(x) for x in line.split()[1:]] for line in lines if line.startswith("vn ")])
    np.testing.assert_allclose(vn, expected, atol=1e-6)
    first_face = next(line for line in lines if line.startswith("f "))
    assert first_face.split()[1].count("/") == 2 and "//" not in first_face  # v/vt/vn
    write_obj(tmp_path / "plain.obj", scene["vertices"], scene["triangles"])
    plain = next(line for line in (tmp_path / "plain.obj").read_text().splitlines() if line.startswith("f "))
    assert all(corner.count("//") == 1 for corner in plain.split()[1:])   # v//vn without uvs
    path = write_glb(tmp_path / "n.glb", scene["vertices"], scene["triangles"], scene["uvs"], scene["textures"])
    tree, binary = read_glb(path)
    attributes = tree["meshes"][0]["primitives"][0]["attributes"]
    normals = accessor_data(tree, binary, attributes["NORMAL"])
    np.testing.assert_allclose(normals, expected, atol=1e-6)


# -- GLB structure (a check in Python of what the glTF 2.0 specification requires) -------------------

COMPONENTS = {5120: ("b", 1), 5121: ("B", 1), 5122: ("h", 2), 5123: ("H", 2), 5125: ("I", 4), 5126: ("f", 4)}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_length % 4 == 0
    tree = json.loads(data[20:20 + json_length])
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert bin_type == b"BIN\0" and bin_length % 4 == 0
    assert 20 + json_length + 8 + bin_length == len(data)
    return tree, data[28 + json_length:28 + json_length + bin_length]


def accessor_data(tree: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = tree["accessors"][index]
    view = tree["bufferViews"][accessor["bufferView"]]
    code, size = COMPONENTS[accessor["componentType"]]
    width = WIDTH[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    assert start % size == 0                                       # aligned to its component
    length = accessor["count"] * width * size
    assert accessor.get("byteOffset", 0) + length <= view["byteLength"]
    values = np.frombuffer(binary[start:start + length], dtype=np.dtype(f"<{code}"))
    return values.reshape(accessor["count"], width) if width > 1 else values


def check_glb_structure(path: Path, n_vertices: int, n_triangles: int) -> dict:
    """The GLB's chunks, buffer views, accessors, attributes, bounds, normals and images are what
    glTF 2.0 requires; returns the JSON."""
    tree, binary = read_glb(path)
    assert tree["asset"]["version"] == "2.0"
    assert tree["buffers"][0]["byteLength"] == len(binary) or len(binary) - tree["buffers"][0]["byteLength"] < 4
    for view in tree["bufferViews"]:
        assert view.get("byteOffset", 0) + view["byteLength"] <= tree["buffers"][0]["byteLength"]
    primitive = tree["meshes"][0]["primitives"][0]
    assert primitive.get("mode", 4) == 4                            # triangles
    attributes = primitive["attributes"]
    assert set(attributes) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    for name, index in attributes.items():
        accessor = tree["accessors"][index]
        assert accessor["count"] == n_vertices, name
        assert accessor["componentType"] == 5126
        assert tree["bufferViews"][accessor["bufferView"]].get("target") == 34962, name
    position = tree["accessors"][attributes["POSITION"]]
    values = accessor_data(tree, binary, attributes["POSITION"])
    np.testing.assert_allclose(position["min"], values.min(0), rtol=0, atol=0)  # exact bounds
    np.testing.assert_allclose(position["max"], values.max(0), rtol=0, atol=0)
    normals = accessor_data(tree, binary, attributes["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=5e-4)  # spec: unit length
    indices = accessor_data(tree, binary, primitive["indices"])
    assert len(indices) == 3 * n_triangles and indices.max() < n_vertices
    assert tree["bufferViews"][tree["accessors"][primitive["indices"]]["bufferView"]]["target"] == 34963
    for image in tree["images"]:
        view = tree["bufferViews"][image["bufferView"]]
        png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
        assert png.startswith(b"\x89PNG") and image["mimeType"] == "image/png"
        Image.open(io.BytesIO(png)).verify()
    material = tree["materials"][primitive["material"]]
    assert material["pbrMetallicRoughness"]["metallicFactor"] == 0
    return tree


def test_glb_structure(tmp_path: Path, scene: dict) -> None:
    path = write_glb(tmp_path / "s.glb", scene["vertices"] * 1e-3, scene["triangles"], scene["uvs"],
                     scene["textures"])
    check_glb_structure(path, len(scene["vertices"]), len(scene["triangles"]))


VALIDATOR = REPO / ".venv" / "node" / "node_modules" / "gltf-validator"


def test_glb_passes_the_khronos_validator(tmp_path: Path, scene: dict) -> None:
    """The Khronos glTF-Validator (npm, installed by ./setup.sh into .venv/node): no errors, no
    warnings, no infos, no hints."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("Node.js/npm are not installed, so ./setup.sh could not install the Khronos "
                    "glTF validator (the structural check above still ran)")
    assert VALIDATOR.is_dir(), "gltf-validator is missing: run ./setup.sh, which installs it with npm"
    rng = np.random.default_rng(1)   # mfface's maps are square powers of two (an info otherwise)
    maps = {"diffuse": rng.random((16, 16, 3)), "specular": rng.random((16, 16, 3)),
            "roughness": rng.random((16, 16))}
    path = write_glb(tmp_path / "v.glb", scene["vertices"] * 1e-3, scene["triangles"], scene["uvs"], maps)
    run = subprocess.run([node, str(REPO / "tests" / "gltf_validate.js"), str(VALIDATOR), str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    issues = json.loads(run.stdout)
    assert (issues["numErrors"], issues["numWarnings"], issues["numInfos"], issues["numHints"]) == \
        (0, 0, 0, 0), issues["messages"]
