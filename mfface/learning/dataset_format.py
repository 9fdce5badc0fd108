"""The face-dataset file: one HDF5 file of square face crops, landmarks and masks (+ truth).

Written by `mfface prepare` (photos) and `mfface synth` (synthetic faces, with a `truth` group),
read by `mfface.learning.dataset.FaceDataset`. Format "mfface-faces", version 1 (FORMAT_VERSION);
docs/datasets.md has the same layout for users.

Root attributes
    format            "mfface-faces"
    format_version    1
    crop_size         S, the side of every crop in pixels
    landmark_scheme   "mediapipe478" (MediaPipe's face mesh with irises, mfface.landmarks)
    pixel_convention  "pixel-corner": pixel i covers [i, i + 1), its centre is at i + 0.5; x right,
                      y down (as mfface.landmarks and mfface.images)
    image_encoding    what `images` holds: display-referred 8-bit RGB as decoded from the source
                      file (EXIF orientation applied); linear RGB = (value / 255) ** gamma
    gamma             2.2, the display -> linear exponent of mfface.images.linearize
    source            "photos" (prepare) or "synthetic" (synth)
    crop_margin       prepare only: crop side = landmark bounding box's larger side * (1 + 2 margin)
                      (mfface.images.crop_box_around)
    count             N, the number of samples; every per-sample dataset has exactly N rows
    created_at, updated_at   UTC times (ISO 8601); created_with: "mfface <version>"
    history           JSON list, one entry per run that wrote the file (tool, time, version,
                      samples added, failures, command line)
    shard_rank, shard_world_size   only in a shard written by one rank of a distributed run

Per-sample datasets (first axis N, resizable: maxshape None; one sample per chunk for the large
ones, so random access reads one chunk; gzip-compressed; each dataset's `doc` attribute says what
it holds, its `geometry` attribute how augmentation moves it: see `Column`)
    images          uint8 (N, S, S, 3)   the crop, display-referred RGB
    landmarks       float32 (N, 478, 2)  MediaPipe landmarks in crop pixels (pixel-corner)
    masks           uint8 (N, S, S)      skin mask (mfface.masks.skin_mask), 1 = skin
    boxes           int32 (N, 3)         crop box in source pixels: x0, y0, side (crop pixel
                                         (u, v) = source (x0 + u * side / S, y0 + v * side / S))
    source_sizes    int32 (N, 2)         source image width, height (after EXIF orientation)
    paths           str (N,)             absolute source path (synth: a unique sample name)
    file_sizes      int64 (N,)           source file size in bytes (0 for synthetic samples)
    file_mtimes_ns  int64 (N,)           source modification time, ns since the epoch (0 synth)
    sha256          str (N,)             SHA-256 of the source file's bytes ("" for synthetic)

`truth/` group (synthetic datasets; `truth_columns` defines the names): the parameters a sample was
rendered from, per sample, plus group attributes naming the model (`model`, `model_fingerprint`).

`report/` group: the inputs that are not in the dataset and why (one row each, rewritten at every
run): `paths`, `kinds` (unreadable | no_face | bad_landmarks | changed), `reasons` (a sentence),
`file_sizes` and `file_mtimes_ns` (the file when it was tried: prepare tries a failed photo again
only when it changed since, or with --retry-failed).

Writing is atomic (`DatasetWriter`): a new file is written under a hidden temporary name beside
the target and renamed when complete; appending copies the existing file to such a temporary,
appends there and renames it over the original, so an interrupted or killed run leaves the earlier
complete file untouched (a graceful interrupt, Ctrl-C or SIGTERM, commits the samples finished so
far). One writer per output at a time (a lock file, see mfface.outputs.ResultLock).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

FORMAT_NAME = "mfface-faces"
FORMAT_VERSION = 1
LANDMARK_SCHEME = "mediapipe478"
LANDMARK_COUNT = 478
PIXEL_CONVENTION = "pixel-corner"
GAMMA = 2.2
IMAGE_ENCODING = ("display-referred 8-bit RGB as decoded from the source file (EXIF orientation "
                  "applied); linear RGB = (value / 255) ** gamma")
REPORT_KINDS = ("unreadable", "no_face", "bad_landmarks", "changed")
# How augmentation moves a per-sample value (Column.geometry): not at all; points (..., 2) in crop
# pixels (mapped by the augmentation's affine); MediaPipe landmarks (478, 2) in crop pixels (mapped,
# and renumbered by the mirror permutation when flipped); a length in crop pixels (scaled).
GEOMETRIES = ("none", "points", "landmarks", "length")
_SMALL_BLOCK = 1024  # rows per chunk of the small per-sample datasets
# Root attributes every writer sets itself (a merge copies the others from its first input).
_RESERVED_ATTRS = frozenset({
    "format", "format_version", "crop_size", "landmark_scheme", "pixel_convention",
    "image_encoding", "gamma", "source", "crop_margin", "count", "created_at", "updated_at",
    "created_with", "history", "shard_rank", "shard_world_size", "match_keys"})


class DatasetError(ValueError):
    """A dataset file that cannot be read or written as asked; the message says what to do."""


@dataclass(frozen=True)
class Column:
    """One per-sample dataset: its HDF5 path, the shape and dtype of one sample, and how it is
    stored. `dtype` is a NumPy dtype name or "str" (UTF-8, variable length). Large columns
    (`per_chunk` 1) are stored one sample per gzip chunk, written pre-compressed
    (`encode`); small ones in chunks of 1024 rows."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    doc: str
    geometry: str = "none"
    per_chunk: int = 1
    gzip_level: int = 1

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"{self.name}: geometry must be one of {GEOMETRIES}, not {self.geometry!r}.")
        if self.dtype == "str" and self.per_chunk == 1:
            raise ValueError(f"{self.name}: string columns are stored in blocks (per_chunk > 1).")
        if self.per_chunk < 1 or not 0 <= self.gzip_level <= 9:
            raise ValueError(f"{self.name}: per_chunk must be >= 1 and gzip_level 0-9.")

    def h5_dtype(self) -> Any:
        """The h5py dtype of the column (UTF-8 variable-length strings for "str")."""
        import h5py

        return h5py.string_dtype("utf-8") if self.dtype == "str" else np.dtype(self.dtype)

    def encode(self, value: Any) -> "Encoded":
        """The compressed chunk of one sample, as HDF5's deflate filter stores it (a zlib
        stream), so that writing it is a copy (`DatasetWriter.append`). Costs the compression
        here, so worker processes can pay it instead of the writer."""
        array = np.ascontiguousarray(value, dtype=self.dtype)
        if array.shape != self.shape:
            raise ValueError(f"{self.name}: expected shape {self.shape}, got {array.shape}.")
        return Encoded(zlib.compress(array.tobytes(), self.gzip_level))


