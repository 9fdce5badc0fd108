"""The diffuse map's per-texel Gauss-Newton solve: it recovers a known map from its render."""
from __future__ import annotations

import dataclasses

import torch

from mfface.config import FitConfig, apply_overrides
from mfface.fitting.texel_solve import solve_diffuse
from mfface.fitting.unseen import seen_texels
from mfface.forward import ForwardModel
from mfface.morphable.uv import texel_map
from mfface.state import FaceState

SIZE = 96
TEXELS = 32


def _scene(model) -> tuple[FaceState, torch.Tensor]:
    """A frontal face under an ambient light with a sky from above, and a smooth random diffuse map."""
    sh = torch.zeros(1, 9, 3)
    sh[0, 0] = 2.0
    sh[0, 2] = 0.8                                   # brighter from above: the shading varies
    coarse = 0.2 + 0.6 * torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    truth = torch.nn.functional.interpolate(coarse, size=(TEXELS, TEXELS), mode="bilinear").permute(0, 2, 3, 1)
    state = FaceState(identity=torch.zeros(1, model.n_identity), expression=torch.zeros(1, model.n_expression),
                      euler=torch.zeros(1, 3), translation=torch.tensor([[0.0, 10.0, 600.0]]),
                      focal=torch.tensor([250.0]), sh=sh, diffuse=torch.full((1, TEXELS, TEXELS, 3), 0.5),
                      specular=torch.full((1, TEXELS, TEXELS, 3), 0.04),
                      roughness=torch.full((1, TEXELS, TEXELS, 1), 0.4))
    return state, truth


def test_the_solve_recovers_a_known_diffuse_map(ict, own_render_targets) -> None:
    config = apply_overrides(FitConfig(), {"stage3.solve_passes": 6, "stage3.solve_spp": 8})
    forward = ForwardModel(ict)
    start, truth = _scene(ict)
    targets = own_render_targets(forward, dataclasses.replace(start, diffuse=truth), config, SIZE)
    solved = solve_diffuse(forward, targets, start, config)
    texels = texel_map(ict.uvs, ict.triangles, (TEXELS, TEXELS))
    seen = seen_texels(forward, start, targets, texels)
    assert int(seen.sum()) > 100
    before = float((start.diffuse[0][seen] - truth[0][seen]).abs().mean())
    after = float((solved.diffuse[0][seen] - truth[0][seen]).abs().mean())
    assert after < 0.25 * before, (before, after)
    outside = ~torch.as_tensor(texels.mask)           # texels no triangle covers: no pixel, no change
    assert torch.equal(solved.diffuse[0][outside], start.diffuse[0][outside])
    assert float(solved.diffuse.min()) >= 0.0 and float(solved.diffuse.max()) <= 1.0


def test_no_passes_leave_the_map_as_it_is(ict, own_render_targets) -> None:
    config = apply_overrides(FitConfig(), {"stage3.solve_passes": 0})
    forward = ForwardModel(ict)
    start, truth = _scene(ict)
    targets = own_render_targets(forward, dataclasses.replace(start, diffuse=truth), config, SIZE)
    assert solve_diffuse(forward, targets, start, config) is start


def test_stage_3_without_iterations_reports_the_solve(ict, own_render_targets) -> None:
    """A refinement's stage 3 is the solve alone: its report holds each pass's photometric term
    (falling as the map is solved), and that is the stage's final photometric loss, not NaN."""
    from mfface.fitting.texel_stage import fit_texels

    config = apply_overrides(FitConfig(), {"stage3.iterations": 0, "stage3.solve_passes": 3, "stage3.solve_spp": 4,
                                           "stage3.fill_unseen": False})
    forward = ForwardModel(ict)
    start, truth = _scene(ict)
    targets = own_render_targets(forward, dataclasses.replace(start, diffuse=truth), config, SIZE)
    _, report = fit_texels(forward, targets, start, config)
    passes = report.losses["solve_photo"]
    assert len(passes) == 3 and "photo" not in report.losses
    assert passes[-1] < 0.7 * passes[0], passes
    assert report.final_photo() == passes[-1]
