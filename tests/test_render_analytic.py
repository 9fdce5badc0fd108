"""Renders with known answers: Lambert under constant light, the camera, UV and light conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh


def sphere(radius: float, subdivisions: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Icosphere (V, 3) mm, triangles (F, 3), and planar UVs seen from -z: u = 0.5 + x / 2.2r and
    v = 0.5 - y / 2.2r, so that with the lead's camera (+y down) the texture appears upright."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    v = np.asarray(mesh.vertices, np.float32)
    uv = np.stack([0.5 + v[:, 0] / (2.2 * radius), 0.5 - v[:, 1] / (2.2 * radius)], 1)
    return v, np.asarray(mesh.faces, np.int32), uv.astype(np.float32)


def textures(kd: float, ks: float, rough: float, size: int = 4) -> tuple[torch.Tensor, ...]:
    return (torch.full((size, size, 3), kd), torch.full((size, size, 3), ks),
            torch.full((size, size, 1), rough))


def test_lambert_sphere_under_constant_light_is_albedo_times_radiance(variant: str) -> None:
    from mfface.scenes import FaceRenderer

    v, f, uv = sphere(30.0)
    renderer = FaceRenderer(f, uv, 64, 64, fresnel="none")   # ks = 0 and no Fresnel: pure Lambert
    albedo = torch.tensor([0.2, 0.5, 0.8])
    kd = albedo.expand(4, 4, 3).clone()
    _, ks, rough = textures(0.0, 0.0, 0.5)
    radiance = 1.5
    env = torch.full((16, 32, 3), radiance)
    verts = torch.from_numpy(v + np.array([0.0, 0.0, 150.0], np.float32))
    img, mask = renderer.render(verts, kd, ks, rough, env, focal=100.0, spp=256, seed=3)
    img, mask = img[0], mask[0]
    expected = albedo * radiance
    full, partial = mask == 1, (mask > 0) & (mask < 1)
    assert full.sum() > 1000                         # the sphere spans ~40 px across
    assert float(img[mask == 0].abs().max()) == 0.0  # hidden envmap: black background
    # Every fully covered pixel within 8 % (about 5 sigma of the MIS estimate's noise at 256 spp,
    # measured 1.6 %), their mean within 0.3 %; partially covered (silhouette) pixels are
    # coverage * albedo * L, checked in sum because each has only a fraction of the samples.
    rel = (img[full] - expected).abs() / expected
    assert float(rel.max()) < 0.08
    assert float(((img[full].mean(0) - expected).abs() / expected).max()) < 0.003
    silhouette = img[partial].sum(0) / (mask[partial].sum() * expected)
    assert torch.allclose(silhouette, torch.ones(3), atol=0.03)


def test_sphere_lands_where_the_opencv_projection_says(variant: str) -> None:
    from mfface.scenes import FaceRenderer

    v, f, uv = sphere(4.0, subdivisions=3)
    width, height, focal = 64, 48, 80.0
    renderer = FaceRenderer(f, uv, width, height)
    center = np.array([25.0, -12.0, 200.0], np.float32)
    kd, ks, rough = textures(0.5, 0.0, 0.5)
    img, mask = renderer.render(torch.from_numpy(v + center), kd, ks, rough,
                                torch.ones(8, 16, 3), focal=focal, spp=4)
    m = mask[0].numpy().astype(np.float64)
    rows, cols = np.mgrid[0:height, 0:width]
    u = float((m * (cols + 0.5)).sum() / m.sum())
    w = float((m * (rows + 0.5)).sum() / m.sum())
    u_expected = focal * center[0] / center[2] + width / 2   # 42.0
    v_expected = focal * center[1] / center[2] + height / 2  # 19.2
    assert abs(u - u_expected) < 0.2 and abs(w - v_expected) < 0.2
    # coverage area = pi (f r / z)^2 pixels, up to the icosphere's slightly smaller outline
    assert m.sum() == pytest.approx(np.pi * (focal * 4.0 / 200.0) ** 2, rel=0.06)


def test_texture_rows_and_light_frame_follow_the_conventions(variant: str) -> None:
    from mfface.scenes import FaceRenderer

    v, f, uv = sphere(30.0, subdivisions=3)
    renderer = FaceRenderer(f, uv, 32, 32)
    verts = torch.from_numpy(v + np.array([0.0, 0.0, 150.0], np.float32))
    _, ks, rough = textures(0.0, 0.0, 0.5, size=8)
    # Texture row 0 is the image top; UV v = 0 is the texture bottom (the sphere's image bottom).
    kd = torch.zeros(8, 8, 3)
    kd[:4, :, 0] = 1.0   # top half red
    kd[4:, :, 1] = 1.0   # bottom half green
    img, mask = renderer.render(verts, kd, ks, rough, torch.ones(8, 16, 3), focal=60.0, spp=4)
    top, bottom = img[0, :16], img[0, 16:]
    assert float(top[..., 0].sum()) > 10 * float(top[..., 1].sum())
    assert float(bottom[..., 1].sum()) > 10 * float(bottom[..., 0].sum())
    # Light frame +y is image-up: an envmap bright only in its upper hemisphere (rows of
    # theta < 90 deg) lights the sphere's upper half; +z points at the camera.
    grey = torch.full((8, 8, 3), 0.5)
    sky = torch.zeros(8, 16, 3)
    sky[:4] = 1.0
    img, _ = renderer.render(verts, grey, ks, rough, sky, focal=60.0, spp=4)
    assert float(img[0, :14].mean()) > 2 * float(img[0, 18:].mean())   # Lambert: ~3x
    img, _ = renderer.render(verts, grey, ks, rough, sky.flip(0), focal=60.0, spp=4)
    assert float(img[0, 18:].mean()) > 2 * float(img[0, :14].mean())
    front = torch.zeros(8, 16, 3)
    front[:, 6:10] = 1.0   # columns around phi = 180 deg, where Mitsuba's lat-long map has local +z
    lit, _ = renderer.render(verts, grey, ks, rough, front, focal=60.0, spp=4)
    back = front.roll(8, dims=1)
    unlit, _ = renderer.render(verts, grey, ks, rough, back, focal=60.0, spp=4)
    assert float(lit.mean()) > 5 * float(unlit.mean())


def test_envmap_halo_matches_what_mitsuba_builds_from_a_bitmap(variant: str) -> None:
    import mitsuba as mi

    from mfface.scenes.face_scene import envmap_with_halo

    env = torch.rand(6, 10, 3)
    reference = np.array(mi.traverse(mi.load_dict({"type": "envmap", "bitmap": mi.Bitmap(env.numpy())}))["data"])
    assert reference.shape == (6, 12, 3)
    np.testing.assert_allclose(envmap_with_halo(env).numpy(), reference, rtol=1e-6)


def test_visible_envmap_fills_the_background_and_the_mask_stays_coverage(variant: str) -> None:
    from mfface.scenes import FaceRenderer

    v, f, uv = sphere(30.0, subdivisions=2)
    renderer = FaceRenderer(f, uv, 16, 16, hide_emitters=False)
    kd, ks, rough = textures(0.5, 0.0, 0.5)
    img, mask = renderer.render(torch.from_numpy(v + np.array([0.0, 0.0, 150.0], np.float32)),
                                kd, ks, rough, torch.full((8, 16, 3), 2.0), focal=30.0, spp=4)
    background = mask[0] == 0
    assert background.any() and (mask[0] == 1).any()
    torch.testing.assert_close(img[0][background], torch.full_like(img[0][background], 2.0))


def test_samplers_choose_by_count_and_low_discrepancy_has_less_noise(variant: str) -> None:
    """ldsampler needs a power-of-4 count of at least 4 (others fall back to multijitter rather
    than being rounded up); at 4 spp its Lambert sphere under constant light (answer albedo x radiance) is
    closer to the answer than the independent sampler's, averaged over seeds."""
    from mfface.scenes import FaceRenderer
    from mfface.scenes.face_scene import sampler_for

    assert [sampler_for("ldsampler", n) for n in (4, 16, 64, 256)] == ["ldsampler"] * 4
    assert [sampler_for("ldsampler", n) for n in (1, 2, 3, 8, 32, 100)] == ["multijitter"] * 6
    assert sampler_for("independent", 8) == "independent"
    v, f, uv = sphere(30.0)
    verts = torch.from_numpy(v + np.array([0.0, 0.0, 150.0], np.float32))
    kd, ks, rough = textures(0.5, 0.0, 0.5)
    env = torch.ones(16, 32, 3)
    errors = {}
    for sampler in ("ldsampler", "independent"):
        renderer = FaceRenderer(f, uv, 64, 64, fresnel="none", sampler=sampler)
        squared = []
        for seed in range(4):
            img, mask = renderer.render(verts, kd, ks, rough, env, focal=100.0, spp=4, seed=seed)
            squared.append(((img[0][mask[0] == 1] - 0.5) ** 2).mean())
        errors[sampler] = float(torch.stack(squared).mean().sqrt())
        renderer.render(verts, kd, ks, rough, env, focal=100.0, spp=2)
        assert {key[2] for key in renderer._scenes} == {sampler_for(sampler, 4), sampler_for(sampler, 2)}
    assert errors["ldsampler"] < 0.8 * errors["independent"], errors


def test_sample_count_is_what_mitsuba_takes(variant: str) -> None:
    """Renders ask for the count the sampler will take (multijitter rounds up to an a x b grid),
    so Mitsuba does not warn on every render of a count such as 32: the formula agrees with the
    count Mitsuba's own samplers report, and such counts are left as they are."""
    import mitsuba as mi

    from mfface.scenes.face_scene import sample_count

    for sampler in ("multijitter", "independent", "ldsampler"):
        counts = (4, 16, 64) if sampler == "ldsampler" else (1, 2, 3, 8, 32, 35, 100, 128, 132)
        for n in counts:
            taken = mi.load_dict({"type": sampler, "sample_count": n}).sample_count()
            assert sample_count(sampler, n) == taken, (sampler, n, taken)
            assert sample_count(sampler, taken) == taken
    assert sample_count("multijitter", 32) == 35 and sample_count("multijitter", 128) == 132
