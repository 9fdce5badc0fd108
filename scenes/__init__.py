"""Everything Mitsuba: the face scene, the `mfface` BSDF plugin and the torch bridge.

`from mfface.scenes import FaceRenderer` is resolved lazily so that importing this package does
not pick a Mitsuba variant; the renderer's modules call `mfface.backend.select_variant()` when no
variant is set yet.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FaceRenderer"]


def __getattr__(name: str) -> Any:
    if name == "FaceRenderer":
        from mfface.scenes.bridge import FaceRenderer
        return FaceRenderer
    raise AttributeError(f"module 'mfface.scenes' has no attribute {name!r}")
