"""Atomic writes: a result file or folder appears complete or not at all.

Write into a temporary sibling (same folder, so the final rename stays on one file system), then
`os.replace` it onto the target. When the writer raises, the temporary is removed and the target
is left as it was.

    with atomic_path("out/mesh.obj") as tmp:      # any writer that takes a path
        trimesh_mesh.export(tmp)
    with atomic_open("out/params.json", "w") as f:  # a file object
        json.dump(params, f)
    with atomic_dir("out/result") as tmp_dir:      # a whole folder
        (tmp_dir / "a.png").write_bytes(...)
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so format-sniffing writers still work);
    on success it replaces `path`, on an exception it is deleted and the exception re-raised."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}",
                                dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes the file private (0600); give it the usual permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Like `open(path, mode)` for writing (mode 'w' or 'wb'), but atomic: see `atomic_path`."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; use mode 'w' or 'wb', not {mode!r}.")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield an empty folder `<path>.tmp...` beside `path`; on success it is renamed to `path`.

    An existing `path` is replaced when `overwrite` (it is moved aside first and removed only
    after the new folder is in place), else FileExistsError is raised before anything is written.
    On an exception the temporary folder is removed and `path` is left as it was.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; choose another output folder or allow "
                              f"overwriting.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes the folder private (0700)
    except BaseException:
        _remove(tmp)
        raise
    aside = None
    if target.exists() or target.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        if aside is not None:
            os.replace(aside / target.name, target)
        _remove(tmp)
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
