"""stage1.upper_face_weight: the brow and forehead landmarks, and how far stage 1 listens to them."""
from __future__ import annotations

import numpy as np
import torch

from mfface.camera import project, to_camera
from mfface.config import FitConfig, apply_overrides
from mfface.fitting.landmark_stage import run_landmark_stage
from mfface.fitting.targets import FitTargets
from mfface.objectives import landmark_weights, upper_face_landmarks

SIZE = 256


def test_upper_face_landmarks_are_the_brows_and_forehead(ict) -> None:
    upper = set(upper_face_landmarks(ict.mean_shape, ict.landmarks["mediapipe478"], "mediapipe478").tolist())
    # forehead top and middle, both brows' peaks
    assert {10, 151, 105, 334} <= upper
    # nose tip, eye corners, lips, chin
    assert not upper & {1, 33, 133, 263, 362, 13, 14, 152}


def _targets(model, landmarks: torch.Tensor) -> FitTargets:
    index = np.asarray(model.landmarks["mediapipe478"])
    return FitTargets(images=torch.zeros(1, SIZE, SIZE, 3), skin=torch.zeros(1, SIZE, SIZE),
                      landmarks=landmarks, landmark_index=torch.from_numpy(index).long(),
                      landmark_weights=landmark_weights("mediapipe478", 478, 0.3, "cpu",
                                                        model.landmark_reliability.get("mediapipe478")),
                      principal=torch.tensor([[SIZE / 2, SIZE / 2]]))


def test_stage1_follows_the_upper_face_landmarks_only_at_weight_1(ict) -> None:
    """The brow and forehead landmarks moved 10 px down: at weight 1 stage 1 bends the face
    towards them; at weight 0 its loss no longer sees them (only the PnP start does), and the fitted
    upper face stays near where the other landmarks put it."""
    index = torch.from_numpy(np.asarray(ict.landmarks["mediapipe478"])).long()
    gen = torch.Generator().manual_seed(3)
    identity = 0.7 * torch.randn(1, ict.n_identity, generator=gen)
    vertices = to_camera(ict.vertices(identity, None), torch.tensor([[0.1, 0.05, 0.0]]),
                         torch.tensor([[0.0, 0.0, 500.0]]))
    clean = project(vertices[:, index], torch.tensor([450.0]), SIZE, SIZE)
    upper = upper_face_landmarks(ict.mean_shape, index.numpy(), "mediapipe478")
    moved = clean.clone()
    moved[0, upper, 1] += 10.0

    def followed(weight: float) -> float:
        """How far (px, median) the fitted upper landmarks moved from the clean ones towards the moved."""
        config = apply_overrides(FitConfig(), {"stage1.upper_face_weight": weight})
        state, _ = run_landmark_stage(ict, _targets(ict, moved), config, shared_identity=False)
        fitted = project(to_camera(ict.vertices(state.identity, state.expression)[:, index], state.euler,
                                   state.translation), state.focal, SIZE, SIZE, state.principal)
        return float((fitted[0, upper, 1] - clean[0, upper, 1]).median())
    listened, ignored = followed(1.0), followed(0.0)
    assert listened > 3.0, listened            # measured 5.7 px
    assert abs(ignored) < 1.0, ignored         # measured 0.03 px
