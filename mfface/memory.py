"""Will a fit fit? Memory and disk estimates, checked before a fit starts.

A fit's peak memory grows with the texture maps: stage 3 optimises three maps of T x T texels per
photo (parameters, gradients, Adam's two moments, the renderer's copies and its AD graph). Measured
by `bench/memory.py` (figures in bench/RESULTS.md) on the 9.5k-vertex ICT face, the image side
(128-512 px) and the samples per pixel (4-1024; Dr.Jit traces them in a streaming kernel) change
the peak by less than 40 MB, so the model is

    peak bytes = BASE + PER_TEXEL * T^2 * photos

with BASE and PER_TEXEL fitted to those measurements and rounded up. `check_memory` refuses
settings whose estimate exceeds the memory available (MemAvailable, or a cgroup limit, or
`MFFACE_MEMORY_LIMIT` such as "8G"), with one sentence that says what fits. `check_disk` does the
same for the result folders' size.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from mfface.config import FitConfig

BASE = 800 * 2**20          # bytes: interpreter, torch, Mitsuba/Dr.Jit, MediaPipe, model, scene
PER_TEXEL = 512             # bytes per texel per photo (measured 380-490 between 512 and 2048 px)
RESULT_PER_TEXEL = 120      # bytes on disk per texel per photo: PNG maps, GLB, three checkpoints
RESULT_BASE = 4 * 2**20     # bytes on disk per photo besides the maps: figures, mesh, envmap, JSON
MEMORY_ENV = "MFFACE_MEMORY_LIMIT"


class ResourceError(ValueError):
    """The requested fit does not fit in this machine's memory or disk; the message says what does."""


def estimate_fit_bytes(config: FitConfig, photos: int = 1) -> int:
    """Estimated peak memory (bytes) of fitting `photos` photos together with `config`."""
    return int(BASE + PER_TEXEL * config.render.texture_size ** 2 * photos)


def _parse_size(text: str) -> int:
    """'8G', '512M', '1073741824' -> bytes."""
    text = text.strip().upper().removesuffix("B")
    factor = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    try:
        return int(float(number) * factor)
    except ValueError:
        raise ResourceError(f"{MEMORY_ENV}={text!r} is not a size; write it like 8G or 512M.") from None


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None when unlimited."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes a fit may use: `MFFACE_MEMORY_LIMIT` when set, else the smaller of the kernel's
    MemAvailable and the cgroup's remaining limit."""
    if os.environ.get(MEMORY_ENV):
        return _parse_size(os.environ[MEMORY_ENV])
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_free()
    return available if cgroup is None else min(available, cgroup)


def largest_texture(photos: int, budget: int) -> int:
    """The largest power-of-two texture size (16 and up) whose estimate fits `budget` bytes, or 0."""
    fitting = [2**k for k in range(4, 14) if BASE + PER_TEXEL * 4**k * photos <= budget]
    return max(fitting, default=0)


def check_memory(config: FitConfig, photos: int = 1) -> None:
    """Raise ResourceError when the fit's estimated peak memory exceeds what is available."""
    need, have = estimate_fit_bytes(config, photos), available_memory()
    if need <= have:
        return
    texture = largest_texture(photos, have)
    hint = (f"use --render-texture-size {texture} or less" if texture else
            "close other programs; even 16 px textures do not fit")
    raise ResourceError(f"this fit needs about {need / 2**30:.1f} GB of memory for "
                        f"{config.render.texture_size} px textures but {have / 2**30:.1f} GB are "
                        f"available; {hint}.")


def estimate_result_bytes(config: FitConfig, batch: int = 1) -> int:
    """Estimated disk size (bytes) of the result folders of `batch` photos, checkpoints included."""
    return batch * (RESULT_BASE + RESULT_PER_TEXEL * config.render.texture_size ** 2)


def check_disk(output: Path, config: FitConfig, batch: int = 1) -> None:
    """Raise ResourceError when `output`'s file system lacks room for the results (and the
    checkpoints kept while fitting, which are about as large)."""
    need = 2 * estimate_result_bytes(config, batch)
    existing = next(p for p in (output, *output.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ResourceError(f"the results need about {need / 2**20:.0f} MB in {output} but only "
                            f"{free / 2**20:.0f} MB are free; free some space or choose another "
                            f"output folder with -o.")
