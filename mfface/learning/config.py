"""Every setting of `mfface train`, on the same config machinery as `FitConfig` (TOML and flags).

`TrainConfig` has one section per part of training; each field has a documented default and a
help text, and `mfface train --help` lists them all as `--<section>-<field>` options. The losses
are the fit's own (`mfface.objectives`) with the fit's stage-2 weights as defaults; the schedule is
DeepNextFace's: the encoder first (decoders frozen), then the decoders (encoder frozen), then both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mfface.config import SAMPLER_HELP, Device, Integrator, LandmarkConfig, Sampler, _f

# Keys whose change does not make a run a different run: a resumed run may extend its schedule
# and change how it logs; everything else must match the run it resumes.
RESUMABLE_CHANGES = ("schedule.encoder_steps", "schedule.decoder_steps", "schedule.joint_steps",
                     "logging.log_every", "logging.checkpoint_every", "logging.preview_every",
                     "logging.validate_every", "data.workers", "render.device")


@dataclass
class DataConfig:
    """The training data: batches, the held-out split, mixing datasets, augmentation."""
    batch: int = _f(8, "Images per optimisation step (over all ranks).", 1, 4096)
    workers: int = _f(0, "DataLoader worker processes per rank (0 = load in the training process).", 0, 64)
    val_fraction: float = _f(0.02, "Fraction of each dataset held out for validation (at least one "
                             "sample of every dataset with two or more).", 0.0, 0.5)
    val_batches: int = _f(4, "Validation batches evaluated each time (0 = the whole held-out split).", 0, 100000)
    mix: str = _f("", "Sampling ratio per dataset file, comma-separated in the order given (e.g. "
                  "'1,3'); empty = in proportion to their sizes.")
    augment: bool = _f(True, "Shift/scale/rotation, colour jitter and horizontal flips "
                       "(mfface.learning.dataset.Augmentation.training).")
    seed: int = _f(0, "Seed of the split, the sample order, the augmentation and the renders.", 0)


@dataclass
class NetworkConfig:
    """The network's shape (fixed for a run: a resumed run must keep it)."""
    backbone: Literal["resnet18", "resnet34", "resnet50"] = _f("resnet18", "ResNet encoder depth.")
    latent: int = _f(1000, "Size of the latent code (DeepNextFace: 1000, torchvision's fc).", 8, 100000)
    sh_bands: int = _f(3, "SH bands of the predicted light (the fit uses 9).", 1, 9)
    albedo_size: int = _f(128, "Side of the predicted diffuse/specular UV maps (16-256, 8 x 2^k).", 16, 256)
    specular: bool = _f(False, "Also predict a specular map (else Schlick F0 0.04 everywhere).")
    roughness: float = _f(0.4, "Constant surface roughness of the renders.", 0.05, 1.0)
    focal_ratio: float = _f(2.5, "Focal length of the reference (first) prediction, in crop widths.", 0.3, 30.0)


@dataclass
class TrainRenderConfig:
    """The differentiable renders of the training loss."""
    device: Device = _f("auto", "Where to train and render: auto, cpu or cuda.")
    spp: int = _f(4, "Samples per pixel of each training render (DeepNextFace: 8).", 1, 1024)
    integrator: Integrator = _f(
        "prb", "Differentiable integrator (prb: shading gradients only, the fastest).")
    max_depth: int = _f(2, "Mitsuba max_depth: 2 = direct light only.", 2, 16)
    sampler: Sampler = _f("ldsampler", SAMPLER_HELP)
    envmap_height: int = _f(32, "Height of the lat-long envmap the SH light is baked into.", 4, 1024)


