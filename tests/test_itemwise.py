"""The item-by-item photometric loss against the batched one: same value, same gradients, one scene."""
from __future__ import annotations

import pytest
import torch

from mfface.forward import ForwardModel, RenderSettings
from mfface.itemwise import itemwise_photometric
from mfface.objectives import photometric_loss
from mfface.sh import initial_coefficients
from mfface.state import FaceState

SIZE = 40
BATCH = 3


def _leaves(model) -> dict[str, torch.Tensor]:
    """The differentiable inputs of a 3-item batch: expression, a shared diffuse map, per-item light."""
    g = torch.Generator().manual_seed(1)
    sh = initial_coefficients(3, 0.8, batch=BATCH)
    sh[:, 1:] = 0.2 * torch.randn(BATCH, 8, 3, generator=g)
    return {"expression": (0.3 * torch.rand(BATCH, model.n_expression, generator=g)).requires_grad_(True),
            "diffuse": torch.rand(1, 16, 16, 3, generator=g).requires_grad_(True),
            "sh": sh.requires_grad_(True)}


def _state(model, leaves: dict[str, torch.Tensor]) -> FaceState:
    return FaceState(identity=torch.zeros(1, model.n_identity), expression=leaves["expression"],
                     euler=torch.tensor([[0.2, -0.1, 0.05], [-0.3, 0.1, 0.0], [0.0, 0.2, -0.1]]),
                     translation=torch.tensor([[5.0, -8.0, 600.0], [-4.0, 3.0, 700.0], [0.0, 0.0, 650.0]]),
                     focal=torch.tensor([70.0, 80.0, 75.0]), sh=leaves["sh"], diffuse=leaves["diffuse"],
                     specular=torch.full((1, 16, 16, 3), 0.04), roughness=torch.full((1, 16, 16, 1), 0.4))


def test_itemwise_photometric_equals_the_batched_loss_and_gradients(ict, variant):
    g = torch.Generator().manual_seed(2)
    target = torch.rand(BATCH, SIZE, SIZE, 3, generator=g)
    skin = (torch.rand(BATCH, SIZE, SIZE, generator=g) > 0.3).float()
    settings = RenderSettings(SIZE, spp=2, seed=5)
    results = {}
    for name in ("batched", "itemwise"):
        forward = ForwardModel(ict)
        leaves = _leaves(ict)
        state = _state(ict, leaves)
        vertices = forward.vertices(state)
        if name == "batched":
            image, coverage = forward.render(state, settings, vertices)
            loss = photometric_loss(image, coverage, target, skin)
        else:
            loss = itemwise_photometric(forward, state, settings, vertices, target, skin)
            # the point of it: one scene for the whole batch
            assert [len(v) for v in forward.renderer(settings)._scenes.values()] == [1]
        (2.0 * loss).backward()
        results[name] = (float(loss.detach()), {k: t.grad.clone() for k, t in leaves.items()})
    (batched, batched_grads), (itemwise, itemwise_grads) = results["batched"], results["itemwise"]
    assert itemwise == pytest.approx(batched, rel=1e-5)
    for key, grad in batched_grads.items():
        assert float(grad.abs().max()) > 0, key
        assert torch.allclose(itemwise_grads[key], grad, rtol=1e-3, atol=1e-4 * float(grad.abs().max())), key


def test_itemwise_photometric_without_gradients_is_the_loss(ict, variant):
    """Under no_grad (validation) nothing is differentiated and the value is the batched loss."""
    forward = ForwardModel(ict)
    target = torch.full((BATCH, SIZE, SIZE, 3), 0.3)
    skin = torch.ones(BATCH, SIZE, SIZE)
    settings = RenderSettings(SIZE, spp=1, seed=0)
    with torch.no_grad():
        state = _state(ict, _leaves(ict))
        vertices = forward.vertices(state)
        value = itemwise_photometric(forward, state, settings, vertices, target, skin)
        image, coverage = forward.render(state, settings, vertices)
    assert not value.requires_grad
    assert float(value) == pytest.approx(float(photometric_loss(image, coverage, target, skin)), rel=1e-5)
    # no-gradient renders share one scene whatever the batch
    assert [len(v) for v in forward.renderer(settings)._scenes.values()] == [1]
