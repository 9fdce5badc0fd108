"""animation.glb: the tracked face as a glTF 2.0 morph-target animation (Blender, three.js, engines).

The file starts from the mesh `morphable.export.write_glb` writes (the neutral face of the fitted
identity, expression 0, in metres, with the fitted maps as its PBR material) and adds:

- one morph target per expression shape of the model, named in `mesh.extras.targetNames` (the
  convention Blender's and three.js's importers read as shape-key / morph names): POSITION deltas
  (the shape's displacement at weight 1, metres) and NORMAL deltas (the smooth normals of the
  neutral face plus the shape, minus the neutral face's). A morph weight is the model's
  expression coefficient, so weights are the ARKit blend weights in [0, 1] for ICT;
- a camera node at the origin with the video's vertical field of view and aspect ratio
  (yfov = 2 atan(H / 2f)), looking down -z (glTF's camera convention);
- one animation, "tracking", with LINEAR samplers keyed at every frame's time (seconds,
  frame index / fps): the mesh's morph weights, and the face node's rotation and translation.

Frames: glTF is right-handed, +y up, metres; the camera looks down -z. mfface's camera space is
OpenCV's (+y down, +z forward) and a head pose is X_cam = R0 R_head X_model + t with
R0 = diag(1, -1, -1) (mfface.camera), so in the glTF camera's frame X = R_head X_model +
(t_x, -t_y, -t_z): the node's rotation is R_head (quaternion x, y, z, w) and its translation is
(t_x, -t_y, -t_z) in metres. Model space is +x the face's left, +y up, +z out of the face, which
glTF viewers show upright and facing the camera at the frontal pose.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import write_bytes
from mfface.camera import head_rotation
from mfface.morphable.export import ARRAY_BUFFER, pack_glb, read_glb, vertex_normals, write_glb
from mfface.morphable.model import MorphableModel

FLOAT = 5126
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}


class _Buffer:
    """Appends float32 arrays to a GLB's binary chunk as bufferViews + accessors."""

    def __init__(self, tree: dict, binary: bytes) -> None:
        self.tree, self.data = tree, bytearray(binary)
        self.tree.setdefault("bufferViews", [])
        self.tree.setdefault("accessors", [])

    def add(self, array: np.ndarray, components: int, bounds: bool = False, target: int | None = None) -> int:
        """Accessor index of float32 `array` (count, components) or (count,); `bounds` adds min/max."""
        array = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, components)
        self.data += b"\0" * (-len(self.data) % 4)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": array.nbytes}
        if target is not None:
            view["target"] = target
        self.data += array.tobytes()
        self.tree["bufferViews"].append(view)
        accessor = {"bufferView": len(self.tree["bufferViews"]) - 1, "componentType": FLOAT,
                    "count": int(array.shape[0]), "type": _TYPES[components]}
        if bounds:
            accessor["min"] = array.min(0).astype(float).tolist()
            accessor["max"] = array.max(0).astype(float).tolist()
        self.tree["accessors"].append(accessor)
        return len(self.tree["accessors"]) - 1


def head_quaternions(euler: np.ndarray) -> np.ndarray:
    """Quaternions (T, 4) x, y, z, w of R_head(euler) for euler (T, 3) rad (mfface.camera),
    sign-aligned frame to frame so that linear interpolation takes the short way."""
    from scipy.spatial.transform import Rotation

    rotations = head_rotation(torch.as_tensor(np.asarray(euler), dtype=torch.float64)).numpy()
    quaternions = Rotation.from_matrix(rotations).as_quat()
    for i in range(1, len(quaternions)):
        if np.dot(quaternions[i], quaternions[i - 1]) < 0:
            quaternions[i] = -quaternions[i]
    return quaternions


def gltf_translation(translation_mm: np.ndarray) -> np.ndarray:
    """Camera-space translations (T, 3) mm (OpenCV) -> the glTF camera frame in metres: (x, -y, -z)."""
    return np.asarray(translation_mm, dtype=np.float64) * np.array([1.0, -1.0, -1.0]) * 1e-3