@dataclass(frozen=True)
class Encoded:
    """One sample's chunk of a one-sample-per-chunk column, already deflate-compressed."""
    data: bytes


def sample_columns(size: int) -> list[Column]:
    """The per-sample datasets every face dataset has, for crops of `size` px."""
    s = int(size)
    return [
        Column("images", (s, s, 3), "uint8", "face crop, display-referred RGB (see image_encoding)"),
        Column("landmarks", (LANDMARK_COUNT, 2), "float32",
               "MediaPipe landmarks (mediapipe478) in crop pixels, pixel-corner convention",
               geometry="landmarks", gzip_level=4),
        Column("masks", (s, s), "uint8", "skin mask from the landmarks (mfface.masks.skin_mask), "
               "1 = skin", gzip_level=4),
        Column("boxes", (3,), "int32", "crop box in source pixels: x0, y0, side",
               per_chunk=_SMALL_BLOCK, gzip_level=4),
        Column("source_sizes", (2,), "int32", "source image width and height in pixels",
               per_chunk=_SMALL_BLOCK, gzip_level=4),
        Column("paths", (), "str", "absolute path of the source file (synthetic: sample name)",
               per_chunk=_SMALL_BLOCK, gzip_level=4),
        Column("file_sizes", (), "int64", "source file size in bytes (0: synthetic)",
               per_chunk=_SMALL_BLOCK, gzip_level=4),
        Column("file_mtimes_ns", (), "int64", "source modification time in ns since the epoch "
               "(0: synthetic)", per_chunk=_SMALL_BLOCK, gzip_level=4),
        Column("sha256", (), "str", "SHA-256 of the source file's bytes, hex ('' synthetic)",
               per_chunk=_SMALL_BLOCK, gzip_level=4),
    ]


