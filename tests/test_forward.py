"""The forward model against the renderer called directly, and the flat parameter layout."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mfface.camera import head_rotation, project, to_camera
from mfface.forward import ForwardModel, RenderSettings
from mfface.sh import initial_coefficients, sh_to_envmap
from mfface.state import FaceState, ParameterLayout, matrix_to_rotation_6d, rotation_6d_to_matrix

SIZE = 48


def _state(model, batch: int = 2) -> FaceState:
    g = torch.Generator().manual_seed(0)
    sh = initial_coefficients(3, 0.8, batch=batch)
    sh[:, 1:] = 0.2 * torch.randn(batch, 8, 3, generator=g)
    return FaceState(identity=0.5 * torch.randn(1, model.n_identity, generator=g),
                     expression=0.3 * torch.rand(batch, model.n_expression, generator=g),
                     euler=torch.tensor([[0.2, -0.1, 0.05], [-0.3, 0.1, 0.0]])[:batch],
                     translation=torch.tensor([[5.0, -8.0, 600.0], [-4.0, 3.0, 700.0]])[:batch],
                     focal=torch.tensor([120.0, 140.0])[:batch], sh=sh,
                     diffuse=torch.rand(1, 16, 16, 3, generator=g),
                     specular=torch.full((1, 16, 16, 3), 0.04), roughness=torch.full((1, 16, 16, 1), 0.4),
                     principal=torch.tensor([[23.0, 25.0], [24.5, 22.0]])[:batch])


def test_forward_model_matches_the_renderer_called_directly(ict, variant):
    from mfface.scenes.bridge import FaceRenderer

    state = _state(ict)
    settings = RenderSettings(SIZE, spp=4, seed=7, envmap_height=16)
    index = torch.as_tensor(ict.landmarks["mediapipe478"]).clamp_min(0)
    with torch.no_grad():
        out = ForwardModel(ict)(state, settings, index)
        vertices = to_camera(ict.vertices(state.identity.expand(2, -1), state.expression), state.euler,
                             state.translation)
        parts = to_camera(ict.part_vertices(state.identity.expand(2, -1), state.expression), state.euler,
                          state.translation)
        image, coverage = FaceRenderer(ict.triangles, ict.uvs, SIZE, SIZE,
                                       parts=ForwardModel(ict).part_meshes).render(
            vertices, state.diffuse.expand(2, -1, -1, -1), state.specular.expand(2, -1, -1, -1),
            state.roughness.expand(2, -1, -1, -1), sh_to_envmap(state.sh, 16, 32), state.focal,
            spp=4, seed=7, principal=state.principal, parts=parts)
    assert torch.allclose(out.vertices, vertices)
    assert torch.allclose(out.image, image, atol=1e-5) and torch.allclose(out.coverage, coverage, atol=1e-5)
    assert torch.allclose(out.landmarks, project(vertices[:, index], state.focal, SIZE, SIZE, state.principal))
    assert out.image.shape == (2, SIZE, SIZE, 3) and float(out.coverage.mean()) > 0.05


def test_forward_model_keeps_one_scene_per_size_and_integrator(ict, variant):
    forward = ForwardModel(ict, max_scenes=3)
    first = forward.renderer(RenderSettings(32))
    assert forward.renderer(RenderSettings(32, spp=8, seed=3)) is first
    other = forward.renderer(RenderSettings(40))
    assert other is not first
    assert forward.renderer(RenderSettings(32, integrator="prb_projective")) not in (first, other)
    assert forward.renderer(RenderSettings(32)) is first and forward.renderer(RenderSettings(40)) is other


def test_forward_model_frees_the_scenes_it_no_longer_keeps(ict, variant):
    """Live scenes slow each other's renders (module docstring), so only the `max_scenes` most
    recently used stay alive, and a dropped one is freed at once (no garbage collection)."""
    import gc
    import weakref

    gc.disable()
    try:
        forward = ForwardModel(ict)
        first = weakref.ref(forward.renderer(RenderSettings(32)))
        assert forward.renderer(RenderSettings(32, spp=16, seed=2)) is first()
        second = weakref.ref(forward.renderer(RenderSettings(40)))
        assert first() is None and second() is not None
        two = ForwardModel(ict, max_scenes=2)
        a, b = (weakref.ref(two.renderer(RenderSettings(s))) for s in (32, 40))
        assert two.renderer(RenderSettings(32)) is a()  # reused: now the most recent
        two.renderer(RenderSettings(48))
        assert a() is not None and b() is None
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="max_scenes"):
        ForwardModel(ict, max_scenes=0)


def test_a_dropped_forward_model_frees_its_scenes_without_the_garbage_collector(ict, variant):
    """No reference cycle keeps a renderer (and its Mitsuba scenes) alive: it is freed when its
    last reference goes, in that thread, not by a later collection in whatever thread runs it,
    which could free Dr.Jit memory while another thread renders (mfface.cli.progress)."""
    import gc
    import weakref

    forward = ForwardModel(ict)
    settings = RenderSettings(32, spp=1)
    with torch.no_grad():
        forward(_state(ict, 1), settings)
    renderer = weakref.ref(forward.renderer(settings))
    gc.collect()
    gc.disable()
    try:
        del forward
        assert renderer() is None
    finally:
        gc.enable()


def test_forward_model_is_differentiable_in_the_state(ict, variant):
    state = _state(ict, batch=1)
    state.sh.requires_grad_(True)
    state.expression.requires_grad_(True)
    out = ForwardModel(ict)(state, RenderSettings(32, spp=2), torch.tensor([100, 200]))
    (out.image.mean() + out.landmarks.mean()).backward()
    assert state.sh.grad.abs().sum() > 0 and state.expression.grad.abs().sum() > 0


EYE_SIZE = 96


def _frontal(model, expression: torch.Tensor | None = None) -> FaceState:
    """A frontal face centred on its eyes, 400 mm away, under even light with a skin-like albedo."""
    return FaceState(identity=torch.zeros(1, model.n_identity),
                     expression=torch.zeros(1, model.n_expression) if expression is None else expression,
                     euler=torch.zeros(1, 3), translation=torch.tensor([[0.0, 36.0, 400.0]]),
                     focal=torch.tensor([2.5 * EYE_SIZE]), sh=initial_coefficients(3, 0.8, batch=1),
                     diffuse=torch.tensor([0.5, 0.38, 0.3]).expand(1, 8, 8, 3).clone(),
                     specular=torch.full((1, 8, 8, 3), 0.04), roughness=torch.full((1, 8, 8, 1), 0.5))


def _eye_pixels(model, state: FaceState) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """For each eye: (pupil centre, a sclera point) as (row, col) pixels. The pupil centre is the
    mean of the eye part's pupil-edge vertices; the sclera point lies 55 % of the way from it
    to the eye's outer corner landmark (iBUG 36 / 45)."""
    forward = ForwardModel(model)
    parts, face = forward.part_vertices(state), forward.vertices(state)
    slices = model.part_slices()
    out = []
    for name, corner in (("eye_right", 36), ("eye_left", 45)):
        part = model.parts[list(slices).index(name)]
        pupil = parts[:, slices[name]][:, torch.from_numpy(part.material_coord < 0.3)].mean(1, keepdim=True)
        points = torch.cat([pupil, face[:, model.landmarks["ibug68"][corner]][:, None]], 1)
        (pc, pr), (cc, cr) = project(points, state.focal, EYE_SIZE, EYE_SIZE)[0].tolist()
        sc, sr = pc + 0.55 * (cc - pc), pr + 0.55 * (cr - pr)
        out.append(((int(pr), int(pc)), (int(sr), int(sc))))
    return out


