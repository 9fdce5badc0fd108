"""Prediction with a trained `FaceNet`: photos -> the same result as `mfface fit`, in one pass.

`Predictor` loads weights (`mfface.learning.checkpoint`: checked against the face model), prepares
each photo as the fit does (landmarks, a square crop, resized to the network's input size), runs the
network in batches and returns a `FitResult`, so `mfface.results.write_results` writes the same
result folder and `mfface replay` works on it. With `refine` iterations the prediction replaces the
fit's stage 1 and the fit's stages 2-3 refine it (`Reconstructor.fit(start=...)`): the network's
speed with the optimisation's accuracy.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from mfface.config import FitConfig
from mfface.fitting.pipeline import FitResult, PreparedImage, Reconstructor, prepare_image
from mfface.learning import checkpoint as ckpt
from mfface.learning.network import FaceNet
from mfface.morphable.model import MorphableModel
from mfface.state import FaceState


def refine_config(config: FitConfig, iterations: int) -> FitConfig:
    """The fit config of `--refine N`: stage 2 runs N iterations with the geometry free after the
    first quarter (the light and albedo settle first, as in a fit), stage 3 N // 3."""
    if iterations < 0:
        raise ValueError(f"--refine needs a number of iterations >= 0, not {iterations}.")
    stage2 = dataclasses.replace(config.stage2, iterations=iterations,
                                 geometry_start=min(config.stage2.geometry_start, iterations // 4))
    stage3 = dataclasses.replace(config.stage3, iterations=iterations // 3)
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

    def prepare(self, path: Path, detector, landmark_file: Path | None = None) -> PreparedImage:
        """A photo cropped as the fit crops it, resized to exactly the network's input size."""
        return prepare_image(path, self.config, detector, landmark_file, size=self.size, enlarge=True)

    @torch.no_grad()
    def predict(self, images: list[PreparedImage]) -> FaceState:
        """The network's FaceState of prepared images (batch B, one forward pass)."""
        crops = torch.stack([im.target for im in images]).permute(0, 3, 1, 2).to(self.device)
        principal = torch.as_tensor(torch.stack([torch.as_tensor(im.principal) for im in images]),
                                    dtype=torch.float32, device=self.device)
        return self.net.state(self.net(crops), principal).detached()

    def results(self, images: list[PreparedImage], refine: int = 0, on_step=None,
                checkpoint_dir: Path | None = None) -> list[FitResult]:
        """One FitResult per image (predicted together in one batch, each its own result) and,
        with `refine` > 0, refined by the fit's stages 2-3; what `write_results` writes."""
        started = time.perf_counter()
        states = self.predict(images)
        seconds = (time.perf_counter() - started) / len(images)
        results = []
        for b, image in enumerate(images):
            state = states.item(b)
            if refine > 0:
                recon = Reconstructor(self.model, refine_config(self.config, refine), self.device)
                recon.forward = self.reconstructor.forward  # share the Mitsuba scenes
                result = recon.fit([image], start=state, on_step=on_step, checkpoint_dir=checkpoint_dir)
                result.seconds = {"predict": seconds, **result.seconds}
            else:
                result = FitResult(self.model, self.config, [image], state, self.reconstructor.forward,
                                   self.reconstructor.targets([image]), stages={1: state},
                                   seconds={"predict": seconds}, last_stage=1,
                                   owner=self.reconstructor.owner([image]))
            result.source = {"method": "predict" + (f" + refine {refine}" if refine > 0 else ""),
                             "weights": str(self.weights.resolve())}
            results.append(result)
        return results
