"""`mfface export --blender`: a Python script for Blender that sets up a fitted face as mfface
renders it: the GLB, its material, the world light with mfface's orientation, and the camera.

Conventions (docs/export.md has the derivations):

- **Axes.** `mesh.glb` is the fitted mesh in model space, metres (+x the face's left, +y up, +z out
  of the face), which is glTF's frame (+y up, +z the asset's front). Blender's glTF importer turns
  it into Blender's +z-up frame, (x, y, z)_blender = (x, -z, y)_glTF (`GLTF_TO_BLENDER`), so the
  face looks along Blender's -y (towards the default front view).
- **World light.** The fitted light (envmap.exr) and every map `mfface relight` takes are in the
  light frame (docs/light.md), fixed to the photo's camera. Relative to the unposed mesh that frame
  is turned by the head pose: a light-frame direction d is the model-space direction
  R_head^T d (R = diag(1, -1, -1) R_head, `mfface.camera`). Blender's Environment Texture looks a
  world direction D up at u = 0.5 - atan2(D_y, D_x) / 2 pi, v = 1 - acos(D_z) / pi (Cycles and
  EEVEE), which for mfface's lat-long layout means the texel of light-frame direction d is found
  along D = P d, P = [[0, 0, 1], [1, 0, 0], [0, 1, 0]] (`LATLONG_TO_BLENDER`). A Mapping node
  (type Point) in front of the texture turns the lookup vector by
      WORLD_ROTATION = P R_y(rotate)^T R_head GLTF_TO_BLENDER^T,
  so light that mfface sends from light-frame direction d arrives in Blender from
  GLTF_TO_BLENDER R_head^T R_y(rotate) d: the face is lit as in the photo. (Blender samples rows at
  texel centres, Mitsuba puts the first and last row on the poles: a shift of at most half a row,
  1.4 degrees for the 64-row fitted map.)
- **Camera.** A Blender camera looks down its local -z with +y up, which in OpenCV camera terms is
  diag(1, -1, -1): the light frame. So its rotation in Blender is GLTF_TO_BLENDER R_head^T, its
  location GLTF_TO_BLENDER (-R^T t) / 1000; lens = focal_px / width_px * 36 mm on a 36 mm wide
  sensor; shift_x = (W/2 - c_x) / W, shift_y = (c_y - H/2) / W (the principal point). A render
  from it lines up with `render.png`.
- **Material.** Principled BSDF: Base Color = mesh_diffuse.png (colour space sRGB); Roughness =
  mesh_roughness.png (Non-Color), used as it is: mfface's GGX alpha = roughness^2, as in Blender
  and glTF, so nothing is squared; Metallic 0; IOR 1.5. Specular: mfface's specular map is the
  Schlick F0 (sRGB-encoded in the PNG). Blender 4's dielectric F0 is 0.04 * 2 * Specular IOR Level
  * Specular Tint at IOR 1.5, so Specular IOR Level = 12.5 * grey(F0) and Specular Tint =
  F0 / grey(F0); Blender 2.8-3.x: Specular = F0 / 0.08 = 12.5 * grey(F0). (In the GLB the same F0
  is written through KHR_materials_specular as specularColorTexture = F0 with
  specularColorFactor 25, since glTF's F0 = ((ior - 1) / (ior + 1))^2 * factor * texture = 0.04 *
  25 * F0.) Colour management: view transform Standard (sRGB display), as mfface's PNGs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mfface.camera import head_rotation, rotation_matrix
from mfface.replay import FittedFace

SCRIPT_NAME = "blender_scene.py"
GLTF_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
LATLONG_TO_BLENDER = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
SENSOR_WIDTH_MM = 36.0
F0_TO_SPECULAR_LEVEL = 0.5 / 0.04  # Blender 4: F0 = 0.04 * 2 * level -> level = 12.5 F0


class ExportError(ValueError):
    """An export input the user must fix; the message says what to do."""


def rotation_y(degrees: float) -> np.ndarray:
    """(3, 3) turn about the light frame's +y, counter-clockwise seen from above (as relight)."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])


def world_rotation(euler: torch.Tensor | np.ndarray, rotate: float = 0.0) -> np.ndarray:
    """The Mapping node's rotation (3, 3) for head pose `euler` (3,) rad and a light rig turned by
    `rotate` degrees (module docstring)."""
    head = head_rotation(torch.as_tensor(np.asarray(euler, dtype=np.float64))[None])[0].numpy()
    return LATLONG_TO_BLENDER @ rotation_y(rotate).T @ head @ GLTF_TO_BLENDER.T


