"""Spherical-harmonics (SH) light: basis, SH <-> lat-long envmap, windowing, regulariser helpers.

Convention (see docs/light.md):
- Real, orthonormal SH (integral of Y_i * Y_j over the sphere = delta_ij), no Condon-Shortley phase.
  Coefficient index i = l*l + l + m for band l = 0..bands-1 and m = -l..l, so `bands` bands hold
  bands**2 coefficients (9 bands -> 81). With x, y, z the direction in the light frame:
  Y_00 = 1/sqrt(4 pi); Y_1,-1 = c*y, Y_1,0 = c*z, Y_1,1 = c*x with c = sqrt(3/(4 pi)); in general
  m > 0 uses Re((x + i y)^m), m < 0 uses Im((x + i y)^|m|), z is the polar axis.
- Directions live in the *light frame* = the local frame of Mitsuba's `envmap` emitter. Lat-long
  texel (row i, column j) of an H x W envmap looks along theta = pi * i / (H - 1) (rows sit ON the
  poles: row 0 is +y, row H-1 is -y) and phi = 2 pi (j + 0.5) / W, direction
  (sin(phi) sin(theta), cos(theta), -cos(phi) sin(theta)); checked against Mitsuba 3.9.1 in tests.
- Coefficients are float tensors (..., bands**2, 3) (one set per RGB channel) of linear radiance.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

Window = Literal["hann", "lanczos"] | None
WINDOWS = ("hann", "lanczos")


def n_coefficients(bands: int) -> int:
    """Number of SH coefficients per channel for `bands` bands (l = 0..bands-1)."""
    return bands * bands


def bands_of(n: int) -> int:
    """Number of bands from a coefficient count; raises ValueError when `n` is not a square."""
    bands = math.isqrt(n)
    if bands < 1 or bands * bands != n:
        raise ValueError(f"{n} SH coefficients is not a full set of bands; use bands**2 coefficients "
                         f"(e.g. 81 for 9 bands).")
    return bands


def _check_bands(bands: int) -> None:
    if not isinstance(bands, int) or bands < 1:
        raise ValueError(f"bands must be a positive integer, got {bands!r}.")


def sh_basis(directions: torch.Tensor, bands: int = 9) -> torch.Tensor:
    """Real orthonormal SH basis at unit `directions` (..., 3) -> (..., bands**2), same dtype/device.

    Uses the normalised associated-Legendre recursion in z times Re/Im((x + i y)^m), so it is a
    polynomial in (x, y, z): stable for many bands, smooth (differentiable) everywhere including
    the poles. Directions must be unit length (not re-normalised here).
    """
    _check_bands(bands)
    if directions.shape[-1] != 3:
        raise ValueError(f"directions must have shape (..., 3), got {tuple(directions.shape)}.")
    x, y, z = directions.unbind(-1)
    out: list[torch.Tensor | None] = [None] * (bands * bands)
    # cos_m / sin_m = Re / Im of (x + i y)^m = sin^m(theta) cos(m phi) / sin(m phi).
    cos_m, sin_m = torch.ones_like(x), torch.zeros_like(x)
    p_mm = 1.0 / math.sqrt(4.0 * math.pi)  # N_m^m, the normalised Legendre factor without sin^m
    for m in range(bands):
        if m > 0:
            cos_m, sin_m = x * cos_m - y * sin_m, x * sin_m + y * cos_m
            p_mm *= math.sqrt((2 * m + 1) / (2 * m))
        # Normalised recursion over l for fixed m: N_l = a_l (z N_{l-1} - N_{l-2} / a_{l-1}).
        n_prev2: torch.Tensor | None = None
        n_prev = torch.full_like(z, p_mm)
        a_prev = 0.0
        for l in range(m, bands):
            if l == m:
                n_l = n_prev
            elif l == m + 1:
                a_l = math.sqrt(2 * m + 3)
                n_l = a_l * z * n_prev
                n_prev2, n_prev, a_prev = n_prev, n_l, a_l
            else:
                a_l = math.sqrt((4 * l * l - 1) / (l * l - m * m))
                n_l = a_l * (z * n_prev - n_prev2 / a_prev)
                n_prev2, n_prev, a_prev = n_prev, n_l, a_l
            base = l * l + l
            if m == 0:
                out[base] = n_l
            else:
                out[base + m] = math.sqrt(2.0) * n_l * cos_m
                out[base - m] = math.sqrt(2.0) * n_l * sin_m
    return torch.stack(out, dim=-1)


def envmap_angles(height: int, width: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta (H,), phi (W,)) in radians of the texel rows / columns of a Mitsuba lat-long envmap.

    Rows sit on the poles (theta = pi i / (H-1)); columns at texel centres (phi = 2 pi (j+0.5) / W),
    as Mitsuba 3.9.1's `envmap` interpolates its data bilinearly.
    """
    if height < 3 or width < 2:
        raise ValueError(f"an envmap needs at least 3 rows and 2 columns, got {height}x{width}.")
    i = torch.arange(height, dtype=torch.float64, device=device)
    j = torch.arange(width, dtype=torch.float64, device=device)
    theta = math.pi * i / (height - 1)
    phi = 2.0 * math.pi * (j + 0.5) / width
    return theta.to(dtype), phi.to(dtype)


