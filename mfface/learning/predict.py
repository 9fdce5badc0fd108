"""Prediction with a trained `FaceNet`: photos -> the same result as `mfface fit`, in one pass.

`Predictor` loads weights (`mfface.learning.checkpoint`: checked against the face model), prepares
each photo as the fit does (landmarks, a square crop, resized to the network's input size), runs the
network in batches and returns a `FitResult`, so `mfface.results.write_results` writes the same
result folder and `mfface replay` works on it. With `refine` iterations the fit refines it: stage 1
places the face on the landmarks (a second or two), the network's maps and ambient light replace stage
1's defaults, and stages 2-3 run short (`Reconstructor.fit(appearance=...)`). Measured on held-out
synthetic faces, this beat starting stage 2 from the network's whole prediction by 1.5-6 dB, whose
pose was a few px off (bench/RESULTS.md, "network").
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from mfface.config import FitConfig
from mfface.fitting.pipeline import FitResult, PreparedImage, Reconstructor, prepare_image
from mfface.learning import checkpoint as ckpt
from mfface.learning.network import FaceNet
from mfface.morphable.model import MorphableModel
from mfface.state import FaceState


# A short stage 2 must move the light, albedo and pose about as far as the full one in fewer Adam
# steps (Adam moves a parameter by about its rate per step), so `refine_config` scales their rates
# by RATE_MARGIN * (full iterations / N). Measured on held-out synthetic faces (bench/RESULTS.md,
# "network", "A refinement in a third of the fit's time"): at N = 20, rates x4 ended 0.8 dB below
# the full fit, x6 0.5 dB; the same x6 rates over all 80 iterations lost 1.7 dB (the Monte Carlo
# noise of the 4-spp gradients is walked into the maps), so they are the refinement's only.
RATE_MARGIN = 1.5
# Iterations over which the refinement's geometry rates ramp up (stage2.geometry_warmup): at full
# rate from the first step, Adam's first step doubled the landmark loss. On 16 held-out faces
# against no ramp (bench/RESULTS.md, "network", 2026-12-05): 2 / 4 / 8 iterations raised the PSNR
# on 13 / 10 / 11 faces (median +0.06 / +0.04 / +0.06 dB, one face +2.7 dB at 4), the shape
# closer on 11 / 13 / 13.
REFINE_WARMUP = 4


def refine_config(config: FitConfig, iterations: int) -> FitConfig:
    """The fit config of `--refine N`: stage 2 runs N iterations with the light, albedo and pose
    rates scaled up (RATE_MARGIN above) and the geometry free from the first iteration (the raised
    rates settle light and albedo within a few; holding the geometry for a quarter, as the fit
    does, left faces whose outline needs moving 1.6-2.4 dB lower), its rates ramped up over
    REFINE_WARMUP iterations; stage 3 is its diffuse solve
    alone (its Adam iterations barely move the maps in a short run, and the solve replaces the
    diffuse map they fit)."""
    if iterations < 0:
        raise ValueError(f"--refine needs a number of iterations >= 0, not {iterations}.")
    cfg = config.stage2
    rate = max(1.0, RATE_MARGIN * cfg.iterations / max(iterations, 1))
    stage2 = dataclasses.replace(cfg, iterations=iterations, geometry_start=0, coarse_iterations=0,
                                 geometry_warmup=max(cfg.geometry_warmup, REFINE_WARMUP),
                                 sh_lr=cfg.sh_lr * rate, albedo_lr=cfg.albedo_lr * rate, pose_lr=cfg.pose_lr * rate)
    stage3 = dataclasses.replace(config.stage3, iterations=0)
    return dataclasses.replace(config, stage2=stage2, stage3=stage3)


class Predictor:
    """A trained network for one face model, ready to predict (weights from `path`)."""

    def __init__(self, path: str | Path, model: MorphableModel, config: FitConfig,
                 device: torch.device | str = "cpu") -> None:
        content = ckpt.load(path)
        self.net: FaceNet = ckpt.network_from(content, model, str(path)).to(device).eval()
        self.model, self.config, self.device = model, config, torch.device(device)
        self.size = self.net.spec.crop
        self.reconstructor = Reconstructor(model, config, self.device)
        self.weights = Path(path)
        self.seconds_per_image = 0.0

    def prepare(self, path: Path, detector, landmark_file: Path | None = None) -> PreparedImage:
        """A photo cropped as the fit crops it, resized to exactly the network's input size."""
        return prepare_image(path, self.config, detector, landmark_file, size=self.size, enlarge=True)

    @torch.no_grad()
    def predict(self, images: list[PreparedImage]) -> FaceState:
        """The network's FaceState of prepared images (batch B, one forward pass)."""
        started = time.perf_counter()
        crops = torch.stack([im.target for im in images]).permute(0, 3, 1, 2).to(self.device)
        principal = torch.as_tensor(np.stack([im.principal for im in images]), dtype=torch.float32,
                                    device=self.device)
        state = self.net.state(self.net(crops), principal).detached()
        self.seconds_per_image = (time.perf_counter() - started) / len(images)
        return state

    def start_state(self, images: list[PreparedImage], shared_identity: bool) -> FaceState:
        """The network's prediction of already prepared fit images (any crop size: they are
        resized to the network's input), whose maps and ambient light start a fit
        (`Reconstructor.fit(appearance=...)`); with `shared_identity`, one identity and one set of
        maps, the photos' means."""
        size = self.size
        crops = [torch.nn.functional.interpolate(im.target.permute(2, 0, 1)[None], size=(size, size),
                                                 mode="bilinear", align_corners=False, antialias=True)[0]
                 for im in images]
        scale = [size / im.target.shape[0] for im in images]
        principal = torch.as_tensor(np.stack([im.principal * k for im, k in zip(images, scale)]),
                                    dtype=torch.float32, device=self.device)
        with torch.no_grad():
            state = self.net.state(self.net(torch.stack(crops).to(self.device)), principal).detached()
        state.focal = state.focal / torch.as_tensor(scale, dtype=torch.float32, device=self.device)
        state.principal = principal / torch.as_tensor(scale, dtype=torch.float32, device=self.device)[:, None]
        if shared_identity:
            state = dataclasses.replace(state, **{name: getattr(state, name).mean(0, keepdim=True)
                                                  for name in ("identity", "diffuse", "specular", "roughness")})
        return state

    def config_for(self, refine: int) -> FitConfig:
        """The fit config the results are made with (`refine_config` when refining)."""
        return refine_config(self.config, refine) if refine > 0 else self.config

    def finish(self, image: PreparedImage, state: FaceState, refine: int = 0, on_step=None,
               checkpoint_dir: Path | None = None) -> FitResult:
        """The FitResult of one predicted image (`state`, batch 1), refined by the fit (stage 1, then
        stages 2-3 from the network's maps and ambient light) when `refine` > 0; what `write_results` writes."""
        if refine > 0:
            recon = Reconstructor(self.model, self.config_for(refine), self.device)
            recon.forward = self.reconstructor.forward  # share the Mitsuba scenes
            result = recon.fit([image], appearance=state, on_step=on_step, checkpoint_dir=checkpoint_dir)
        else:
            result = FitResult(self.model, self.config, [image], state, self.reconstructor.forward,
                               self.reconstructor.targets([image]), stages={1: state}, last_stage=1,
                               owner=self.reconstructor.owner([image]))
        result.seconds = {"predict": self.seconds_per_image, **result.seconds}
        result.source = {"method": "predict" + (f" + refine {refine}" if refine > 0 else ""),
                         "weights": str(self.weights.resolve())}
        return result

    def results(self, images: list[PreparedImage], refine: int = 0) -> list[FitResult]:
        """One FitResult per image: predicted together in one batch, each its own result."""
        states = self.predict(images)
        return [self.finish(image, states.item(b), refine) for b, image in enumerate(images)]
