"""Optional per-frame photometric refinement (`mfface track --photometric N`) through the renderer.

After the landmark tracking, each tracked frame's pose and expression (and the SH light, carried
from frame to frame, starting from the identity fit's mean light) are refined for N Adam
iterations against the frame's face crop (`prepare_photo`: `photometric.size` px, linear, skin
mask) through the forward model (`mfface.forward.ForwardModel`), with the identity and the maps
fixed. The loss is made of `mfface.objectives` terms, weighted by `PhotometricConfig`:

    photo_weight * L1 in coverage x skin + landmark_weight * landmark loss (crop px^2, robust)
  + expression_prior * mean(e^2) + expression_sparsity * mean(|e|)
  + temporal_weight * TemporalPrior(previous refined frames)

The temporal term has the [track] weights, scaled by (crop px / working px)^2 so that it keeps
its strength relative to the landmark term. Pose is parametrised as in stage 2: a rotation delta
(rad) and a translation delta in units of the frame's depth.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from mfface.fitting.pipeline import PreparedImage
from mfface.forward import ForwardModel, RenderSettings
from mfface.objectives import (landmark_loss, landmark_weights, photometric_loss, sparsity_prior, statistical_prior,
                               weighted_terms)
from mfface.state import FaceState
from mfface.tracking.config import TrackConfig
from mfface.tracking.identity import frame_state
from mfface.tracking.temporal import TemporalPrior

# The weight of each refinement term: the PhotometricConfig field that holds it.
WEIGHTS = {"photo": "photo_weight", "landmarks": "landmark_weight", "expression": "expression_prior",
           "sparsity": "expression_sparsity", "temporal": "temporal_weight"}
SEED_OFFSET = 5_000_000  # render seeds: SEED_OFFSET + frame * iterations + iteration


@dataclass
class Refined:
    """One refined frame: euler (3,) rad, translation (3,) mm, expression (K,), the final loss
    terms, and `photo_before` / `photo_after`, the L1 in the skin mask at the first and last
    iteration."""
    euler: np.ndarray
    translation: np.ndarray
    expression: np.ndarray
    losses: dict[str, float]
    photo_before: float
    photo_after: float


class FrameRefiner:
    """Refines frames in order; keeps the previous refined frames (temporal term) and the light."""

    def __init__(self, forward: ForwardModel, appearance: FaceState, landmark_index: np.ndarray,
                 config: TrackConfig, working_scale: float) -> None:
        self.forward, self.appearance, self.config = forward, appearance, config
        self.working_scale = working_scale
        index = torch.as_tensor(landmark_index, dtype=torch.long, device=forward.device)
        self.valid = index >= 0
        self.index = index[self.valid]
        self.weights = landmark_weights("mediapipe478", len(index), config.landmarks.contour_weight,
                                        forward.device,
                                        forward.model.landmark_reliability.get("mediapipe478"))[self.valid]
        cfg = config.photometric
        self.settings = RenderSettings.from_config(config.fit_config(), cfg.size, cfg.spp)
        self.sh = appearance.sh.detach().clone()
        self.history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def reset(self) -> None:
        """Forget the previous frames (after a frame that was not tracked)."""
        self.history = []

    def refine(self, prepared: PreparedImage, frame: int, focal_px: float, euler: np.ndarray,
               translation: np.ndarray, expression: np.ndarray) -> Refined:
        """Refine one frame: `prepared` its face crop (exactly `photometric.size` px), focal_px the
        video's focal in video px, the tracked pose and expression as the start."""
        cfg, track = self.config.photometric, self.config.track
        device = self.forward.device
        model = self.forward.model
        scale = prepared.to_crop.scale
        state = frame_state(self.appearance, euler, translation, expression, focal_px * scale,
                            tuple(prepared.principal), self.sh)
        euler0, translation0 = state.euler, state.translation
        depth = translation0[:, 2:3].clone()
        d_euler = torch.zeros_like(euler0, requires_grad=True)
        d_trans = torch.zeros_like(translation0, requires_grad=True)
        exp_param = state.expression.clone().requires_grad_(True)
        sh_param = self.sh.clone().requires_grad_(cfg.sh_lr > 0)
        groups = [{"params": [d_euler, d_trans, exp_param], "lr": cfg.lr}]
        if cfg.sh_lr > 0:
            groups.append({"params": [sh_param], "lr": cfg.sh_lr})
        optimizer = torch.optim.Adam(groups)
        target = prepared.target[None].to(device)
        skin = prepared.skin[None].to(device)
        lm_target = torch.as_tensor(prepared.crop_landmarks, dtype=torch.float32, device=device)[None][:, self.valid]
        factor = (scale / self.working_scale) ** 2
        prior = TemporalPrior(track.rotation_smoothness * factor, track.translation_smoothness * factor,
                              track.expression_smoothness * factor, track.order,
                              *(torch.stack([h[k] for h in self.history]) if self.history else None
                                for k in range(3)))
        photo, values = [], {}
        for it in range(cfg.iterations):
            current = dataclasses.replace(state, euler=euler0 + d_euler, translation=translation0 + d_trans * depth,
                                          expression=exp_param, sh=sh_param)
            out = self.forward(current, self.settings.with_seed(SEED_OFFSET + frame * cfg.iterations + it),
                               self.index)
            terms = weighted_terms(cfg, WEIGHTS, {
                "photo": lambda: photometric_loss(out.image, out.coverage, target, skin),
                "landmarks": lambda: landmark_loss(out.landmarks, lm_target, self.weights,
                                                   self.config.landmarks.robust_scale),
                "expression": lambda: statistical_prior(exp_param),
                "sparsity": lambda: sparsity_prior(exp_param),
                "temporal": lambda: prior(current.euler, current.translation, exp_param),
            })
            total = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            model.clamp_expression_(exp_param)
            values = {k: float(v.detach()) for k, v in terms.items()}
            photo.append(float(photometric_loss(out.image.detach(), out.coverage, target, skin)))
        with torch.no_grad():
            euler1 = (euler0 + d_euler)[0]
            translation1 = (translation0 + d_trans * depth)[0]
            expression1 = exp_param[0].clone()
            self.sh = sh_param.detach().clone()
        self.history = (self.history + [(euler1, translation1, expression1)])[-2:]
        return Refined(euler1.cpu().double().numpy(), translation1.cpu().double().numpy(),
                       expression1.cpu().double().numpy(), values,
                       photo[0] if photo else float("nan"), photo[-1] if photo else float("nan"))
