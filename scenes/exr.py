"""OpenEXR files (linear float RGB: envmaps, HDR renders) through Mitsuba's own Bitmap I/O.

imageio cannot write EXR here (its OpenCV path has EXR disabled), whereas `mi.Bitmap` reads and
writes OpenEXR natively. Writes are atomic.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mfface.atomic import atomic_path
from mfface.backend import select_variant


def write_exr(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> None:
    """Write a linear float image (H, W, 3) as a float32 RGB OpenEXR file, atomically."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape[:2]) < 1:
        raise ValueError(f"write_exr needs an image of shape (H, W, 3), got {tuple(a.shape)}.")
    if Path(path).suffix.lower() != ".exr":
        raise ValueError(f"{path} does not end in .exr; give the EXR file an .exr name.")
    select_variant()
    import mitsuba as mi

    bitmap = mi.Bitmap(np.ascontiguousarray(a, dtype=np.float32), mi.Bitmap.PixelFormat.RGB)
    with atomic_path(path) as tmp:
        bitmap.write(str(tmp), mi.Bitmap.FileFormat.OpenEXR)


def read_exr(path: str | os.PathLike) -> torch.Tensor:
    """Read an OpenEXR file as a float32 tensor (H, W, 3) of linear values (alpha dropped,
    one channel repeated to three)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give the path of an .exr file.")
    select_variant()
    import mitsuba as mi

    try:
        bitmap = mi.Bitmap(str(path), mi.Bitmap.FileFormat.OpenEXR)
    except RuntimeError as e:
        raise ValueError(f"{path} could not be read as OpenEXR ({e}); check that it is an EXR "
                         f"file.") from None
    bitmap = bitmap.convert(mi.Bitmap.PixelFormat.RGB, mi.Struct.Type.Float32, srgb_gamma=False)
    return torch.from_numpy(np.array(bitmap, dtype=np.float32).reshape(bitmap.height(),
                                                                       bitmap.width(), 3))
