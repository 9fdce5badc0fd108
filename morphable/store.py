"""The model store: installed morphable models, one `<name>.mfmodel` file each, plus a default.

Folder: `$MFFACE_HOME/models` when MFFACE_HOME is set, else `$XDG_DATA_HOME/mfface/models`
(`~/.local/share/mfface/models`). Installing imports a source model (a folder, an archive or a
URL that is downloaded first), adds MediaPipe landmark correspondences when the importer gave
none, and writes the model file atomically, so a failed or interrupted install leaves nothing.

Names: 'ict' (ICT-FaceKit, downloaded from its repository when no source is given), 'bfm2017'
and 'bfm2009' (registration-only downloads: `source` is required), each optionally with a
region: `install('ict', region='narrow')` is stored as 'ict-narrow'. Every method that takes a
name checks it with `check_name` first, so no name can reach outside the store folder.

The built-in model (`builtin.BUILTIN_NAME`, 'ict-lite', shipped inside the package) is always
available: it is listed, can be named and made the default, and is what `load()` returns when no
default is set (nothing installed, or the default was removed). Installing a model when no default
is set makes it the default. It cannot be installed or removed, and a store file with its name is
refused.
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
from mfface.morphable.builtin import (BUILTIN_NAME, BundledModelError, builtin_header,
                                      builtin_path, load_builtin, reinstall_hint,
                                      verified_builtin_path)
from mfface.morphable.correspondence import (MEDIAPIPE_CONTOUR, contour_subset,
                                             mediapipe_correspondence, mediapipe_from_ibug68)
from mfface.morphable.format import (SUFFIX, ModelFormatError, ModelSourceError, load_model_file,
                                     read_header, save_model)
from mfface.morphable.model import MorphableModel

MEDIAPIPE_MESH_ENV = "MFFACE_MEDIAPIPE_MESH"
_NAME = re.compile(r"[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)?")  # whole name: _NAME.fullmatch
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
DEFAULT_MARKER = "default"


class ModelNotInstalledError(LookupError):
    """The requested model is not in the store, or the default marker names no available model."""


class ModelNameError(ModelNotInstalledError, ValueError):
    """A model name that is not a plain store name (separators, '..', upper case, ...)."""


class BuiltinModelError(ValueError):
    """An operation the built-in model does not allow (install, remove), or a store file that
    has its name."""


def check_name(name: object) -> str:
    """`name` if it is a plain model name (`_NAME`: lower-case letters, digits, '_', at most one
    '-'; so no '/', '\\', '..' or absolute path), else ModelNameError. Used by every entry point."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModelNameError(
            f"invalid model name {name!r}: a model name is lower-case letters, digits and '_', "
            f"with at most one '-' (e.g. 'ict' or 'ict-narrow'), and no path.")
    return name


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
    check_name(name)
    if name == BUILTIN_NAME:
        raise BuiltinModelError(
            f"{BUILTIN_NAME!r} is the model built into mfface: it needs no install. "
            f"`mfface models install ict` installs the full ICT model.")
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
    builtin: bool = False  # the model shipped inside the package (path is in the package)