def truth_columns(n_identity: int, n_expression: int, sh_coefficients: int,
                  diffuse_size: int | None = None, n_albedo: int | None = None,
                  n_vertices: int | None = None) -> list[Column]:
    """The `truth/` datasets of a synthetic dataset (written by `mfface synth`), named and shaped
    as the fields of `mfface.state.FaceState` for one image, so that truth and a network's
    prediction compare field by field.

    Pose and camera are those of the crop: euler (yaw, pitch, roll) in radians and translation in
    mm as in mfface.camera (X_camera = R0 R_head(euler) X_model + t); focal length and principal
    point in crop pixels. `sh_coefficients` is the SH coefficient count per colour channel
    (bands^2). The diffuse albedo is stored as the texture itself (`diffuse_size` given: float16
    linear RGB, row 0 at the top) or else as the seed it was drawn from (`albedo_seed`);
    `n_albedo` adds a statistical albedo model's coefficients, `n_vertices` the camera-space
    vertices (mm). `landmarks` are the model's MediaPipe landmark vertices projected exactly.
    A writer may append further Column objects under `truth/` (e.g. specular or roughness).
    """
    small = _SMALL_BLOCK
    columns = [
        Column("truth/identity", (n_identity,), "float32", "identity coefficients (std units)"),
        Column("truth/expression", (n_expression,), "float32", "expression coefficients"),
        Column("truth/euler", (3,), "float32", "yaw, pitch, roll in radians (mfface.camera)",
               per_chunk=small),
        Column("truth/translation", (3,), "float32", "camera-space translation t, mm",
               per_chunk=small),
        Column("truth/focal", (), "float32", "focal length in crop pixels", geometry="length",
               per_chunk=small),
        Column("truth/principal", (2,), "float32", "principal point in crop pixels",
               geometry="points", per_chunk=small),
        Column("truth/sh", (sh_coefficients, 3), "float32", "SH light coefficients per RGB channel "
               "(light frame, docs/light.md)"),
        Column("truth/landmarks", (LANDMARK_COUNT, 2), "float32", "the model's MediaPipe landmark "
               "vertices projected exactly, crop pixels", geometry="landmarks", gzip_level=4),
    ]
    if diffuse_size is not None:
        columns.append(Column("truth/diffuse", (diffuse_size, diffuse_size, 3), "float16",
                              "diffuse albedo texture, linear RGB, row 0 at the top", gzip_level=4))
    else:
        columns.append(Column("truth/albedo_seed", (), "int64", "seed the diffuse albedo texture "
                              "was drawn from", per_chunk=small))
    if n_albedo is not None:
        columns.append(Column("truth/albedo", (n_albedo,), "float32",
                              "statistical albedo coefficients (std units)"))
    if n_vertices is not None:
        columns.append(Column("truth/vertices", (n_vertices, 3), "float32",
                              "camera-space vertices, mm", gzip_level=4))
    return columns


@dataclass(frozen=True)
class ReportEntry:
    """An input that is not in the dataset: its path, a kind (REPORT_KINDS), a sentence, and
    the file's size and modification time (ns) when it was tried (0 when unknown), so that a
    later run can tell whether the file changed since."""
    path: str
    kind: str
    reason: str
    file_size: int = 0
    mtime_ns: int = 0


_REPORT_FIELDS = (("paths", "path", "str"), ("kinds", "kind", "str"), ("reasons", "reason", "str"),
                  ("file_sizes", "file_size", "int64"), ("file_mtimes_ns", "mtime_ns", "int64"))


def _read_report_group(f: Any) -> list[ReportEntry]:
    """The rows of an open file's `report` group ([] when it has none)."""
    if "report" not in f:
        return []
    g = f["report"]
    columns = {}
    for name, attr, kind in _REPORT_FIELDS:
        values = g[name][:] if name in g else [0] * len(g["paths"])
        columns[attr] = [_decode_str(v) if kind == "str" else int(v) for v in values]
    return [ReportEntry(**dict(zip(columns, row))) for row in zip(*columns.values())]


def _write_report_group(f: Any, rows: Sequence[ReportEntry]) -> None:
    """Replace an open file's `report` group by `rows`."""
    import h5py

    if "report" in f:
        del f["report"]
    g = f.create_group("report")
    for name, attr, kind in _REPORT_FIELDS:
        values = [getattr(e, attr) for e in rows]
        if kind == "str":
            data, dtype = np.array(values, dtype=object), h5py.string_dtype("utf-8")
        else:
            data, dtype = np.array(values, dtype=kind), np.dtype(kind)
        g.create_dataset(name, data=data, dtype=dtype, maxshape=(None,), chunks=(_SMALL_BLOCK,),
                         compression="gzip")


@dataclass(frozen=True)
class DatasetSpec:
    """What a writer writes: the crop size, the columns (sample_columns + any truth columns),
    the source kind, attributes an existing file must match to be appended to (`match`), other
    root attributes, and the truth group's attributes."""
    size: int
    source: str
    truth: tuple[Column, ...] = ()
    match: Mapping[str, Any] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    truth_attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> list[Column]:
        return sample_columns(self.size) + list(self.truth)


