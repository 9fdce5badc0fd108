"""Mitsuba's projective integrators with a sample budget of their own for the silhouette pass.

`direct_projective` and `prb_projective` estimate a render's derivative as a continuous part
(the interior, as `prb` does) plus a boundary part: points sampled on the silhouettes that the
camera sees, each carrying the radiance difference across the edge times the edge's motion. Mitsuba
3 draws both with the render call's samples per pixel (its `sppp` property counts only when the
call passes none), so a face at 256 px and 4 spp gets 262,144 silhouette samples for an outline a
few hundred pixels long, and that pass costs more than the continuous one: 0.27 of a direct_projective
iteration's 0.47 s (bench/RESULTS.md, "The silhouette pass's samples").

Here an `sppp` set on the integrator wins over the render call's count, and that pass draws from an
`independent` sampler, seeded alike (the sensor's ldsampler takes powers of 4 of at least 4 and
would round 1 up to 4). The continuous part keeps the call's count and
the sensor's sampler. The scene dict sets `sppp` to SILHOUETTE_SPP below
(`mfface.scenes.face_scene.scene_dict`).
"""
from __future__ import annotations

import mitsuba as mi

from mfface.scenes.plugins import register_once

# Silhouette samples per pixel: 65,536 at 256 px. A stage-2 iteration of `direct_projective` costs
# 0.29 s with 1 against 0.47 s at the call's 4 spp (prb: 0.18 s); the outline covers the skin mask
# as well (synthetic face 3: 5 and 3 pixels left uncovered, obama_b 8 and 10; bench/RESULTS.md,
# "The silhouette pass's samples").
SILHOUETTE_SPP = 1
PLUGIN_NAMES = {"direct_projective": "mfface_direct_projective", "prb_projective": "mfface_prb_projective"}


def _budgeted(base: type) -> type:
    """`base` (a Mitsuba `PSIntegrator`) whose integrator-set sample counts win (module docstring)."""

    class Budgeted(base):
        def override_spp(self, integrator_spp: int | None, runtime_spp: int, sampler_spp: int) -> int:
            """The pass's samples per pixel: the integrator's own count (`sppp`, `sppi`) when set,
            else the render call's (Mitsuba prefers the call's whenever it is not 0)."""
            if integrator_spp is not None:
                return integrator_spp
            return super().override_spp(integrator_spp, runtime_spp, sampler_spp)

        def prepare(self, sensor: mi.Sensor, seed: mi.UInt32 = 0, spp: int = 0, aovs: list = []):
            """`ADIntegrator.prepare`, except that the silhouette pass (`sppp` samples per pixel)
            draws from an `independent` sampler with exactly that count: the sensor's ldsampler
            would round 1 up to 4, with a warning."""
            if spp == 0 or spp != self.sppp:
                return super().prepare(sensor, seed, spp, aovs)
            sampler, count = super().prepare(sensor, seed, 0, aovs)   # the sensor's own count
            exact = mi.load_dict({"type": "independent", "sample_count": spp})
            exact.set_samples_per_wavefront(spp)
            exact.seed(seed, sampler.wavefront_size() // count * spp)
            return exact, spp

    Budgeted.__name__ = Budgeted.__qualname__ = f"Budgeted{base.__name__}"
    return Budgeted


def register() -> None:
    """Register the budgeted projective integrators with the current Mitsuba variant (idempotent;
    `mfface.scenes.plugins`)."""
    def direct() -> type:
        from mitsuba.ad.integrators.direct_projective import DirectProjectiveIntegrator
        return _budgeted(DirectProjectiveIntegrator)

    def path() -> type:
        from mitsuba.ad.integrators.prb_projective import PathProjectiveIntegrator
        return _budgeted(PathProjectiveIntegrator)

    register_once(mi.register_integrator, PLUGIN_NAMES["direct_projective"], direct)
    register_once(mi.register_integrator, PLUGIN_NAMES["prb_projective"], path)
