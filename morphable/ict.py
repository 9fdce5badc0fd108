"""Import ICT Face Model Light (ICT-FaceKit, MIT) from its repository folder, `.zip` or `.tar.*`.

Facts checked on the repository at commit da5f95a607f5e6b37755b38d3385d7f2853732e5:
- `FaceXModel/*.obj` all share one topology of 26,719 vertices (quads and a few triangles, UVs,
  no normals), in cm, +x the face's left, +y up, +z out of the face: the mfface model frame, so
  import only scales by 10 (cm -> mm).
- `identityNNN.obj` (100 files) are full meshes: neutral + one PCA mode already multiplied by its
  standard deviation (upstream samples identities as neutral + sum c_k (mode_k - neutral) with
  c_k ~ N(0, 1)). So basis = mode - neutral and identity_std = 1. Their RMS displacement falls
  with the mode index (tests check this), as it must for std-scaled principal components.
- Expression shapes are full meshes too; basis = shape - neutral, expression_std = 1, so an
  expression coefficient is the ARKit-style blend weight (0 = neutral, 1 = full shape). The basis
  holds the 53 shapes listed in `vertex_indices.json` plus cheekRaiser_L/R. PupilDilate_L/R are
  left out: they move only iris/eyeball vertices (at most 1e-5 mm inside the face area), so in
  any face-area model their column would be zero and its coefficient undetermined.
- Regions (README tables): face area = vertices 0..9408 / polygons 0..9229, narrow face area =
  0..6705 / 0..6559, head and neck = 9409..11247 (polygons 9230..11143).
- The 68 Multi-PIE landmark vertex indices are listed in the README and, identically, in
  `vertex_indices.json` (`idx_to_landmark_verts`).
- Beside the face, the model's `parts` hold ICT's eyeballs, mouth interior and teeth
  (`mfface.morphable.ict_parts`); they change nothing in the face's arrays.
"""
from __future__ import annotations

import json
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from mfface.morphable.correspondence import MEDIAPIPE_CONTOUR, contour_subset
from mfface.morphable.format import ModelSourceError
from mfface.morphable.ict_parts import VERTICES_NEEDED, ict_parts
from mfface.morphable.model import MorphableModel
from mfface.morphable.regions import frontal_polygon_region, mirror_partners

REPOSITORY = "https://github.com/ICT-VGL/ICT-FaceKit"
COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ARCHIVE_URL = f"{REPOSITORY}/archive/{COMMIT}.zip"
N_VERTICES = 26719
N_POLYGONS = 26384
CM_TO_MM = 10.0
N_IDENTITY = 100


@dataclass(frozen=True)
class Region:
    """A prefix of the ICT mesh: vertices [0, n_vertices) and polygons [0, n_polygons)."""
    n_vertices: int
    n_polygons: int
    description: str


REGIONS: dict[str, Region] = {
    "face": Region(9409, 9230, "full face area (ICT vertices 0..9408)"),
    "narrow": Region(6706, 6560, "narrow face area (ICT vertices 0..6705)"),
    "head": Region(11248, 11144, "face area plus head and neck (ICT vertices 0..11247)"),
}
FACE_AREA = REGIONS["face"].n_vertices
EXCLUDED_SHAPES = ("PupilDilate_L", "PupilDilate_R")
MEDIAPIPE_TABLE = "ict_mediapipe478.txt"  # geometric: from MediaPipe's canonical mesh
CALIBRATED_TABLE = "ict_mediapipe478_calibrated.txt"  # what ICT models use

_OBJ = re.compile(r"(?:^|/)FaceXModel/([^/]+)\.obj$")


