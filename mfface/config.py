"""Every setting of `mfface fit` in one dataclass tree, readable from TOML and settable from the CLI.

`FitConfig` has one section per part of the pipeline ([input], [render], [light], [landmarks], [stage1],
[stage2], [stage3]); each field has a documented default (NextFace's where it has one: its
`config.py`/`optimizer.py`, see DESIGN.md) and a help text in its metadata. A TOML file sets any
subset:

    [stage2]
    iterations = 200
    spp = 4

On the command line every field is an option named `--<section>-<field>` (underscores become
dashes), generated from the tree by `config_options`, so no option is written twice.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


# The choices of the `device`, `integrator` and `sampler` settings (of the fit and of training).
Device = Literal["auto", "cpu", "cuda"]
Integrator = Literal["prb", "prb_projective", "direct_projective"]
Sampler = Literal["ldsampler", "multijitter", "independent"]
SAMPLER_HELP = ("Mitsuba sampler of the renders: ldsampler (low-discrepancy; counts that are not a "
                "power of 4 of at least 4 use multijitter), multijitter or independent (the default before "
                "2026-12-03; about twice the image variance at 4 spp: bench/RESULTS.md).")


class ConfigError(ValueError):
    """A configuration file or override the user must fix; the message says what and where."""


def _f(default: Any, help: str, minimum: float | None = None, maximum: float | None = None) -> Any:
    """A config field: its default, a one-line help text and optional inclusive bounds.

    Maxima on sizes are sanity limits (a typo such as 100000 is refused at once); whether a
    size that passes them fits in this machine's memory is checked before a fit starts
    (`mfface.memory`)."""
    return field(default=default, metadata={"help": help, "min": minimum, "max": maximum})


@dataclass
class InputConfig:
    """Reading the photos."""
    max_resolution: int = _f(256, "Down-scale images so that the longer side is at most this many px.", 16, 4096)
    gamma: float = _f(2.2, "Gamma that linearises the input images (pixel ** gamma).", 0.1, 10.0)
    max_faces: int = _f(4, "Faces MediaPipe looks for per image; the largest one is fitted.", 1, 64)
    mirror_average: bool = _f(True, "MediaPipe: also find the landmarks on the mirror image of the face and "
                              "average the two (the flip test: left/right errors cancel; 9% lower "
                              "landmark error, bench/RESULTS.md, detection).")


@dataclass
class RenderConfig:
    """The differentiable renderer."""
    device: Device = _f("auto", "Where to render and optimise: auto, cpu or cuda.")
    max_depth: int = _f(2, "Mitsuba max_depth: 2 = direct light only (NextFace's one bounce).", 1, 16)
    integrator: Integrator = _f(
        "prb", "Differentiable integrator: prb (shading gradients, fastest) or a projective one that "
        "adds silhouette gradients (1.5-1.7x prb's stage-2 time, no better shape: bench/RESULTS.md).")
    sampler: Sampler = _f("ldsampler", SAMPLER_HELP)
    texture_size: int = _f(512, "Width and height of the fitted texture maps in texels.", 16, 8192)
    roughness_init: float = _f(0.4, "Initial surface roughness.", 0.0, 1.0)
    final_spp: int = _f(256, "Samples per pixel of the final renders written with the results.", 1, 16384)


@dataclass
class LightConfig:
    """Spherical-harmonics environment light."""
    sh_bands: int = _f(9, "Spherical-harmonics bands (bands**2 coefficients per channel).", 1, 32)
    envmap_height: int = _f(64, "Height of the lat-long envmap the SH light is baked into (width = 2x).", 4, 4096)
    nonnegative: bool = _f(True, "Keep the fitted light non-negative everywhere (projected after each "
                           "step by raising its constant term), so the envmap is never clamped; off = "
                           "NextFace's clamp at zero.")
    floor: float = _f(0.02, "With nonnegative: the least radiance in any direction, as a fraction of the "
                      "light's mean.", 0.0, 0.5)


@dataclass
class LandmarkConfig:
    """The landmark loss, the same in every stage that uses it (and in training)."""
    robust_scale: float = _f(4.0, "Px where the landmark loss turns from squared to linear (Huber); "
                             "0 = plain mean squared error.", 0.0, 1000.0)
    contour_weight: float = _f(0.3, "Weight of face-outline landmarks, which slide with head pose.", 0.0, 1.0)
    sliding_contour: bool = _f(False, "Stage 1: match each face-outline landmark to the model's current "
                               "occluding contour once its own vertex turns away (sliding "
                               "correspondences, mfface.fitting.contour); measured in bench/RESULTS.md.")
    unreliable_prior_scale: float = _f(100.0, "Factor on the identity prior of a photo whose landmarks "
                                       "cannot be trusted (face cut by the border, yaw beyond 70 deg, "
                                       "landmarks that fit no face; "
                                       "mfface.fitting.untrusted_landmarks); 1 = no fallback.", 1.0, 1e6)


@dataclass
class Stage1Config:
    """Stage 1: pose, expression and focal from 2D landmarks (no rendering)."""
    iterations: int = _f(300, "Adam iterations after the PnP initialisation (NextFace: 2000).", 0, 1_000_000)
    lr: float = _f(0.02, "Adam learning rate (coefficients in std units, angles in rad).", 0.0, 10.0)
    expression_prior: float = _f(0.1, "Weight of the expression prior, mean of c^2 (NextFace: 0.1).", 0.0)
    expression_sparsity: float = _f(0.0, "Weight of the L1 expression prior, mean of |c|: pulls weights "
                                    "the landmarks do not support to exactly 0 (`mfface track` uses it).", 0.0)
    identity_prior: float = _f(0.1, "Weight of the identity prior when identity is fitted.", 0.0)
    fit_identity: bool = _f(True, "Also fit identity coefficients from the landmarks (measured: less "
                            "expression leakage, bench/RESULTS.md).")
    identity_components: int = _f(40, "Leading identity components fitted in stage 1.", 0, 10000)
    upper_face_weight: float = _f(1.0, "Factor on stage 1's weights of the landmarks more than 50 mm above "
                                  "the nose tip on the model's mean face (brows, forehead, the outline's "
                                  "top): they move with the brows and sit at the hairline. 0 lowered the "
                                  "people photos' identity-consistency ratio 1.06 -> 0.98 at equal PSNR, "
                                  "left the synthetic shapes as they were (bench/RESULTS.md, \"Where the "
                                  "same person's shapes differ\"); stage 2 keeps them.", 0.0, 1.0)
    fit_focal: bool = _f(True, "Estimate the focal length (else keep `focal`, or the PnP one).")
    focal: float = _f(0.0, "Known focal length in px; 0 = unknown (searched by PnP).", 0.0)


@dataclass
class Stage2Config:
    """Stage 2: photometric fit of the statistical model, pose and light."""
    iterations: int = _f(80, "Photometric iterations (NextFace: 400; measured trade-off in "
                         "bench/RESULTS.md).", 0, 1_000_000)
    spp: int = _f(4, "Samples per pixel while optimising (NextFace: 8).", 1, 16384)
    silhouette_fraction: float = _f(0.25, "Fraction of the iterations, the last ones, that render with "
                                    "`direct_projective` (silhouette gradients) when a render at that point "
                                    "leaves at least 1 px of the skin mask uncovered, so that the face's "
                                    "outline can move over the mask's edge; a fraction, so that short runs "
                                    "(`--refine N`, tests) keep the same share; 0 = `render.integrator` "
                                    "throughout. Measured: they ran on 1 of 6 people photos and 2 of 6 "
                                    "synthetic faces (synthetic face 3 +4.3 dB, obama_b +0.46 dB, none "
                                    "lower beyond run-to-run noise), 1.25x the time of a fit that runs them "
                                    "(bench/RESULTS.md).", 0.0, 1.0)
    coarse_size: int = _f(0, "Coarse to fine: side in px of the renders of the first `coarse_iterations` "
                          "iterations (photo, skin mask and landmarks area-averaged to it); 0 = the "
                          "crop's size throughout.", 0, 8192)
    coarse_iterations: int = _f(0, "Iterations rendered at `coarse_size` before the rest at the crop's "
                                "size.", 0, 1_000_000)
    photo_weight: float = _f(1000.0, "Weight of the L1 photometric loss inside the rendered mask.", 0.0)
    landmark_weight: float = _f(1.0, "Weight of the landmark loss (px^2; NextFace: 0.001, which leaves the "
                                "landmarks ~1e4 times weaker than the photometric term).", 0.0)
    identity_prior: float = _f(0.001, "Weight of the identity (shape) prior, mean of c^2.", 0.0)
    expression_prior: float = _f(0.001, "Weight of the expression prior, mean of c^2.", 0.0)
    albedo_prior: float = _f(0.001, "Weight of the statistical albedo prior, mean of c^2.", 0.0)
    sh_energy: float = _f(1e-4, "Weight of the SH energy, mean of the squared SH coefficients.", 0.0)
    sh_lr: float = _f(0.01, "Learning rate of the SH coefficients of band 1 (see sh_band_decay; "
                      "NextFace: 0.005 for all bands).", 0.0, 10.0)
    sh_band_decay: float = _f(2.0, "SH step size per band l scales as ((1 + l) / 2) ** -decay, so the "
                              "low bands converge fast and the noisy high bands do not ring; 0 = one "
                              "learning rate for all bands. Measured in bench/RESULTS.md.", 0.0)
    albedo_lr: float = _f(0.007, "Learning rate of the albedo coefficients.", 0.0, 10.0)
    geometry_lr: float = _f(0.01, "Learning rate of identity and expression coefficients.", 0.0, 10.0)
    fit_identity: bool = _f(True, "Let the photometric stage change the identity (else it keeps "
                            "stage 1's and fits expression, pose, light and albedo). Measured with "
                            "MediaPipe's landmarks: off, the shape is 5-9% closer to the truth but the "
                            "re-render 1-2 dB worse (bench/RESULTS.md).")
    pose_lr: float = _f(1e-4, "Learning rate of the pose (rad and mm).", 0.0, 10.0)
    geometry_start: int = _f(20, "Iteration at which identity, expression and pose join the fit "
                             "(NextFace: 100 of 400; here a quarter of the 80, as in NextFace).", 0)
    geometry_warmup: int = _f(0, "Iterations over which the geometry's learning rates ramp up linearly "
                              "from geometry_start (Adam's first steps move every parameter by its rate; "
                              "--refine, whose rates are raised, uses 4).", 0)
    lr_decay: bool = _f(False, "Decay every learning rate along a cosine to 0 by the last iteration "
                        "(the geometry's from geometry_start), so that the last steps settle instead of "
                        "jittering on noisy Monte Carlo gradients.")
    albedo_resolution: int = _f(64, "Side of the stage-2 albedo texture (free texture for models without "
                                "an albedo model; bake size of a statistical one).", 4, 8192)
    albedo_smoothness: float = _f(1.0, "Free albedo texture: weight of its total variation.", 0.0)
    albedo_symmetry: float = _f(1.0, "Free albedo texture: weight of L1 between mirror points.", 0.0)
    specular_init: float = _f(0.04, "Specular albedo (Schlick F0) in stage 2, and stage 3's start.", 0.0, 1.0)
    light_solve_bands: int = _f(0, "Before the iterations, replace the start light by the photo's "
                                "least-squares light in this many SH bands (`mfface.fitting.light_solve`; "
                                "0 = keep the start light). A light that points where the photo's does and "
                                "a truer albedo, at a lower re-render PSNR (bench/RESULTS.md).", 0, 9)
    light_solve_size: int = _f(64, "Side in px of the light solve's renders (the photo area-averaged to it).",
                               8, 8192)
    light_solve_spp: int = _f(16, "Samples per pixel of the light solve's renders.", 1, 16384)


@dataclass
class Stage3Config:
    """Stage 3: free per-texel diffuse, specular and roughness maps."""
    iterations: int = _f(30, "Per-texel Adam iterations before the solve (NextFace: 100; measured trade-off in "
                         "bench/RESULTS.md).", 0, 1_000_000)
    spp: int = _f(4, "Samples per pixel while optimising (NextFace: 8).", 1, 16384)
    photo_weight: float = _f(1000.0, "Weight of the L1 photometric loss inside the rendered mask.", 0.0)
    solve_passes: int = _f(8, "After the iterations, passes of the diffuse map's per-texel Gauss-Newton solve "
                           "from the photo (`mfface.fitting.texel_solve`; 0 = none): 30 iterations and the "
                           "solve fit the photo better than 50 iterations did, in about their time "
                           "(bench/RESULTS.md).",
                           0, 10_000)
    solve_spp: int = _f(16, "Samples per pixel of the solve's renders (its steps are averaged over the passes).",
                        1, 16384)
    solve_damping: float = _f(0.1, "Damping of the solve: texels that few pixels see keep their start "
                              "(fraction of the mean curvature).", 0.0)
    lr_decay: bool = _f(False, "Decay the maps' learning rates along a cosine to 0 by the last "
                        "iteration. Measured before the diffuse solve existed it helped (obama_b +0.27 dB); "
                        "with 30 iterations and the solve after them it costs every benchmark face and "
                        "photo 0.1-2.0 dB (bench/RESULTS.md, \"Stage 3's decay after the solve came\").")
    texture_reg_scale: float = _f(0.2, "Common factor on all texture regularisers below (NextFace: 0.2).", 0.0)
    diffuse_lr: float = _f(0.005, "Learning rate of the diffuse map.", 0.0, 10.0)
    specular_lr: float = _f(0.002, "Learning rate of the specular map (NextFace: 0.02, but our maps are "
                            "Schlick F0 ~0.04: measured, 0.02 made stage 3 worse than stage 2).", 0.0, 10.0)
    roughness_lr: float = _f(0.005, "Learning rate of the roughness map (NextFace: 0.02; measured, see "
                             "bench/RESULTS.md).", 0.0, 10.0)
    diffuse_symmetry: float = _f(50.0, "Diffuse map: L1 to its horizontal flip.", 0.0)
    diffuse_consistency: float = _f(100.0, "Diffuse map: closeness to the stage-2 map's chromaticity.", 0.0)
    diffuse_smoothness: float = _f(0.001, "Diffuse map: smoothness.", 0.0)
    diffuse_range: float = _f(0.0, "Diffuse map: penalty outside [0, 1].", 0.0)
    specular_symmetry: float = _f(30.0, "Specular map: L1 to its horizontal flip.", 0.0)
    specular_consistency: float = _f(2.0, "Specular map: closeness to the stage-2 map.", 0.0)
    specular_smoothness: float = _f(0.001, "Specular map: smoothness.", 0.0)
    specular_range: float = _f(0.5, "Specular map: penalty outside [0, 1].", 0.0)
    roughness_symmetry: float = _f(10.0, "Roughness map: L1 to its horizontal flip.", 0.0)
    roughness_consistency: float = _f(0.0, "Roughness map: closeness to the stage-2 map.", 0.0)
    roughness_smoothness: float = _f(0.002, "Roughness map: smoothness.", 0.0)
    roughness_range: float = _f(0.0, "Roughness map: penalty outside [roughness_min, 1].", 0.0)
    roughness_min: float = _f(0.05, "Smallest roughness a texel may take (GGX is unstable near 0).", 0.0, 1.0)
    fill_unseen: bool = _f(True, "Afterwards, fill the texels no counted pixel saw (brows, hairline, the "
                           "far side) from their mirror point or the surrounding skin, instead of "
                           "leaving what the priors made of them.")


@dataclass
class FitConfig:
    """All settings of a fit, one section per part of the pipeline."""
    input: InputConfig = field(default_factory=InputConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    light: LightConfig = field(default_factory=LightConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)


def _sections(root: type = FitConfig) -> dict[str, type]:
    """{section name: section dataclass} of a root config (FitConfig, or another tree such as
    training's, built the same way: a dataclass of section dataclasses)."""
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}


