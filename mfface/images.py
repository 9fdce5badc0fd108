"""Reading and writing photos, gamma, and cropping around a face.

Conventions: images are float32 RGB (H, W, 3) in [0, 1]. `read_image` returns the file's
display-referred values (sRGB-ish, not yet linearised); `linearize` turns them into the linear
values the renderer compares against. Pixel coordinates are continuous (u, v) = (x, y) with pixel
(0, 0)'s top-left corner at (0, 0), so pixel i's centre is at i + 0.5; landmarks stay in these
input-image coordinates and `Affine2D` maps them into a crop and back.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from mfface.atomic import atomic_path

SUPPORTED = "PNG, JPEG, PPM, TIFF or WebP"
# Pillow's decoders for exactly those formats: content is sniffed only among them, so a file named
# .png that holds, say, EPS is refused instead of being handed to Ghostscript.
PIL_FORMATS = ("PNG", "JPEG", "PPM", "TIFF", "WEBP")
# File name endings of the formats above, for picking the photos out of a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pnm", ".tif", ".tiff", ".webp")
# EXIF orientation tag value -> the same transform as Pillow's ImageOps.exif_transpose, on (H, W, C).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=1),
}


class ImageReadError(ValueError):
    """A photo could not be read; the message says which file and what to do."""


def _bits_per_sample(img: Image.Image, path: Path) -> int:
    """Bits per colour sample as stored in the file (Pillow reduces 16-bit RGB to 8 bits)."""
    if img.format == "PNG":
        with open(path, "rb") as f:
            header = f.read(25)
        return header[24] if len(header) == 25 else 8
    if img.format == "TIFF":
        bits = img.tag_v2.get(258, (8,))
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 8


def _decode(img: Image.Image, path: Path) -> np.ndarray:
    """Pixels of an opened Pillow image as float32 (H, W, 3) in [0, 1]."""
    if img.mode in ("RGB", "RGBA") and _bits_per_sample(img, path) == 16:
        import cv2  # Pillow cannot decode 16-bit colour; OpenCV keeps the full depth

        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None or raw.ndim != 3 or raw.dtype != np.uint16:
            raise ImageReadError(f"{path} is a 16-bit colour image that could not be decoded; "
                                 f"save it as an 8-bit PNG or JPEG.")
        return raw[..., 2::-1].astype(np.float32) / 65535.0
    if img.mode.startswith("I;16") or img.mode == "I":
        gray = np.asarray(img, dtype=np.float32) / 65535.0
    elif img.mode == "F":
        gray = np.asarray(img, dtype=np.float32)
    elif img.mode in ("1", "L", "LA"):
        gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    else:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read a photo as a float32 tensor (H, W, 3) in [0, 1], display-referred (not linearised).

    Reads PNG, JPEG, PPM, TIFF and WebP, 8 or 16 bits; grayscale becomes RGB, alpha is dropped,
    the EXIF orientation is applied (so the image is upright as a viewer shows it). A missing,
    unreadable or truncated file raises ImageReadError.
    """
    path = Path(path)
    if not path.is_file():
        what = ("is a folder, not an image file" if path.is_dir() else
                "is not a regular file (a device, pipe or socket)" if path.exists() else "does not exist")
        raise ImageReadError(f"{path} {what}; give the path of a {SUPPORTED} image.")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageReadError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set, so broken images would "
                             "load silently; unset it before reading photos.")
    try:
        with Image.open(path, formats=PIL_FORMATS) as img:
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            pixels = _decode(img, path)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path} is not an image file that can be read; give a {SUPPORTED} "
                             f"image.") from None
    except Image.DecompressionBombError:
        raise ImageReadError(f"{path} is too large to read safely (more than "
                             f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels); shrink it first.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path} could not be read ({e}); the file may be damaged or "
                             f"truncated, so re-export or re-download it.") from None
    if orientation in _ORIENT:
        pixels = _ORIENT[orientation](pixels)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def linearize(img: torch.Tensor | np.ndarray, gamma: float = 2.2) -> torch.Tensor | np.ndarray:
    """Display-referred values in [0, 1] -> linear radiance: clip(img, 0, 1) ** gamma."""
    return img.clip(0.0, 1.0) ** gamma


def delinearize(img: torch.Tensor | np.ndarray, gamma: float = 2.2) -> torch.Tensor | np.ndarray:
    """Linear values -> display-referred values in [0, 1]: clip(img, 0, 1) ** (1 / gamma)."""
    return img.clip(0.0, 1.0) ** (1.0 / gamma)