@dataclass(frozen=True)
class SampleKey:
    """What identifies a stored sample's source, for resuming: file size, mtime, content digest."""
    row: int
    file_size: int
    mtime_ns: int
    sha256: str


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _decode_str(value: Any) -> str:
    """An h5py string value (bytes or str) as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _attr(f: Any, name: str, default: Any = None) -> Any:
    """An HDF5 attribute as a plain Python value (str, int, float), or `default`."""
    value = f.attrs.get(name, default)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open_h5(path: Path, mode: str = "r") -> Any:
    """h5py.File(path, mode) with one-line errors for missing, non-HDF5 and damaged files."""
    import h5py

    if not path.exists():
        raise DatasetError(f"{path} does not exist; give a dataset written by mfface prepare or synth.")
    if path.is_dir():
        raise DatasetError(f"{path} is a folder, not a dataset file.")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror or e}).") from None
    if head != b"\x89HDF\r\n\x1a\n":
        raise DatasetError(f"{path} is not an HDF5 file, so not an mfface dataset; give a file "
                           "written by mfface prepare or synth.")
    try:
        return h5py.File(path, mode)
    except OSError as e:
        message = str(e).split(" (")[0]
        raise DatasetError(f"{path} is damaged or truncated ({message}); write it again "
                           "(mfface prepare resumes from an intact copy only).") from None


def describe_file(f: Any, path: Path) -> dict[str, Any]:
    """Validate an open dataset file and describe it: attributes, count, column schema.

    Raises DatasetError for another format or version, or datasets missing, misshapen or of
    another length than `count`. Reading the datasets' headers also surfaces damage (truncation
    in the middle of the file) as DatasetError."""
    fmt = _attr(f, "format")
    if fmt != FORMAT_NAME:
        raise DatasetError(f"{path} is an HDF5 file but not an mfface face dataset (format "
                           f"{fmt!r}); give a file written by mfface prepare or synth.")
    version = _attr(f, "format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path} is mfface dataset format version {version}; this mfface "
                           f"reads and writes version {FORMAT_VERSION}, so write the dataset "
                           "again with this version (or use the matching mfface).")
    try:
        size, count = int(_attr(f, "crop_size")), int(_attr(f, "count"))
        columns: dict[str, tuple[tuple[int, ...], str]] = {}

        def visit(name: str, obj: Any) -> None:
            import h5py

            if isinstance(obj, h5py.Dataset) and not name.startswith("report/"):
                kind = "str" if obj.dtype.kind == "O" or h5py.check_string_dtype(obj.dtype) else obj.dtype.name
                columns[name] = (tuple(obj.shape[1:]), kind)
                if obj.shape[0] != count:
                    raise DatasetError(f"{path} is inconsistent: {name} has {obj.shape[0]} rows "
                                       f"but the file says {count} samples; write it again.")

        f.visititems(visit)
    except DatasetError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as e:
        raise DatasetError(f"{path} is damaged or incomplete ({e}); write it again.") from None
    for column in sample_columns(size):
        got = columns.get(column.name)
        if got != (column.shape, column.dtype):
            raise DatasetError(f"{path} lacks a valid {column.name!r} dataset (found {got}); it is "
                               "damaged or not written by this mfface.")
    return {
        "path": path, "size": size, "count": count, "columns": columns,
        "attrs": {k: _attr(f, k) for k in f.attrs},
        "truth": sorted(n for n in columns if n.startswith("truth/")),
    }


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """`describe_file` of the dataset at `path` (opened read-only and closed again)."""
    path = Path(path)
    f = _open_h5(path)
    try:
        return describe_file(f, path)
    finally:
        f.close()


def read_report(path: str | os.PathLike) -> list[ReportEntry]:
    """The report rows of a dataset file: inputs that are not in it and why."""
    with _open_h5(Path(path)) as f:
        return _read_report_group(f)


def shard_path(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The shard that rank `rank` of `world_size` writes for `output`: DATASET.rank{r}-of-{w}.h5."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}-of-{world_size}{output.suffix or '.h5'}")


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporaries of `atomic_path` for `path` left by killed runs (`.NAME.XXXXXXXX.tmpSUFFIX`)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp{re.escape(path.suffix)}")
    try:
        return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    except OSError:
        return []


class DatasetWriter:
    """Append samples to a new or existing dataset file, atomically (see the module doc).

        with DatasetWriter("faces.h5", spec, tool="prepare") as writer:
            if "/a/b.jpg" not in writer.keys: writer.append({"images": ..., "paths": "/a/b.jpg", ...})
            writer.report.append(ReportEntry(...))

    On entering: takes the output's lock, removes temporaries that killed runs left, checks an
    existing file (format, version, crop size, source, `spec.match`, truth attributes, same
    datasets) and reads its sample keys and report. The first `append` copies the existing file
    to a temporary beside it (or starts a new one there). On leaving normally, or by
    KeyboardInterrupt when `commit_on_interrupt`, the temporary is finished (trimmed to the
    complete samples, attributes, report, history), flushed to disk and renamed over the output;
    a run that changed nothing leaves an existing output untouched. On any other exception the
    temporary is deleted and the output stays as it was. Raises DatasetError for every refusal.
    """

    def __init__(self, path: str | os.PathLike, spec: DatasetSpec, tool: str,
                 shard: tuple[int, int] | None = None, commit_on_interrupt: bool = True) -> None:
        self.path = Path(path)
        self.spec = spec
        self.tool = tool
        self.shard = shard
        self.commit_on_interrupt = commit_on_interrupt
        self.columns = spec.columns
        self.keys: dict[str, SampleKey] = {}    # path -> key, of the samples stored before this run
        self.report: list[ReportEntry] = []     # this run's inputs that were not added
        self.earlier_report: list[ReportEntry] = []
        self.history_extra: dict[str, Any] = {}
        self.existing = 0                       # samples before this run
        self.count = 0                          # complete samples now
        self.added = 0
        self._new_paths: list[str] = []
        self._stack: ExitStack | None = None
        self._file: Any = None
        self._pending: dict[str, list[Any]] = {}
        self._pending_start = 0
        self._capacity = 0

    # -- opening ---------------------------------------------------------------------------------
    def __enter__(self) -> "DatasetWriter":
        from mfface.outputs import OutputError, ResultLock

        if self.path.is_dir():
            raise DatasetError(f"{self.path} is a folder; give the dataset's file name with -o "
                               "(e.g. faces.h5).")
        stack = ExitStack()
        try:
            try:
                stack.enter_context(ResultLock(self.path.parent, [self.path.name]))
            except OutputError as e:
                raise DatasetError(str(e)) from None
            for stale in _stale_temporaries(self.path):  # we hold the lock: no live run owns them
                stale.unlink(missing_ok=True)
            if self.path.exists() or self.path.is_symlink():
                self._check_existing()
                self._read_existing()
            else:  # probe now that the folder takes a file, before any work is done
                probe = self.path.with_name(f".{self.path.name}.probe")
                probe.write_bytes(b"")
                probe.unlink()
        except OSError as e:
            stack.close()
            raise DatasetError(f"cannot write {self.path} ({e.strerror or e}); choose another "
                               "output with -o.") from None
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _check_existing(self) -> None:
        """Refuse an existing output this writer must not add to (see the class doc)."""
        if self.path.is_symlink() or not self.path.is_file():
            raise DatasetError(f"{self.path} exists and is not a regular file; choose another output.")
        try:
            info = read_info(self.path)
        except DatasetError as e:
            raise DatasetError(f"{e} mfface adds only to its own datasets and will not "
                               f"replace {self.path.name}; choose another output with -o.") from None
        if info["size"] != self.spec.size:
            raise DatasetError(f"{self.path} holds {info['size']} px crops, not {self.spec.size} px; "
                               f"use --size {info['size']} to add to it, or choose another output.")
        if info["attrs"].get("source") != self.spec.source:
            raise DatasetError(f"{self.path} holds {info['attrs'].get('source')} samples, not "
                               f"{self.spec.source}; choose another output.")
        for key, value in self.spec.match.items():
            have = info["attrs"].get(key)
            if isinstance(value, float) and isinstance(have, (int, float)):
                same = bool(np.isclose(have, value))
            else:
                same = have == value
            if not same:
                raise DatasetError(f"{self.path} was made with {key} = {have!r}, not {value!r}; "
                                   "add to it with the same settings, or choose another output.")
        wanted = {c.name: (c.shape, c.dtype) for c in self.columns}
        if info["columns"] != wanted:
            differ = set(wanted.items()) ^ set(info["columns"].items())
            raise DatasetError(f"{self.path} has other datasets than this run writes "
                               f"({', '.join(sorted({d[0] for d in differ}))}); choose another output.")
        shard = info["attrs"].get("shard_rank"), info["attrs"].get("shard_world_size")
        if shard != (tuple(self.shard) if self.shard else (None, None)):
            raise DatasetError(f"{self.path} is {'a shard' if shard[0] is not None else 'not a shard'} "
                               "of another run; choose another output.")

    def _read_existing(self) -> None:
        """Read the existing output's sample keys, count and report (and check its truth)."""
        with _open_h5(self.path) as f:
            if self.spec.truth:
                have = {k: _attr(f["truth"], k) for k in f["truth"].attrs} if "truth" in f else {}
                want = {k: (v.item() if isinstance(v, np.generic) else v)
                        for k, v in self.spec.truth_attrs.items()}
                if have != want:
                    raise DatasetError(f"{self.path}'s truth was made with other settings ({have}, "
                                       f"not {want}); choose another output.")
            self.existing = self.count = self._capacity = int(f.attrs["count"])
            columns = zip(f["paths"][:], f["file_sizes"][:], f["file_mtimes_ns"][:], f["sha256"][:])
            for row, (p, s, m, d) in enumerate(columns):
                self.keys[_decode_str(p)] = SampleKey(row, int(s), int(m), _decode_str(d))
            self.earlier_report = _read_report_group(f)

    def _open(self) -> None:
        """Start the temporary: a copy of the existing output, or a new empty dataset."""
        from mfface.atomic import atomic_path

        import h5py

        assert self._stack is not None, "DatasetWriter is used outside its with-block"
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._tmp = tmp
        try:
            if self.existing or self.path.exists():
                shutil.copyfile(self.path, tmp)
                self._file = h5py.File(tmp, "r+")
            else:
                self._file = h5py.File(tmp, "w")
                self._create(self._file)
        except OSError as e:
            raise DatasetError(f"cannot write {self.path} ({e.strerror or e}); choose another "
                               "output with -o (or free some disk space).") from None

    def _create(self, f: Any) -> None:
        """Write the root attributes and the empty, resizable datasets into new file `f`."""
        from mfface import __version__

        stamp = now_utc()
        f.attrs.update({
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "crop_size": self.spec.size,
            "landmark_scheme": LANDMARK_SCHEME, "pixel_convention": PIXEL_CONVENTION,
            "image_encoding": IMAGE_ENCODING, "gamma": GAMMA, "source": self.spec.source,
            "count": 0, "created_at": stamp, "updated_at": stamp,
            "created_with": f"mfface {__version__}", "history": "[]",
        })
        for key, value in {**self.spec.match, **self.spec.attrs}.items():
            f.attrs[key] = value
        f.attrs["match_keys"] = json.dumps(sorted(self.spec.match))  # what a merge must compare
        if self.shard is not None:
            f.attrs["shard_rank"], f.attrs["shard_world_size"] = self.shard
        for column in self.columns:
            ds = f.create_dataset(column.name, shape=(0, *column.shape), maxshape=(None, *column.shape),
                                  dtype=column.h5_dtype(), chunks=(column.per_chunk, *column.shape),
                                  compression="gzip", compression_opts=column.gzip_level)
            ds.attrs["doc"] = column.doc
            ds.attrs["geometry"] = column.geometry
        if self.spec.truth:
            f["truth"].attrs.update(dict(self.spec.truth_attrs))

    # -- writing ---------------------------------------------------------------------------------
    def append(self, values: Mapping[str, Any]) -> int:
        """Add one sample: a value for every column (arrays of the column's shape, or `Encoded`
        chunks for one-sample-per-chunk columns). Returns its row. The sample counts (is kept
        by a commit) only once every column is written."""
        missing = [c.name for c in self.columns if c.name not in values]
        if missing:
            raise ValueError(f"sample lacks {', '.join(missing)}.")
        if self._file is None:
            self._open()
        row = self.count
        if row >= self._capacity:
            self._capacity = row + 256
            for column in self.columns:
                self._file[column.name].resize(self._capacity, axis=0)
        small: dict[str, Any] = {}
        for column in self.columns:
            value = values[column.name]
            if column.per_chunk == 1:
                encoded = value if isinstance(value, Encoded) else column.encode(value)
                offset = (row,) + (0,) * len(column.shape)
                self._file[column.name].id.write_direct_chunk(offset, encoded.data, 0)
            elif column.dtype == "str":
                small[column.name] = str(value)
            else:
                if np.shape(value) != column.shape:
                    raise ValueError(f"{column.name}: expected shape {column.shape}, got "
                                     f"{np.shape(value)}.")
                small[column.name] = value
        if not self._pending:
            self._pending_start = row
        for name, value in small.items():
            self._pending.setdefault(name, []).append(value)
        self._new_paths.append(str(values["paths"]))
        self.count += 1
        self.added += 1
        if self.count - self._pending_start >= _SMALL_BLOCK:
            self._flush_pending()
        return row

    def _flush_pending(self) -> None:
        """Write the buffered rows of the small columns (rows _pending_start .. count)."""
        for column in self.columns:
            values = self._pending.get(column.name)
            if not values:
                continue
            if column.dtype == "str":
                block = np.array(values, dtype=object)
            else:
                block = np.asarray(values, dtype=column.dtype).reshape(len(values), *column.shape)
            self._file[column.name][self._pending_start:self._pending_start + len(values)] = block
        self._pending.clear()

    def copy_rows(self, source: Any, rows: Sequence[int], on_row: Any = None) -> None:
        """Append rows `rows` of another open dataset file `source` with the same columns: the
        one-sample chunks are copied compressed as they are (no decoding). `on_row()` is called
        after each."""
        small = [c for c in self.columns if c.per_chunk != 1]
        cached = {c.name: source[c.name][:] for c in small}
        for row in rows:
            values: dict[str, Any] = {}
            for column in self.columns:
                if column.per_chunk == 1:
                    ds = source[column.name]
                    offset = (row,) + (0,) * len(column.shape)
                    mask, data = ds.id.read_direct_chunk(offset)
                    values[column.name] = (Encoded(data) if mask == 0 and ds.compression == "gzip"
                                           else ds[row])
                else:
                    value = cached[column.name][row]
                    values[column.name] = _decode_str(value) if column.dtype == "str" else value
            self.append(values)
            if on_row is not None:
                on_row()

    def final_report(self) -> list[ReportEntry]:
        """The report a commit writes: this run's entries, plus earlier ones for inputs that
        were not tried again and are still not in the dataset; sorted by path."""
        stored = set(self.keys) | set(self._new_paths)
        report = {e.path: e for e in self.earlier_report if e.path not in stored}
        report.update({e.path: e for e in self.report})
        return sorted(report.values(), key=lambda e: e.path)

    # -- closing ---------------------------------------------------------------------------------
    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        commit = kind is None or (self.commit_on_interrupt and issubclass(kind, KeyboardInterrupt))
        if not commit:
            self._close_quietly()
            stack.__exit__(kind, error, tb)  # deletes the temporary, unlocks
            return
        self._stack = stack
        try:
            unchanged = (self._file is None and self.path.exists()
                         and self.final_report() == sorted(self.earlier_report, key=lambda e: e.path))
            if not unchanged:
                if self._file is None:
                    self._open()
                self._finish()
                self._file.close()
                self._file = None
                with open(self._tmp, "rb+") as f:
                    os.fsync(f.fileno())
        except BaseException:
            self._stack = None
            self._close_quietly()
            if not stack.__exit__(*sys.exc_info()):
                raise
            return
        self._stack = None
        stack.close()  # renames the temporary over the output, then unlocks

    def _close_quietly(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:
                pass
            self._file = None

    def _finish(self) -> None:
        """Trim to the complete samples; write report, history, count and update time."""
        from mfface import __version__

        self._flush_pending()
        f = self._file
        for column in self.columns:
            f[column.name].resize(self.count, axis=0)
        _write_report_group(f, self.final_report())
        history = json.loads(_attr(f, "history", "[]"))
        history.append({"tool": self.tool, "time": now_utc(), "mfface": __version__,
                        "added": self.added, "count": self.count, "not_added": len(self.report),
                        "command": list(sys.argv), **self.history_extra})
        f.attrs["history"] = json.dumps(history)
        f.attrs["count"] = self.count
        f.attrs["updated_at"] = now_utc()


def merge_datasets(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
                   on_progress: Any = None) -> dict[str, Any]:
    """Join dataset files (typically the shards of a distributed `prepare`) into `output`.

    Every input must have the same format version, crop size, source kind, crop margin and
    datasets (truth included). When the inputs are shards, all ranks of their world size must be
    there. An existing `output` is appended to (same checks); samples whose source path is
    already in the output or in an earlier input are skipped. Reports are joined, minus inputs
    that some shard did store. `on_progress(done, total)` is called per sample.
    Returns {"inputs", "added", "skipped_duplicates", "count", "report"}.
    """
    paths = [Path(p) for p in inputs]
    output = Path(output)
    if not paths:
        raise DatasetError("--merge needs at least one dataset file to join.")
    infos = [read_info(p) for p in paths]
    first = infos[0]
    match_keys = json.loads(first["attrs"].get("match_keys", "[]"))
    keys = ("crop_size", "source", "crop_margin", "landmark_scheme", *match_keys)
    for info in infos[1:]:
        for key in keys:
            if info["attrs"].get(key) != first["attrs"].get(key):
                raise DatasetError(f"{info['path']} has {key} = {info['attrs'].get(key)!r} but "
                                   f"{first['path']} has {first['attrs'].get(key)!r}; only datasets "
                                   "made with the same settings can be merged.")
        if info["columns"] != first["columns"]:
            raise DatasetError(f"{info['path']} and {first['path']} hold different datasets "
                               "(one has truth the other lacks, or other model sizes); they "
                               "cannot be merged.")
    _check_shards_complete(infos)
    import h5py

    size = first["size"]
    truth = _truth_columns_of(first)
    truth_attrs: dict[str, Any] = {}
    for info in infos:
        with h5py.File(info["path"], "r") as f:
            these = {k: _attr(f["truth"], k) for k in f["truth"].attrs} if "truth" in f else {}
        if info is first:
            truth_attrs = these
        elif these != truth_attrs:
            raise DatasetError(f"{info['path']}'s truth was made with other settings than "
                               f"{first['path']}'s ({these} vs {truth_attrs}); they cannot be merged.")
    match = {"crop_margin": first["attrs"]["crop_margin"]} if "crop_margin" in first["attrs"] else {}
    match.update({k: first["attrs"][k] for k in match_keys if k in first["attrs"]})
    attrs = {k: v for k, v in first["attrs"].items() if k not in _RESERVED_ATTRS}
    spec = DatasetSpec(size=size, source=str(first["attrs"].get("source")), truth=tuple(truth),
                       match=match, attrs=attrs, truth_attrs=truth_attrs)
    total = sum(info["count"] for info in infos)
    done = skipped = 0
    reports: list[ReportEntry] = []

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done + skipped, total)

    with DatasetWriter(output, spec, tool="merge", commit_on_interrupt=False) as writer:
        writer.history_extra = {"inputs": [str(p) for p in paths]}
        seen = set(writer.keys)
        for path in paths:
            f = _open_h5(path)
            try:
                names = [_decode_str(p) for p in f["paths"][:]]
                rows = []
                for row, name in enumerate(names):
                    if name in seen:
                        skipped += 1
                    else:
                        seen.add(name)
                        rows.append(row)
                writer.copy_rows(f, rows, step)
            finally:
                f.close()
            reports.extend(read_report(path))
        writer.report = [e for e in {e.path: e for e in reports}.values() if e.path not in seen]
        result = {"inputs": len(paths), "added": writer.added, "skipped_duplicates": skipped,
                  "report": len(writer.report)}
    result["count"] = writer.count
    return result