def _fields(section_type: type) -> dict[str, tuple[Any, dict]]:
    """{field name: (type, metadata)} of one section dataclass."""
    hints = typing.get_type_hints(section_type)
    return {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(section_type)}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[tp]


def _check_value(key: str, tp: Any, meta: dict, value: Any) -> Any:
    """The value converted to the field's type, or ConfigError naming key, expected and found type."""
    ok = False
    if typing.get_origin(tp) is Literal:
        ok = isinstance(value, str) and value in typing.get_args(tp)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(tp)}, not {type(value).__name__} {value!r}.")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, not {value!r}.")
    minimum, maximum = meta.get("min"), meta.get("max")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, not {value!r}.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} must be at most {maximum}, not {value!r}.")
    return value


def _split_key(key: str, root: type = FitConfig) -> tuple[str, str]:
    sections = _sections(root)
    section, _, name = key.partition(".")
    if section not in sections:
        raise ConfigError(f"Unknown config section {section!r} in {key!r}; valid sections: "
                          f"{', '.join(sections)}.")
    names = _fields(sections[section])
    if name not in names:
        raise ConfigError(f"Unknown key {name!r} in section [{section}]; valid keys: {', '.join(names)}.")
    return section, name


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `config` (any root config) with {"section.field": value} applied, each checked
    like a TOML value."""
    root = type(config)
    sections = {name: getattr(config, name) for name in _sections(root)}
    for key, value in overrides.items():
        section, name = _split_key(key, root)
        tp, meta = _fields(type(sections[section]))[name]
        sections[section] = dataclasses.replace(sections[section],
                                                **{name: _check_value(key, tp, meta, value)})
    return root(**sections)


# Keys of earlier versions, so that their files (a result's config.toml) still load: moved keys
# are read at their new place, retired ones (which had no effect) are dropped.
MOVED_KEYS = {"stage1.robust_scale": "landmarks.robust_scale",
              "stage1.contour_weight": "landmarks.contour_weight"}
RETIRED_KEYS = frozenset({"stage3.landmark_weight"})


def config_from_dict(data: dict[str, Any], source: str = "the config", root: type = FitConfig) -> Any:
    """A `root` config (FitConfig by default) from {section: {key: value}} (a parsed TOML file);
    missing keys keep their defaults."""
    overrides = {}
    for section, table in data.items():
        if section not in _sections(root):
            raise ConfigError(f"Unknown section [{section}] in {source}; valid sections: "
                              f"{', '.join(_sections(root))}.")
        if not isinstance(table, dict):
            raise ConfigError(f"{section} in {source} must be a [{section}] table, not a value.")
        for key, value in table.items():
            dotted = f"{section}.{key}"
            if dotted not in RETIRED_KEYS:
                overrides[MOVED_KEYS.get(dotted, dotted)] = value
    return apply_overrides(root(), overrides)


def load_config(path: str | Path, root: type = FitConfig) -> Any:
    """Read a TOML config file into a `root` config (FitConfig by default); raises ConfigError for
    a missing or malformed file or a bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"Config file {path} is not valid TOML ({e}).") from None
    return config_from_dict(data, str(path), root)


