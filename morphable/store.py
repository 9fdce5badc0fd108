"""The model store: installed morphable models, one `<name>.mfmodel` file each, plus a default.

Folder: `$MFFACE_HOME/models` when MFFACE_HOME is set, else `$XDG_DATA_HOME/mfface/models`
(`~/.local/share/mfface/models`). Installing imports a source model (a folder, an archive or a
URL that is downloaded first), adds MediaPipe landmark correspondences when the importer gave
none, and writes the model file atomically, so a failed or interrupted install leaves nothing.

Names: 'ict' (ICT-FaceKit, downloaded from its repository when no source is given), 'bfm2017'
and 'bfm2009' (registration-only downloads: `source` is required), each optionally with a
region: `install('ict', region='narrow')` is stored as 'ict-narrow'.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mfface.atomic import write_text
from mfface.morphable.correspondence import (MEDIAPIPE_CONTOUR, contour_subset,
                                             mediapipe_correspondence, mediapipe_from_ibug68)
from mfface.morphable.format import (SUFFIX, ModelFormatError, ModelSourceError, load_model_file,
                                     read_header, save_model)
from mfface.morphable.model import MorphableModel

MEDIAPIPE_MESH_ENV = "MFFACE_MEDIAPIPE_MESH"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)?$")
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)


class ModelNotInstalledError(LookupError):
    """The requested model (or any model, for the default) is not in the store."""


class DownloadError(ModelSourceError):
    """A source could not be downloaded completely, or its SHA256 did not match."""


@dataclass(frozen=True)
class SourceKind:
    """How one named model is imported: `module.function(source, **options)`."""
    module: str
    function: str
    default_url: str | None
    obtain: str  # where a user gets the source files, for error messages
    regions: tuple[str, ...] = ()

    def importer(self) -> Callable[..., MorphableModel]:
        return getattr(importlib.import_module(self.module), self.function)


KINDS: dict[str, SourceKind] = {
    "ict": SourceKind(
        "mfface.morphable.ict", "import_ict",
        # A pinned commit's archive; GitHub does not guarantee byte-identical archives over time,
        # so no checksum is known in advance: the computed one is recorded in the provenance.
        "https://github.com/ICT-VGL/ICT-FaceKit/archive/da5f95a607f5e6b37755b38d3385d7f2853732e5.zip",
        "the ICT-FaceKit repository, https://github.com/ICT-VGL/ICT-FaceKit (MIT)",
        ("face", "narrow", "head")),
    "bfm2017": SourceKind(
        "mfface.morphable.basel2017", "import_bfm2017", None,
        "the Basel Face Model site of the University of Basel, https://faces.dmi.unibas.ch/bfm/"
        "bfm2017.html (registration), or AlbedoMM's GitHub, https://github.com/waps101/AlbedoMM"),
    "bfm2009": SourceKind(
        "mfface.morphable.basel2009", "import_bfm2009", None,
        "the Basel Face Model site of the University of Basel, https://faces.dmi.unibas.ch/bfm/"
        " (registration)"),
}


def default_root() -> Path:
    """The store folder: $MFFACE_HOME/models, else $XDG_DATA_HOME (~/.local/share)/mfface/models."""
    home = os.environ.get("MFFACE_HOME")
    if home:
        return Path(home).expanduser() / "models"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "mfface" / "models"


def split_name(name: str, region: str | None = None) -> tuple[str, str | None, str]:
    """(kind, region, stored name) for `name` ('ict', 'ict-narrow', ...) and an optional region."""
    if not _NAME.match(name):
        raise ValueError(f"invalid model name {name!r}; use lower-case letters, digits, '_' and one "
                         f"'-' before a region, e.g. 'ict' or 'ict-narrow'.")
    kind, _, suffix = name.partition("-")
    if suffix and region and suffix != region:
        raise ValueError(f"model name {name!r} already names region {suffix!r}; drop --region "
                         f"or install {kind!r} with --region {region}.")
    region = region or suffix or None
    if kind not in KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(KINDS)}.")
    spec = KINDS[kind]
    if not spec.regions and region is not None:
        raise ValueError(f"model {kind!r} has no selectable regions; install it without --region.")
    if spec.regions and region is not None and region not in spec.regions:
        raise ValueError(f"model {kind!r} has no region {region!r}; choose one of "
                         f"{', '.join(spec.regions)}.")
    default_region = spec.regions[0] if spec.regions else None
    stored = kind if region in (None, default_region) else f"{kind}-{region}"
    return kind, region, stored


@dataclass
class ModelInfo:
    """What the store knows about one installed model (read from its file header)."""
    name: str
    path: Path
    size_bytes: int
    is_default: bool
    header: dict = field(default_factory=dict)
    error: str | None = None  # set when the file cannot be read


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = False) -> str:
    """Download `url` to `dest`; returns the SHA256 (hex) of what was received.

    Raises DownloadError when the transfer fails, is shorter than announced, or its SHA256
    differs from `sha256` (when given). `dest` is removed on failure.
    """
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress(url, total) if progress else None
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar[0].update(bar[1], advance=len(chunk))
            finally:
                if bar is not None:
                    bar[0].stop()
        if total is not None and received != total:
            raise DownloadError(f"download of {url} stopped after {received} of {total} bytes; "
                                f"try again.")
    except (urllib.error.URLError, OSError, ValueError) as error:
        dest.unlink(missing_ok=True)
        if isinstance(error, DownloadError):
            raise
        raise DownloadError(f"could not download {url} ({error}); check the address and the "
                            f"network, or download it yourself and pass the file with --from.") from error
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    found = digest.hexdigest()
    if sha256 is not None and found != sha256.lower():
        dest.unlink(missing_ok=True)
        raise DownloadError(f"{url} has SHA256 {found}, expected {sha256}; the download is damaged "
                            f"or the file changed upstream, so it was discarded.")
    return found


def _progress(url: str, total: int | None):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TransferSpeedColumn)
    bar = Progress(TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    task = bar.add_task(url, total=total)
    bar.start()
    return bar, task


def add_mediapipe_landmarks(model: MorphableModel, canonical_mesh: str | Path | None) -> str:
    """Give `model` landmarks['mediapipe478'] (+ '_contour') when its importer did not.

    With MediaPipe's canonical mesh: computed by `mediapipe_correspondence`. Without it: only
    the points shared with iBUG-68 (`mediapipe_from_ibug68`), or nothing when the model has no
    iBUG-68 landmarks. Returns a sentence for the provenance saying which.
    """
    if "mediapipe478" in model.landmarks:
        return "MediaPipe-478 landmarks from the importer."
    if canonical_mesh is not None:
        table = mediapipe_correspondence(model, canonical_mesh).indices
        how = f"MediaPipe-478 landmarks aligned from the canonical mesh {canonical_mesh}."
    elif "ibug68" in model.landmarks:
        table = mediapipe_from_ibug68(model.landmarks["ibug68"])
        how = ("MediaPipe-478 landmarks only where they coincide with iBUG-68 (no canonical mesh "
               "given at install).")
    else:
        return "No MediaPipe-478 landmarks (neither a canonical mesh nor iBUG-68 landmarks)."
    model.landmarks["mediapipe478"] = table
    model.landmarks["mediapipe478_contour"] = contour_subset(table, MEDIAPIPE_CONTOUR)
    return how


class ModelStore:
    """Installed models in `root` (default: `default_root()`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def path(self, name: str) -> Path:
        return self.root / f"{name}{SUFFIX}"

    def _require(self, name: str) -> Path:
        path = self.path(name)
        if not path.is_file():
            installed = ", ".join(info.name for info in self.list()) or "none"
            kind, _, region = name.partition("-")
            command = (f"mfface models install {kind}" + (f" --region {region}" if region else "")
                       if kind in KINDS else "mfface models install ict")
            raise ModelNotInstalledError(
                f"face model {name!r} is not installed (installed: {installed}); install it with "
                f"`{command}`.")
        return path

    def list(self) -> list[ModelInfo]:
        """Installed models, sorted by name; unreadable files are listed with `error` set."""
        if not self.root.is_dir():
            return []
        default = self.default_name()
        infos = []
        for path in sorted(self.root.glob(f"*{SUFFIX}"), key=lambda p: p.name[: -len(SUFFIX)]):
            name = path.name[: -len(SUFFIX)]
            if name.startswith("."):
                continue
            info = ModelInfo(name, path, path.stat().st_size, name == default)
            try:
                info.header = read_header(path)
            except ModelFormatError as error:
                info.error = str(error)
            infos.append(info)
        return infos

    def info(self, name: str) -> ModelInfo:
        """The installed model `name`; raises ModelNotInstalledError or ModelFormatError."""
        path = self._require(name)
        return ModelInfo(name, path, path.stat().st_size, name == self.default_name(),
                         read_header(path))

    def default_name(self) -> str | None:
        """The default model's name, or None when no default is set or it was removed."""
        marker = self.root / "default"
        if not marker.is_file():
            return None
        name = marker.read_text().strip()
        return name if name and self.path(name).is_file() else None

    def set_default(self, name: str) -> None:
        """Make the installed model `name` the default (used when no model is named)."""
        self._require(name)
        write_text(self.root / "default", name + "\n")

    def remove(self, name: str) -> None:
        """Delete the installed model `name` (and the default marker if it pointed to it)."""
        path = self._require(name)
        was_default = self.default_name() == name
        path.unlink()
        if was_default:
            (self.root / "default").unlink(missing_ok=True)

    def load(self, name: str | None = None) -> MorphableModel:
        """Load model `name`, or the default model when None."""
        if name is None:
            name = self.default_name()
            if name is None:
                raise ModelNotInstalledError(
                    "no face model is installed; install one with `mfface models install ict`.")
        return load_model_file(self._require(name))

    def install(self, name: str, source: str | Path | None = None, region: str | None = None,
                canonical_mesh: str | Path | None = None, sha256: str | None = None,
                progress: bool = False) -> ModelInfo:
        """Import `name` from `source` (folder, archive, URL; None = the kind's default URL) and
        store it; becomes the default when no default is set. See the module doc for names.

        canonical_mesh: MediaPipe's canonical_face_model.obj for landmark correspondence, else
        env MFFACE_MEDIAPIPE_MESH, else only iBUG-68-derived MediaPipe points (ICT ships its table).
        sha256: expected checksum of a downloaded source (verified when given, recorded always).
        Raises ValueError for a bad name, ModelSourceError/DownloadError for a bad source.
        """
        kind, region, stored = split_name(name, region)
        spec = KINDS[kind]
        if source is None:
            if spec.default_url is None:
                raise ModelSourceError(
                    f"{kind} cannot be downloaded automatically; get its files from {spec.obtain} "
                    f"and run `mfface models install {kind} --from PATH`.")
            source = spec.default_url
        canonical_mesh = canonical_mesh or os.environ.get(MEDIAPIPE_MESH_ENV) or None
        self.root.mkdir(parents=True, exist_ok=True)
        options = {"region": region} if region is not None else {}
        with tempfile.TemporaryDirectory(prefix=".install-", dir=self.root) as tmp:
            if _URL.match(str(source)):
                local = Path(tmp) / "source"
                digest = download(str(source), local, sha256=sha256, progress=progress)
                origin = (f"Downloaded from {source}, SHA256 {digest} "
                          f"({'verified' if sha256 else 'recorded, not verified: none known'}).")
            else:
                local = Path(source).expanduser()
                if not local.exists():
                    raise ModelSourceError(f"{local} does not exist; pass the {kind} files from "
                                           f"{spec.obtain}.")
                origin = f"Imported from {local.resolve()}."
            try:
                importer = spec.importer()
            except ImportError as error:
                raise ModelSourceError(f"this mfface has no {kind} importer ({error}).") from error
            model = importer(local, **options)
        model.name = stored
        how = add_mediapipe_landmarks(model, canonical_mesh)
        model.provenance = " ".join(p for p in (model.provenance, origin, how) if p)
        save_model(model, self.path(stored))
        if self.default_name() is None:
            self.set_default(stored)
        return self.info(stored)