def write_png(path: str | os.PathLike, img: torch.Tensor | np.ndarray,
              gamma: float | None = 2.2) -> None:
    """Write an 8-bit PNG atomically from float values (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).

    `gamma` = 2.2 (default) treats `img` as linear and applies `delinearize`; None writes the
    values as they are (already display-referred). Values are clipped to [0, 1]; alpha (4th
    channel) is never gamma-encoded. A uint8 image is display-referred 0..255 already (figures):
    it is written as it is, so it needs gamma=None.
    """
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.dtype == np.uint8:
        if gamma is not None:
            raise ValueError("a uint8 image is already display-encoded; write it with gamma=None.")
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))) or min(a.shape[:2]) < 1:
        raise ValueError(f"write_png needs an image of shape (H, W), (H, W, 3) or (H, W, 4), got "
                         f"{tuple(a.shape)}.")
    if not np.isfinite(a).all():
        raise ValueError(f"the image for {path} contains NaN or infinite values; fix the values "
                         f"before writing.")
    if gamma is not None:
        color = a[..., :3] if a.ndim == 3 else a
        color[...] = delinearize(color, gamma)
    data = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(data).save(tmp, format="PNG")


@dataclass(frozen=True)
class CropBox:
    """A square crop in input-image pixels: columns x0..x0+size, rows y0..y0+size."""
    x0: int
    y0: int
    size: int


@dataclass(frozen=True)
class Affine2D:
    """Maps pixel coordinates p (..., 2) = (u, v) to p * scale + offset (isotropic scale)."""
    scale: float
    offset: tuple[float, float]

    def apply(self, points: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Map points (..., 2): from input-image pixels to crop pixels for `crop_and_resize`'s map."""
        offset = (torch.tensor(self.offset, dtype=points.dtype, device=points.device)
                  if isinstance(points, torch.Tensor) else np.asarray(self.offset))
        return points * self.scale + offset

    def inverse(self) -> "Affine2D":
        """The inverse map (crop pixels back to input-image pixels)."""
        return Affine2D(1.0 / self.scale, (-self.offset[0] / self.scale,
                                           -self.offset[1] / self.scale))


def crop_box_around(points: torch.Tensor | np.ndarray, image_size: tuple[int, int],
                    margin: float = 0.25) -> CropBox:
    """A square box around landmark `points` (N, 2) (u, v pixels) in an image of (height, width).

    The box is centred on the points' bounding box, its side is the larger bounding-box side times
    (1 + 2 * margin). It is then kept inside the image rather than padded (padding would add
    black borders that a photometric loss tries to explain): shifted inward, and shrunk to the
    image's shorter side when larger. So the face may sit off-centre near an image border.
    """
    p = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    height, width = image_size
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 2 or not np.isfinite(p).all():
        raise ValueError(f"crop_box_around needs at least two finite landmark points of shape "
                         f"(N, 2), got {p.shape}.")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}.")
    lo, hi = p.min(axis=0), p.max(axis=0)
    if (hi < 0).any() or lo[0] > width or lo[1] > height:
        raise ValueError(f"the landmarks lie outside the {width}x{height} image; check that they "
                         f"are in this image's pixel coordinates.")
    size = int(round(max(hi - lo) * (1.0 + 2.0 * margin)))
    size = max(1, min(size, height, width))
    cx, cy = (lo + hi) / 2.0
    x0 = int(np.clip(round(cx - size / 2.0), 0, width - size))
    y0 = int(np.clip(round(cy - size / 2.0), 0, height - size))
    return CropBox(x0, y0, size)


def crop_and_resize(image: torch.Tensor | np.ndarray, box: CropBox, max_resolution: int = 256,
                    enlarge: bool = False) -> tuple[torch.Tensor, Affine2D]:
    """Crop `box` out of `image` (H, W, C) and shrink it to at most `max_resolution` pixels a side
    (or, with `enlarge`, resize it to exactly that: a network takes one input size).

    Returns the crop as a float32 tensor (S, S, C) (shrinking is antialiased, enlarging bilinear)
    and the Affine2D from input-image pixel coordinates to crop pixel coordinates (`.inverse()`
    maps back).
    """
    img = torch.as_tensor(image)
    h, w = img.shape[:2]
    if box.size < 1 or box.x0 < 0 or box.y0 < 0 or box.x0 + box.size > w or box.y0 + box.size > h:
        raise ValueError(f"crop box {box} does not fit in the {w}x{h} image; make it with "
                         f"crop_box_around.")
    if max_resolution < 1:
        raise ValueError(f"max_resolution must be >= 1, got {max_resolution}.")
    crop = img[box.y0:box.y0 + box.size, box.x0:box.x0 + box.size].to(torch.float32)
    out = max_resolution if enlarge else min(box.size, max_resolution)
    if out != box.size:
        chw = crop.permute(2, 0, 1)[None]
        crop = F.interpolate(chw, size=(out, out), mode="bilinear", align_corners=False,
                             antialias=out < box.size)[0].permute(1, 2, 0)
    scale = out / box.size
    return crop.contiguous(), Affine2D(scale, (-box.x0 * scale, -box.y0 * scale))