def test_eyes_fill_the_eye_openings_and_show_a_dark_iris(ict, variant):
    """No holes where the eyes are: the coverage is 1 at the pupil centres of a frontal face (it
    was about 0 before the model had parts), and the iris/pupil renders darker than the sclera."""
    state = _frontal(ict)
    settings = RenderSettings(EYE_SIZE, spp=16, envmap_height=16)
    out = ForwardModel(ict)(state, settings)
    bare = ForwardModel(dataclasses.replace(ict, parts=[]))(state, settings)
    for (pupil, sclera) in _eye_pixels(ict, state):
        assert float(out.coverage[0][pupil]) == 1.0 and float(out.coverage[0][sclera]) == 1.0
        assert float(bare.coverage[0][pupil]) < 0.5   # the hole a face-only model leaves
        dark, light = out.image[0][pupil].mean(), out.image[0][sclera].mean()
        assert float(dark) < 0.5 * float(light)
        assert float(light) > 0.6 * float(out.image[0][pupil[0] + 12, pupil[1]].mean())  # ~ skin below


def test_part_vertices_follow_the_state_and_carry_no_gradient(ict):
    """The forward model poses the parts with the face's rotation and translation (rigidly with
    it) and hands them on detached."""
    state = _state(ict)
    state.expression.requires_grad_(True)
    forward = ForwardModel(ict)
    parts = forward.part_vertices(state)
    assert parts.shape == (2, ict.n_part_vertices, 3) and not parts.requires_grad
    model_space = ict.part_vertices(state.identity.expand(2, -1), state.expression.detach())
    torch.testing.assert_close(parts, to_camera(model_space, state.euler, state.translation))
    # one rigid motion for face and parts: distances between a face and a part vertex are kept
    face = forward.vertices(state).detach()
    unposed = ict.vertices(state.identity.expand(2, -1), state.expression.detach())
    for b in range(2):
        d_posed = torch.cdist(face[b, :50], parts[b, :50])
        d_model = torch.cdist(unposed[b, :50], model_space[b, :50])
        torch.testing.assert_close(d_posed, d_model, atol=1e-3, rtol=0)
    assert ForwardModel(dataclasses.replace(ict, parts=[])).part_vertices(state) is None


