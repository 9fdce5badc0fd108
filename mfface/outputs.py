"""Who owns what in a fit's output folder, and how concurrent or interrupted runs stay apart.

mfface never deletes what it did not write:
- `OUT/<name>` is replaced only when it is an mfface result folder (its `params.json` says format
  `mfface-fit`) that holds nothing but files mfface writes (`RESULT_ENTRIES`), and only when the
  user asked for it (`overwrite`); anything else at that path is an error and is left untouched.
- Everything mfface keeps while it works lives in `OUT/.mfface/`: a lock file per result name
  (`locks/<name>.lock`, an exclusive `flock`, so a second run writing the same result refuses
  instead of racing) and a checkpoint folder per run (`checkpoints/<group>/run-<time>-<pid>/`).
- A run that holds a name's lock cleans up after killed runs of that name: unfinished result
  folders (`.<name>.XXXXXXXX.tmp`) are removed, a previous result moved aside by a replacement
  that was killed midway (`.<name>.XXXXXXXX.old`) is restored, and checkpoint folders of killed
  runs are reported (they can be resumed) rather than deleted.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_FORMAT = "mfface-fit"
HOUSEKEEPING = ".mfface"
# Every entry mfface writes into a result folder: `mfface fit` (mfface.results), `mfface replay`
# (turntable.*) and `mfface export --blender` (blender_scene.py).
RESULT_ENTRIES = frozenset({
    "mesh.obj", "mesh.mtl", "mesh_diffuse.png", "mesh_specular.png", "mesh_roughness.png",
    "mesh.glb", "envmap.exr", "envmap.hdr", "envmap.png", "render.png", "overview.png",
    "landmarks.png", "losses.png", "params.json", "config.toml", "checkpoints", "turntable.gif",
    "turntable.mp4", "blender_scene.py",
})


class OutputError(ValueError):
    """An output path mfface must not (or cannot yet) write; the message says what to do."""


def is_result(folder: Path) -> bool:
    """True when `folder` is a real folder whose params.json is an mfface fit's."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(params, dict) and params.get("format") == RESULT_FORMAT


def foreign_entries(folder: Path) -> list[str]:
    """Names in result folder `folder` that mfface does not write (a user's own files)."""
    def ours(path: Path) -> bool:
        if path.name == "checkpoints":
            return path.is_dir() and not path.is_symlink() and all(
                re.fullmatch(r"stage\d\.npz", c.name) and c.is_file() for c in path.iterdir())
        return path.name in RESULT_ENTRIES and path.is_file() and not path.is_symlink()
    return sorted(p.name for p in folder.iterdir() if not ours(p))


def existing_result(folder: Path) -> bool:
    """Whether `folder` holds an earlier mfface result (True) or nothing (False).

    Raises OutputError when something else stands there: a file, a link, a folder that is not an
    mfface result, or a result that also holds files mfface did not write."""
    if not folder.exists() and not folder.is_symlink():
        return False
    if not is_result(folder):
        what = "a folder that is not an mfface result" if folder.is_dir() else "a file"
        raise OutputError(f"{folder} already exists and is {what}; mfface will not replace it, so "
                          f"choose another output folder with -o or move it away.")
    foreign = foreign_entries(folder)
    if foreign:
        raise OutputError(f"{folder} holds an earlier result plus files mfface did not write "
                          f"({', '.join(foreign[:5])}); move them out of it before fitting again "
                          f"into this folder.")
    return True


def check_target(folder: Path, overwrite: bool) -> None:
    """Raise OutputError unless the result for `folder` may be written (see the module doc)."""
    if existing_result(folder) and not overwrite:
        raise OutputError(f"{folder} holds an earlier result; pass --overwrite to replace it, or "
                          f"choose another output folder with -o.")


@dataclass
class ResultLock:
    """Exclusive locks on result names in `out_dir` (OUT/.mfface/locks/<name>.lock), taken
    without waiting: a name another live run holds raises OutputError. Locks die with their
    process (flock), so a killed run never leaves one held."""
    out_dir: Path
    names: list[str]
    _held: list[tuple[Path, int]] = field(default_factory=list)
    _created_out_dir: bool = False

    def __enter__(self) -> "ResultLock":
        self._created_out_dir = not self.out_dir.exists()
        folder = self.out_dir / HOUSEKEEPING / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for name in sorted(set(self.names)):
                self._held.append(self._take(folder / f"{name}.lock", name))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _take(self, path: Path, name: str) -> tuple[Path, int]:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # another run removed the emptied locks folder just now
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise OutputError(f"another mfface run is writing {self.out_dir / name} right now; "
                                  f"wait for it to finish or choose another output folder.") from None
            try:  # the holder before us may have unlinked the file: lock the current one instead
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return path, fd
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        for path, fd in reversed(self._held):
            path.unlink(missing_ok=True)  # while still held, so no one else has it
            os.close(fd)
        self._held.clear()
        _remove_empty(self.out_dir / HOUSEKEEPING / "locks")
        if self._created_out_dir:  # a run that wrote nothing leaves no empty output folder
            try:
                self.out_dir.rmdir()
            except OSError:
                pass


def _remove_empty(folder: Path) -> None:
    """Remove `folder` and then its parent when they are empty (housekeeping left tidy)."""
    for path in (folder, folder.parent):
        try:
            path.rmdir()
        except OSError:
            return


def checkpoint_root(out_dir: Path, group: str) -> Path:
    """OUT/.mfface/checkpoints/<group>: the run folders of one photo (or group of photos)."""
    return out_dir / HOUSEKEEPING / "checkpoints" / group


def new_run_dir(out_dir: Path, group: str) -> Path:
    """A fresh per-run checkpoint folder, `checkpoint_root(...)/run-<YYYYmmdd-HHMMSS>-<pid>`."""
    folder = checkpoint_root(out_dir, group) / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def finish_run_dir(run_dir: Path) -> None:
    """Remove a finished run's checkpoint folder and the folders above it that became empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for path in (run_dir.parent, run_dir.parent.parent, run_dir.parent.parent.parent):
        try:
            path.rmdir()
        except OSError:
            return


def recover(out_dir: Path, names: list[str], group: str, current_run: Path | None = None) -> list[str]:
    """Clean up after killed runs of `names` (call while holding their ResultLock); returns one
    sentence per thing done or found, for the user."""
    notes = []
    for name in names:
        stale = re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
        for entry in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
            match = stale.match(entry.name)
            if not match or not entry.is_dir():
                continue
            target = out_dir / name
            if match.group(1) == "old" and (entry / name).is_dir() and not target.exists():
                os.replace(entry / name, target)
                notes.append(f"restored the earlier result {target}, which an interrupted run had "
                             f"moved aside.")
            else:
                notes.append(f"removed {entry.name}, an unfinished result of an interrupted run.")
            shutil.rmtree(entry, ignore_errors=True)
    root = checkpoint_root(out_dir, group)
    for run in sorted(root.glob("run-*")) if root.is_dir() else []:
        stages = sorted(run.glob("stage*.npz"))
        if run == current_run:
            continue
        if not stages:
            shutil.rmtree(run, ignore_errors=True)
            continue
        notes.append(f"an interrupted fit left checkpoints in {run}; resume it with --checkpoint "
                     f"{stages[-1]}, or delete that folder.")
    return notes
