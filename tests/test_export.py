"""OBJ/MTL/PNG and GLB export (read back with trimesh and Pillow, checked against the glTF
specification and the Khronos validator), and `mfface export --blender`."""
from __future__ import annotations

import ast
import io
import json
import shutil
import struct
import subprocess
import sys
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
    path = write_glb(tmp_path / "n.glb", scene["vertices"], scene["triangles"], scene["uvs"],
                     scene["textures"])
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
    assert 0 <= len(binary) - tree["buffers"][0]["byteLength"] < 4   # the chunk pads to 4 bytes
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


# -- mfface export --blender ------------------------------------------------------------------------

EULER = (0.35, -0.2, 0.15)       # a turned, nodding, tilted head
PRINCIPAL = (21.0, 27.5)         # off the crop's centre (24, 24)


@pytest.fixture(scope="module")
def posed(tmp_path_factory, variant) -> tuple[Path, object]:
    """A complete result folder (mesh, maps, light, checkpoint) of a posed face, written with the
    writers `mfface.results` uses."""
    from test_relight import face_state, result_folder

    from mfface.forward import ForwardModel
    from mfface.morphable.store import ModelStore
    from mfface.scenes.exr import write_exr, write_hdr

    lite = ModelStore().load("ict-lite")
    state = face_state(lite, specular=0.04, roughness=0.45)
    state.euler = torch.tensor([EULER])
    state.principal = torch.tensor([PRINCIPAL])
    state.sh[0, 3] = 0.7
    folder = result_folder(tmp_path_factory.mktemp("export") / "posed", lite, state)
    vertices = lite.vertices(state.identity, state.expression)[0]
    maps = {n: getattr(state, n)[0] for n in ("diffuse", "specular", "roughness")}
    write_obj(folder / "mesh.obj", vertices, lite.triangles, lite.uvs, maps)
    write_glb(folder / "mesh.glb", vertices * 1e-3, lite.triangles, lite.uvs, maps)
    envmap = ForwardModel.envmap(state.sh, 64)[0]
    write_exr(folder / "envmap.exr", envmap)
    write_hdr(folder / "envmap.hdr", envmap)
    return folder, lite


def export_cli(*args):
    from click.testing import CliRunner

    from mfface.cli.main import cli

    return CliRunner().invoke(cli, ["export", *map(str, args)])


def constants(text: str) -> dict:
    """The upper-case literal assignments at the top of a generated script."""
    tree = ast.parse(text)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(node.value, (ast.Constant, ast.List, ast.Tuple, ast.UnaryOp))}


def mitsuba_texel(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, t) in [0, 1] of light-frame directions (N, 3) in mfface's (Mitsuba's) lat-long layout,
    t from the top (docs/light.md)."""
    phi = np.arctan2(d[:, 0], -d[:, 2]) % (2 * np.pi)
    return phi / (2 * np.pi), np.arccos(np.clip(d[:, 1], -1, 1)) / np.pi


def blender_equirect_direction(u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The lookup vector whose Environment Texture coordinates are (u, v = 1 - t): Cycles'
    equirectangular_range_to_direction with its default range (-2 pi, pi, -pi, pi)."""
    phi, theta = -2 * np.pi * u + np.pi, -np.pi * (1 - t) + np.pi
    return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1)


def test_blender_world_sends_the_light_from_where_mfface_does(posed, tmp_path):
    """Light that mfface sends from light-frame direction d (+x image right, +y up, +z towards the
    camera; turned by --rotate) must reach the Blender scene from the same side of the photo's
    camera: the world direction whose texel is d's equals the camera's own axes applied to
    R_y(rotate) d."""
    from mfface.blender import euler_xyz_matrix
    from mfface.relight import rotation_y

    folder, _ = posed
    run = export_cli(folder, "--blender", "--rotate", 25, "-o", tmp_path / "scene.py")
    assert run.exit_code == 0, run.output
    c = constants((tmp_path / "scene.py").read_text())
    mapping = np.array(c["WORLD_ROTATION"])
    np.testing.assert_allclose(euler_xyz_matrix(c["WORLD_EULER_XYZ"]), mapping, atol=1e-8)
    camera = np.array(c["CAMERA_MATRIX"])[:3, :3]   # columns: camera right, up, back (world)
    rng = np.random.default_rng(0)
    directions = np.vstack([np.eye(3), -np.eye(3), rng.normal(size=(50, 3))])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    u, t = mitsuba_texel(directions)
    world = blender_equirect_direction(u, t) @ mapping          # rows: mapping^T lookup
    expected = directions @ rotation_y(25.0).numpy().T @ camera.T
    np.testing.assert_allclose(world, expected, atol=1e-6)
    # the camera's "up" is the model's up tilted by the pose, and Blender's up is +z
    assert camera[2, 1] > 0.9


def test_blender_camera_sees_the_face_where_mfface_rendered_it(posed, tmp_path):
    from mfface.camera import project, to_camera

    folder, lite = posed
    assert export_cli(folder, "--blender").exit_code == 0
    c = constants((folder / "blender_scene.py").read_text())
    from mfface.replay import load_fitted_face

    state = load_fitted_face(folder).state
    model = lite.vertices(state.identity, state.expression).double()
    expected = project(to_camera(model, state.euler.double(), state.translation.double()),
                       state.focal.double(), c["RESOLUTION"], c["RESOLUTION"],
                       state.principal.double())[0].numpy()
    gltf_to_blender = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # Blender's glTF importer
    world = model[0].numpy() * 1e-3 @ gltf_to_blender.T
    matrix = np.array(c["CAMERA_MATRIX"])
    local = (world - matrix[:3, 3]) @ matrix[:3, :3]                   # Blender camera: looks down -z
    lens, sensor = c["CAMERA_LENS_MM"], c["CAMERA_SENSOR_MM"]
    (shift_x, shift_y), size = c["CAMERA_SHIFT"], c["RESOLUTION"]
    x = lens * local[:, 0] / -local[:, 2] / sensor
    y = lens * local[:, 1] / -local[:, 2] / sensor
    pixels = np.stack([(x + 0.5 - shift_x) * size, size - (y + 0.5 - shift_y) * size], 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-6 * size)