def write_animation_glb(path: str | Path, model: MorphableModel, identity: torch.Tensor,
                        maps: dict[str, np.ndarray], times: np.ndarray, euler: np.ndarray,
                        translation: np.ndarray, expression: np.ndarray, focal_px: float,
                        width: int, height: int, names: list[str] | None = None) -> Path:
    """Write animation.glb (see the module docstring); returns `path`.

    identity (1, K_id) std units; maps {'diffuse', 'specular', 'roughness'} linear (H, W, C) or
    (H, W); times (T,) s; euler (T, 3) rad, translation (T, 3) mm, expression (T, K) per frame;
    the video's focal length and size in px; `names` of the K targets (default the model's)."""
    path = Path(path)
    times = np.asarray(times, dtype=np.float64)
    expression = np.asarray(expression, dtype=np.float64)
    if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be one increasing value per frame.")
    if expression.shape != (len(times), model.n_expression):
        raise ValueError(f"expression must be ({len(times)}, {model.n_expression}), got {expression.shape}.")
    names = list(names or model.expression_names or [f"expression_{k}" for k in range(model.n_expression)])
    with torch.no_grad():
        neutral = model.vertices(identity.detach().float().cpu())[0].double().numpy() * 1e-3
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".base.glb", dir=path.parent)
    os.close(fd)
    try:
        write_glb(tmp, neutral, model.triangles, model.uvs, maps)
        tree, binary = read_glb(Path(tmp).read_bytes())
    finally:
        Path(tmp).unlink(missing_ok=True)
    buffer = _Buffer(tree, binary)
    primitive = tree["meshes"][0]["primitives"][0]
    if tree["accessors"][primitive["attributes"]["POSITION"]]["count"] != model.n_vertices:
        raise ValueError("the exported mesh does not keep the model's vertices; cannot add morph targets.")
    base_normals = vertex_normals(neutral, model.triangles)
    deltas = (model.expression_basis.astype(np.float64) * model.expression_std.astype(np.float64)[:, None, None]) * 1e-3
    targets = []
    for delta in deltas:
        normals = vertex_normals(neutral + delta, model.triangles) - base_normals
        targets.append({"POSITION": buffer.add(delta, 3, bounds=True, target=ARRAY_BUFFER),
                        "NORMAL": buffer.add(normals, 3, target=ARRAY_BUFFER)})
    primitive["targets"] = targets
    mesh = tree["meshes"][0]
    mesh["name"] = "face"
    mesh["weights"] = [0.0] * len(targets)
    mesh["extras"] = {"targetNames": names}
    face_node = next(i for i, n in enumerate(tree["nodes"]) if n.get("mesh") == 0)
    tree["nodes"][face_node]["name"] = "face"
    quaternions = head_quaternions(euler)
    moved = gltf_translation(translation)
    tree["nodes"][face_node]["rotation"] = quaternions[0].tolist()
    tree["nodes"][face_node]["translation"] = moved[0].tolist()
    tree.setdefault("cameras", []).append({"type": "perspective", "name": "video camera", "perspective": {
        "yfov": 2.0 * math.atan(height / (2.0 * focal_px)), "aspectRatio": width / height, "znear": 0.01}})
    tree["nodes"].append({"name": "video camera", "camera": len(tree["cameras"]) - 1})
    tree["scenes"][tree.get("scene", 0)]["nodes"].append(len(tree["nodes"]) - 1)
    keys = buffer.add(times, 1, bounds=True)
    samplers = [{"input": keys, "output": buffer.add(expression, 1), "interpolation": "LINEAR"},
                {"input": keys, "output": buffer.add(quaternions, 4), "interpolation": "LINEAR"},
                {"input": keys, "output": buffer.add(moved, 3), "interpolation": "LINEAR"}]
    channels = [{"sampler": i, "target": {"node": face_node, "path": p}}
                for i, p in enumerate(("weights", "rotation", "translation"))]
    tree["animations"] = [{"name": "tracking", "samplers": samplers, "channels": channels}]
    tree["asset"]["generator"] = "mfface track (mesh by trimesh)"
    write_bytes(path, pack_glb(tree, bytes(buffer.data)))
    return path
