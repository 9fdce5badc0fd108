"""Registering mfface's Mitsuba plugins (the `mfface` BSDF, `direct_prb`, the budgeted projective
integrators) with the current variant, once: Mitsuba keeps one plugin table per variant, and its
Python base classes exist only once a variant is set, so each plugin's class is made on first use."""
from __future__ import annotations

from typing import Callable

import mitsuba as mi

_registered: set[tuple[str, str]] = set()


def register_once(register: Callable[[str, Callable], None], name: str, plugin_class: Callable[[], type]) -> None:
    """Register the class `plugin_class()` as `name` through `register` (`mi.register_bsdf`,
    `mi.register_integrator`) with the current variant, unless it already is."""
    variant = mi.variant()
    if variant is None:
        raise RuntimeError("No Mitsuba variant is set; call mfface.backend.select_variant() first.")
    if (variant, name) in _registered:
        return
    cls = plugin_class()
    register(name, lambda props: cls(props))
    _registered.add((variant, name))