def config_to_dict(config: Any) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} of every field (a plain dict, e.g. for JSON)."""
    return dataclasses.asdict(config)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def to_toml(config: Any) -> str:
    """The full config as TOML text that `load_config` reads back to an equal config."""
    lines = []
    for section, table in config_to_dict(config).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def _option_table(root: type = FitConfig) -> dict[str, tuple[str, str, Any, dict, Any]]:
    """{click parameter name: (dotted key, option flag, type, metadata, default)} for every field."""
    table = {}
    defaults = root()
    for section, section_type in _sections(root).items():
        for name, (tp, meta) in _fields(section_type).items():
            flag = f"--{section}-{name}".replace("_", "-")
            table[f"{section}_{name}"] = (f"{section}.{name}", flag, tp, meta,
                                          getattr(getattr(defaults, section), name))
    return table


def config_options(command: Callable, root: type = FitConfig) -> Callable:
    """Click decorator adding one option per field of a `root` config (`--stage2-iterations`, ...).

    Every option defaults to None (= not given), so `overrides_from_kwargs` passes on only what the
    user typed; booleans are `--x/--no-x` flags, Literal fields are choices. For another root:
    `functools.partial(config_options, root=TrainConfig)`.
    """
    import click

    for param, (_, flag, tp, meta, default) in reversed(list(_option_table(root).items())):
        help_text = f"{meta['help']} [default: {default}]"
        if tp is bool:
            command = click.option(f"{flag}/--no-{flag[2:]}", param, default=None, help=help_text)(command)
        else:
            click_type = (click.Choice(typing.get_args(tp)) if typing.get_origin(tp) is Literal
                          else {int: click.INT, float: click.FLOAT, str: click.STRING}[tp])
            command = click.option(flag, param, type=click_type, default=None, help=help_text)(command)
    return command


def overrides_from_kwargs(kwargs: dict[str, Any], root: type = FitConfig) -> dict[str, Any]:
    """{"section.field": value} for the config options given on the command line (not None).

    Keys of `kwargs` that are not config options (the command's own arguments) are ignored.
    """
    table = _option_table(root)
    return {table[k][0]: v for k, v in kwargs.items() if k in table and v is not None}
