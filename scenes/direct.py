"""`direct_prb`: Mitsuba's `prb` integrator unrolled for direct light only (max_depth = 2).

The face is lit by an environment (and, in other scenes, delta lamps) with no interreflection, so
every path has at most two vertices: the camera ray's hit x and the point y (or the environment)
reached by one BSDF sample. `prb` traces that in a symbolic loop, whose body Dr.Jit traces twice
per pass; a render and its backward pass trace three passes. Tracing, not the kernels, is most of
a face render's cost on a GPU (bench/RESULTS.md, "GPU"), so this integrator writes the two
vertices out straight, without a loop. The estimator, the random numbers and the derivatives are
`prb`'s at max_depth = 2 (tests/test_direct.py compares images and gradients), and the backward
pass skips `prb`'s primal replay, since the adjoint pass has every term's primal value at hand:

    L = Le(x) + mis_e f(x, w_e) Le(w_e) / p_e + mis_b f(x, w_b) Le(y; w_b) / p_b,

w_e sampled from the emitters with visibility (next-event estimation), w_b from the BSDF, MIS
weights by the power heuristic (detached). In the backward pass (path replay), the emitted and
next-event terms are re-evaluated with derivative tracking, and the BSDF-sampled term (its
primal value, which `prb` gets as L minus the other two) gets the relative derivative of f(x, w_b)
and of the solid-angle-to-area Jacobian, as in `prb`. Area emitters behind hidden ones are not skipped
(`prb`'s `hide_emitters` skip): the face scenes have none.
"""
from __future__ import annotations

import drjit as dr
import mitsuba as mi

from mfface.scenes.plugins import register_once

PLUGIN_NAME = "direct_prb"


