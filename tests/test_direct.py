"""`direct_prb` (the loop-free `prb` for direct light) against Mitsuba's `prb`: the same image and
the same gradients, which is what lets it render every `prb` scene of max_depth 2."""
from __future__ import annotations

import pytest
import torch

from mfface.scenes import face_scene as fs
from mfface.scenes.bridge import FaceRenderer
from mfface.scenes.direct import PLUGIN_NAME

SIZE = 48


@pytest.fixture(scope="module")
def lite(variant):
    from mfface.morphable.store import ModelStore

    return ModelStore().load("ict-lite")


def _inputs(model) -> dict[str, torch.Tensor]:
    """A face turned to one side under a light with colour and direction, and varied maps."""
    from mfface.forward import ForwardModel
    from mfface.sh import initial_coefficients
    from mfface.state import FaceState

    g = torch.Generator().manual_seed(4)
    sh = initial_coefficients(3, 0.8, batch=1)
    sh[:, 1:] = 0.25 * torch.randn(1, 8, 3, generator=g)
    state = FaceState(identity=torch.zeros(1, model.n_identity), expression=torch.zeros(1, model.n_expression),
                      euler=torch.tensor([[0.1, 0.4, 0.0]]), translation=torch.tensor([[0.0, 0.0, 450.0]]),
                      focal=torch.tensor([80.0]), sh=sh, diffuse=torch.rand(1, 16, 16, 3, generator=g),
                      specular=torch.full((1, 16, 16, 3), 0.05), roughness=torch.full((1, 16, 16, 1), 0.3))
    forward = ForwardModel(model)
    return {"vertices": forward.vertices(state)[0], "diffuse": state.diffuse[0], "specular": state.specular[0],
            "roughness": state.roughness[0], "envmap": forward.envmap(state.sh, 16)[0],
            "parts": forward.part_vertices(state)[0]}


def _render_and_grads(model, plugin: str, hide_emitters: bool, monkeypatch: pytest.MonkeyPatch):
    """The image and the gradients of sum(w * image) for a fixed weight w, rendered by `plugin`."""
    monkeypatch.setattr(fs, "integrator_plugin", lambda spec: plugin)
    renderer = FaceRenderer(model.triangles, model.uvs, SIZE, SIZE, hide_emitters=hide_emitters,
                            parts=tuple(_part_meshes(model)))
    leaves = {k: t.detach().clone().requires_grad_(k != "parts") for k, t in _inputs(model).items()}
    image, mask = renderer.render(leaves["vertices"], leaves["diffuse"], leaves["specular"], leaves["roughness"],
                                  leaves["envmap"], 80.0, spp=2, seed=7, parts=leaves["parts"])
    weight = torch.linspace(0.0, 1.0, image.numel()).reshape(image.shape)
    (weight * image).sum().backward()
    return image.detach(), mask, {k: t.grad for k, t in leaves.items() if k != "parts"}


def _part_meshes(model):
    from mfface.forward import ForwardModel

    return ForwardModel(model).part_meshes


@pytest.mark.parametrize("hide_emitters", [True, False])
def test_direct_prb_renders_and_differentiates_like_prb(lite, monkeypatch, hide_emitters: bool) -> None:
    ours, our_mask, our_grads = _render_and_grads(lite, PLUGIN_NAME, hide_emitters, monkeypatch)
    theirs, their_mask, their_grads = _render_and_grads(lite, "prb", hide_emitters, monkeypatch)
    assert float(ours.mean()) > 0.02
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert torch.equal(our_mask, their_mask)
    if not hide_emitters:   # the environment fills the background
        assert float(ours[0][our_mask[0] == 0].mean()) > 0.05
    for name, grad in their_grads.items():
        scale = float(grad.abs().max())
        assert scale > 0, name
        assert torch.allclose(our_grads[name], grad, rtol=1e-3, atol=1e-4 * scale), name


def test_prb_of_direct_light_is_rendered_by_direct_prb() -> None:
    assert fs.integrator_plugin(fs.SceneSpec(64, 64, (8, 8), (8, 8))) == PLUGIN_NAME
    assert fs.integrator_plugin(fs.SceneSpec(64, 64, (8, 8), (8, 8), max_depth=3)) == "prb"
    assert fs.integrator_plugin(fs.SceneSpec(64, 64, (8, 8), (8, 8), integrator="prb_projective")) == \
        "mfface_prb_projective"


def test_direct_prb_refuses_indirect_light(variant) -> None:
    import mitsuba as mi

    from mfface.scenes import direct

    direct.register()
    with pytest.raises(Exception, match="max_depth must be 2"):
        mi.load_dict({"type": PLUGIN_NAME, "max_depth": 3})