def euler_xyz(matrix: np.ndarray) -> tuple[float, float, float]:
    """Blender's Euler 'XYZ' angles (rad) of a rotation matrix = Rz(z) Ry(y) Rx(x), the
    convention of the Mapping node and of object rotations."""
    m = np.asarray(matrix, dtype=np.float64)
    y = math.asin(max(-1.0, min(1.0, -m[2, 0])))
    if abs(m[2, 0]) < 1.0 - 1e-9:
        x = math.atan2(m[2, 1], m[2, 2])
        z = math.atan2(m[1, 0], m[0, 0])
    else:  # gimbal lock: put everything into x
        x = math.atan2(-m[1, 2], m[1, 1])
        z = 0.0
    return (x, y, z)


def euler_xyz_matrix(angles: tuple[float, float, float]) -> np.ndarray:
    """Rz(z) Ry(y) Rx(x): the inverse of `euler_xyz`."""
    x, y, z = angles
    cx, sx, cy, sy, cz, sz = math.cos(x), math.sin(x), math.cos(y), math.sin(y), math.cos(z), math.sin(z)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class BlenderCamera:
    """The photo's camera in Blender: `matrix` (4, 4) world matrix (metres), `lens` mm on a
    `sensor_width` mm sensor (fit horizontal), `shift` (x, y), `resolution` px (square)."""
    matrix: np.ndarray
    lens: float
    sensor_width: float
    shift: tuple[float, float]
    resolution: int


def blender_camera(face: FittedFace) -> BlenderCamera:
    """The fitted camera of `face` in Blender's frame, for the fit's crop size."""
    state = face.state
    euler = state.euler[0].detach().cpu().double()
    rotation = rotation_matrix(euler[None])[0].numpy()
    head = head_rotation(euler[None])[0].numpy()
    t = state.translation[0].detach().cpu().double().numpy()
    matrix = np.eye(4)
    matrix[:3, :3] = GLTF_TO_BLENDER @ head.T
    matrix[:3, 3] = GLTF_TO_BLENDER @ (-rotation.T @ t) * 1e-3
    size = face.crop_size
    focal = float(state.focal.reshape(-1)[0])
    if state.principal is None:
        cx = cy = size / 2.0
    else:
        cx, cy = (float(v) for v in state.principal.reshape(-1)[:2])
    return BlenderCamera(matrix, focal / size * SENSOR_WIDTH_MM, SENSOR_WIDTH_MM,
                         ((size / 2.0 - cx) / size, (cy - size / 2.0) / size), size)


def world_strength(face: FittedFace, envmap: str, exposure: float, absolute: bool) -> float:
    """The Background strength: 2^EV, times the scale that brings a chosen map to the fitted
    light's exposure unless `absolute` (as `mfface relight` does)."""
    from mfface.relight import RelightError, envmap_exposure, read_envmap
    from mfface.scenes.light_presets import exposure as sh_exposure

    gain = 2.0 ** exposure
    if envmap == "fitted" or absolute:
        return gain
    try:
        level = envmap_exposure(read_envmap(envmap))
    except RelightError as e:
        raise ExportError(str(e)) from None
    if level <= 0:
        raise ExportError(f"the environment map {envmap} is black; choose one with light.")
    return gain * max(float(sh_exposure(face.state.sh[0].detach().cpu())), 1e-6) / level


def _literal(value: object) -> str:
    if isinstance(value, np.ndarray):
        return repr([[round(float(x), 9) for x in row] for row in value]) if value.ndim == 2 else \
            repr([round(float(x), 9) for x in value])
    return repr(value)