def download(url: str, dest: Path, sha256: str | None = None, progress: bool = False,
             saved_in: Path | None = None) -> str:
    """Download `url` to `dest`; returns the SHA256 (hex) of what was received.

    Raises DownloadError when the transfer fails, is shorter than announced, cannot be saved, or
    its SHA256 differs from `sha256` (when given); messages name the URL, never `dest` (often a
    temporary file of the caller's), and `saved_in` (default: dest's folder) when saving failed.
    `dest` is removed on failure.
    """
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            try:
                out = open(dest, "wb")
            except OSError as error:
                raise _SaveError(error) from error
            bar = _progress(url, total) if progress else None
            with out:
                try:
                    while chunk := response.read(1 << 20):
                        try:
                            out.write(chunk)
                        except OSError as error:
                            raise _SaveError(error) from error
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
    except _SaveError as error:
        dest.unlink(missing_ok=True)
        raise DownloadError(
            f"could not save the download of {url} ({error.cause.strerror or error.cause}); check "
            f"the free space and permissions of {saved_in or dest.parent}.") from error.cause
    except (urllib.error.URLError, OSError, ValueError) as error:
        dest.unlink(missing_ok=True)
        if isinstance(error, DownloadError):
            raise
        reason = getattr(error, "reason", None) or error
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP error {error.code}: {error.reason}"
        elif isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        raise DownloadError(f"could not download {url} ({reason}); check the address and the "
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


class _SaveError(Exception):
    """Writing the downloaded bytes failed (our side, not the network's)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


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


def restore_hint(name: str) -> str:
    """How a user gets model `name` (again): the install command, or for the built-in model the
    package reinstall."""
    if name == BUILTIN_NAME:
        return reinstall_hint()
    kind, _, region = name.partition("-")
    command = (f"mfface models install {kind}" + (f" --region {region}" if region else "")
               if kind in KINDS else "mfface models install ict")
    return f"install it with `{command}`"


class ModelStore:
    """Installed models in `root` (default: `default_root()`), plus the built-in model."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def path(self, name: str) -> Path:
        """The store file for `name` (whether or not it exists); raises ModelNameError."""
        return self.root / f"{check_name(name)}{SUFFIX}"

    def _installed_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.name[: -len(SUFFIX)] for p in self.root.glob(f"*{SUFFIX}"))
        return sorted(n for n in names if not n.startswith(".") and n != BUILTIN_NAME)

    def _available(self) -> str:
        """'installed: a, b; built in: ict-lite', for messages."""
        return (f"installed: {', '.join(self._installed_names()) or 'none'}; "
                f"built in: {BUILTIN_NAME}")

    def _impostor(self) -> BuiltinModelError | None:
        """The error for a store file that has the built-in model's name, when there is one."""
        path = self.root / f"{BUILTIN_NAME}{SUFFIX}"
        if not path.exists():
            return None
        return BuiltinModelError(
            f"{path} has the name of the model built into mfface ({BUILTIN_NAME!r}), which an "
            f"installed model cannot have; rename or delete that file.")

    def _require(self, name: str) -> Path:
        """The file of available model `name` (the package's for the built-in one)."""
        path = self.path(name)
        if name == BUILTIN_NAME:
            impostor = self._impostor()
            if impostor is not None:
                raise impostor
            return builtin_path()
        if not path.is_file():
            raise ModelNotInstalledError(
                f"face model {name!r} is not installed ({self._available()}); {restore_hint(name)}.")
        return path

    def list(self) -> list[ModelInfo]:
        """The built-in model, then installed models sorted by name; unreadable files (and a file
        with the built-in model's name) are listed with `error` set."""
        default = self.default_name()
        infos = [self._builtin_info(default)]
        impostor = self._impostor()
        if impostor is not None:
            path = self.root / f"{BUILTIN_NAME}{SUFFIX}"
            infos.append(ModelInfo(BUILTIN_NAME, path, path.stat().st_size, False,
                                   error=str(impostor)))
        for name in self._installed_names():
            path = self.root / f"{name}{SUFFIX}"
            info = ModelInfo(name, path, path.stat().st_size, name == default)
            if not _NAME.fullmatch(name):
                info.error = (f"{path.name} is not named like a model (lower-case letters, digits, "
                              f"'_', at most one '-'), so it cannot be used; rename it.")
                infos.append(info)
                continue
            try:
                info.header = read_header(path)
            except ModelFormatError as error:
                info.error = str(error)
            infos.append(info)
        return infos

    def _builtin_info(self, default: str | None) -> ModelInfo:
        path = builtin_path()
        info = ModelInfo(BUILTIN_NAME, path, path.stat().st_size if path.is_file() else 0,
                         default == BUILTIN_NAME, builtin=True)
        try:
            verified_builtin_path()
            info.header = builtin_header()
        except BundledModelError as error:
            info.error = str(error)
        except (ModelFormatError, OSError) as error:
            info.error = f"the built-in model {path} cannot be read ({error}); {reinstall_hint()}."
        return info

    def info(self, name: str) -> ModelInfo:
        """Model `name` (installed or built in); raises ModelNotInstalledError, ModelNameError,
        ModelFormatError or BuiltinModelError."""
        path = self._require(name)
        if name == BUILTIN_NAME:
            info = self._builtin_info(self.default_name())
            if info.error:
                raise BundledModelError(info.error)
            return info
        return ModelInfo(name, path, path.stat().st_size, name == self.default_name(),
                         read_header(path))

    def _marker(self) -> str | None:
        """The default marker's text (stripped), None when there is no marker."""
        marker = self.root / DEFAULT_MARKER
        if not marker.exists():
            return None
        try:
            return marker.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return "\ufffd"  # unreadable: reported by default_problem()

    def default_problem(self) -> str | None:
        """A sentence saying why the default marker is unusable, None when it is fine or absent."""
        text = self._marker()
        if text is None:
            return None
        marker = self.root / DEFAULT_MARKER
        fix = f"choose the default with `mfface models default NAME` ({self._available()})."
        if not text:
            return f"the default-model marker {marker} is empty; {fix}"
        if not _NAME.fullmatch(text):
            return f"the default-model marker {marker} holds {text[:60]!r}, not a model name; {fix}"
        if text != BUILTIN_NAME and not self.path(text).is_file():
            return (f"the default-model marker {marker} names {text!r}, which is not installed; "
                    f"{fix}")
        return None

    def default_name(self) -> str | None:
        """The model `load()` uses: the default set in the store when it is available, the
        built-in model when no default is set, None when the marker is unusable (see
        `default_problem`)."""
        text = self._marker()
        if text is None:
            return BUILTIN_NAME
        return None if self.default_problem() is not None else text

    def default_is_set(self) -> bool:
        """Whether the store names a usable default (else the built-in model is used)."""
        return self._marker() is not None and self.default_problem() is None

    def set_default(self, name: str) -> None:
        """Make model `name` (installed or built in) the default (used when no model is named)."""
        self._require(name)
        write_text(self.root / DEFAULT_MARKER, name + "\n")

    def remove(self, name: str) -> None:
        """Delete the installed model `name` (and the default marker if it pointed to it, so that
        the built-in model becomes the default); the built-in model cannot be removed."""
        check_name(name)
        if name == BUILTIN_NAME:
            raise BuiltinModelError(
                f"{BUILTIN_NAME!r} is built into mfface and cannot be removed; to use another "
                f"model by default, install or choose one (`mfface models default NAME`).")
        path = self._require(name)
        was_default = self._marker() == name
        path.unlink()
        if was_default:
            (self.root / DEFAULT_MARKER).unlink(missing_ok=True)

    def load(self, name: str | None = None) -> MorphableModel:
        """Load model `name`, or the default model when None (the built-in model when no default
        is set). Raises ModelNotInstalledError (also for an unusable default marker),
        ModelNameError, ModelFormatError (BundledModelError for a damaged package) or
        BuiltinModelError."""
        if name is None:
            name = self.default_name()
            if name is None:
                raise ModelNotInstalledError(self.default_problem())
        path = self._require(name)
        if name == BUILTIN_NAME:
            return load_builtin()
        return load_model_file(path)

    def install(self, name: str, source: str | Path | None = None, region: str | None = None,
                canonical_mesh: str | Path | None = None, sha256: str | None = None,
                progress: bool = False) -> ModelInfo:
        """Import `name` from `source` (folder, archive, URL; None = the kind's default URL) and
        store it; becomes the default when no default is set. See the module doc for names.

        canonical_mesh: MediaPipe's canonical_face_model.obj for landmark correspondence, else
        env MFFACE_MEDIAPIPE_MESH, else only iBUG-68-derived MediaPipe points (ICT ships its table).
        sha256: expected checksum of a downloaded source (verified when given, recorded always).
        Raises ValueError (ModelNameError, BuiltinModelError) for a bad name,
        ModelSourceError/DownloadError for a bad source.
        """
        kind, region, stored = split_name(name, region)
        spec = KINDS[kind]
        if source is None:
            if spec.default_url is None:
                raise ModelSourceError(
                    f"{kind} cannot be downloaded automatically; get its files from {spec.obtain} "
                    f"and run `mfface models install {kind} --from PATH`.")
            source = spec.default_url
        text = str(source)
        if _SCHEME.match(text) and not _URL.match(text):
            raise ModelSourceError(
                f"cannot download {text}: mfface downloads http://, https:// and file:// addresses; "
                f"download it yourself and pass the file with --from.")
        canonical_mesh = canonical_mesh or os.environ.get(MEDIAPIPE_MESH_ENV) or None
        self.root.mkdir(parents=True, exist_ok=True)
        options = {"region": region} if region is not None else {}
        with tempfile.TemporaryDirectory(prefix=".install-", dir=self.root) as tmp:
            url = text if _URL.match(text) else None
            if url is not None:
                local = Path(tmp) / "source"
                digest = download(url, local, sha256=sha256, progress=progress, saved_in=self.root)
                origin = (f"Downloaded from {url}, SHA256 {digest} "
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
            try:
                model = importer(local, **options)
            except ModelSourceError as error:
                if url is None:
                    raise
                # The importer names the file it read: the download's temporary copy, which is
                # gone by now; name the address instead.
                message = str(error).replace(str(local), f"the file downloaded from {url}")
                raise ModelSourceError(message) from error
        model.name = stored
        how = add_mediapipe_landmarks(model, canonical_mesh)
        model.provenance = " ".join(p for p in (model.provenance, origin, how) if p)
        save_model(model, self.path(stored))
        if not self.default_is_set():
            self.set_default(stored)
        return self.info(stored)
