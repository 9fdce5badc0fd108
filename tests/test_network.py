"""FaceNet in plain torch: torchvision's parameter names, the zero start, bounded outputs, weights files."""
from __future__ import annotations

import math

import pytest
import torch

from mfface.learning import checkpoint as ckpt
from mfface.learning.network import (MEAN_SKIN, FaceNet, NetworkSpec, ResNetEncoder, load_backbone,
                                     straight_through_clamp)

SMALL = NetworkSpec(latent=32, sh_bands=2, albedo_size=16, crop=64)


@pytest.mark.parametrize("backbone, expected", [
    ("resnet18", {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv2.weight": (64, 64, 3, 3),
                  "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,),
                  "fc.weight": (1000, 512)}),
    ("resnet34", {"layer3.5.conv1.weight": (256, 256, 3, 3), "fc.weight": (1000, 512)}),
    ("resnet50", {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.1.weight": (256,),
                  "layer4.2.bn3.bias": (2048,), "fc.weight": (1000, 2048)}),
])
def test_encoder_has_torchvision_names_and_shapes(backbone, expected):
    state = ResNetEncoder(backbone).state_dict()
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    counts = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
    assert sum(p.numel() for p in ResNetEncoder(backbone).parameters()) == counts[backbone]  # torchvision's


def test_backbone_weights_load_from_a_torchvision_state_dict(tmp_path):
    source = ResNetEncoder("resnet18")       # stands in for torchvision's resnet18(weights=...)
    for tensor in source.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.randn_like(tensor))
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    target = ResNetEncoder("resnet18", latent=64)   # other latent size: fc is left out
    left_out = load_backbone(target, torch.load(path, weights_only=True))
    assert left_out == ["fc.weight", "fc.bias"]
    assert torch.equal(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    with pytest.raises(ValueError, match="not a torchvision resnet50"):
        load_backbone(ResNetEncoder("resnet50"), source.state_dict())


def test_first_prediction_is_the_reference_face(ict):
    net = FaceNet(ict, SMALL).eval()
    prediction = net(torch.rand(2, 3, 64, 64))
    assert torch.equal(prediction.vector, net.reference.expand(2, -1))
    assert torch.allclose(prediction.diffuse, torch.tensor(MEAN_SKIN).expand(2, 16, 16, 3))
    state = net.state(prediction)
    assert torch.equal(state.identity, torch.zeros(2, ict.n_identity))
    assert torch.equal(state.expression, torch.zeros(2, ict.n_expression))
    assert torch.allclose(state.euler, torch.zeros(2, 3), atol=1e-6)
    assert float(state.focal[0].detach()) == pytest.approx(2.5 * 64)
    assert float(state.sh[0, 0, 0].detach()) == pytest.approx(math.sqrt(4 * math.pi))   # ambient radiance 1
    assert state.sh.shape == (2, 4, 3) and state.roughness.shape == (2, 16, 16, 1)


def test_lateral_translation_is_measured_from_the_crop_centre(ict):
    net = FaceNet(ict, SMALL).eval()
    prediction = net(torch.rand(1, 3, 64, 64))
    centred = net.state(prediction, torch.tensor([[32.0, 32.0]]))
    off = net.state(prediction, torch.tensor([[100.0, -20.0]]))
    from mfface.camera import project
    for state in (centred, off):   # the face's centre still projects to the crop centre
        nose = project(state.translation[:, None], state.focal, 64, 64, state.principal)
        assert torch.allclose(nose, torch.tensor([[[32.0, 32.0]]]), atol=1e-3)


def test_blend_weights_stay_in_range_and_gradients_pass(ict):
    x = torch.tensor([-0.5, 0.3, 1.7], requires_grad=True)
    y = straight_through_clamp(x, 0.0, 1.0)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.3, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    net = FaceNet(ict, SMALL)
    with torch.no_grad():
        net.head.bias.fill_(5.0)
    expression = net.state(net(torch.rand(1, 3, 64, 64))).expression
    assert float(expression.min()) >= 0.0 and float(expression.max()) <= 1.0


def test_weights_round_trip_and_refusals(ict, tmp_path):
    import dataclasses

    net = FaceNet(ict, SMALL)
    content = {**ckpt.header(net, ict, ""), "model_state": net.state_dict()}
    ckpt.save(tmp_path / "w.pt", content)
    loaded = ckpt.network_from(ckpt.load(tmp_path / "w.pt"), ict, "w.pt")
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.eval()(x).vector, net.eval()(x).vector)
    other = dataclasses.replace(ict, name="other", mean_shape=ict.mean_shape + 1.0)
    with pytest.raises(ckpt.WeightsError, match="trained for face model 'ict'"):
        ckpt.network_from(ckpt.load(tmp_path / "w.pt"), other, "w.pt")
    (tmp_path / "bad.pt").write_bytes((tmp_path / "w.pt").read_bytes()[:1000])
    with pytest.raises(ckpt.WeightsError, match="damaged or not mfface network weights"):
        ckpt.load(tmp_path / "bad.pt")
    (tmp_path / "text.pt").write_text("not weights\n")   # torch's legacy reader: IndexError
    with pytest.raises(ckpt.WeightsError, match="damaged or not mfface network weights"):
        ckpt.load(tmp_path / "text.pt")
    with pytest.raises(ckpt.WeightsError, match="does not exist"):
        ckpt.load(tmp_path / "missing.pt")
    torch.save({"format": "something"}, tmp_path / "foreign.pt")
    with pytest.raises(ckpt.WeightsError, match="not an mfface network file"):
        ckpt.load(tmp_path / "foreign.pt")
    layout = dict(content["layout"], sh_bands=3)
    ckpt.save(tmp_path / "layout.pt", {**content, "layout": layout})
    with pytest.raises(ckpt.WeightsError, match="another parameter layout"):
        ckpt.network_from(ckpt.load(tmp_path / "layout.pt"), ict, "layout.pt")
    state = {k: (v * float("nan") if k == "head.weight" else v) for k, v in content["model_state"].items()}
    ckpt.save(tmp_path / "nan.pt", {**content, "model_state": state})
    with pytest.raises(ckpt.WeightsError, match="NaN or infinite"):
        ckpt.network_from(ckpt.load(tmp_path / "nan.pt"), ict, "nan.pt")