def blender_script(face: FittedFace, envmap: str = "fitted", rotate: float = 0.0,
                   exposure: float = 0.0, absolute: bool = False) -> str:
    """The text of the Blender script for result folder `face` (see the module docstring).

    `envmap` 'fitted' (the folder's envmap.exr) or an .exr/.hdr lat-long file in the light frame;
    `rotate` degrees about the vertical axis, `exposure` EV, `absolute` as in `mfface relight`.
    """
    if envmap != "fitted" and not Path(envmap).is_file():
        raise ExportError(f"the environment map {envmap} does not exist; give an .exr or .hdr file "
                          f"or 'fitted'.")
    if not all(math.isfinite(v) for v in (rotate, exposure)):
        raise ExportError("--rotate and --exposure must be finite numbers.")
    folder = face.folder.resolve()
    missing = [n for n in ("mesh.glb", "mesh_diffuse.png", "mesh_specular.png", "mesh_roughness.png")
               if not (folder / n).is_file()]
    if envmap == "fitted" and not (folder / "envmap.exr").is_file():
        missing.append("envmap.exr")
    if missing:
        raise ExportError(f"{folder} lacks {', '.join(missing)}; run `mfface fit` again to "
                          f"write a complete result folder.")
    strength = world_strength(face, envmap, exposure, absolute)
    rotation = world_rotation(face.state.euler[0].detach().cpu().numpy(), rotate)
    camera = blender_camera(face)
    world_file = str(folder / "envmap.exr") if envmap == "fitted" else str(Path(envmap).resolve())
    constants = "\n".join([
        f"RESULT = {str(folder)!r}",
        f"GLB = {str(folder / 'mesh.glb')!r}",
        f"DIFFUSE = {str(folder / 'mesh_diffuse.png')!r}",
        f"SPECULAR = {str(folder / 'mesh_specular.png')!r}",
        f"ROUGHNESS = {str(folder / 'mesh_roughness.png')!r}",
        f"WORLD = {world_file!r}",
        f"WORLD_STRENGTH = {strength!r}",
        f"WORLD_ROTATION = {_literal(rotation)}",
        f"WORLD_EULER_XYZ = {euler_xyz(rotation)!r}",
        f"CAMERA_MATRIX = {_literal(camera.matrix)}",
        f"CAMERA_LENS_MM = {camera.lens!r}",
        f"CAMERA_SENSOR_MM = {camera.sensor_width!r}",
        f"CAMERA_SHIFT = {camera.shift!r}",
        f"RESOLUTION = {camera.resolution!r}",
        f"SPECULAR_LEVEL_PER_F0 = {F0_TO_SPECULAR_LEVEL!r}",
    ])
    name = "".join(c for c in face.folder.name if c.isprintable() and c not in "\\\"'")
    return _TEMPLATE.replace("@NAME@", name).replace("@CONSTANTS@", constants)


def write_blender_script(face: FittedFace, path: str | Path | None = None, **options: object) -> Path:
    """Write `blender_script(face, **options)` atomically to `path` (default: blender_scene.py in
    the result folder); returns the path."""
    path = Path(path) if path is not None else face.folder / SCRIPT_NAME
    return write_script(path, blender_script(face, **options))  # type: ignore[arg-type]


def write_script(path: str | Path, text: str) -> Path:
    """Write a script's `text` atomically after checking that it parses; returns the path."""
    from mfface.atomic import write_text

    compile(text, str(path), "exec")  # never write a script Blender cannot parse
    write_text(path, text)
    return Path(path)