def _members(source: Path) -> Iterator[tuple[str, bytes]]:
    """(path, content) of the files the importer needs, streamed from a folder or archive."""
    def wanted(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        return bool(_OBJ.search(name)) or name.endswith("FaceXModel/vertex_indices.json") \
            or base in ("README.md", "LICENSE")

    if source.is_dir():
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and wanted(rel):
                yield rel, path.read_bytes()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if not info.is_dir() and wanted(info.filename):
                    yield info.filename, archive.read(info)
    else:
        with tarfile.open(source, "r|*") as archive:  # streamed: nothing is unpacked to disk
            for member in archive:
                if member.isfile() and wanted(member.name):
                    handle = archive.extractfile(member)
                    assert handle is not None
                    yield member.name, handle.read()


def _positions(data: bytes, count: int, name: str) -> np.ndarray:
    """The first `count` `v x y z` rows of an OBJ as float64 (count, 3); checks the total."""
    rows = [line[2:] for line in data.split(b"\n") if line.startswith(b"v ")]
    if len(rows) != N_VERTICES:
        raise ModelSourceError(
            f"{name} has {len(rows)} vertices instead of ICT's {N_VERTICES}; use an unmodified "
            f"ICT-FaceKit download ({REPOSITORY}).")
    values = np.array(b" ".join(rows[:count]).split(), dtype=np.float64)
    return values.reshape(count, 3)


def _neutral_topology(data: bytes) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """UV coordinates (T, 2) and polygons as lists of (vertex, uv) 0-based index pairs."""
    uvs, polygons = [], []
    for line in data.split(b"\n"):
        if line.startswith(b"vt "):
            uvs.append(line.split()[1:3])
        elif line.startswith(b"f "):
            corners = []
            for token in line.split()[1:]:
                parts = token.split(b"/")
                corners.append((int(parts[0]) - 1, int(parts[1]) - 1))
            polygons.append(corners)
    return np.array(uvs, dtype=np.float64), polygons


def _landmarks_from_readme(readme: str) -> list[int] | None:
    """The Multi-PIE 68 vertex indices listed in ICT's README, or None when absent."""
    match = re.search(r"Multi-PIE 68 point facial landmarks indices:\s*\n\s*([\d,\s]+)", readme)
    if not match:
        return None
    values = [int(v) for v in re.findall(r"\d+", match.group(1))]
    return values if len(values) == 68 else None


def original_to_model(new_to_orig: np.ndarray) -> np.ndarray:
    """(N_VERTICES,) the model vertex of each original ICT vertex (-1: not in the model); a vertex
    split along a UV seam maps to its first copy."""
    orig_to_new = np.full(N_VERTICES, -1, dtype=np.int64)
    orig_to_new[new_to_orig[::-1]] = np.arange(len(new_to_orig))[::-1]  # first copy wins
    return orig_to_new


def table_to_model(table: np.ndarray, new_to_orig: np.ndarray) -> np.ndarray:
    """A landmark table of original ICT indices as the model's vertex indices (-1 kept)."""
    return np.where(table >= 0, original_to_model(new_to_orig)[np.maximum(table, 0)], -1)


def table_to_original(table: np.ndarray, new_to_orig: np.ndarray) -> np.ndarray:
    """A landmark table of model vertex indices as original ICT indices (-1 kept)."""
    return np.where(table >= 0, new_to_orig[np.maximum(table, 0)], -1)


def _table_rows(name: str) -> list[list[str]]:
    text = resources.files("mfface.morphable").joinpath("data", name).read_text()
    rows = [line.split("#", 1)[0].split() for line in text.splitlines()]
    rows = [row for row in rows if row]
    if len(rows) != 478:
        raise ModelSourceError(f"{name} is damaged; reinstall mfface.")
    return rows


def mediapipe_table(calibrated: bool = True) -> np.ndarray:
    """The shipped MediaPipe-478 -> ICT vertex table (original ICT indices, -1 = none).

    Both tables are made by `bench/ict_mediapipe_table.py`. The geometric one (calibrated=False)
    comes from MediaPipe's canonical face mesh (not shipped; tests recompute and compare it); the
    calibrated one, which ICT models use, moves its points to where MediaPipe places them on
    renders of ICT's faces (`mfface.morphable.landmark_calibration`, docs/models.md).
    """
    return np.array([int(row[0]) for row in _table_rows(CALIBRATED_TABLE if calibrated else MEDIAPIPE_TABLE)],
                    dtype=np.int64)


def mediapipe_reliability() -> np.ndarray:
    """(478,) float32: each MediaPipe landmark's reliability weight on ICT's faces (the calibrated
    table's second column; `landmark_calibration.reliability`)."""
    rows = _table_rows(CALIBRATED_TABLE)
    if any(len(row) != 2 for row in rows):
        raise ModelSourceError(f"{CALIBRATED_TABLE} is damaged; reinstall mfface.")
    return np.array([float(row[1]) for row in rows], dtype=np.float32)


def _read_source(source: Path, count: int) -> dict:
    shapes: dict[str, np.ndarray] = {}
    found: dict[str, bytes] = {}
    neutral_dir = None
    try:
        for name, data in _members(source):
            obj = _OBJ.search(name)
            if obj:
                stem = obj.group(1)
                if stem == "generic_neutral_mesh":
                    neutral_dir = name[: name.rindex("FaceXModel/")]
                    found["neutral"] = data
                    shapes[stem] = _positions(data, count, name)
                elif stem not in EXCLUDED_SHAPES:
                    shapes[stem] = _positions(data, count, name)
            elif name.endswith("vertex_indices.json"):
                found["indices"] = data
            else:
                found[name] = data
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error,
            OSError) as error:
        raise ModelSourceError(
            f"{source} is damaged or incomplete ({type(error).__name__}: {error}); download "
            f"ICT-FaceKit again ({ARCHIVE_URL}).") from error
    missing = [what for what in ("neutral", "indices") if what not in found]
    if missing or neutral_dir is None:
        raise ModelSourceError(
            f"{source} does not contain ICT-FaceKit's FaceXModel/generic_neutral_mesh.obj and "
            f"vertex_indices.json; pass the ICT-FaceKit folder or its archive ({ARCHIVE_URL}).")
    root = neutral_dir  # README.md and LICENSE sit beside FaceXModel/
    return {"shapes": shapes, "neutral": found["neutral"],
            "indices": json.loads(found["indices"]),
            "readme": found.get(f"{root}README.md", b"").decode("utf-8", "replace"),
            "license": found.get(f"{root}LICENSE", b"").decode("utf-8", "replace")}


