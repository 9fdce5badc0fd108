"""Filling the texels no counted pixel sees: from the mirror point, else by push-pull."""
from __future__ import annotations

import torch

from mfface.fitting.targets import FitTargets
from mfface.fitting.unseen import fill_unseen, push_pull, seen_texels
from mfface.forward import ForwardModel
from mfface.morphable.uv import texel_map
from mfface.state import FaceState

SIZE = 96


def test_push_pull_keeps_known_texels_and_fills_the_rest_smoothly():
    texture = torch.zeros(32, 32, 1)
    texture[:, :16] = 1.0
    known = torch.zeros(32, 32, dtype=torch.bool)
    known[:, :4] = True
    known[:, -4:] = True
    texture[:, -4:] = 0.0
    filled = push_pull(texture, known)
    assert torch.equal(filled[known], texture[known])
    row = filled[16, :, 0]
    assert float(row[5]) > float(row[16]) > float(row[27])          # a ramp from 1 to 0
    assert 0.0 <= float(filled.min()) and float(filled.max()) <= 1.0


def _turned_state(model, yaw: float) -> FaceState:
    return FaceState(identity=torch.zeros(1, model.n_identity), expression=torch.zeros(1, model.n_expression),
                     euler=torch.tensor([[yaw, 0.0, 0.0]]), translation=torch.tensor([[0.0, 10.0, 700.0]]),
                     focal=torch.tensor([200.0]), sh=torch.zeros(1, 9, 3),
                     diffuse=torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)),
                     specular=torch.full((1, 64, 64, 3), 0.04), roughness=torch.full((1, 64, 64, 1), 0.4))


def test_a_turned_head_fills_its_far_side_from_the_near_side(ict):
    state = _turned_state(ict, 0.7)       # yaw 40 deg: the face's right side turns away
    forward = ForwardModel(ict)
    targets = FitTargets(images=torch.zeros(1, SIZE, SIZE, 3), skin=torch.ones(1, SIZE, SIZE),
                         landmarks=torch.zeros(1, 478, 2), landmark_index=torch.zeros(478, dtype=torch.long),
                         landmark_weights=torch.ones(478), principal=torch.tensor([[48.0, 48.0]]))
    texels = texel_map(ict.uvs, ict.triangles, (64, 64))
    seen = seen_texels(forward, state, targets, texels)
    covered = torch.as_tensor(texels.mask)
    assert 0.2 < float(seen.sum() / covered.sum()) < 0.8
    filled, fraction = fill_unseen(forward, targets, state)
    assert abs(fraction - float(seen.sum() / covered.sum())) < 1e-6
    diffuse = filled.diffuse[0]
    assert torch.equal(diffuse[seen], state.diffuse[0][seen])          # what was seen is kept
    from mfface.fitting.unseen import mirror_texels
    mirror = torch.as_tensor(mirror_texels(ict, texels))
    from_mirror = ~seen & covered & seen[mirror[..., 0], mirror[..., 1]]
    assert int(from_mirror.sum()) > 50
    assert torch.equal(diffuse[from_mirror], state.diffuse[0][mirror[..., 0], mirror[..., 1]][from_mirror])
