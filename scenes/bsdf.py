"""The `mfface` BSDF: textured Lambert + GGX microfacet skin reflectance, written with Dr.Jit.

Being a Python plugin made of Dr.Jit operations, it is traced into the same kernel as the
integrator (no Python runs per ray). All directions are in the local shading frame (z = normal);
like every Mitsuba BSDF, `eval` returns the BSDF value times the foreshortening cos(theta_o).

    f(wi, wo) = kd / pi + F(wo.h) D(h) G(wi, wo) / (4 cos_i cos_o),   h = normalize(wi + wo)

- kd: diffuse albedo (RGB texture `diffuse`), ks: specular albedo (RGB texture `specular`),
  r: roughness (1-channel texture `roughness`); all three are Mitsuba `bitmap` textures whose
  `data` is a differentiable parameter.
- D: GGX / Trowbridge-Reitz with alpha = r^2 (the principled convention), alpha clamped to
  >= ALPHA_MIN so that a zero roughness stays finite.
- G: separable Smith, G = G1(wi) G1(wo) (Mitsuba's `MicrofacetDistribution.G`).
- F: `fresnel="schlick"`: F = ks + (1 - ks)(1 - wo.h)^5 (Schlick, F0 = ks);
     `fresnel="none"`:    F = ks.
- One-sided: zero when cos_i <= 0 or cos_o <= 0 (back faces are black).

Note that with Schlick a texel with ks = 0 still reflects at grazing angles (F = (1 - wo.h)^5),
as Schlick's formula says; only `fresnel="none"` with ks = 0 is purely Lambertian.

Sampling: a mixture of a cosine-weighted hemisphere (component 0, DiffuseReflection) and GGX
visible-normal sampling (component 1, GlossyReflection) with specular-lobe probability
p_s = w_s / (mean(kd) + w_s), w_s = mean(F_schlick(cos_i)) (or mean(ks) without Fresnel),
detached, 0.5 when both are zero; the pdf is the mixture pdf
(1 - p_s) cos_o / pi + p_s D(h) G1(wi) / (4 cos_i)  (visible-normal pdf of h times dh/dwo).
"""
from __future__ import annotations

import drjit as dr
import mitsuba as mi

from mfface.backend import select_variant
from mfface.scenes.plugins import register_once

if mi.variant() is None:  # the plugin class derives from the variant's mi.BSDF
    select_variant()

PLUGIN_NAME = "mfface"
FRESNEL_MODES = ("schlick", "none")
ALPHA_MIN = 1e-3