def test_rotation_6d_round_trip():
    euler = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    rotation = head_rotation(euler)
    assert torch.allclose(rotation_6d_to_matrix(matrix_to_rotation_6d(rotation)), rotation)
    assert torch.equal(matrix_to_rotation_6d(rotation[1:]), torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64))
    # Any 6 numbers give a rotation (Gram-Schmidt), so a network's raw output is always valid.
    r = rotation_6d_to_matrix(torch.tensor([[2.0, 0.5, -1.0, 0.3, 3.0, 0.2]]))
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3)[None], atol=1e-6)
    assert float(torch.linalg.det(r)) == pytest.approx(1.0, abs=1e-6)


def test_parameter_layout_round_trip(ict):
    state = _state(ict)
    layout = ParameterLayout.for_model(ict, sh_bands=3)
    sizes = layout.sizes()
    assert layout.size == ict.n_identity + ict.n_expression + 6 + 3 + 1 + 27
    assert list(sizes) == ["identity", "expression", "rotation", "translation", "log_focal", "sh", "albedo"]
    vector = layout.to_vector(state)
    assert vector.shape == (2, layout.size)
    assert torch.allclose(vector[:, layout.slices()["log_focal"]][:, 0], state.focal.log())
    back = layout.to_state(vector, state.diffuse, state.specular, state.roughness, state.principal)
    for name in ("expression", "euler", "translation", "focal", "sh"):
        assert torch.allclose(getattr(back, name), getattr(state, name), atol=1e-5), name
    assert torch.allclose(back.identity, state.identity.expand(2, -1))
    assert back.albedo is None and back.diffuse is state.diffuse


def test_parameter_layout_is_differentiable_and_checks_shapes(ict):
    layout = ParameterLayout.for_model(ict, sh_bands=2)
    frontal = torch.zeros(1, layout.size)
    frontal[0, layout.slices()["rotation"]] = torch.tensor([1.0, 0, 0, 0, 1, 0])
    frontal[0, layout.slices()["translation"]] = torch.tensor([0.0, 0.0, 600.0])
    frontal[0, layout.slices()["log_focal"]] = math.log(500.0)
    frontal.requires_grad_(True)
    maps = (torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 1))
    state = layout.to_state(frontal, *maps)
    assert torch.allclose(state.euler, torch.zeros(1, 3), atol=1e-6)
    assert float(state.focal.detach()) == pytest.approx(500.0)
    (state.euler.sum() + state.focal.sum()).backward()
    assert frontal.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="vector must be"):
        layout.to_state(torch.zeros(1, layout.size + 1), *maps)
    with pytest.raises(ValueError, match="sh has 27 values; the layout expects 12"):
        layout.to_vector(dataclasses.replace(_state(ict, 1)))
