"""Export a textured face mesh as OBJ + MTL + PNG textures, or as one binary glTF (GLB).

Textures are given by name: 'diffuse' (diffuse albedo, RGB), 'specular' (specular albedo, RGB or
grey) and 'roughness' (grey). Float images are linear values in [0, 1]: colour maps ('diffuse',
'specular') are sRGB-encoded into 8-bit PNGs, 'roughness' is stored linearly. uint8 images are
written as given (so they must already be encoded that way). Image row 0 is the top of the texture
(v = 1), as in every image file.

OBJ: map_Kd = diffuse, map_Ks = specular, map_Pr = roughness (the PBR extension to MTL read by
Blender and three.js). GLB (through trimesh): baseColorTexture = diffuse; metallicRoughnessTexture
with roughness in G and metallic 0 in B (metallicFactor 0); specular through KHR_materials_specular
as specularColorTexture with specularColorFactor 25 so that the dielectric F0 = 0.04 * 25 * map
equals the specular albedo (trimesh cannot write that extension, so it is added to the GLB here).
Roughness is stored as it is fitted: the renderer's GGX alpha = roughness^2, which is also what
glTF's metallicRoughness, Blender's Principled BSDF and Unreal mean by roughness, so no
conversion is needed (and none is applied) anywhere.

Both formats carry smooth per-vertex normals (OBJ `vn`, glTF NORMAL): `vertex_normals` weights
each triangle's normal by its angle at the vertex, as Mitsuba's `recompute_vertex_normals` does for
the renders, so viewers shade the mesh as mfface renders it (without normals glTF viewers must
shade flat, and the face looks faceted).

Both writers are atomic: files are written under temporary names in the target folder and moved
into place with os.replace; for OBJ the textures and MTL are moved first and the OBJ last, so an
OBJ that exists always has its MTL and textures beside it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from mfface.atomic import write_bytes

TEXTURE_NAMES = ("diffuse", "specular", "roughness")
COLOUR_MAPS = ("diffuse", "specular")
GLTF_DIELECTRIC_F0 = 0.04


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def encode_texture(name: str, image: np.ndarray | torch.Tensor) -> Image.Image:
    """An 8-bit PIL image for texture `name` (see module doc for the encoding of each map)."""
    if name not in TEXTURE_NAMES:
        raise ValueError(f"unknown texture {name!r}; use one of {', '.join(TEXTURE_NAMES)}.")
    a = _as_array(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or a.size == 0:
        raise ValueError(f"texture {name!r} has shape {a.shape}; give an (H, W, 3) or (H, W) image.")
    if name == "roughness" and a.ndim == 3:
        raise ValueError(f"texture 'roughness' has shape {a.shape}; give a one-channel (H, W) image.")
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0)
        if name in COLOUR_MAPS:
            a = np.where(a <= 0.0031308, 12.92 * a, 1.055 * a ** (1.0 / 2.4) - 0.055)
        a = np.round(a * 255.0).astype(np.uint8)
    return Image.fromarray(a)


def vertex_normals(vertices: np.ndarray | torch.Tensor, triangles: np.ndarray) -> np.ndarray:
    """Unit smooth normals (V, 3) float64 of a triangle mesh, counter-clockwise triangles facing
    out: the sum over a vertex's triangles of the unit face normal times the triangle's angle at
    the vertex (Thuermer & Wuethrich; Mitsuba's choice). A vertex in no (non-degenerate) triangle
    gets the mean normal of the mesh, so every normal is a unit vector."""
    v = _as_array(vertices).astype(np.float64)
    t = _as_array(triangles).astype(np.int64)
    normals = np.zeros_like(v)
    corners = v[t]                                              # (F, 3 corners, 3)
    face = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    length = np.linalg.norm(face, axis=1, keepdims=True)
    face = np.divide(face, length, out=np.zeros_like(face), where=length > 0)
    for k in range(3):
        a = corners[:, (k + 1) % 3] - corners[:, k]
        b = corners[:, (k + 2) % 3] - corners[:, k]
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
        np.add.at(normals, t[:, k], face * np.arccos(np.clip(cos, -1.0, 1.0))[:, None])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    fallback = normals.sum(0)
    size = np.linalg.norm(fallback)
    fallback = fallback / size if size > 0 else np.array([0.0, 0.0, 1.0])
    return np.where(length > 1e-12, normals / np.maximum(length, 1e-300), fallback)


def _check_mesh(vertices: np.ndarray, triangles: np.ndarray, uvs: np.ndarray | None) -> None:
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {vertices.shape}.")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or (triangles.size and (
            triangles.min() < 0 or triangles.max() >= len(vertices))):
        raise ValueError("triangles must be an (F, 3) array of indices into the vertices.")
    if uvs is not None and uvs.shape != (len(vertices), 2):
        raise ValueError(f"uvs must be (V, 2) with V = {len(vertices)}, got {uvs.shape}.")


def _prepare(vertices: np.ndarray | torch.Tensor, triangles: np.ndarray, uvs: np.ndarray | None,
             textures: dict[str, np.ndarray | torch.Tensor] | None, writer: str
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Image.Image]]:
    """Checked float64 vertices, int64 triangles, float64 uvs and encoded texture images."""
    vertices, triangles = _as_array(vertices).astype(np.float64), _as_array(triangles).astype(np.int64)
    uvs = None if uvs is None else _as_array(uvs).astype(np.float64)
    textures = textures or {}
    _check_mesh(vertices, triangles, uvs)
    if textures and uvs is None:
        raise ValueError(f"textures need uvs; pass the model's uvs to {writer}.")
    return vertices, triangles, uvs, {name: encode_texture(name, image) for name, image in textures.items()}


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_obj(path: str | Path, vertices: np.ndarray | torch.Tensor, triangles: np.ndarray,
              uvs: np.ndarray | None = None,
              textures: dict[str, np.ndarray | torch.Tensor] | None = None) -> list[Path]:
    """Write `path` (.obj) with `<stem>.mtl` and `<stem>_<name>.png` beside it; returns the paths.

    vertices (V, 3) in the caller's units (mm for our models), triangles (F, 3) 0-based, uvs (V, 2)
    with v = 0 at the texture's bottom. Textures need uvs. Smooth normals (`vertex_normals`) are
    written as `vn`, one per vertex.
    """
    path = Path(path)
    vertices, triangles, uvs, images = _prepare(vertices, triangles, uvs, textures, "write_obj")
    stem = path.stem
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=path.parent))
    try:
        files = []
        for name, image in images.items():
            image.save(tmp / f"{stem}_{name}.png", format="PNG")
            files.append(f"{stem}_{name}.png")
        lines = [f"# written by mfface: {len(vertices)} vertices, {len(triangles)} triangles"]
        if images:
            (tmp / f"{stem}.mtl").write_text(_mtl(stem, images))
            files.append(f"{stem}.mtl")
            lines += [f"mtllib {stem}.mtl", "usemtl face"]
        lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
        lines += [f"vn {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertex_normals(vertices, triangles)]
        if uvs is not None:
            lines += [f"vt {u:.7f} {v:.7f}" for u, v in uvs]
            lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in triangles + 1]
        else:
            lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in triangles + 1]
        (tmp / path.name).write_text("\n".join(lines) + "\n")
        files.append(path.name)
        for file in files:  # the OBJ last: once it exists, everything it refers to does
            os.replace(tmp / file, path.parent / file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [path.parent / file for file in files]


def _mtl(stem: str, images: dict[str, Image.Image]) -> str:
    lines = ["# written by mfface",
             "# map_Kd: diffuse albedo, sRGB-encoded; map_Ks: specular albedo, sRGB-encoded;",
             "# map_Pr: roughness (PBR extension), linear, 0 = mirror, 1 = rough.",
             "newmtl face", "Ka 0 0 0", "Kd 1 1 1", "illum 2"]
    if "specular" in images:
        lines += ["Ks 1 1 1", f"map_Ks {stem}_specular.png"]
    else:
        lines.append("Ks 0 0 0")
    if "diffuse" in images:
        lines.append(f"map_Kd {stem}_diffuse.png")
    if "roughness" in images:
        lines += ["Pr 1", f"map_Pr {stem}_roughness.png"]
    return "\n".join(lines) + "\n"


ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON tree, binary chunk) of a GLB file's bytes; ValueError when it is not GLB 2.0."""
    if len(data) < 20:
        raise ValueError("not a GLB file (too short).")
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    length, kind = struct.unpack_from("<I4s", data, 12)
    if magic != b"glTF" or version != 2 or kind != b"JSON":
        raise ValueError("not a glTF 2.0 binary (GLB) file.")
    tree = json.loads(data[20:20 + length])
    rest = 20 + length
    binary = b""
    if rest + 8 <= len(data):
        size, kind = struct.unpack_from("<I4s", data, rest)
        if kind != b"BIN\0":
            raise ValueError("the GLB's second chunk is not its binary buffer.")
        binary = data[rest + 8:rest + 8 + size]
    return tree, binary


def pack_glb(tree: dict, binary: bytes) -> bytes:
    """GLB 2.0 bytes of a JSON tree and its binary buffer (both chunks padded to 4 bytes)."""
    binary = binary + b"\0" * (-len(binary) % 4)
    if binary:
        if not tree.get("buffers"):
            tree["buffers"] = [{}]
        tree["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(tree, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + (8 + len(binary) if binary else 0)
    out = struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
    return out + (struct.pack("<I4s", len(binary), b"BIN\0") + binary if binary else b"")


def _finish_glb(glb: bytes, specular_png: bytes | None) -> bytes:
    """A GLB from trimesh, completed: every bufferView of vertex or index data gets its `target`
    (the validator's hint), and a specular PNG, when given, is appended to the binary chunk and
    referenced via KHR_materials_specular (trimesh cannot write that extension)."""
    try:
        tree, binary = read_glb(glb)
    except ValueError as error:
        raise ValueError(f"trimesh wrote an unexpected GLB layout ({error}); cannot complete it.") from error
    binary += b"\0" * (-len(binary) % 4)
    views, accessors = tree.get("bufferViews", []), tree.get("accessors", [])
    for mesh in tree.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            for index in primitive.get("attributes", {}).values():
                views[accessors[index]["bufferView"]]["target"] = ARRAY_BUFFER
            if "indices" in primitive:
                views[accessors[primitive["indices"]]["bufferView"]]["target"] = ELEMENT_ARRAY_BUFFER
    if specular_png is not None:
        tree.setdefault("bufferViews", []).append(
            {"buffer": 0, "byteOffset": len(binary), "byteLength": len(specular_png)})
        binary += specular_png + b"\0" * (-len(specular_png) % 4)
        tree.setdefault("images", []).append({"bufferView": len(tree["bufferViews"]) - 1,
                                              "mimeType": "image/png"})
        tree.setdefault("textures", []).append({"source": len(tree["images"]) - 1})
        factor = 1.0 / GLTF_DIELECTRIC_F0
        for material in tree["materials"]:
            material.setdefault("extensions", {})["KHR_materials_specular"] = {
                "specularColorTexture": {"index": len(tree["textures"]) - 1},
                "specularColorFactor": [factor, factor, factor]}
        used = set(tree.get("extensionsUsed", [])) | {"KHR_materials_specular"}
        tree["extensionsUsed"] = sorted(used)
    return pack_glb(tree, binary)


def write_glb(path: str | Path, vertices: np.ndarray | torch.Tensor, triangles: np.ndarray,
              uvs: np.ndarray | None = None,
              textures: dict[str, np.ndarray | torch.Tensor] | None = None) -> Path:
    """Write one binary glTF file with a PBR material; returns `path`.

    Units are passed through unchanged (glTF readers assume metres: scale mm by 1e-3 first if the
    consumer needs real size). Arguments as in `write_obj`. The primitive has POSITION, NORMAL
    (smooth, `vertex_normals`) and, with uvs, TEXCOORD_0.
    """
    path = Path(path)
    vertices, triangles, uvs, images = _prepare(vertices, triangles, uvs, textures, "write_glb")
    mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, process=False)
    mesh.vertex_normals = vertex_normals(vertices, triangles)
    if uvs is not None:
        material_args: dict = {"name": "face", "metallicFactor": 0.0, "roughnessFactor": 1.0}
        if "diffuse" in images:
            material_args["baseColorTexture"] = images["diffuse"].convert("RGB")
        if "roughness" in images:
            g = np.asarray(images["roughness"])
            packed = np.stack([np.zeros_like(g), g, np.zeros_like(g)], axis=-1)
            material_args["metallicRoughnessTexture"] = Image.fromarray(packed)
        material = trimesh.visual.material.PBRMaterial(**material_args)
        mesh.visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    glb = mesh.export(file_type="glb", include_normals=True)
    specular = images.get("specular")
    glb = _finish_glb(glb, None if specular is None else _png_bytes(specular.convert("RGB")))
    write_bytes(path, glb)
    return path