class FaceBSDF(mi.BSDF):
    """Spatially varying diffuse + specular (GGX) BSDF; see the module docstring for the model."""

    def __init__(self, props: mi.Properties) -> None:
        mi.BSDF.__init__(self, props)
        for key in ("diffuse", "specular", "roughness"):
            if key not in props:
                raise ValueError(f"The mfface BSDF needs a '{key}' texture; add one to its dict.")
        self.diffuse: mi.Texture = props["diffuse"]
        self.specular: mi.Texture = props["specular"]
        self.roughness: mi.Texture = props["roughness"]
        fresnel = props.get("fresnel", "schlick")
        if fresnel not in FRESNEL_MODES:
            raise ValueError(f"Unknown fresnel mode {fresnel!r}; use one of {FRESNEL_MODES}.")
        self.schlick = fresnel == "schlick"
        diffuse_flags = mi.BSDFFlags.DiffuseReflection | mi.BSDFFlags.FrontSide
        glossy_flags = mi.BSDFFlags.GlossyReflection | mi.BSDFFlags.FrontSide
        self.m_components = [diffuse_flags, glossy_flags]
        self.m_flags = diffuse_flags | glossy_flags

    # -- the model -------------------------------------------------------------------------
    def _lobes(self, si: mi.SurfaceInteraction3f, active: mi.Bool):
        """Texture values and the GGX distribution at `si`: (kd, ks, distribution, p_specular)."""
        kd = self.diffuse.eval(si, active)
        ks = self.specular.eval(si, active)
        rough = self.roughness.eval_1(si, active)
        alpha = dr.maximum(rough * rough, ALPHA_MIN)
        distr = mi.MicrofacetDistribution(mi.MicrofacetType.GGX, alpha, True)
        wd = dr.detach(dr.mean(kd))
        if self.schlick:  # the specular lobe's weight at normal-to-wi incidence: Schlick at cos_i
            ks_i = ks + (1.0 - ks) * dr.power(1.0 - dr.clip(mi.Frame3f.cos_theta(si.wi), 0.0, 1.0), 5.0)
            ws = dr.detach(dr.mean(ks_i))
        else:
            ws = dr.detach(dr.mean(ks))
        total = wd + ws
        p_spec = dr.select(total > 0, ws / dr.maximum(total, 1e-8), 0.5)
        return kd, ks, distr, p_spec

    def _enabled(self, ctx: mi.BSDFContext) -> tuple[bool, bool]:
        return (ctx.is_enabled(mi.BSDFFlags.DiffuseReflection, 0),
                ctx.is_enabled(mi.BSDFFlags.GlossyReflection, 1))

    def _eval_pdf(self, ctx: mi.BSDFContext, si: mi.SurfaceInteraction3f, wo: mi.Vector3f,
                  active: mi.Bool, lobes: tuple | None = None):
        """BSDF value times cos_o, and the mixture pdf of sampling `wo`; `lobes` reuses the
        `_lobes` result of the caller (one set of texture lookups per call of `sample`)."""
        has_diffuse, has_glossy = self._enabled(ctx)
        wi = si.wi
        cos_i = mi.Frame3f.cos_theta(wi)
        cos_o = mi.Frame3f.cos_theta(wo)
        active = active & (cos_i > 0) & (cos_o > 0)
        kd, ks, distr, p_spec = lobes if lobes is not None else self._lobes(si, active)
        if not has_glossy:
            p_spec = mi.Float(0.0)
        elif not has_diffuse:
            p_spec = mi.Float(1.0)

        value = mi.Color3f(0.0)
        pdf = mi.Float(0.0)
        if has_diffuse:
            value += kd * (dr.inv_pi * cos_o)
            pdf += (1.0 - p_spec) * dr.inv_pi * cos_o
        if has_glossy:
            h = dr.normalize(wi + wo)
            o_dot_h = dr.dot(wo, h)
            d = distr.eval(h)
            g = distr.G(wi, wo, h)
            if self.schlick:
                fres = ks + (1.0 - ks) * dr.power(dr.maximum(1.0 - o_dot_h, 0.0), 5.0)
            else:
                fres = ks
            value += fres * (d * g / (4.0 * cos_i))
            pdf += p_spec * distr.eval(h) * distr.smith_g1(wi, h) / (4.0 * cos_i)
        return dr.select(active, value, 0.0), dr.select(active, pdf, 0.0)

    # -- the mi.BSDF interface ---------------------------------------------------------------
    def sample(self, ctx: mi.BSDFContext, si: mi.SurfaceInteraction3f, sample1: mi.Float,
               sample2: mi.Point2f, active: mi.Bool = True):
        has_diffuse, has_glossy = self._enabled(ctx)
        cos_i = mi.Frame3f.cos_theta(si.wi)
        active = active & (cos_i > 0)
        bs = dr.zeros(mi.BSDFSample3f)
        if not (has_diffuse or has_glossy):
            return bs, mi.Color3f(0.0)
        lobes = self._lobes(si, active)
        distr, p_spec = lobes[2], lobes[3]
        if not has_glossy:
            p_spec = mi.Float(0.0)
        elif not has_diffuse:
            p_spec = mi.Float(1.0)
        glossy = sample1 < p_spec
        wo_diffuse = mi.warp.square_to_cosine_hemisphere(sample2)
        m, _ = distr.sample(si.wi, sample2)
        wo_glossy = mi.reflect(si.wi, m)
        bs.wo = dr.select(glossy, wo_glossy, wo_diffuse)
        bs.eta = 1.0
        bs.sampled_component = dr.select(glossy, mi.UInt32(1), mi.UInt32(0))
        bs.sampled_type = dr.select(glossy, mi.UInt32(+mi.BSDFFlags.GlossyReflection),
                                    mi.UInt32(+mi.BSDFFlags.DiffuseReflection))
        value, pdf = self._eval_pdf(ctx, si, bs.wo, active, lobes)
        bs.pdf = pdf
        ok = active & (pdf > 0)
        return bs, dr.select(ok, value / dr.select(ok, pdf, 1.0), 0.0)

    def eval(self, ctx: mi.BSDFContext, si: mi.SurfaceInteraction3f, wo: mi.Vector3f,
             active: mi.Bool = True) -> mi.Color3f:
        return self._eval_pdf(ctx, si, wo, active)[0]

    def pdf(self, ctx: mi.BSDFContext, si: mi.SurfaceInteraction3f, wo: mi.Vector3f,
            active: mi.Bool = True) -> mi.Float:
        return self._eval_pdf(ctx, si, wo, active)[1]

    def eval_pdf(self, ctx: mi.BSDFContext, si: mi.SurfaceInteraction3f, wo: mi.Vector3f,
                 active: mi.Bool = True):
        return self._eval_pdf(ctx, si, wo, active)

    def eval_diffuse_reflectance(self, si: mi.SurfaceInteraction3f,
                                 active: mi.Bool = True) -> mi.Color3f:
        return self.diffuse.eval(si, active)

    def traverse(self, callback: mi.TraversalCallback) -> None:
        flags = +mi.ParamFlags.Differentiable
        callback.put("diffuse", self.diffuse, flags)
        callback.put("specular", self.specular, flags)
        callback.put("roughness", self.roughness, flags)

    def parameters_changed(self, keys: list[str] | None = None) -> None:
        """Nothing is cached from the textures, so there is nothing to refresh."""

    def to_string(self) -> str:
        return (f"FaceBSDF[diffuse={self.diffuse}, specular={self.specular}, "
                f"roughness={self.roughness}, fresnel={'schlick' if self.schlick else 'none'}]")


def register() -> None:
    """Register the plugin as `mfface` with the current Mitsuba variant (idempotent;
    `mfface.scenes.plugins`)."""
    register_once(mi.register_bsdf, PLUGIN_NAME, lambda: FaceBSDF)