def _truth_columns_of(info: Mapping[str, Any]) -> list[Column]:
    """Column objects for the truth datasets an existing file holds (schema taken from it)."""
    import h5py

    columns = []
    with h5py.File(info["path"], "r") as f:
        for name in info["truth"]:
            ds = f[name]
            shape, kind = info["columns"][name]
            per_chunk = ds.chunks[0] if ds.chunks else 1
            columns.append(Column(name, shape, kind, _decode_str(ds.attrs.get("doc", "")),
                                  _decode_str(ds.attrs.get("geometry", "none")), per_chunk,
                                  int(ds.compression_opts or 4)))
    return columns


def _check_shards_complete(infos: Iterable[Mapping[str, Any]]) -> None:
    """Refuse a merge that has some but not all shards of a distributed run."""
    worlds: dict[int, set[int]] = {}
    for info in infos:
        world = info["attrs"].get("shard_world_size")
        if world is not None:
            worlds.setdefault(int(world), set()).add(int(info["attrs"]["shard_rank"]))
    for world, ranks in worlds.items():
        missing = sorted(set(range(world)) - ranks)
        if missing:
            raise DatasetError(f"the shards of a {world}-process run are incomplete: rank(s) "
                               f"{', '.join(map(str, missing))} missing; give every "
                               f"*.rank<r>-of-{world} file (or wait for those ranks to finish).")


def read_calibration_samples(path: str | os.PathLike) -> "CalibrationSamples":
    """The detected landmarks and the truth of a synthetic dataset (`mfface synth`) as the
    samples that `mfface.morphable.landmark_calibration` calibrates a landmark table on."""
    from mfface.morphable.landmark_calibration import CalibrationSamples

    path = Path(path)
    with _open_h5(path) as f:
        if "truth" not in f:
            raise DatasetError(f"{path} has no truth (it was not made by mfface synth); calibrating "
                               "landmarks needs renders with known faces.")
        truth = f["truth"]
        return CalibrationSamples(
            detected=f["landmarks"][()].astype(np.float64),
            identity=truth["identity"][()], expression=truth["expression"][()],
            euler=truth["euler"][()].astype(np.float64), translation=truth["translation"][()],
            focal=truth["focal"][()], principal=truth["principal"][()],
            size=int(f.attrs["crop_size"]))
