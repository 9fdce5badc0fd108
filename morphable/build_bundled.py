"""Derive the package's built-in model (`ict-lite`) and its licence files from ICT-FaceKit.

    python -m mfface.morphable.build_bundled ICT-FaceKit.tar.xz morphable/data

SOURCE is what `mfface models install ict --from` takes (the repository folder, its `.zip` or a
`.tar.*`). Into OUT it writes, each atomically:
- `ict-lite.mfmodel`: `import_ict(SOURCE)` (the `face` region, with its parts: eyeballs, mouth
  interior, teeth) cut to the leading `builtin.N_IDENTITY` identity modes (the parts' too), all
  expression shapes kept, saved compact (float16 bases,
  deflated, fixed zip timestamps: the same source gives the same arrays and, with the same zlib,
  the same bytes);
- `ict-lite.mfmodel.sha256`: its SHA256, checked whenever the built-in model is loaded;
- `ICT-FaceKit-LICENSE.txt` and `ICT-FaceKit-CREDITS.md`: ICT-FaceKit's LICENSE and CREDITS.md.
A test rebuilds it from the shared archive and compares it with the shipped files.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tarfile
import zipfile
from pathlib import Path

from mfface.atomic import write_bytes, write_text
from mfface.morphable.builtin import (BUILTIN_NAME, CHECKSUM_FILE, CREDITS_FILE, LICENSE_FILE,
                                      MODEL_FILE, N_IDENTITY, sha256_of)
from mfface.morphable.format import ModelSourceError, save_model
from mfface.morphable.model import MorphableModel

_TEXTS = {"LICENSE": LICENSE_FILE, "CREDITS.md": CREDITS_FILE}


def derive(full: MorphableModel, n_identity: int = N_IDENTITY) -> MorphableModel:
    """The built-in model from an imported ICT `face` model: its first `n_identity` identity
    modes (upstream's order, so coefficients mean the same as in the full model; the parts are
    cut the same way), everything else as it is. The float16 rounding happens when it is saved compact."""
    if not 1 <= n_identity <= full.n_identity:
        raise ValueError(f"n_identity must be 1..{full.n_identity}, got {n_identity}.")
    derived = dataclasses.replace(
        full,
        name=BUILTIN_NAME,
        identity_basis=full.identity_basis[:n_identity].copy(),
        identity_std=full.identity_std[:n_identity].copy(),
        parts=[part.leading_identity(n_identity) for part in full.parts],
        provenance=(f"{full.provenance} Built into mfface as {BUILTIN_NAME!r}: identity modes "
                    f"0..{n_identity - 1} of {full.n_identity}, all {full.n_expression} expression "
                    f"shapes, bases stored as float16 (`python -m mfface.morphable.build_bundled`)."),
    )
    for spec in dataclasses.fields(derived):  # caches (torch buffers, ...) belong to `full`
        if spec.name.startswith("_"):
            fresh = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            setattr(derived, spec.name, fresh)
    return derived


def read_texts(source: str | Path) -> dict[str, bytes]:
    """ICT-FaceKit's LICENSE and CREDITS.md (top level of the repository) from SOURCE."""
    source = Path(source)
    found: dict[str, bytes] = {}

    def top_level(name: str) -> str | None:
        parts = name.strip("/").split("/")
        return parts[-1] if len(parts) <= 2 and parts[-1] in _TEXTS else None

    try:
        if source.is_dir():
            for path in sorted(source.glob("*")) + sorted(source.glob("*/*")):
                key = top_level(path.relative_to(source).as_posix())
                if key and path.is_file():
                    found.setdefault(key, path.read_bytes())
        elif zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                for info in archive.infolist():
                    key = top_level(info.filename)
                    if key and not info.is_dir():
                        found.setdefault(key, archive.read(info))
        else:
            with tarfile.open(source, "r|*") as archive:
                for member in archive:
                    key = top_level(member.name)
                    if key and member.isfile():
                        handle = archive.extractfile(member)
                        assert handle is not None
                        found.setdefault(key, handle.read())
                    if len(found) == len(_TEXTS):
                        break
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise ModelSourceError(f"{source} cannot be read ({type(error).__name__}: {error}).") from error
    missing = [name for name in _TEXTS if name not in found]
    if missing:
        raise ModelSourceError(f"{source} lacks ICT-FaceKit's {' and '.join(missing)}; pass the "
                               f"whole repository (folder or archive).")
    return found


def write_bundle(model: MorphableModel, texts: dict[str, bytes], out: str | Path) -> dict[str, Path]:
    """Write the built-in model, its checksum and the licence texts into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": save_model(model, out / MODEL_FILE, compact=True)}
    paths["checksum"] = out / CHECKSUM_FILE
    write_text(paths["checksum"], f"{sha256_of(paths['model'])}  {MODEL_FILE}\n")
    for source_name, file_name in _TEXTS.items():
        paths[source_name] = out / file_name
        write_bytes(paths[source_name], texts[source_name])
    return paths


def build(source: str | Path, out: str | Path, n_identity: int = N_IDENTITY) -> dict[str, Path]:
    """Import ICT-FaceKit from `source` and write the bundle into `out` (see the module doc)."""
    from mfface.morphable.ict import import_ict

    texts = read_texts(source)
    return write_bundle(derive(import_ict(source), n_identity), texts, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfface.morphable.build_bundled",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("source", help="ICT-FaceKit folder, .zip or .tar.* archive")
    parser.add_argument("out", help="output folder (the package's: morphable/data)")
    parser.add_argument("--n-identity", type=int, default=N_IDENTITY,
                        help=f"identity modes kept (default {N_IDENTITY}; the shipped model "
                             f"uses the default)")
    args = parser.parse_args(argv)
    try:
        paths = build(args.source, args.out, args.n_identity)
    except (ModelSourceError, ValueError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    size = paths["model"].stat().st_size
    print(f"wrote {paths['model']} ({size / 1e6:.2f} MB, {args.n_identity} identity modes), "
          f"{paths['checksum'].name}, {paths['LICENSE'].name}, {paths['CREDITS.md'].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
