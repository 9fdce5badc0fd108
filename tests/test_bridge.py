"""The torch bridge: gradients against central finite differences, no recompiles, batches, bad inputs.

Finite differences use the same seed on both sides so that most Monte Carlo noise cancels; the
loss is a fixed random weighting of the image so that every pixel's gradient matters. Both sides
are averaged over a few seeds (the backward pass draws its own samples), for each sampler.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import trimesh

SIZE = 32


def _sphere(radius: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Icosphere with planar UVs seen from the camera (texture upright in the image)."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    v = np.asarray(mesh.vertices, np.float32)
    uv = np.stack([0.5 + v[:, 0] / (2.2 * radius), 0.5 - v[:, 1] / (2.2 * radius)], 1)
    return v + np.array([0.0, 0.0, 150.0], np.float32), np.asarray(mesh.faces, np.int32), uv.astype(np.float32)


@pytest.fixture(scope="module")
def setup(variant: str):
    from mfface.scenes import FaceRenderer

    v, f, uv = _sphere()
    renderer = FaceRenderer(f, uv, SIZE, SIZE)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "vertices": torch.from_numpy(v),
        "diffuse": 0.3 + 0.4 * torch.rand(8, 8, 3, generator=g),
        "specular": 0.1 + 0.2 * torch.rand(8, 8, 3, generator=g),
        "roughness": 0.3 + 0.3 * torch.rand(8, 8, 1, generator=g),
        "envmap": 0.5 + torch.rand(8, 16, 3, generator=g),
    }
    weights = torch.rand(1, SIZE, SIZE, 3, generator=g)
    return renderer, inputs, weights


def _loss(renderer, inputs: dict, weights: torch.Tensor, spp: int, seed: int = 7) -> torch.Tensor:
    img, _ = renderer.render(focal=70.0, spp=spp, seed=seed, **inputs)
    return (img.double() * weights.double()).sum()


# (input, index of the perturbed element, finite-difference step, relative tolerance)
FD_CASES = [
    ("diffuse", (3, 4, 1), 0.05, 0.02),      # linear in kd at a fixed seed (lobe choice kept)
    ("specular", (3, 3, 0), 0.05, 0.10),     # lobe probability moves with ks: some samples switch
    ("roughness", (4, 4, 0), 0.05, 0.10),    # GGX sample directions move with alpha
    ("envmap", (3, 8, 2), 0.3, 0.10),        # the envmap's sampling warp moves with its texels
]


@pytest.mark.parametrize("sampler", ["ldsampler", "independent"])
@pytest.mark.parametrize("name,index,eps,rtol", FD_CASES)
def test_gradient_matches_central_differences(setup, sampler, name, index, eps, rtol) -> None:
    from mfface.scenes import FaceRenderer

    default, inputs, weights = setup
    renderer = FaceRenderer(default.triangles, default.uvs, SIZE, SIZE, sampler=sampler)
    spp, seeds = 64, range(4)
    analytic = numeric = 0.0
    for seed in seeds:
        x = inputs[name].clone().requires_grad_(True)
        _loss(renderer, {**inputs, name: x}, weights, spp, seed).backward()
        analytic += float(x.grad[index]) / len(seeds)

        def at(delta: float) -> float:
            y = inputs[name].clone()
            y[index] += delta
            with torch.no_grad():
                return float(_loss(renderer, {**inputs, name: y}, weights, spp, seed))
        numeric += (at(eps) - at(-eps)) / (2 * eps) / len(seeds)
    assert abs(numeric) > 1e-3, "the perturbed element must be visible"
    assert analytic == pytest.approx(numeric, rel=rtol)


def _interior(renderer, inputs: dict) -> torch.Tensor:
    """(1, S, S) 1 where a pixel is at least 2 px inside the silhouette (prb has no edge term)."""
    _, mask = renderer.render(focal=70.0, spp=4, **inputs)
    return 1.0 - torch.nn.functional.max_pool2d((mask < 1).float()[None], 5, stride=1, padding=2)[0]


def _translation_gradient(renderer, inputs: dict, weights: torch.Tensor,
                          shift: torch.Tensor) -> tuple[float, float]:
    """d loss / d(every vertex moved along `shift`'s axis): (prb's, central differences'), 64 spp."""
    axis = int(shift.nonzero()[0, 0])
    x = inputs["vertices"].clone().requires_grad_(True)
    _loss(renderer, {**inputs, "vertices": x}, weights, 64).backward()
    with torch.no_grad():
        plus = float(_loss(renderer, {**inputs, "vertices": inputs["vertices"] + shift}, weights, 64))
        minus = float(_loss(renderer, {**inputs, "vertices": inputs["vertices"] - shift}, weights, 64))
    return float(x.grad[:, axis].sum()), (plus - minus) / (2 * float(shift[axis]))


def test_vertex_gradient_matches_central_differences_inside_the_silhouette(setup) -> None:
    """prb gives shading gradients only, so the loss looks at pixels at least 2 px inside the
    silhouette; the perturbation moves every vertex 0.5 mm along z (one vertex alone changes the
    loss by less than the estimators' noise). Measured agreement: 3 % at 64 spp."""
    renderer, inputs, weights = setup
    inside = _interior(renderer, inputs)
    assert inside.sum() > 300
    weights = weights * inside[..., None]
    analytic, numeric = _translation_gradient(renderer, inputs, weights, torch.tensor([0.0, 0.0, 0.5]))
    assert abs(numeric) > 0.05
    assert analytic == pytest.approx(numeric, rel=0.10)


def test_lateral_vertex_gradient_moves_the_texture(variant: str) -> None:
    """Under constant light a Lambert sphere shows only its texture; with kd a linear ramp in u
    (slope b), moving the mesh by dx along x changes u by about -dx / (2.2 r) at each interior
    pixel, so d loss / dx ~ -b / (2.2 r) * (number of interior pixels, per channel). The prb
    gradient agrees with central differences within 5 % (measured 1-3 %) and with that estimate
    within 10 %."""
    from mfface.scenes import FaceRenderer

    v, f, uv = _sphere()
    renderer = FaceRenderer(f, uv, SIZE, SIZE, fresnel="none")
    ramp = torch.linspace(0.2, 0.8, 16)
    inputs = {"vertices": torch.from_numpy(v), "diffuse": ramp[None, :, None].expand(16, 16, 3).contiguous(),
              "specular": torch.zeros(16, 16, 3), "roughness": torch.full((16, 16, 1), 0.5),
              "envmap": torch.ones(8, 16, 3)}
    weights = _interior(renderer, inputs)[..., None].expand(1, SIZE, SIZE, 3).contiguous()
    analytic, numeric = _translation_gradient(renderer, inputs, weights, torch.tensor([0.25, 0.0, 0.0]))
    assert analytic == pytest.approx(numeric, rel=0.05)
    slope = 0.6 * 16 / 15   # kd change per unit u: texel centres span 15/16 of u
    assert analytic == pytest.approx(-slope / (2.2 * 30.0) * float(weights.sum()), rel=0.10)


@pytest.mark.parametrize("integrator", ["prb", pytest.param("prb_projective", marks=pytest.mark.slow),
                                        pytest.param("direct_projective", marks=pytest.mark.slow)])
def test_silhouette_gradient_only_with_a_projective_integrator(variant: str, integrator: str) -> None:
    """A Lambert sphere under constant light has radiance kd L on every covered pixel, so the
    image sum is kd L * (covered area) = kd L pi (f r / z)^2 and d sum / dz = -2 sum / z: all of it
    comes from the silhouette. prb has no silhouette term (~0); the projective integrators
    (direct light only, so without indirect-silhouette samples) recover it."""
    from mfface.scenes import FaceRenderer

    v, f, uv = _sphere()
    renderer = FaceRenderer(f, uv, SIZE, SIZE, integrator=integrator, fresnel="none")
    x = torch.from_numpy(v).requires_grad_(True)
    img, _ = renderer.render(x, torch.full((4, 4, 3), 0.5), torch.zeros(4, 4, 3), torch.full((4, 4, 1), 0.5),
                             torch.ones(8, 16, 3), focal=70.0, spp=16, seed=1)
    total = img.double().sum()
    total.backward()
    dz = float(x.grad[:, 2].sum())
    expected = -2.0 * float(total.detach()) / 150.0
    if integrator == "prb":
        assert abs(dz) < 0.1 * abs(expected)
    else:
        assert dz == pytest.approx(expected, rel=0.15)


def test_projective_silhouette_pass_takes_its_own_sample_count(variant: str) -> None:
    """The projective integrators draw SILHOUETTE_SPP silhouette samples per pixel whatever the
    render call's count, exactly (ldsampler would round 1 up to 4: an independent sampler draws
    them), while the continuous part keeps the call's count and the sensor's sampler."""
    from mfface.scenes import face_scene as fs
    from mfface.scenes.projective import SILHOUETTE_SPP

    v, f, uv = _sphere()
    scene = fs.build_scene(f, uv, fs.SceneSpec(SIZE, SIZE, (4, 4), (8, 8), integrator="direct_projective"))
    integrator, sensor = scene.integrator(), scene.sensors()[0]
    assert integrator.override_spp(integrator.sppp, 16, 4) == SILHOUETTE_SPP == 1
    assert integrator.override_spp(integrator.sppc, 16, 4) == 16
    assert integrator.override_spp(integrator.sppi, 16, 4) == 0    # direct light: no indirect pass
    silhouette, count = integrator.prepare(sensor, 7, SILHOUETTE_SPP)
    pixels = (SIZE + 2 * sensor.film().rfilter().border_size()) ** 2   # the film samples its border
    assert count == 1 and silhouette.wavefront_size() == pixels
    assert silhouette.class_name() == "IndependentSampler"
    continuous, count = integrator.prepare(sensor, 7, 16)
    assert count == 16 and continuous.wavefront_size() == 16 * pixels
    assert continuous.class_name() == sensor.sampler().class_name() == "LowDiscrepancySampler"


def _parts(radius: float = 6.0) -> tuple[list, torch.Tensor]:
    """Two small spheres as parts ('eyeball' with its material coordinate growing from the front,
    'teeth'), and their vertices (P, 3) in front of the big sphere's centre, camera space."""
    from mfface.scenes.parts import PartMesh

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    v = np.asarray(mesh.vertices, np.float32)
    coord = (np.hypot(v[:, 0], v[:, 1]) / (0.4 * radius)).astype(np.float32)
    coord[v[:, 2] > 0] = 3.0  # only the side facing the camera (-z) shows the iris
    faces = np.asarray(mesh.faces, np.int32)
    parts = [PartMesh("eye", "eyeball", faces, coord), PartMesh("tooth", "teeth", faces, np.zeros(len(v), np.float32))]
    offset = [np.array([-8.0, 0.0, 110.0], np.float32), np.array([8.0, 6.0, 110.0], np.float32)]
    return parts, torch.from_numpy(np.concatenate([v + o for o in offset]))


@pytest.mark.parametrize("with_parts", [False, True])
def test_no_kernel_is_compiled_after_two_iterations(setup, with_parts) -> None:
    """Changing seed, focal, principal point, every differentiable input and (with parts) the
    parts' vertices compiles no kernel after the first iterations."""
    import drjit as dr

    from mfface.scenes import FaceRenderer

    renderer, inputs, weights = setup
    parts, part_vertices = _parts()
    if with_parts:
        renderer = FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE, parts=tuple(parts))
    params = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    dr.set_flag(dr.JitFlag.KernelHistory, True)
    try:
        for it in range(5):
            dr.kernel_history()   # clears the history
            opt.zero_grad()
            moved = part_vertices + torch.tensor([0.3 * it, -0.2 * it, 0.0]) if with_parts else None
            img, _ = renderer.render(focal=60.0 + 3 * it, spp=2, seed=it, **params,
                                     principal=torch.tensor([SIZE / 2 + it, SIZE / 2 - 0.5 * it]),
                                     parts=moved)
            (img * weights).sum().backward()
            opt.step()
            history = [k for k in dr.kernel_history() if k["type"] == dr.KernelType.JIT]
            assert history, "the render must launch kernels"
            if it >= 2:
                compiled = [k["hash"] for k in history if not k["cache_hit"]]
                assert compiled == [], f"iteration {it} compiled {len(compiled)} kernels"
    finally:
        dr.set_flag(dr.JitFlag.KernelHistory, False)