def test_export_to_torchscript_gives_the_same_outputs(ict, tmp_path):
    import json

    from mfface.learning.export import export_torchscript

    net = FaceNet(ict, SMALL).eval()
    with torch.no_grad():
        net.head.weight.normal_(0.0, 0.01)
        net.diffuse_decoder.out.weight.normal_(0.0, 0.01)
    meta = export_torchscript(net, tmp_path / "net.ts", ict.name)
    scripted = torch.jit.load(str(tmp_path / "net.ts"))
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        vector, diffuse, specular = scripted(x)
        expected = net(x)
    assert torch.allclose(vector, expected.vector, atol=1e-5) and torch.allclose(diffuse, expected.diffuse, atol=1e-5)
    described = json.loads(meta.read_text())
    assert described["layout"]["identity"] == [0, ict.n_identity] and described["model"] == "ict"


def test_a_statistical_albedo_model_gets_coefficients_and_a_correction(ict):
    import dataclasses

    import numpy as np

    from mfface.morphable.model import AlbedoModel
    from mfface.textures import StatisticalAlbedo

    v = ict.n_vertices
    rng = np.random.default_rng(0)
    albedo = AlbedoModel(mean=rng.uniform(0.2, 0.6, (v, 3)).astype(np.float32),
                         basis=rng.normal(0, 1, (4, v, 3)).astype(np.float32), std=np.full(4, 0.05, np.float32))
    basel_like = dataclasses.replace(ict, name="with-albedo", diffuse_albedo=albedo)
    net = FaceNet(basel_like, SMALL).eval()
    assert net.layout.n_albedo == 4
    prediction = net(torch.rand(1, 3, 64, 64))
    baked = StatisticalAlbedo(basel_like, 16).texture(torch.zeros(1, 4))
    assert torch.allclose(prediction.diffuse, baked.clamp(0, 1), atol=1e-6)   # the mean albedo at first
    state = net.state(prediction)
    assert state.albedo.shape == (1, 4)


def test_the_camera_stays_in_a_sane_range_whatever_the_head_outputs(ict):
    net = FaceNet(ict, SMALL).eval()
    reference = net.state(net(torch.rand(1, 3, 64, 64)))
    for value in (-1e4, 1e4):
        with torch.no_grad():
            net.head.bias.fill_(value)
        state = net.state(net(torch.rand(1, 3, 64, 64)))
        depth, ref_depth = float(state.translation[0, 2]), float(reference.translation[0, 2])
        assert 0.5 * ref_depth - 1e-3 <= depth <= 4.0 * ref_depth + 1e-3
        assert 0.25 * float(reference.focal[0]) - 1e-3 <= float(state.focal[0]) <= 4.0 * float(reference.focal[0]) + 1e-3
        assert float(state.translation[0, :2].abs().max()) <= 0.5 * depth + 1e-3