def envmap_directions(height: int = 64, width: int = 128, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Unit direction (H, W, 3) each texel of a Mitsuba lat-long envmap stands for, in the light
    frame (= the envmap emitter's local frame): (sin phi sin theta, cos theta, -cos phi sin theta)."""
    theta, phi = envmap_angles(height, width, torch.float64, device)
    st, ct = torch.sin(theta)[:, None], torch.cos(theta)[:, None]
    sp, cp = torch.sin(phi)[None, :], torch.cos(phi)[None, :]
    d = torch.stack(torch.broadcast_tensors(sp * st, ct, -cp * st), dim=-1)
    return d.to(dtype)


def envmap_solid_angles(height: int = 64, width: int = 128, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Quadrature weights (H, W) in steradians for the texels of a Mitsuba lat-long envmap (sum 4 pi).

    Mitsuba's rows sit at theta_i = pi i / (H - 1), i.e. at z = cos(theta_i): exactly the
    Clenshaw-Curtis nodes. So each row gets its Clenshaw-Curtis weight (all positive) times the
    column width 2 pi / W. The rule integrates products of SH of `bands` bands exactly when
    H >= 2 * bands - 1 and W >= 2 * bands - 1, which makes `envmap_to_sh` the exact inverse of
    `sh_to_envmap` for band-limited light (17 x 17 texels suffice for 9 bands).
    """
    theta, _ = envmap_angles(height, width, torch.float64)
    n = height - 1
    j = torch.arange(1, n // 2 + 1, dtype=torch.float64)
    b = torch.where(2 * j == n, 1.0, 2.0)
    series = (b[None, :] / (4 * j[None, :] ** 2 - 1) * torch.cos(2 * j[None, :] * theta[:, None])).sum(1)
    c = torch.full((height,), 2.0, dtype=torch.float64)
    c[0] = c[-1] = 1.0
    rows = c / n * (1.0 - series)
    omega = (2.0 * math.pi / width) * rows[:, None].expand(height, width)
    return omega.to(dtype=dtype, device=device).contiguous()


def window_factors(bands: int, window: Window = "hann", dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Per-coefficient smoothing factors (bands**2,) that damp high bands against ringing.

    'hann': (1 + cos(pi l / bands)) / 2; 'lanczos': sinc(l / bands) = sin(pi l/bands) / (pi l/bands);
    None: all ones. Both windows keep l = 0 at 1, fall monotonically and stay > 0 for l < bands.
    Multiplying coefficients by them convolves the light with a smooth zonal kernel, which reduces
    the overshoot (negative radiance) next to sharp features.
    """
    _check_bands(bands)
    l = torch.arange(bands, dtype=torch.float64)
    if window is None:
        w = torch.ones_like(l)
    elif window == "hann":
        w = 0.5 * (1.0 + torch.cos(math.pi * l / bands))
    elif window == "lanczos":
        w = torch.sinc(l / bands)
    else:
        raise ValueError(f"Unknown SH window {window!r}; use one of {WINDOWS} or None.")
    per_coeff = torch.repeat_interleave(w, 2 * torch.arange(bands) + 1)
    return per_coeff.to(dtype=dtype, device=device)


_BASIS_CACHE: dict[tuple, torch.Tensor] = {}


def envmap_basis(height: int, width: int, bands: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """SH basis (H, W, bands**2) at the envmap texel directions; computed in float64 and cached."""
    key = (height, width, bands, dtype, str(torch.device(device) if device is not None else "cpu"))
    basis = _BASIS_CACHE.get(key)
    if basis is None:
        basis = sh_basis(envmap_directions(height, width, torch.float64), bands).to(dtype=dtype,
                                                                                   device=device)
        _BASIS_CACHE[key] = basis
    return basis


def _check_coeffs(coeffs: torch.Tensor) -> int:
    if coeffs.dim() < 2 or coeffs.shape[-1] != 3:
        raise ValueError(f"SH coefficients must have shape (..., n, 3), got {tuple(coeffs.shape)}.")
    return bands_of(coeffs.shape[-2])


def sh_to_envmap(coeffs: torch.Tensor, height: int = 64, width: int = 128, window: Window = None,
                 clamp: bool = True) -> torch.Tensor:
    """Lat-long radiance envmap (..., H, W, 3) from SH coefficients (..., bands**2, 3).

    `window` smooths the light first (see `window_factors`); `clamp` sets negative radiance to 0
    (as NextFace does: negative light is unphysical and Mitsuba's light sampling ignores it); the
    clamp passes no gradient to texels that are clamped. Differentiable in `coeffs`.
    """
    bands = _check_coeffs(coeffs)
    basis = envmap_basis(height, width, bands, coeffs.dtype, coeffs.device)
    if window is not None:
        coeffs = coeffs * window_factors(bands, window, coeffs.dtype, coeffs.device)[:, None]
    env = torch.einsum("hwn,...nc->...hwc", basis, coeffs)
    return env.clamp_min(0.0) if clamp else env


def envmap_to_sh(envmap: torch.Tensor, bands: int = 9) -> torch.Tensor:
    """SH coefficients (..., bands**2, 3) of a lat-long envmap (..., H, W, 3) in Mitsuba's layout.

    Solid-angle-weighted projection: c_i = sum over texels of L * Y_i * omega, with omega the
    Clenshaw-Curtis weights of `envmap_solid_angles`. Exact (to rounding) for light of at most
    (min(H, W) + 1) / 2 bands, so for a constant envmap and for the output of `sh_to_envmap`;
    for other light it is the quadrature of the texel values (no extra smoothing).
    """
    _check_bands(bands)
    if envmap.dim() < 3 or envmap.shape[-1] != 3:
        raise ValueError(f"envmap must have shape (..., H, W, 3), got {tuple(envmap.shape)}.")
    height, width = envmap.shape[-3], envmap.shape[-2]
    basis = envmap_basis(height, width, bands, envmap.dtype, envmap.device)
    omega = envmap_solid_angles(height, width, envmap.dtype, envmap.device)
    return torch.einsum("hwn,hw,...hwc->...nc", basis, omega, envmap)


def nonnegative(coeffs: torch.Tensor, floor: float = 0.02, height: int = 64, rounds: int = 12) -> torch.Tensor:
    """The SH light (..., n, 3) nearest to `coeffs` that is nowhere below `floor` times its mean
    radiance on the `height` x 2 `height` grid it is rendered on (`light.envmap_height`).

    Alternating projections (POCS) between the non-negative lights (clamp the map at the floor)
    and the band-limited ones (project the map back onto the bands) move the light only where it
    was negative, mostly behind the head where the photo cannot see, instead of adding light
    everywhere; a last raise of each channel's constant term covers what the `rounds` left (the
    result is exactly above the floor). Unchanged when the light already is. The fit projects its
    light onto this set after every step (as it clamps blend weights), so the envmap never needs
    clamping: every texel keeps its gradient and the light handed to other tools is the rendered
    one. Differentiable (the network applies it to its prediction)."""
    bands = _check_coeffs(coeffs)
    basis = envmap_basis(height, 2 * height, bands, coeffs.dtype, coeffs.device)
    omega = envmap_solid_angles(height, 2 * height, coeffs.dtype, coeffs.device)
    weighted = basis * omega[..., None]

    def field(c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hwn,...nc->...hwc", basis, c)

    def lowest_allowed(env: torch.Tensor) -> torch.Tensor:
        mean = (env * omega[..., None]).sum((-3, -2), keepdim=True) / (4.0 * math.pi)
        return floor * mean.clamp_min(0.0)

    env = field(coeffs)
    if bool((env >= lowest_allowed(env)).all()):
        return coeffs
    for _ in range(rounds):
        env = torch.maximum(env, lowest_allowed(env))
        coeffs = torch.einsum("hwn,...hwc->...nc", weighted, env)
        env = field(coeffs)
    shortfall = (lowest_allowed(env) - env).amax((-3, -2)).clamp_min(0.0) / (1.0 - floor)
    dc = torch.zeros_like(coeffs)
    dc[..., 0, :] = shortfall * math.sqrt(4.0 * math.pi)                 # 1 / Y_00
    return coeffs + dc


def negative_fraction(coeffs: torch.Tensor, height: int = 64) -> float:
    """Fraction of the lat-long texels (..., H, W, 3 channels) where the SH light is below 1% of its
    mean: the measure of a blotchy, clamped light (issue 12)."""
    env = sh_to_envmap(coeffs.detach(), height, 2 * height, clamp=False)
    mean = env.mean((-3, -2), keepdim=True)
    return float((env < 0.01 * mean).float().mean())


def with_bands(coeffs: torch.Tensor, bands: int) -> torch.Tensor:
    """SH coefficients (..., n, 3) with `bands` bands: zero-padded (a light with no detail in the
    added bands) or truncated to the leading bands**2."""
    _check_bands(bands)
    n, want = coeffs.shape[-2], n_coefficients(bands)
    if n >= want:
        return coeffs[..., :want, :]
    pad = torch.zeros(*coeffs.shape[:-2], want - n, 3, dtype=coeffs.dtype, device=coeffs.device)
    return torch.cat([coeffs, pad], dim=-2)


def initial_coefficients(bands: int = 9, ambient: float = 1.0, batch: int | None = None,
                         dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """SH coefficients of constant white light of radiance `ambient` in every direction.

    Shape (bands**2, 3), or (batch, bands**2, 3); only the DC term is non-zero:
    ambient * sqrt(4 pi) (= ambient / Y_00). A white Lambertian surface under it has radiance
    albedo * ambient.
    """
    _check_bands(bands)
    if ambient < 0:
        raise ValueError(f"ambient radiance must be >= 0, got {ambient}.")
    c = torch.zeros(n_coefficients(bands), 3, dtype=dtype, device=device)
    c[0] = ambient * math.sqrt(4.0 * math.pi)
    return c if batch is None else c.expand(batch, -1, -1).clone()


def lambert_factors(bands: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Per coefficient (bands**2,), A_l / pi: the clamped-cosine kernel's factor for band l
    (Ramamoorthi and Hanrahan 2001) over pi, so that the irradiance over pi, the radiance of a
    white Lambertian surface, is sum_lm (A_l / pi) c_lm Y_lm(n). A_0 = pi, A_1 = 2 pi / 3, A_l = 0
    for odd l > 1, and for even l: 2 pi (-1)^(l/2 - 1) / ((l + 2)(l - 1)) * l! / (2^l ((l/2)!)^2)."""
    _check_bands(bands)
    factors = []
    for l in range(bands):
        if l == 0:
            a = 1.0
        elif l == 1:
            a = 2.0 / 3.0
        elif l % 2:
            a = 0.0
        else:
            a = (2.0 * (-1) ** (l // 2 - 1) / ((l + 2) * (l - 1))
                 * math.factorial(l) / (2 ** l * math.factorial(l // 2) ** 2))
        factors += [a] * (2 * l + 1)
    return torch.tensor(factors, dtype=dtype, device=device)


def shading_error(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per light (...), the mean squared difference over all directions n and the 3 channels of
    the radiance a white Lambertian surface with normal n has under two SH lights (..., n, 3):
    what a diffuse face sees of a light, in radiance^2. The lights may have different bands (the
    missing ones are zero); by SH orthonormality it is sum_lm (A_l / pi)^2 (dc_lm)^2 / (4 pi)."""
    bands = max(bands_of(predicted.shape[-2]), bands_of(true.shape[-2]))
    difference = with_bands(predicted, bands) - with_bands(true, bands)
    weights = lambert_factors(bands, difference.dtype, difference.device) ** 2
    return (weights[:, None] * difference.pow(2)).sum(-2).mean(-1) / (4.0 * math.pi)
