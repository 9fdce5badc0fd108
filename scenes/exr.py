"""HDR image files (linear float RGB: envmaps, HDR renders) through Mitsuba's own Bitmap I/O:
OpenEXR (`.exr`) and Radiance RGBE (`.hdr`, `.pic`).

imageio cannot write EXR here (its OpenCV path has EXR disabled), whereas `mi.Bitmap` reads and
writes OpenEXR and Radiance natively. Radiance files store 8-bit mantissas with a shared exponent
(about 0.4% relative precision) and no alpha. Writes are atomic.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_path
from mfface.backend import select_variant


RADIANCE_SUFFIXES = (".hdr", ".pic")


def write_exr(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a linear float image (H, W, 3), or (H, W, 4) RGBA with premultiplied colour (the
    OpenEXR convention), as a float32 OpenEXR file, atomically."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"write_exr needs an image of shape (H, W, 3) or (H, W, 4), got "
                         f"{tuple(a.shape)}.")
    if Path(path).suffix.lower() != ".exr":
        raise ValueError(f"{path} does not end in .exr; give the EXR file an .exr name.")
    select_variant()
    import mitsuba as mi

    pixel_format = mi.Bitmap.PixelFormat.RGB if a.shape[-1] == 3 else mi.Bitmap.PixelFormat.RGBA
    bitmap = mi.Bitmap(np.ascontiguousarray(a, dtype=np.float32), pixel_format)
    with atomic_path(path) as tmp:
        bitmap.write(str(tmp), mi.Bitmap.FileFormat.OpenEXR)


def write_hdr(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a linear float image (H, W, 3) as a Radiance RGBE file (`.hdr`), atomically, for
    programs that do not read OpenEXR. Values must be finite and >= 0 (RGBE has no sign)."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"write_hdr needs an image of shape (H, W, 3), got {tuple(a.shape)}.")
    if Path(path).suffix.lower() not in RADIANCE_SUFFIXES:
        raise ValueError(f"{path} does not end in .hdr; give the Radiance file an .hdr name.")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"the image for {path} has negative, NaN or infinite values, which RGBE "
                         f"cannot store.")
    select_variant()
    import mitsuba as mi

    bitmap = mi.Bitmap(np.ascontiguousarray(a, dtype=np.float32), mi.Bitmap.PixelFormat.RGB)
    with atomic_path(path) as tmp:
        bitmap.write(str(tmp), mi.Bitmap.FileFormat.RGBE)


def read_hdr_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an OpenEXR (`.exr`) or Radiance (`.hdr`, `.pic`) file as float32 (H, W, 3) linear
    values (alpha dropped, one channel repeated to three). Raises ValueError naming the file when
    it is missing, has another suffix or cannot be decoded."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".exr":
        return read_exr(path)
    if suffix not in RADIANCE_SUFFIXES:
        raise ValueError(f"{path} is neither OpenEXR (.exr) nor Radiance (.hdr); give an HDR "
                         f"image in one of those formats.")
    return _read_bitmap(path, "RGBE", "a Radiance .hdr file", "an .exr or .hdr file")


def _reason(error: Exception) -> str:
    """Mitsuba's error text on one short line (its stream dumps removed), for a user message."""
    text = re.sub(r"\w+Stream\[[^\]]*\]", "the file", str(error))
    text = " ".join(text.replace('"', "").split())
    return text if len(text) <= 200 else text[:197] + "..."


def _rgb_tensor(bitmap) -> torch.Tensor:
    import mitsuba as mi

    bitmap = bitmap.convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.Float32, srgb_gamma=False)
    return torch.from_numpy(np.array(bitmap, dtype=np.float32).reshape(bitmap.height(),
                                                                       bitmap.width(), 3))


def read_exr(path: str | os.PathLike) -> torch.Tensor:
    """Read an OpenEXR file as a float32 tensor (H, W, 3) of linear values (alpha dropped,
    one channel repeated to three)."""
    return _read_bitmap(Path(path), "OpenEXR", "OpenEXR", "an .exr file")


def _read_bitmap(path: Path, file_format: str, kind: str, wanted: str) -> torch.Tensor:
    """Decode `path` with Mitsuba as `mi.Bitmap.FileFormat.<file_format>` into (H, W, 3) float32;
    a missing or undecodable file is a ValueError that names it, `kind` (what it failed to be
    read as) and `wanted` (what to give instead)."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give the path of {wanted}.")
    select_variant()
    import mitsuba as mi

    try:
        bitmap = mi.Bitmap(str(path), getattr(mi.Bitmap.FileFormat, file_format))
    except RuntimeError as e:
        raise ValueError(f"{path} could not be read as {kind} ({_reason(e)}); check that it is "
                         f"{wanted}.") from None
    return _rgb_tensor(bitmap)