@pytest.mark.parametrize("principal", [None, (10.0, 20.0), (25.5, 12.0)])
def test_sphere_lands_where_the_camera_projects_its_centre(setup, principal) -> None:
    """A sphere's silhouette is symmetric about its projected centre to first order (it subtends
    a small angle here), so the coverage centroid must match mfface.camera.project, principal
    point included."""
    from mfface.camera import project

    renderer, inputs, _ = setup
    radius, centre = 30.0, torch.tensor([[[8.0, -5.0, 400.0]]])
    offset = torch.from_numpy(_sphere(radius)[0]) - torch.tensor([0.0, 0.0, 150.0])
    pp = None if principal is None else torch.tensor(principal)
    _, coverage = renderer.render(**{**inputs, "vertices": offset + centre[0]}, focal=70.0, spp=16,
                                  principal=pp)
    rows, cols = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    w = coverage[0].double()
    found = torch.stack([(w * cols).sum() / w.sum(), (w * rows).sum() / w.sum()])
    expected = project(centre.double(), torch.tensor([70.0], dtype=torch.float64), SIZE, SIZE,
                       None if pp is None else pp[None].double())[0, 0]
    torch.testing.assert_close(found, expected, atol=0.05, rtol=0)


def test_batch_of_two_equals_two_single_renders(setup) -> None:
    renderer, inputs, _ = setup
    second = {k: v.flip(0) if k != "vertices" else v + torch.tensor([5.0, 0.0, 10.0])
              for k, v in inputs.items()}
    batch = {k: torch.stack([inputs[k], second[k]]) for k in inputs}
    img, mask = renderer.render(focal=torch.tensor([70.0, 90.0]), spp=4, seed=11, **batch)
    a, ma = renderer.render(focal=70.0, spp=4, seed=11, **inputs)
    b, mb = renderer.render(focal=90.0, spp=4, seed=12, **second)
    assert img.shape == (2, SIZE, SIZE, 3) and mask.shape == (2, SIZE, SIZE)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(img, torch.cat([a, b]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask, torch.cat([ma, mb]))
    assert not mask.requires_grad


def test_a_second_backward_through_one_render_is_refused(setup) -> None:
    """Mitsuba's backward consumes the render: a second one (retain_graph) used to return the first
    one's gradients for a different loss; it raises. A new render differentiates again."""
    renderer, inputs, weights = setup
    diffuse = inputs["diffuse"].clone().requires_grad_(True)
    img, _ = renderer.render(focal=70.0, spp=2, seed=3, **{**inputs, "diffuse": diffuse})
    first, = torch.autograd.grad((img * weights).sum(), diffuse, retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated once"):
        torch.autograd.grad((img * (1 - weights)).sum(), diffuse)
    img, _ = renderer.render(focal=70.0, spp=2, seed=3, **{**inputs, "diffuse": diffuse})
    other, = torch.autograd.grad((img * (1 - weights)).sum(), diffuse)
    assert not torch.allclose(first, other, rtol=0.05)


def test_texture_and_envmap_sizes_may_change_between_calls(setup) -> None:
    renderer, inputs, _ = setup
    bigger = {**inputs,
              "diffuse": torch.nn.functional.interpolate(
                  inputs["diffuse"].permute(2, 0, 1)[None], size=(16, 16), mode="nearest")[0].permute(1, 2, 0),
              "specular": torch.zeros(16, 16, 3), "roughness": torch.full((16, 16, 1), 0.5),
              "envmap": torch.ones(4, 8, 3)}
    img, _ = renderer.render(focal=70.0, spp=2, **bigger)
    assert img.shape == (1, SIZE, SIZE, 3) and float(img.max()) > 0


def test_parts_are_rendered_with_their_materials_and_covered(setup) -> None:
    """Parts are opaque meshes in the same scene: they cover pixels beyond the face, hide what is
    behind them, and show their material (an eyeball's dark pupil where its coordinate is small,
    light sclera beyond; off-white teeth)."""
    from mfface.camera import project
    from mfface.scenes import FaceRenderer

    renderer, inputs, _ = setup
    parts, part_vertices = _parts(radius=8.0)
    with_parts = FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE, parts=tuple(parts))
    far = {**inputs, "vertices": inputs["vertices"] + torch.tensor([0.0, 0.0, 1e4])}  # face out of view
    img, mask = with_parts.render(focal=70.0, spp=16, **far, parts=part_vertices)
    (eye_centre, tooth_centre), rim = project(torch.tensor([[[-8.0, 0.0, 102.0], [8.0, 6.0, 102.0]]]),
                                              torch.tensor([70.0]), SIZE, SIZE)[0], 5.0
    assert float(mask.sum()) > 40 and float(mask.max()) == 1.0
    (ex, ey), (tx, ty) = eye_centre.long().tolist(), tooth_centre.long().tolist()
    assert float(mask[0, ey, ex]) == 1.0 and float(mask[0, ty, tx]) == 1.0
    pupil = float(img[0, ey, ex].mean())
    sclera = float(img[0, ey, ex + int(rim)].mean())
    tooth = img[0, ty, tx]
    assert pupil < 0.2 * sclera and float(tooth.mean()) > 0.3 and float(tooth[0]) > float(tooth[2])
    # without parts the same pixels are empty; with parts the face still renders where they are not
    _, empty = renderer.render(focal=70.0, spp=4, **far)
    assert float(empty.sum()) == 0.0
    _, mask_both = with_parts.render(focal=70.0, spp=4, **inputs, parts=part_vertices)
    _, mask_face = renderer.render(focal=70.0, spp=4, **inputs)
    assert torch.all(mask_both >= mask_face - 1e-6)


def _geometry_writes(renderer, monkeypatch) -> list[bool]:
    """Record, per item rendered, whether the bridge wrote the geometry into its scene."""
    writes: list[bool] = []
    wrapped = renderer._wrapped

    def spy(self, slot, write_geometry, *args):
        writes.append(write_geometry)
        return wrapped(self, slot, write_geometry, *args)
    monkeypatch.setattr(renderer, "_wrapped", spy)
    return writes


def test_unchanged_geometry_is_not_written_again(setup, monkeypatch) -> None:
    """Equal vertices and parts without gradients leave the scene's meshes alone (no acceleration
    rebuild); new values, or vertices that need gradients, are written; every image equals that of
    a fresh renderer given the same inputs."""
    from mfface.scenes import FaceRenderer

    renderer, inputs, _ = setup
    parts, part_vertices = _parts()
    cached = FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE, parts=tuple(parts))
    writes = _geometry_writes(cached, monkeypatch)
    moved = inputs["vertices"] + torch.tensor([2.0, 0.0, 0.0])
    sequence = [(inputs["vertices"], part_vertices), (inputs["vertices"].clone(), part_vertices.clone()),
                (moved, part_vertices), (moved, part_vertices + 1.0),
                (moved.clone().requires_grad_(True), part_vertices + 1.0), (moved, part_vertices + 1.0)]
    for vertices, part_item in sequence:
        diffuse = inputs["diffuse"].clone().requires_grad_(True)   # stage 3: maps differentiable
        img, mask = cached.render(focal=70.0, spp=4, seed=5, **{**inputs, "vertices": vertices,
                                                               "diffuse": diffuse}, parts=part_item)
        fresh = FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE, parts=tuple(parts))
        expected, expected_mask = fresh.render(focal=70.0, spp=4, seed=5, **{**inputs, "vertices": vertices.detach()},
                                               parts=part_item)
        # (differentiable maps compile other kernels: float rounding differs by ~1e-5)
        torch.testing.assert_close(img.detach(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mask, expected_mask)
    assert writes == [True, False, True, True, True, True]


def test_a_held_geometry_does_not_follow_the_caller_s_tensor(setup, monkeypatch) -> None:
    """Dr.Jit shares the memory of the tensors it is given: a geometry kept between renders is the
    bridge's own copy, so changing the caller's tensor in place does not move the face."""
    renderer, inputs, _ = setup
    vertices = inputs["vertices"].clone()
    before, _ = renderer.render(focal=70.0, spp=4, seed=5, **{**inputs, "vertices": vertices})
    original = vertices.clone()
    vertices += torch.tensor([6.0, 0.0, 0.0])      # in place, after the scene was written
    again, _ = renderer.render(focal=70.0, spp=4, seed=5, **{**inputs, "vertices": original})
    torch.testing.assert_close(again, before, rtol=1e-5, atol=1e-6)
    moved, _ = renderer.render(focal=70.0, spp=4, seed=5, **{**inputs, "vertices": vertices})
    assert not torch.allclose(moved, before, atol=1e-3)


def test_parts_must_be_given_with_the_renderer_s_shape(setup) -> None:
    from mfface.scenes import FaceRenderer

    renderer, inputs, _ = setup
    parts, part_vertices = _parts()
    with_parts = FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE, parts=tuple(parts))
    with pytest.raises(ValueError, match="shows 2 parts \\(eye, tooth\\); pass their vertices"):
        with_parts.render(focal=70.0, spp=1, **inputs)
    with pytest.raises(ValueError, match="parts must have shape"):
        with_parts.render(focal=70.0, spp=1, **inputs, parts=part_vertices[:-1])
    with pytest.raises(ValueError, match="has no parts"):
        renderer.render(focal=70.0, spp=1, **inputs, parts=part_vertices)
    with pytest.raises(ValueError, match="material 'glass'"):
        FaceRenderer(renderer.triangles, renderer.uvs, SIZE, SIZE,
                     parts=(dataclasses.replace(parts[0], material="glass"),))


