"""Morphable face models: the in-memory type, its on-disk format, importers, the store, export.

Nothing in this package imports Mitsuba.
"""
from mfface.morphable.model import AlbedoModel, MorphableModel

__all__ = ["AlbedoModel", "MorphableModel"]
