"""The face model built into the package, `ict-lite`: used when no model is installed or chosen.

It is a compact copy of ICT-FaceKit's Face Model Light (MIT): the `face` region, the leading
`N_IDENTITY` of its 100 identity modes and all 55 expression blendshapes, with float16 bases in a
deflated `.mfmodel` (`format.save_model(..., compact=True)`). `build_bundled.py` derives it from
the ICT-FaceKit archive; the SHA256 it wrote beside the file is checked on every load, so a damaged
installation is reported instead of fitted with. ICT's LICENSE and CREDITS.md ship beside it.
"""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from mfface.morphable.format import ModelFormatError, load_model_file, read_header
from mfface.morphable.model import MorphableModel

BUILTIN_NAME = "ict-lite"
N_IDENTITY = 50  # chosen from the measurements in docs/models.md ("The built-in model")
MODEL_FILE = f"{BUILTIN_NAME}.mfmodel"
CHECKSUM_FILE = f"{MODEL_FILE}.sha256"
LICENSE_FILE = "ICT-FaceKit-LICENSE.txt"
CREDITS_FILE = "ICT-FaceKit-CREDITS.md"


class BundledModelError(ModelFormatError):
    """The built-in model's file is missing or does not match its recorded checksum."""


def data_path(name: str) -> Path:
    """A file of the package data folder `mfface/morphable/data/`."""
    return Path(str(resources.files("mfface.morphable").joinpath("data", name)))


def builtin_path() -> Path:
    """Where the built-in model's file is (inside the installed package)."""
    return data_path(MODEL_FILE)


def reinstall_hint() -> str:
    """The command that restores the package data: git in a source checkout, else pip."""
    root = data_path("").parent.parent
    if (root / ".git").exists() and (root / "setup.sh").is_file():
        return f"restore it with `git -C {root} checkout -- morphable/data` and run ./setup.sh again"
    return "reinstall mfface with `pip install --force-reinstall mfface`"


def sha256_of(path: Path) -> str:
    """SHA256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256() -> str:
    """The SHA256 recorded for the built-in model when it was built (`CHECKSUM_FILE`)."""
    path = data_path(CHECKSUM_FILE)
    try:
        return path.read_text().split()[0].lower()
    except (OSError, IndexError) as error:
        raise BundledModelError(
            f"the built-in model's checksum file {path} is missing or empty; "
            f"{reinstall_hint()}.") from error


def verified_builtin_path() -> Path:
    """The built-in model's path after checking its SHA256; raises BundledModelError."""
    path = builtin_path()
    expected = recorded_sha256()
    try:
        found = sha256_of(path)
    except OSError as error:
        raise BundledModelError(f"the built-in model {path} cannot be read ({error.strerror}); "
                                f"{reinstall_hint()}.") from error
    if found != expected:
        raise BundledModelError(f"the built-in model {path} is damaged (its SHA256 differs from "
                                f"the one recorded at build time); {reinstall_hint()}.")
    return path


def builtin_header() -> dict:
    """The built-in model's header (counts, provenance), without reading its arrays."""
    return read_header(builtin_path())


def load_builtin() -> MorphableModel:
    """Load the built-in model after verifying its checksum; raises BundledModelError."""
    path = verified_builtin_path()
    try:
        return load_model_file(path)
    except BundledModelError:
        raise
    except ModelFormatError as error:  # checksum fine but unreadable: built by another version
        raise BundledModelError(f"the built-in model {path} was built for another version of "
                                f"mfface and cannot be read; {reinstall_hint()}.") from error