@pytest.mark.parametrize("change,match", [
    ({"vertices": torch.zeros(10, 3)}, "vertices must have shape"),
    ({"roughness": torch.zeros(8, 8, 3)}, "roughness must have shape"),
    ({"envmap": torch.zeros(8, 16, 4)}, "envmap must have 3 channels"),
    ({"diffuse": torch.zeros(3, 8, 8, 3)}, "batch size 3"),
    ({"principal": torch.zeros(3, 2)}, "principal must be"),
])
def test_bad_inputs_are_refused_with_a_clear_message(setup, change, match) -> None:
    renderer, inputs, _ = setup
    with pytest.raises(ValueError, match=match):
        renderer.render(focal=70.0, spp=1, **{**inputs, **change})


def test_bad_settings_are_refused(variant: str) -> None:
    from mfface.scenes import FaceRenderer

    v, f, uv = _sphere()
    with pytest.raises(ValueError, match="Unknown integrator"):
        FaceRenderer(f, uv, 8, 8, integrator="volpath_magic")
    with pytest.raises(ValueError, match="triangles index vertices"):
        FaceRenderer(f + len(v), uv, 8, 8).render(
            torch.from_numpy(v), torch.ones(2, 2, 3), torch.ones(2, 2, 3), torch.ones(2, 2, 1),
            torch.ones(2, 4, 3), focal=10.0, spp=1)