def import_ict(source: str | Path, region: str = "face", name: str | None = None,
               with_mediapipe: bool = True, parts: bool = True) -> MorphableModel:
    """Build a MorphableModel (mm, UV-split, triangulated) from an ICT-FaceKit folder or archive.

    region: 'face' (default), 'narrow' or 'head' (see REGIONS). name defaults to 'ict' or
    'ict-<region>'. with_mediapipe=False skips the shipped MediaPipe table (only used when
    regenerating that table). parts: import the eyeballs, mouth interior and teeth as the
    model's `parts` (`ict_parts`; the face's arrays are the same either way). Raises
    ModelSourceError for missing or damaged sources.
    """
    return import_ict_indexed(source, region, name, with_mediapipe, parts)[0]


def import_ict_indexed(source: str | Path, region: str = "face", name: str | None = None,
                       with_mediapipe: bool = True,
                       parts: bool = True) -> tuple[MorphableModel, np.ndarray]:
    """`import_ict` plus, for each model vertex, its original ICT vertex index (V,)."""
    if region not in REGIONS:
        raise ModelSourceError(f"unknown ICT region {region!r}; choose one of {', '.join(REGIONS)}.")
    source = Path(source)
    if not source.exists():
        raise ModelSourceError(f"{source} does not exist; pass the ICT-FaceKit folder or archive.")
    spec = REGIONS[region]
    raw = _read_source(source, max(spec.n_vertices, VERTICES_NEEDED) if parts else spec.n_vertices)
    shapes = raw["shapes"]
    expression_names = list(raw["indices"]["expressions"])
    expression_names += sorted(s for s in shapes if s not in expression_names
                               and s != "generic_neutral_mesh" and not s.startswith("identity"))
    identity_names = [f"identity{k:03d}" for k in range(N_IDENTITY)]
    absent = [s for s in identity_names + expression_names if s not in shapes]
    if absent:
        raise ModelSourceError(
            f"{source} lacks {len(absent)} ICT shape files (e.g. {absent[0]}.obj); pass a complete "
            f"ICT-FaceKit download ({ARCHIVE_URL}).")
    license_text = raw["license"]
    if "MIT License" not in license_text:
        raise ModelSourceError(f"{source} lacks ICT-FaceKit's LICENSE file; pass the whole repository.")

    # Topology: polygons of the region, triangulated as fans, vertices split at UV seams.
    vt, all_polygons = _neutral_topology(raw["neutral"])
    if len(all_polygons) != N_POLYGONS:
        raise ModelSourceError(
            f"{source} has {len(all_polygons)} polygons instead of ICT's {N_POLYGONS}; use an "
            f"unmodified ICT-FaceKit download ({REPOSITORY}).")
    polygons = [p for p in all_polygons if max(v for v, _ in p) < spec.n_vertices]
    if len(polygons) != spec.n_polygons:
        raise ModelSourceError(
            f"{source} has {len(polygons)} polygons in the {region} region instead of "
            f"{spec.n_polygons}; use an unmodified ICT-FaceKit download.")
    corners = np.array([c for p in polygons for c in p], dtype=np.int64)
    pairs, corner_to_new = np.unique(corners, axis=0, return_inverse=True)
    corner_to_new = corner_to_new.reshape(-1)
    new_to_orig = pairs[:, 0]
    triangles, start = [], 0
    for polygon in polygons:
        ids = corner_to_new[start:start + len(polygon)]
        triangles += [(ids[0], ids[k], ids[k + 1]) for k in range(1, len(polygon) - 1)]
        start += len(polygon)
    orig_to_new = original_to_model(new_to_orig)

    neutral = shapes["generic_neutral_mesh"]
    mean = neutral[new_to_orig] * CM_TO_MM
    identity = np.stack([shapes[s][new_to_orig] * CM_TO_MM for s in identity_names]) - mean
    expression = np.stack([shapes[s][new_to_orig] * CM_TO_MM for s in expression_names]) - mean

    landmarks_orig = _landmarks_from_readme(raw["readme"])
    json_landmarks = list(raw["indices"]["idx_to_landmark_verts"])
    if landmarks_orig is not None and landmarks_orig != json_landmarks:
        raise ModelSourceError(f"{source}: README and vertex_indices.json disagree on landmarks.")
    ibug68 = orig_to_new[np.array(json_landmarks)]
    landmarks = {"ibug68": ibug68, "ibug68_contour": contour_subset(ibug68, range(17))}
    reliability = {}
    if with_mediapipe:
        table = mediapipe_table()
        mp = table_to_model(table, new_to_orig)
        landmarks["mediapipe478"] = mp
        landmarks["mediapipe478_contour"] = contour_subset(mp, MEDIAPIPE_CONTOUR)
        reliability = {"mediapipe478": mediapipe_reliability()}

    everything = np.arange(len(new_to_orig))
    face = everything[new_to_orig < FACE_AREA]
    fit = np.sort(orig_to_new[np.array(raw["indices"]["idx_to_fitting_verts"])])
    fit = fit[fit >= 0]
    eye_pts = mean[ibug68[36:48]]
    eyes = np.union1d(frontal_polygon_region(mean, face, eye_pts[:6], margin_mm=3.0),
                      frontal_polygon_region(mean, face, eye_pts[6:], margin_mm=3.0))
    mouth = frontal_polygon_region(mean, face, mean[ibug68[48:60]], margin_mm=2.0)
    skin = np.setdiff1d(fit, np.union1d(eyes, mouth))
    uvs = vt[pairs[:, 1]]
    symmetry, _ = mirror_partners(mean, uvs)
    model = MorphableModel(
        name=name or ("ict" if region == "face" else f"ict-{region}"),
        mean_shape=mean.astype(np.float32),
        identity_basis=identity.astype(np.float32),
        identity_std=np.ones(N_IDENTITY, dtype=np.float32),
        expression_basis=expression.astype(np.float32),
        expression_std=np.ones(len(expression_names), dtype=np.float32),
        expression_range=(0.0, 1.0),  # ARKit blend weights
        triangles=np.array(triangles, dtype=np.int32),
        uvs=uvs.astype(np.float32),
        expression_names=expression_names,
        landmarks=landmarks, landmark_reliability=reliability,
        regions={"face": face, "fit": fit, "eyes": eyes, "mouth": mouth, "skin": skin},
        symmetry=symmetry,
        provenance=(f"ICT Face Model Light from ICT-FaceKit ({REPOSITORY}, commit {COMMIT}); "
                    f"region {region}: {spec.description}; identity modes std-scaled upstream "
                    f"(std = 1), expression coefficients are blend weights"
                    + ("; parts: eyeballs (gaze from the eyeLook shapes), mouth interior, teeth."
                       if parts else ".")),
        license=license_text,
        parts=(ict_parts(all_polygons, shapes, identity_names, expression_names, CM_TO_MM)
               if parts else []),
    )
    model.validate()
    return model, new_to_orig
