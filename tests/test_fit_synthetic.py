"""End to end: a synthetic face with known parameters is fitted, and pose and expression come back."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mfface.config import FitConfig, apply_overrides
from mfface.fitting.pipeline import Reconstructor, prepare_photo
from mfface.synthetic import random_face
from mfface.forward import RenderSettings
from mfface.textures import resize_texture

SIZE = 96
SETTINGS = {"input.max_resolution": SIZE, "stage2.iterations": 30, "stage2.geometry_start": 10,
            "stage2.spp": 2, "stage3.iterations": 20, "stage3.spp": 2, "render.texture_size": 64,
            "render.final_spp": 4, "stage2.albedo_resolution": 32}


@pytest.fixture(scope="module")
def fit(ict, variant, tmp_path_factory):
    face = random_face(ict, SIZE, seed=3, spp=16, landmark_noise_px=0.5, max_yaw_deg=20.0)
    config = apply_overrides(FitConfig(), SETTINGS)
    prepared = prepare_photo(face.photo, face.landmarks, "mediapipe478", config, "synthetic")
    steps: list[tuple[str, int, int]] = []
    result = Reconstructor(ict, config).fit([prepared], on_step=lambda stage, i, n, losses: steps.append(
        (stage, i, n)))
    result.start = result.stages[1]
    result.steps = steps
    return face, prepared, result


def test_every_stage_reports_its_iterations(fit) -> None:
    """The progress callback hears every iteration of every stage, stage 1 included (a video's
    many-frame shape pass is stage 1 alone and showed no progress before), and stage 3's solve
    passes after its iterations."""
    _, _, result = fit
    config = result.config
    expected = {"stage1": config.stage1.iterations, "stage2": config.stage2.iterations,
                "stage3": config.stage3.iterations + config.stage3.solve_passes}
    for stage, count in expected.items():
        calls = [(i, n) for s, i, n in result.steps if s == stage]
        runs = 1 + (stage == "stage1" and any(result.landmark_warnings))  # rerun with stronger priors
        assert calls == [(i, count) for i in range(count)] * runs, stage


def skin_psnr(result, state, spp: int = 32) -> float:
    """PSNR (dB) of the re-render of `state` against the photo, inside coverage x skin."""
    with torch.no_grad():
        diffuse = resize_texture(state.diffuse, result.state.diffuse.shape[1:3])
        state = dataclasses.replace(state, diffuse=diffuse,
                                    specular=resize_texture(state.specular, diffuse.shape[1:3]),
                                    roughness=resize_texture(state.roughness, diffuse.shape[1:3]))
        out = result.forward(state, RenderSettings.from_config(result.config, result.targets.size, spp, 99))
        image, coverage = out.image, out.coverage
    inside = (coverage * result.targets.skin)[0] > 0.99
    mse = ((image[0] - result.targets.images[0])[inside] ** 2).mean()
    return float(10 * torch.log10(1.0 / mse))


def test_pose_is_recovered(fit) -> None:
    face, prepared, result = fit
    truth = torch.rad2deg(face.state.euler[0])
    found = torch.rad2deg(result.state.euler[0])
    # Tolerance: the crop moves the principal point off the true optical axis by a few pixels,
    # which a rotation of about (offset / focal) absorbs (~1 degree here), plus landmark noise.
    assert torch.allclose(found, truth, atol=3.0), (found, truth)
    # Focal and depth trade off against the unknown identity (its depth profile and its overall size):
    # landmarks fix their ratio, the face's image scale, far better than each alone (focal alone was
    # 4-30% off on 8 random faces), so check the ratio, within the identity's size uncertainty.
    scale = prepared.to_crop.scale
    found_ratio = float(result.state.focal[0]) / scale / float(result.state.translation[0, 2])
    true_ratio = float(face.state.focal[0]) / float(face.state.translation[0, 2])
    assert found_ratio == pytest.approx(true_ratio, rel=0.10)


def test_expression_is_recovered(fit, ict) -> None:
    face, _, result = fit
    truth = face.state.expression[0]
    found = result.state.expression[0]
    active = truth > 0.05
    assert active.any()
    # Tolerances from 8 random faces at 128 px (stage 1 alone): active blend weights came back
    # within 0.09 (median) and 0.22 (max) of the truth, inactive ones leaked 0.04 on average (ARKit
    # shapes are not orthogonal, and identity and expression share some of their motion).
    assert torch.all((found[active] - truth[active]).abs() < 0.25), (found[active], truth[active])
    assert found[~active].abs().mean() < 0.06
    assert found.min() >= 0.0 and found.max() <= 1.0  # blend weights stay valid


def test_rendered_fit_matches_the_photo(fit) -> None:
    face, prepared, result = fit
    before, after = skin_psnr(result, result.start), skin_psnr(result, result.state)
    print(f"skin PSNR: start {before:.2f} dB, fit {after:.2f} dB")
    assert after > before + 3.0 and after > 24.0  # measured: 20.1 -> 25.2 dB
    with torch.no_grad():
        landmarks = result.forward(result.state, RenderSettings(result.targets.size, spp=1),
                                   result.targets.valid_landmarks()[1]).landmarks
    error = (landmarks[0] - result.targets.valid_landmarks()[0][0]).norm(dim=-1)
    assert float(error.median()) < 1.5  # px, at 96 px with 0.5 px landmark noise


def test_targets_at_a_coarse_size(fit) -> None:
    """Coarse targets: area-averaged photo and skin, landmarks and principal point scaled with
    the image (pixel i covers [i, i + 1)); the crop's own size returns the same targets."""
    _, _, result = fit
    targets = result.targets
    half = targets.at_size(SIZE // 2)
    assert targets.at_size(SIZE) is targets
    assert half.images.shape == (1, SIZE // 2, SIZE // 2, 3) and half.skin.shape == (1, SIZE // 2, SIZE // 2)
    block = targets.images[0, :2, :2].mean(dim=(0, 1))
    assert torch.allclose(half.images[0, 0, 0], block, atol=1e-6)
    assert float(half.skin.min()) >= 0.0 and float(half.skin.max()) <= 1.0
    assert torch.allclose(half.landmarks, targets.landmarks / 2)
    assert torch.allclose(half.principal, targets.principal / 2)
    with pytest.raises(ValueError, match="coarse size"):
        targets.at_size(2 * SIZE)


def test_coarse_to_fine_stage2(fit, monkeypatch) -> None:
    """Stage 2 with its first iterations at half size: they render at that size, the landmark
    term keeps the crop's pixels (the same value as at full size from the same state), and the
    fit improves the re-render as much as at full size (within 1 dB)."""
    from mfface.fitting.photometric_stage import fit_photometric

    _, _, result = fit
    runs, sizes = {}, set()
    renderer = result.forward.renderer
    monkeypatch.setattr(result.forward, "renderer", lambda settings: sizes.add(settings.size) or renderer(settings))
    for coarse in (0, SIZE // 2):
        config = apply_overrides(result.config, {"stage2.coarse_size": coarse, "stage2.coarse_iterations": 20})
        state, report = fit_photometric(result.forward, result.targets, result.start, config)
        runs[coarse] = (skin_psnr(result, state), report.losses["landmarks"][0])
    assert SIZE // 2 in sizes
    assert runs[SIZE // 2][1] == pytest.approx(runs[0][1], rel=1e-4)
    start = skin_psnr(result, result.start)
    print(f"PSNR start {start:.2f}, stage 2 full {runs[0][0]:.2f}, coarse to fine {runs[SIZE // 2][0]:.2f} dB")
    assert runs[SIZE // 2][0] > start + 3.0 and runs[SIZE // 2][0] > runs[0][0] - 1.0


@pytest.mark.parametrize("fraction, skin, projective", [(0.375, 1.0, 3), (0.25, 1.0, 2), (0.375, 0.0, 0),
                                                       (0.0, 1.0, 0)])
def test_stage2_silhouette_fraction_renders_the_last_iterations_with_silhouette_gradients(
        fit, monkeypatch, fraction: float, skin: float, projective: int) -> None:
    """`stage2.silhouette_fraction = f`: the last round(f * iterations) stage-2 iterations render
    with `direct_projective` (silhouette gradients) when a render at that point leaves a skin pixel
    less than fully covered, else with `render.integrator` like the others. A skin mask of ones
    (the background counted as skin) is left uncovered, one of zeros never."""
    from mfface.fitting.photometric_stage import fit_photometric

    _, _, result = fit
    targets = dataclasses.replace(result.targets, skin=torch.full_like(result.targets.skin, skin))
    seen: list[str] = []
    renderer = result.forward.renderer
    monkeypatch.setattr(result.forward, "renderer",
                        lambda settings: seen.append(settings.integrator) or renderer(settings))
    config = apply_overrides(result.config, {"stage2.silhouette_fraction": fraction, "stage2.iterations": 8,
                                             "stage2.geometry_start": 2})
    state, report = fit_photometric(result.forward, targets, result.start, config)
    decision = 1 if fraction > 0 else 0   # the render that checks the coverage
    assert seen == ["prb"] * (8 - projective + decision) + ["direct_projective"] * projective
    assert report.figures.get("silhouette_iterations", 0) == projective
    assert len(report.losses["photo"]) == 8 and bool(torch.isfinite(state.identity).all())


def test_stage2_renders_fixed_geometry_before_geometry_start(fit, monkeypatch) -> None:
    """Before `stage2.geometry_start` the geometry is not optimised, so its renders take vertices
    without gradients: the scene keeps the mesh it holds (no acceleration-structure rebuild) and
    the backward pass computes no vertex adjoint. From geometry_start on, they carry gradients."""
    from mfface.fitting.photometric_stage import fit_photometric

    _, _, result = fit
    differentiable: list[bool] = []
    render = result.forward.render
    monkeypatch.setattr(result.forward, "render", lambda state, settings, vertices, **kw: (
        differentiable.append(vertices.requires_grad) or render(state, settings, vertices, **kw)))
    config = apply_overrides(result.config, {"stage2.silhouette_fraction": 0.0, "stage2.iterations": 6,
                                             "stage2.geometry_start": 4})
    state, _ = fit_photometric(result.forward, result.targets, result.start, config)
    assert differentiable == [False] * 4 + [True] * 2
    assert not torch.equal(state.expression, result.start.expression)


@pytest.mark.parametrize("partial, expected", [([], False), ([0.75], False), ([0.5, 0.5], True),
                                               ([0.75] * 3 + [0.9] * 3, True), ([0.999] * 10, False)])
def test_outline_check_counts_uncovered_skin_area(partial: list[float], expected: bool) -> None:
    """The silhouette iterations run when the check's render leaves at least 1 px of skin uncovered,
    summed as 1 - coverage: a quarter-covered sliver, or a mask edge that the outline just meets
    (what flipped a per-pixel test between runs), does not start them; a pixel left half open
    twice over does. Pixels outside the skin mask never count."""
    from mfface.fitting.photometric_stage import outline_short_of_skin

    coverage = torch.ones(1, 8, 8)
    coverage.view(-1)[:len(partial)] = torch.tensor(partial)
    coverage[0, 7, :] = 0.0   # uncovered, but not skin
    skin = torch.ones(1, 8, 8)
    skin[0, 7, :] = 0.0

    class Stub:
        def render(self, state, settings, vertices):
            return None, coverage

    assert outline_short_of_skin(Stub(), None, None, torch.zeros(1, 3, 3), skin) is expected
