"""The SH light solved from the photo: the basis renders add up to the render, and a known light is recovered."""
from __future__ import annotations

import dataclasses

import torch

from mfface.config import FitConfig, apply_overrides
from mfface.fitting.light_solve import basis_renders, solve_light
from mfface.fitting.photometric_stage import fit_photometric
from mfface.forward import ForwardModel, RenderSettings
from mfface.objectives import photometric_loss
from mfface.sh import sh_to_envmap
from mfface.state import FaceState

SIZE = 64


def _state(model, sh: torch.Tensor) -> FaceState:
    """A frontal face with a flat skin-coloured map under the SH light `sh` (1, 9, 3)."""
    return FaceState(identity=torch.zeros(1, model.n_identity), expression=torch.zeros(1, model.n_expression),
                     euler=torch.zeros(1, 3), translation=torch.tensor([[0.0, 10.0, 600.0]]),
                     focal=torch.tensor([170.0]), sh=sh,
                     diffuse=torch.tensor([0.6, 0.45, 0.35]).expand(1, 16, 16, 3).clone(),
                     specular=torch.full((1, 16, 16, 3), 0.04), roughness=torch.full((1, 16, 16, 1), 0.4))


def _lights() -> tuple[torch.Tensor, torch.Tensor]:
    """(true light: brighter from above and from the face's left, warm; ambient start light)."""
    true = torch.zeros(1, 9, 3)
    true[0, 0] = torch.tensor([2.2, 2.0, 1.8])
    true[0, 1] = 0.7                                  # SH y: from above
    true[0, 3] = -0.6                                 # SH x
    start = torch.zeros(1, 9, 3)
    start[0, 0] = 1.0
    return true, start


def test_basis_renders_add_up_to_the_render(ict) -> None:
    """A render is linear in the SH light, negative lobes included (rendered shifted)."""
    config = FitConfig()
    forward = ForwardModel(ict)
    true, _ = _lights()
    state = _state(ict, true)
    settings = RenderSettings.from_config(config, SIZE, 64, seed=5)
    basis, coverage = basis_renders(forward, state, settings, 9)
    combined = (basis * true[:, :, None, None, :]).sum(1)
    with torch.no_grad():
        direct, _ = forward.render(state, settings, forward.vertices(state),
                                   envmap=sh_to_envmap(true, 64, 128, clamp=False))
    inside = coverage > 0.5
    level = float(direct[inside].mean())
    assert abs(float(combined[inside].mean()) - level) < 0.01 * level            # no bias
    assert float((combined - direct)[inside].abs().mean()) < 0.04 * level       # per pixel: sampling noise


def test_the_solve_recovers_a_known_light(ict, own_render_targets) -> None:
    config = apply_overrides(FitConfig(), {"stage2.light_solve_bands": 3, "stage2.light_solve_size": 48})
    forward = ForwardModel(ict)
    true, start = _lights()
    targets = own_render_targets(forward, _state(ict, true), config, SIZE)
    solved = solve_light(forward, targets, _state(ict, start), config)

    def photo_error(state: FaceState) -> float:
        with torch.no_grad():
            out = forward(state, RenderSettings.from_config(config, SIZE, 32, seed=3))
        return float(photometric_loss(out.image, out.coverage, targets.images, targets.skin))

    before, after = photo_error(_state(ict, start)), photo_error(solved)
    assert after < 0.2 * before, (before, after)
    assert solved.sh.shape == start.shape
    assert torch.allclose(solved.sh[0, 0], true[0, 0], rtol=0.15)            # brightness and colour
    assert torch.allclose(solved.sh[0, 1], true[0, 1], rtol=0.3)             # light from above
    assert bool((solved.sh[0, 3] < 0).all())                                 # and from the left


def test_no_bands_keep_the_start_light_and_stage2_solves_first(ict, own_render_targets) -> None:
    forward = ForwardModel(ict)
    true, start = _lights()
    config = FitConfig()
    state = _state(ict, start)
    targets = own_render_targets(forward, _state(ict, true), config, SIZE)
    assert solve_light(forward, targets, state, config) is state
    solving = apply_overrides(config, {"stage2.iterations": 0, "stage2.light_solve_bands": 2,
                                       "stage2.light_solve_size": 32, "render.texture_size": 16})
    fitted, _ = fit_photometric(forward, targets, dataclasses.replace(state, sh=start.clone()), solving)
    assert float(fitted.sh[0, 0, 0]) > 1.5                                    # brighter than the start's 1.0
    assert float(fitted.sh[0, 4:].abs().max()) == 0.0                         # bands above 2 stay 0