_TEMPLATE = '''"""Blender set-up of the mfface fit @NAME@ (written by `mfface export --blender`).

Run it in Blender 2.93 or newer: `blender --python blender_scene.py`, or open it in the Text
Editor and press Run Script. It imports mesh.glb (model space, metres, smooth normals), gives it a
Principled BSDF wired to the fitted maps with the right colour spaces, sets the world to the light
with the orientation mfface uses (the face is lit as in the photo), and adds the photo's camera.
Paths are absolute; a file missing there is looked for beside this script. Conventions: mfface's
docs/export.md.
"""
import math
import os

import bpy
from mathutils import Euler, Matrix

@CONSTANTS@

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()


def find(path):
    """`path`, else the file of that name beside this script."""
    if os.path.exists(path):
        return path
    local = os.path.join(HERE, os.path.basename(path))
    if os.path.exists(local):
        return local
    raise FileNotFoundError("mfface: cannot find " + path + " (nor beside this script)")


def colour_space(image, names):
    """Set the first of `names` this Blender knows (names differ between versions)."""
    for name in names:
        try:
            image.colorspace_settings.name = name
            return
        except TypeError:
            continue


def image_node(nodes, path, space, location):
    node = nodes.new("ShaderNodeTexImage")
    node.image = bpy.data.images.load(find(path), check_existing=True)
    colour_space(node.image, space)
    node.location = location
    return node


def set_input(node, names, value):
    for name in names:
        if name in node.inputs:
            node.inputs[name].default_value = value
            return node.inputs[name]
    return None


def import_face():
    bpy.ops.import_scene.gltf(filepath=find(GLB))
    meshes = [o for o in bpy.context.selected_objects if o.type == "MESH"]
    for obj in meshes:
        obj.name = "mfface_face"
        for polygon in obj.data.polygons:
            polygon.use_smooth = True
    return meshes


def build_material(obj):
    material = bpy.data.materials.new("mfface_skin")
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    output = nodes.new("ShaderNodeOutputMaterial")
    output.location = (600, 0)
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.location = (300, 0)
    links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    diffuse = image_node(nodes, DIFFUSE, ("sRGB",), (-500, 300))
    links.new(diffuse.outputs["Color"], bsdf.inputs["Base Color"])
    roughness = image_node(nodes, ROUGHNESS, ("Non-Color",), (-500, 0))
    links.new(roughness.outputs["Color"], bsdf.inputs["Roughness"])  # alpha = roughness^2, as mfface
    set_input(bsdf, ("Metallic",), 0.0)
    set_input(bsdf, ("IOR",), 1.5)
    specular = image_node(nodes, SPECULAR, ("sRGB",), (-700, -300))  # F0, linear after decoding
    grey = nodes.new("ShaderNodeRGBToBW")
    grey.location = (-400, -300)
    links.new(specular.outputs["Color"], grey.inputs["Color"])
    level = nodes.new("ShaderNodeMath")
    level.operation = "MULTIPLY"
    level.location = (-200, -300)
    links.new(grey.outputs["Val"], level.inputs[0])
    level.inputs[1].default_value = SPECULAR_LEVEL_PER_F0
    if "Specular IOR Level" in bsdf.inputs:  # Blender 4: F0 = 0.04 * 2 * level * tint
        links.new(level.outputs["Value"], bsdf.inputs["Specular IOR Level"])
        tint = nodes.new("ShaderNodeVectorMath")
        tint.operation = "DIVIDE"
        tint.location = (-200, -500)
        links.new(specular.outputs["Color"], tint.inputs[0])
        links.new(grey.outputs["Val"], tint.inputs[1])
        links.new(tint.outputs["Vector"], bsdf.inputs["Specular Tint"])
    else:  # Blender 2.8-3.x: F0 = 0.08 * Specular
        links.new(level.outputs["Value"], bsdf.inputs["Specular"])
        set_input(bsdf, ("Specular Tint",), 0.0)
    obj.data.materials.clear()
    obj.data.materials.append(material)


def build_world():
    world = bpy.context.scene.world or bpy.data.worlds.new("mfface_light")
    bpy.context.scene.world = world
    world.use_nodes = True
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    coords = nodes.new("ShaderNodeTexCoord")
    coords.location = (-900, 0)
    mapping = nodes.new("ShaderNodeMapping")
    mapping.location = (-700, 0)
    mapping.vector_type = "POINT"
    mapping.inputs["Rotation"].default_value = Euler(WORLD_EULER_XYZ, "XYZ")
    links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
    texture = nodes.new("ShaderNodeTexEnvironment")
    texture.location = (-450, 0)
    texture.image = bpy.data.images.load(find(WORLD), check_existing=True)
    colour_space(texture.image, ("Linear Rec.709", "Linear", "Non-Color"))
    texture.interpolation = "Linear"
    links.new(mapping.outputs["Vector"], texture.inputs["Vector"])
    background = nodes.new("ShaderNodeBackground")
    background.location = (-150, 0)
    background.inputs["Strength"].default_value = WORLD_STRENGTH
    links.new(texture.outputs["Color"], background.inputs["Color"])
    output = nodes.new("ShaderNodeOutputWorld")
    output.location = (100, 0)
    links.new(background.outputs["Background"], output.inputs["Surface"])


def build_camera():
    data = bpy.data.cameras.new("mfface_camera")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = CAMERA_SENSOR_MM
    data.lens = CAMERA_LENS_MM
    data.shift_x, data.shift_y = CAMERA_SHIFT
    data.clip_start, data.clip_end = 0.01, 100.0
    camera = bpy.data.objects.new("mfface_camera", data)
    bpy.context.scene.collection.objects.link(camera)
    camera.matrix_world = Matrix(CAMERA_MATRIX)
    scene = bpy.context.scene
    scene.camera = camera
    scene.render.resolution_x = scene.render.resolution_y = RESOLUTION
    scene.render.resolution_percentage = 100
    scene.render.engine = "CYCLES"
    try:
        scene.view_settings.view_transform = "Standard"
    except TypeError:
        pass


def main():
    for obj in import_face():
        build_material(obj)
    build_world()
    build_camera()
    print("mfface: set up " + RESULT)


main()
'''