@pytest.mark.parametrize("blender4", [True, False])
def test_blender_script_runs_against_a_stand_in_bpy(posed, tmp_path, monkeypatch, blender4):
    """Blender is not installed: the script runs against a stand-in `bpy` (every call accepted),
    which catches Python mistakes in it and checks what it asks Blender for."""
    from unittest import mock

    folder, _ = posed
    path = tmp_path / "scene.py"
    assert export_cli(folder, "--blender", "-o", path).exit_code == 0
    text = path.read_text()
    bpy, mathutils = mock.MagicMock(), mock.MagicMock()
    mesh = mock.MagicMock()
    mesh.type = "MESH"
    mesh.data.polygons = [mock.MagicMock(), mock.MagicMock()]
    bpy.context.selected_objects = [mesh]
    node = bpy.data.materials.new.return_value.node_tree.nodes.new.return_value
    node.inputs.__contains__.return_value = blender4
    monkeypatch.setitem(sys.modules, "bpy", bpy)
    monkeypatch.setitem(sys.modules, "mathutils", mathutils)
    exec(compile(text, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    c = constants(text)
    bpy.ops.import_scene.gltf.assert_called_once_with(filepath=str(folder.resolve() / "mesh.glb"))
    assert all(p.use_smooth for p in mesh.data.polygons)
    camera = bpy.data.cameras.new.return_value
    assert camera.lens == c["CAMERA_LENS_MM"] and camera.sensor_fit == "HORIZONTAL"
    loaded = [call.args[0] for call in bpy.data.images.load.call_args_list]
    assert loaded == [str(folder.resolve() / n) for n in ("mesh_diffuse.png", "mesh_roughness.png",
                                                          "mesh_specular.png", "envmap.exr")]
    links = bpy.data.materials.new.return_value.node_tree.links.new.call_args_list
    sockets = {call.args[1] for call in links}
    assert c["SPECULAR_LEVEL_PER_F0"] == 12.5 and 0.04 * 2 * 12.5 == pytest.approx(1.0)
    assert len(sockets) >= 1 and mathutils.Euler.call_args.args == (tuple(c["WORLD_EULER_XYZ"]), "XYZ")


def test_export_command_options_and_result_ownership(posed, tmp_path):
    from mfface.outputs import foreign_entries
    from mfface.relight import envmap_exposure
    from mfface.scenes.exr import write_hdr
    from mfface.scenes.light_presets import exposure
    from mfface.replay import load_fitted_face

    folder, _ = posed
    run = export_cli(folder, "--blender")
    assert run.exit_code == 0 and "blender --python" in run.output, run.output
    assert foreign_entries(folder) == []          # envmap.hdr and blender_scene.py are mfface's
    compile((folder / "blender_scene.py").read_text(), "blender_scene.py", "exec")
    (tmp_path / "scripts").mkdir()
    assert export_cli(folder, "--blender", "-o", tmp_path / "scripts").exit_code == 0
    assert (tmp_path / "scripts" / "blender_scene.py").is_file()
    env = torch.rand(16, 32, 3) * 3
    write_hdr(tmp_path / "sky.hdr", env)
    run = export_cli(folder, "--blender", "--envmap", tmp_path / "sky.hdr", "-o", tmp_path / "a.py")
    assert run.exit_code == 0, run.output
    c = constants((tmp_path / "a.py").read_text())
    assert c["WORLD"] == str((tmp_path / "sky.hdr").resolve())
    from mfface.relight import read_envmap
    level = float(exposure(load_fitted_face(folder).state.sh[0]))
    map_level = envmap_exposure(read_envmap(tmp_path / "sky.hdr"))
    assert c["WORLD_STRENGTH"] == pytest.approx(level / map_level, rel=1e-6)
    assert export_cli(folder, "--blender", "--envmap", tmp_path / "sky.hdr", "--absolute", "--exposure", 1,
                      "-o", tmp_path / "b.py").exit_code == 0
    assert constants((tmp_path / "b.py").read_text())["WORLD_STRENGTH"] == 2.0


def test_export_bad_input(posed, tmp_path):
    folder, _ = posed

    def fails(run, fragment: str) -> None:
        assert run.exit_code != 0
        assert run.output.startswith("Error: ") and run.output.count("\n") == 1, run.output
        assert fragment in run.output, run.output
    fails(export_cli(folder), "--blender")
    fails(export_cli(tmp_path / "nope", "--blender"), "does not exist")
    (tmp_path / "empty").mkdir()
    fails(export_cli(tmp_path / "empty", "--blender"), "is not a result folder")
    fails(export_cli(folder, "--blender", "--envmap", tmp_path / "none.exr", "-o", tmp_path / "x.py"),
          "does not exist")
    from mfface.scenes.exr import write_exr
    write_exr(tmp_path / "square.exr", np.ones((8, 8, 3), np.float32))
    fails(export_cli(folder, "--blender", "--envmap", tmp_path / "square.exr", "-o", tmp_path / "x.py"),
          "2:1")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "mesh.glb").unlink()
    (broken / "blender_scene.py").unlink(missing_ok=True)   # left there by the tests above
    fails(export_cli(broken, "--blender"), "lacks mesh.glb")
    assert not (tmp_path / "x.py").exists() and not (broken / "blender_scene.py").exists()
