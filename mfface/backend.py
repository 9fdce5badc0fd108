"""Backend selection: the Mitsuba variant and the libLLVM that Dr.Jit's CPU backend needs.

`cuda_ad_rgb` is used when a CUDA device works, else `llvm_ad_rgb`. Dr.Jit's LLVM backend loads a
system libLLVM at run time; Dr.Jit 1.5 kernels need LLVM >= 18 (LLVM 15, Debian 12's default, aborts
with "Cannot select fminimum"), so the library is found here, before Dr.Jit first touches it:
`DRJIT_LIBLLVM_PATH` when set, else the newest libLLVM found in the usual system folders.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

MIN_LLVM_MAJOR = 18
INSTALL_HINT = (
    "install LLVM 18 or newer (Debian/Ubuntu: `apt-get install libllvm19`) "
    "or point DRJIT_LIBLLVM_PATH at its libLLVM.so"
)
DEFAULT_SEARCH_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/opt/llvm/lib",
    "/usr/local/opt/llvm/lib",
)
_LLVM_NAME = re.compile(r"libLLVM(?:-(\d+)[.\d]*\.(?:so|dylib)|\.so\.(\d+)|\.(\d+)\.dylib)")


class BackendError(RuntimeError):
    """No usable rendering backend; the message says what to install."""


def llvm_major(path: str | os.PathLike) -> int | None:
    """LLVM major version read from a libLLVM file or folder name (`libLLVM.so.19.1`, `llvm-19/...`)."""
    p = Path(path)
    m = _LLVM_NAME.search(p.name)
    if m:
        return int(next(g for g in m.groups() if g))
    m = re.search(r"llvm-(\d+)", str(p))
    return int(m.group(1)) if m else None


def llvm_candidates(search_dirs: tuple[str, ...] = DEFAULT_SEARCH_DIRS) -> list[Path]:
    """Every libLLVM shared library in `search_dirs` (and their llvm-N/lib subfolders), newest first."""
    found: dict[Path, int] = {}
    for d in map(Path, search_dirs):
        if not d.is_dir():
            continue
        patterns = ("libLLVM*.so*", "libLLVM*.dylib", "llvm-*/lib/libLLVM*.so*")
        for pattern in patterns:
            for f in d.glob(pattern):
                major = llvm_major(f)
                if major is not None and f.is_file():
                    found.setdefault(f.resolve(), major)
    return sorted(found, key=lambda f: (found[f], len(f.name)), reverse=True)


def find_libllvm(search_dirs: tuple[str, ...] = DEFAULT_SEARCH_DIRS,
                 env: dict[str, str] | os._Environ = os.environ) -> Path:
    """The libLLVM Dr.Jit should load: `DRJIT_LIBLLVM_PATH`, else the newest usable one found.

    Raises BackendError with one sentence that says what to install when none is usable.
    """
    explicit = env.get("DRJIT_LIBLLVM_PATH")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise BackendError(f"DRJIT_LIBLLVM_PATH={explicit} does not exist; {INSTALL_HINT}.")
        major = llvm_major(path)
        if major is not None and major < MIN_LLVM_MAJOR:
            raise BackendError(f"DRJIT_LIBLLVM_PATH={explicit} is LLVM {major}, too old for Dr.Jit; "
                               f"{INSTALL_HINT}.")
        return path
    candidates = llvm_candidates(search_dirs)
    usable = [c for c in candidates if llvm_major(c) >= MIN_LLVM_MAJOR]
    if not usable:
        seen = ", ".join(f"LLVM {llvm_major(c)}" for c in candidates) or "none"
        raise BackendError(f"No libLLVM >= {MIN_LLVM_MAJOR} found (found: {seen}); {INSTALL_HINT}.")
    return usable[0]


def _cuda_works() -> bool:
    import drjit as dr
    import mitsuba as mi

    if "cuda_ad_rgb" not in mi.variants():
        return False
    try:
        return bool(dr.has_backend(dr.JitBackend.CUDA))
    except Exception:  # a broken driver is the same as none
        return False


@lru_cache(maxsize=None)
def select_variant(device: str | None = None) -> str:
    """Set and return the Mitsuba variant: `device` is None (auto), 'cpu' or 'cuda'.

    Auto picks `cuda_ad_rgb` when a CUDA device works, else `llvm_ad_rgb`.
    """
    if device not in (None, "cpu", "cuda"):
        raise BackendError(f"Unknown device {device!r}; use 'cpu' or 'cuda'.")
    if device != "cuda":
        # Mitsuba's host-side code uses the LLVM backend when it is there, also beside CUDA; a GPU
        # machine without a usable libLLVM still renders with `cuda_ad_rgb` (auto or 'cuda').
        try:
            os.environ["DRJIT_LIBLLVM_PATH"] = str(find_libllvm())
        except BackendError:
            if device == "cpu" or not _cuda_works():
                raise
    import mitsuba as mi

    if device == "cuda" or (device is None and _cuda_works()):
        if not _cuda_works():
            raise BackendError("No working CUDA device for Mitsuba; run with --device cpu.")
        variant = "cuda_ad_rgb"
    else:
        variant = "llvm_ad_rgb"
    mi.set_variant(variant)
    return variant


def torch_device() -> "torch.device":  # noqa: F821 - torch imported lazily
    """The torch device that matches the selected variant (tensors cross `dr.wrap` without copies)."""
    import mitsuba as mi
    import torch

    if mi.variant() is None:
        select_variant()
    return torch.device("cuda" if mi.variant().startswith("cuda") else "cpu")


def describe() -> dict[str, str]:
    """What `mfface doctor` reports: variant, the LLVM or CUDA in use, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, str] = {}
    try:
        info["variant"] = select_variant()
    except BackendError as e:
        info["variant"] = f"none ({e})"
    if info["variant"].startswith("cuda"):
        import torch
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "available to Dr.Jit"
    try:
        info["llvm"] = str(find_libllvm())
    except BackendError as e:
        info["llvm"] = f"none ({e})"
    for pkg in ("mitsuba", "drjit", "torch", "mediapipe"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    return info