def _integrator_class() -> type:
    """The class, made against the current variant's `RBIntegrator` (Mitsuba's Python AD
    integrators exist once a variant is set)."""
    from mitsuba.ad.integrators.common import RBIntegrator, mis_weight, solid_angle_to_area_jacobian

    class DirectPRBIntegrator(RBIntegrator):
        """Path replay backpropagation of direct light, loop-free (see the module docstring)."""

        def __init__(self, props: mi.Properties) -> None:
            super().__init__(props)
            if self.max_depth != 2:
                raise ValueError(f"{PLUGIN_NAME} renders direct light only: max_depth must be 2, "
                                 f"got {self.max_depth}.")
            self._in_backward = False

        def render_backward(self, *args, **kwargs) -> None:
            """`RBIntegrator.render_backward`, whose primal replay pass is skipped: the adjoint
            pass recomputes every term's primal value itself (see `sample`)."""
            self._in_backward = True
            try:
                super().render_backward(*args, **kwargs)
            finally:
                self._in_backward = False

        def sample(self, mode: dr.ADMode, scene: mi.Scene, sampler: mi.Sampler, ray: mi.Ray3f,
                   δL: mi.Spectrum | None, state_in: mi.Spectrum | None, active: mi.Bool,
                   **kwargs) -> tuple[mi.Spectrum, mi.Bool, list, mi.Spectrum]:
            """`RBIntegrator.sample`: radiance (primal) or δL (adjoint), validity, AOVs, state."""
            primal = mode == dr.ADMode.Primal
            if primal and self._in_backward:   # the replay pass whose result the adjoint pass needs not
                return mi.Spectrum(0.0), mi.Bool(False), [], None
            ctx = mi.BSDFContext()
            ray = mi.Ray3f(dr.detach(ray))
            active = mi.Bool(active)
            pi = scene.ray_intersect_preliminary(ray, coherent=True, reorder=False, active=active)

            # -- vertex x: the camera ray's hit (or the environment) ---------------------------
            with dr.resume_grad(when=not primal):
                si = pi.compute_surface_interaction(ray, ray_flags=mi.RayFlags.All)
            bsdf = si.bsdf(ray)
            seen = mi.Bool(active)
            if self.hide_emitters:
                seen &= si.is_valid()
            no_previous = dr.zeros(mi.SurfaceInteraction3f)
            ds = mi.DirectionSample3f(scene, si=si, ref=no_previous)
            with dr.resume_grad(when=not primal):
                emitted = ds.emitter.eval(si, seen)   # MIS weight 1: no earlier BSDF sample

            # next-event estimation at x
            lit = seen & si.is_valid()
            active_em = lit & mi.has_flag(bsdf.flags(), mi.BSDFFlags.Smooth)
            ds, em_weight = scene.sample_emitter_direction(si, sampler.next_2d(), True, active_em)
            active_em &= ds.pdf != 0.0
            with dr.resume_grad(when=not primal):
                if not primal:
                    em_weight = self._attached_emitter_weight(scene, si, ds, em_weight, active_em)
                wo = si.to_local(ds.d)
                bsdf_value_em, bsdf_pdf_em = bsdf.eval_pdf(ctx, si, wo, active_em)
                mis_em = dr.select(ds.delta, 1, mis_weight(ds.pdf, bsdf_pdf_em))
                next_event = mis_em * bsdf_value_em * em_weight

            # BSDF sample from x to y (detached, as in prb)
            sample, weight = bsdf.sample(ctx, si, sampler.next_1d(), sampler.next_2d(), lit)
            ray_b = si.spawn_ray(si.to_world(sample.wo))
            active_b = lit & (dr.max(mi.unpolarized_spectrum(weight)) != 0)
            pi_b = scene.ray_intersect_preliminary(ray_b, coherent=False, reorder=False, active=active_b)
            si_prev = dr.detach(si, True)

            # -- vertex y: what the BSDF sample sees ---------------------------------------------
            with dr.resume_grad(when=not primal):
                si_b = pi_b.compute_surface_interaction(ray_b, ray_flags=mi.RayFlags.All)
                if not primal:   # y's incident direction follows x when x moves
                    x_attached = pi.compute_surface_interaction(ray, ray_flags=mi.RayFlags.Minimal)
                    x = dr.replace_grad(si_prev, x_attached)
                    y = dr.detach(si_b)
                    si_b.wi = dr.replace_grad(si_b.wi, y.to_local(dr.normalize(x.p - y.p)))
            ds_b = mi.DirectionSample3f(scene, si=si_b, ref=si_prev)
            delta_b = mi.has_flag(sample.sampled_type, mi.BSDFFlags.Delta)
            mis_b = mis_weight(sample.pdf, scene.pdf_emitter_direction(si_prev, ds_b, ~delta_b))
            with dr.resume_grad(when=not primal):
                through_bsdf = weight * mis_b * ds_b.emitter.eval(si_b, active_b)

            radiance = emitted + next_event + through_bsdf
            if not primal:
                replayed = self._replayed_bsdf_term(si, bsdf, ctx, ray_b, pi_b, active_b,
                                                    dr.detach(through_bsdf))
                # isolate_grad: keep this traversal inside the render's backward, as `prb`'s symbolic
                # loop does; without it the virtual calls' derivatives of earlier renders whose
                # scenes were still alive were lost (tests/test_itemwise.py's batch of three)
                with dr.resume_grad(), dr.isolate_grad():
                    contribution = emitted + next_event + replayed + through_bsdf
                    if mode == dr.ADMode.Backward:
                        dr.backward_from(δL * contribution)
                    else:
                        δL = δL + dr.forward_to(contribution)
            valid = active & si.is_valid()
            return (radiance if primal else δL), valid, [], radiance

        @staticmethod
        def _attached_emitter_weight(scene: mi.Scene, si: mi.SurfaceInteraction3f, ds: mi.DirectionSample3f,
                                     em_weight: mi.Spectrum, active_em: mi.Bool) -> mi.Spectrum:
            """The next-event weight Le / p_e with derivatives: `prb`'s re-attachment of the
            detached emitter sample (surface, textured and infinite emitters)."""
            is_surface = mi.has_flag(ds.emitter.flags(), mi.EmitterFlags.Surface)
            is_infinite = mi.has_flag(ds.emitter.flags(), mi.EmitterFlags.Infinite)
            is_varying = mi.has_flag(ds.emitter.flags(), mi.EmitterFlags.SpatiallyVarying)
            textured_area = active_em & is_surface & is_varying
            ray_em = si.spawn_ray_to(ds.p)
            ray_em.o = dr.fma(ray_em.d, ray_em.maxt, ray_em.o)
            ray_em.maxt = dr.largest(ray_em.maxt)
            si_em = scene.ray_intersect(ray_em, textured_area)
            ds_diff = mi.DirectionSample3f(scene, si_em, si)
            ds_diff = dr.select(textured_area, ds_diff, dr.zeros(mi.DirectionSample3f))
            ds_diff.d = dr.select(textured_area, ds_diff.d, dr.normalize(ds.p - si.p))
            ds_diff.d = dr.select(~is_infinite, ds_diff.d, ds.d)
            ds = dr.replace_grad(ds, ds_diff)
            jacobian = solid_angle_to_area_jacobian(si.p, dr.detach(ds.p), dr.detach(ds.n), active_em & is_surface)
            value = scene.eval_emitter_direction(si, ds, active_em)
            inv_pdf = dr.select(ds.pdf != 0, dr.rcp(ds.pdf), 0)
            return dr.replace_grad(em_weight, value * dr.detach(inv_pdf)) * dr.relative_grad(jacobian)

        @staticmethod
        def _replayed_bsdf_term(si: mi.SurfaceInteraction3f, bsdf: mi.BSDF, ctx: mi.BSDFContext,
                                ray_b: mi.Ray3f, pi_b: mi.PreliminaryIntersection3f, active_b: mi.Bool,
                                remaining: mi.Spectrum) -> mi.Spectrum:
            """The BSDF-sampled term's derivative at x: its primal value (`remaining`, L minus the
            other terms) times the relative derivatives of f(x, w_b) cos and of the Jacobian."""
            si_b = pi_b.compute_surface_interaction(ray_b, ray_flags=mi.RayFlags.Minimal, active=active_b)
            with dr.resume_grad():
                jacobian = solid_angle_to_area_jacobian(si.p, si_b.p, si_b.n, active_b & si_b.is_valid())
                wo_world = dr.replace_grad(ray_b.d, dr.select(si_b.is_valid(), dr.normalize(si_b.p - si.p), ray_b.d))
                bsdf_value = bsdf.eval(ctx, si, si.to_local(wo_world), active_b)
                return remaining * dr.relative_grad(bsdf_value) * dr.relative_grad(jacobian)

    return DirectPRBIntegrator


def register() -> None:
    """Register `direct_prb` with the current Mitsuba variant (idempotent; `mfface.scenes.plugins`)."""
    register_once(mi.register_integrator, PLUGIN_NAME, _integrator_class)