@dataclass
class LossConfig:
    """Weights of the terms (mfface.objectives); 0 switches a term off."""
    photo_weight: float = _f(1000.0, "L1 between render and photo inside coverage x skin mask; 0 = no "
                             "render at all (geometry pre-training: a step costs the network only).", 0.0)
    landmark_weight: float = _f(1.0, "Landmark loss (px^2, robust, [landmarks] section).", 0.0)
    identity_prior: float = _f(0.001, "Identity prior, mean of c^2.", 0.0)
    expression_prior: float = _f(0.001, "Expression prior, mean of c^2.", 0.0)
    albedo_prior: float = _f(0.001, "Statistical albedo prior, mean of c^2 (models with one).", 0.0)
    sh_energy: float = _f(1e-4, "SH energy, mean of the squared coefficients (only with photo_weight > 0: "
                          "without a photometric term it would darken the light to black).", 0.0)
    albedo_symmetry: float = _f(1.0, "Diffuse map: L1 between mirror points on the surface.", 0.0)
    albedo_smoothness: float = _f(1.0, "Diffuse map: total variation.", 0.0)
    albedo_consistency: float = _f(0.1, "Diffuse map: chromaticity close to the mean skin tone.", 0.0)
    parameter_weight: float = _f(0.0, "Supervised (synthetic truth): mean squared error of identity and "
                                 "expression coefficients (std units).", 0.0)
    vertex_weight: float = _f(0.0, "Supervised (synthetic truth): mean squared model-space vertex "
                              "error (mm^2) of identity + expression.", 0.0)
    light_weight: float = _f(0.0, "Supervised (synthetic truth): mean squared error of the light as a white "
                             "Lambertian surface sees it (radiance^2; truth x the colour jitter's brightness).", 0.0)
    diffuse_weight: float = _f(0.0, "Supervised (synthetic truth): mean absolute error of the diffuse map "
                               "(linear RGB) against the true texture, over the skin's texels.", 0.0)


@dataclass
class ScheduleConfig:
    """DeepNextFace's three phases, in optimisation steps, and their learning rates (Adam)."""
    encoder_steps: int = _f(2000, "Phase 1: encoder and parameter head, decoders frozen.", 0, 10_000_000)
    decoder_steps: int = _f(500, "Phase 2: albedo decoders, encoder frozen.", 0, 10_000_000)
    joint_steps: int = _f(500, "Phase 3: everything.", 0, 10_000_000)
    encoder_lr: float = _f(1e-4, "Adam learning rate of the encoder and head (DeepNextFace: 1e-6 on "
                           "250k images).", 0.0, 1.0)
    decoder_lr: float = _f(1e-4, "Adam learning rate of the decoders (DeepNextFace: 1e-7).", 0.0, 1.0)
    joint_lr_scale: float = _f(0.1, "Phase 3 uses the two learning rates times this.", 0.0, 10.0)
    weight_decay: float = _f(0.0, "Adam weight decay.", 0.0, 1.0)
    clip_grad_norm: float = _f(10.0, "Clip the gradient norm to this (0 = no clipping).", 0.0, 1e6)


@dataclass
class LoggingConfig:
    """What the run writes into RUN_DIR, and how often (in steps)."""
    log_every: int = _f(10, "Write a metrics.jsonl row (and TensorBoard scalars) every this many steps.", 1, 10**7)
    checkpoint_every: int = _f(200, "Write checkpoints/latest.pt every this many steps (and at the end).", 1, 10**7)
    preview_every: int = _f(200, "Write previews/step-N.png of a fixed validation batch.", 1, 10**7)
    validate_every: int = _f(0, "Validate every this many steps (0 = once per epoch).", 0, 10**7)


@dataclass
class TrainConfig:
    """All settings of `mfface train`."""
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    render: TrainRenderConfig = field(default_factory=TrainRenderConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def total_steps(self) -> int:
        s = self.schedule
        return s.encoder_steps + s.decoder_steps + s.joint_steps


def phase_of(config: TrainConfig, step: int) -> str:
    """'encoder', 'decoders' or 'joint' for global step `step` (0-based)."""
    s = config.schedule
    if step < s.encoder_steps:
        return "encoder"
    if step < s.encoder_steps + s.decoder_steps:
        return "decoders"
    return "joint"


def mix_ratios(config: TrainConfig, files: int) -> list[float] | None:
    """The `data.mix` ratios for `files` dataset files, or None (in proportion to their sizes)."""
    from mfface.config import ConfigError

    if not config.data.mix.strip():
        return None
    try:
        ratios = [float(r) for r in config.data.mix.split(",")]
    except ValueError:
        raise ConfigError(f"data.mix {config.data.mix!r} is not a comma-separated list of numbers.") from None
    if len(ratios) != files or any(not r >= 0 for r in ratios) or sum(ratios) <= 0:
        raise ConfigError(f"data.mix gives {len(ratios)} ratio(s) for {files} dataset file(s); give one "
                          f"non-negative number per file, not all zero.")
    return ratios
