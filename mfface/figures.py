"""Figures of a fit for people to look at: the side-by-side strip, landmark overlay, loss curves.

Every function takes linear float32 images in [0, 1] (H, W, 3) numpy arrays and returns an 8-bit
display-referred image (gamma applied here, once), except `loss_curves_png`, which writes a PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mfface.atomic import atomic_path


def to_display(linear: np.ndarray, gamma: float = 2.2) -> np.ndarray:
    """Linear RGB (H, W, 3) or grey (H, W) -> uint8 display image with gamma applied."""
    image = np.asarray(linear, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    encoded = np.clip(image, 0.0, 1.0) ** (1.0 / gamma)
    return np.round(encoded * 255.0).astype(np.uint8)


def _fit_into(image: np.ndarray, height: int) -> np.ndarray:
    """Resize a uint8 image to `height`, keeping its aspect ratio."""
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def labelled_strip(panels: list[tuple[str, np.ndarray]], height: int = 256) -> np.ndarray:
    """Panels (label, uint8 image) side by side at one height, each with its label on top."""
    label_h = 18
    font = ImageFont.load_default()
    tiles = []
    for label, image in panels:
        tile = _fit_into(image, height)
        canvas = Image.new("RGB", (tile.shape[1], height + label_h), (24, 24, 24))
        canvas.paste(Image.fromarray(tile), (0, label_h))
        ImageDraw.Draw(canvas).text((4, 3), label, fill=(235, 235, 235), font=font)
        tiles.append(np.asarray(canvas))
    return np.concatenate(tiles, axis=1)


def overlay(photo: np.ndarray, render: np.ndarray, mask: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """The render blended over the photo where the render covers it (all linear, same size)."""
    weight = alpha * np.clip(mask, 0.0, 1.0)[..., None]
    return photo * (1.0 - weight) + render * weight


def draw_landmarks(image: np.ndarray, detected: np.ndarray, fitted: np.ndarray | None = None,
                   radius: float = 1.5) -> np.ndarray:
    """uint8 image with detected landmarks in green and the fit's projected ones in red.

    Points are (N, 2) pixel coordinates of this image (x right, y down, pixel centres at i + 0.5).
    """
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for points, colour in ((detected, (40, 220, 40)), (fitted, (235, 40, 40))):
        if points is None:
            continue
        for x, y in np.asarray(points, dtype=np.float64):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    return np.asarray(canvas)


def loss_curves_png(path: str | Path, curves: dict[str, list[float]], title: str = "") -> None:
    """Write loss curves, one panel per curve, up to 5 panels a row (log scale when all values are positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, values in curves.items() if values]
    columns = min(5, max(1, len(names)))
    rows = max(1, -(-len(names) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        values = np.asarray(curves[name], dtype=np.float64)
        ax.plot(np.arange(len(values)), values, lw=1.2)
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
