"""`mfface relight` and `mfface.relight`: light directions on rendered pixels, the Lambert level
under a constant environment, lamps, the photo relit, every option and every bad input.

Result folders are written here in the layout `mfface.results` gives them, around the built-in
model (`ict-lite`, no shared data needed): a frontal face filling a small crop."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mfface.checkpoints import CheckpointOwner, save_checkpoint
from mfface.cli.main import cli
from mfface.config import FitConfig, to_toml
from mfface.forward import ForwardModel
from mfface.images import write_png
from mfface.relight import (Lamp, RelightError, RelightSettings, Relighter, envmap_exposure,
                            load_rig, parse_lamp, read_envmap, relight, sample_envmap,
                            transform_envmap, write_relit)
from mfface.replay import load_fitted_face
from mfface.scenes.light_presets import exposure, preset_envmap, preset_sh
from mfface.sh import envmap_directions, envmap_to_sh, initial_coefficients, sh_to_envmap

CROP = 48
FOCAL = CROP * 3.2        # the face fills most of the crop
TRANSLATION = (0.0, 10.0, 600.0)
ALBEDO = (0.6, 0.5, 0.4)
BOX = (10, 20, CROP)      # where the crop lies in the synthetic photo (x0, y0, size)
PHOTO_SIZE = (90, 70)     # (height, width) of the synthetic photo


@pytest.fixture(scope="session")
def lite(variant):
    from mfface.morphable.store import ModelStore

    return ModelStore().load("ict-lite")


def face_state(model, specular: float = 0.0, roughness: float = 0.5) -> "FaceState":  # noqa: F821
    from mfface.state import FaceState

    return FaceState(identity=torch.zeros(1, model.n_identity),
                     expression=torch.zeros(1, model.n_expression), euler=torch.zeros(1, 3),
                     translation=torch.tensor([TRANSLATION]), focal=torch.tensor([FOCAL]),
                     sh=initial_coefficients(9, 0.5, batch=1),
                     diffuse=torch.tensor(ALBEDO).expand(1, 16, 16, 3).clone(),
                     specular=torch.full((1, 16, 16, 3), specular),
                     roughness=torch.full((1, 16, 16, 1), roughness))


def result_folder(folder: Path, model, state, photo: Path | None = None,
                  digest: str | None = None) -> Path:
    """A result folder as `write_results` lays out the parts relight reads."""
    (folder / "checkpoints").mkdir(parents=True)
    image = {"name": folder.name, "crop_size_px": CROP}
    if photo is not None:
        image.update(path=str(photo), digest=digest,
                     crop_box_px={"x0": BOX[0], "y0": BOX[1], "size": BOX[2]})
    params = {"format": "mfface-fit", "version": 1, "image": image,
              "model": {"name": model.name, "n_vertices": model.n_vertices},
              "pose": {"euler_rad": state.euler[0].tolist(),
                       "translation_mm": state.translation[0].tolist()}}
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "config.toml").write_text(to_toml(FitConfig()))
    owner = CheckpointOwner(model.name, model.fingerprint(), (digest or "photo",))
    save_checkpoint(folder / "checkpoints" / "stage3.npz", state, 3, owner)
    return folder


@pytest.fixture
def result(tmp_path, lite) -> Path:
    return result_folder(tmp_path / "face", lite, face_state(lite))


def write_map(path: Path, env: torch.Tensor) -> Path:
    from mfface.scenes.exr import write_exr, write_hdr

    (write_hdr if path.suffix == ".hdr" else write_exr)(path, env)
    return path


def axis_env(axis: int, height: int = 32) -> torch.Tensor:
    """Red light from the +axis side of the light frame, blue from the -axis side, black between
    (each a cone of 60 degrees around the axis)."""
    d = envmap_directions(height, 2 * height)[..., axis]
    env = torch.zeros(height, 2 * height, 3)
    env[..., 0] = (d > 0.5).float()
    env[..., 2] = (d < -0.5).float()
    return env


def face_pixels(image: torch.Tensor, alpha: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """The fully covered pixels (N, 3) of `image` inside a window."""
    inside = alpha[rows, cols] > 0.99
    return image[rows, cols][inside]


# -- directions --------------------------------------------------------------------------------

def red_minus_blue(image, alpha, rows, cols) -> float:
    pixels = face_pixels(image, alpha, rows, cols)
    assert len(pixels) > 10
    return float((pixels[:, 0] - pixels[:, 2]).mean() / pixels.mean().clamp_min(1e-6))


def test_light_arrives_from_the_side_the_conventions_say(tmp_path, result):
    """+x image right, +y up, +z towards the camera (README 'Conventions', docs/light.md): an
    environment red on the + side and blue on the - side of each axis lights the face that way,
    and the camera sees the -z side (behind the head) as the background."""
    face = load_fitted_face(result)
    third, s = CROP // 3, CROP
    base = dict(spp=16, size=CROP, absolute=True)
    x = relight(face, RelightSettings(envmap=str(write_map(tmp_path / "x.exr", axis_env(0))), **base))
    right = red_minus_blue(x.image, x.coverage, slice(third, 2 * third), slice(2 * third, s))
    left = red_minus_blue(x.image, x.coverage, slice(third, 2 * third), slice(0, third))
    assert right > 0.5 and left < -0.5, (right, left)
    y = relight(face, RelightSettings(envmap=str(write_map(tmp_path / "y.exr", axis_env(1))), **base))
    rows = torch.nonzero(y.coverage.amax(1) > 0.99)[:, 0]
    top = red_minus_blue(y.image, y.coverage, slice(int(rows[0]), int(rows[0]) + 6), slice(0, s))
    chin = red_minus_blue(y.image, y.coverage, slice(int(rows[-1]) - 3, int(rows[-1]) + 1), slice(0, s))
    assert top > 0.5 and chin < -0.2, (top, chin)      # the chin's underside sees the floor
    z_file = str(write_map(tmp_path / "z.exr", axis_env(2)))
    z = relight(face, RelightSettings(envmap=z_file, background="environment", **base))
    assert red_minus_blue(z.image, z.coverage, slice(0, s), slice(0, s)) > 0.8   # lit from the front
    corner = z.image[:3, :3].reshape(-1, 3).mean(0)                           # background: behind
    assert corner[2] > 0.9 and corner[0] < 0.05, corner
    # --rotate 90 turns the rig counter-clockwise seen from above: the front light comes from the
    # image right, the back light from the image left
    turned = relight(face, RelightSettings(envmap=z_file, rotate=90.0, **base))
    right = red_minus_blue(turned.image, turned.coverage, slice(third, 2 * third), slice(2 * third, s))
    left = red_minus_blue(turned.image, turned.coverage, slice(third, 2 * third), slice(0, third))
    assert right > 0.5 and left < -0.5, (right, left)


def test_lamps_light_from_their_position(result):
    face = load_fitted_face(result)
    third = CROP // 3

    def mean(image, rows, cols) -> float:
        return float(image[rows, cols].mean())
    side = relight(face, RelightSettings(envmap="none", lamps=(parse_lamp("directional:1,0,0.2:1"),),
                                         spp=4, size=CROP))
    mid = slice(third, 2 * third)
    assert mean(side.image, mid, slice(2 * third, CROP)) > 4 * mean(side.image, mid, slice(0, third))
    above = relight(face, RelightSettings(envmap="none", lamps=(parse_lamp("point:0,500,150:1"),),
                                          spp=4, size=CROP))
    assert mean(above.image, slice(0, third), mid) > 2 * mean(above.image, slice(2 * third, CROP), mid)
    area = relight(face, RelightSettings(envmap="none", lamps=(parse_lamp("area:-600,0,300:1:300,300"),),
                                         spp=8, size=CROP))
    assert mean(area.image, mid, slice(0, third)) > 4 * mean(area.image, mid, slice(2 * third, CROP))


def test_a_side_lamp_makes_the_nose_cast_a_shadow(result, lite):
    """Shadows need no option: light samples are shadow-tested at bounces 0 (max_depth 2)."""
    face = load_fitted_face(result)
    relit = relight(face, RelightSettings(envmap="none", lamps=(parse_lamp("directional:1,0,0.35:1"),),
                                          spp=16, size=96))
    grey = relit.image.mean(-1)
    # the nose tip's projection, and the cheek beside it on the side away from the lamp
    model_vertices = lite.vertices(face.state.identity, face.state.expression)
    nose = ForwardModel(lite).vertices(face.state)[0, int(model_vertices[0, :, 2].argmax())]
    u, v = (nose[:2] * FOCAL * 2 / nose[2] + 48).floor().long().tolist()
    shadowed = grey[v - 2:v + 6, u - 14:u - 6].mean()      # beside the nose, image-left
    lit = grey[v - 2:v + 6, u + 6:u + 14].mean()           # beside the nose, image-right
    assert lit > 5 * shadowed, (float(lit), float(shadowed))


# -- levels ------------------------------------------------------------------------------------

def forehead_mask(face, relighter: Relighter) -> torch.Tensor:
    """Pixels (S, S) where the upper forehead is seen: vertices in the top fifth of the face whose
    normals face the camera (no part of the face hides their hemisphere)."""
    from mfface.morphable.export import vertex_normals

    model = face.model
    vertices = model.vertices(face.state.identity, face.state.expression)[0]
    normals = torch.from_numpy(vertex_normals(vertices.numpy(), model.triangles))
    y = vertices[:, 1]
    keep = (y > y.max() - 0.2 * (y.max() - y.min())) & (normals[:, 2] > 0.9)
    camera = relighter.vertices()[0][keep]
    size = relighter.size
    uv = (camera[:, :2] * float(relighter.focal) / camera[:, 2:] + size / 2.0).floor().long()
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[uv[:, 1].clamp(0, size - 1), uv[:, 0].clamp(0, size - 1)] = True
    return mask


def test_constant_environment_gives_the_lambert_render_of_the_albedo(tmp_path, lite):
    """Radiance L from every direction on a Lambertian surface gives albedo * L. Specular F0 = 0
    with roughness 0: Schlick's Fresnel then reflects (1 - n.v)^5 L, under 1e-5 L where the
    forehead faces the camera, so the analytic render is albedo * L."""
    state = face_state(lite, specular=0.0, roughness=0.0)
    face = load_fitted_face(result_folder(tmp_path / "face", lite, state))
    radiance = torch.tensor([0.9, 0.7, 0.5])
    env_file = write_map(tmp_path / "constant.exr", radiance.expand(16, 32, 3).clone())
    settings = RelightSettings(envmap=str(env_file), absolute=True, spp=64, size=64)
    relighter = Relighter(face, settings)
    image, alpha, _ = relighter.still()
    mask = forehead_mask(face, relighter) & (alpha > 0.999)
    assert int(mask.sum()) >= 20
    expected = torch.tensor(ALBEDO) * radiance
    measured = image[mask]
    error = (measured.mean(0) / expected - 1.0).abs().max()
    assert float(error) < 0.01, (measured.mean(0), expected)
    per_pixel = float(((measured / expected - 1.0) ** 2).mean().sqrt())
    assert per_pixel < 0.05   # Monte Carlo noise at 64 spp
    # the same light as SH (the fitted path) and as a preset scaled to the fitted exposure
    state.sh = envmap_to_sh(radiance.double().expand(17, 34, 3), 9).float()[None]
    fitted = relight(load_fitted_face(result_folder(tmp_path / "sh", lite, state)),
                     RelightSettings(spp=64, size=64))
    assert float((fitted.image[mask].mean(0) / expected - 1.0).abs().max()) < 0.01


def test_relit_face_has_eyes_and_no_holes_in_every_frame(tmp_path, lite):
    """The relit still and a turned turntable pose show the eyes and the mouth interior: the
    coverage is solid inside the head's outline, and 1 at the pupils of the still."""
    from scipy import ndimage

    from mfface.camera import project

    face = load_fitted_face(result_folder(tmp_path / "face", lite, face_state(lite)))
    relighter = Relighter(face, RelightSettings(spp=4, size=64))
    for yaw in (0.0, 0.5):
        _, coverage = relighter.render(relighter.vertices(yaw), relighter.part_vertices(yaw))
        solid = ndimage.binary_fill_holes(coverage.numpy() > 0.5)
        assert int((solid & (coverage.numpy() < 0.5)).sum()) == 0, yaw
    _, still = relighter.render(relighter.vertices())
    parts, slices = relighter.part_vertices(), lite.part_slices()
    for name in ("eye_left", "eye_right"):
        part = lite.parts[list(slices).index(name)]
        pupil = parts[:, slices[name]][:, torch.from_numpy(part.material_coord < 0.3)].mean(1, keepdim=True)
        col, row = project(pupil, relighter.focal, 64, 64)[0, 0].long().tolist()
        assert float(still[row, col]) == 1.0


def test_lamp_colour_is_the_radiance_of_a_facing_white_surface(tmp_path, lite):
    state = face_state(lite, specular=0.0, roughness=0.0)
    face = load_fitted_face(result_folder(tmp_path / "face", lite, state))
    settings = RelightSettings(envmap="none", absolute=True, spp=16, size=64,
                               lamps=(Lamp("directional", (0.0, 0.0, 1.0), (0.5, 1.0, 2.0)),))
    relighter = Relighter(face, settings)
    image, alpha, _ = relighter.still()
    mask = forehead_mask(face, relighter) & (alpha > 0.999)
    # radiance = albedo * colour * (n . towards the lamp), n . z >= 0.9 on this forehead
    ratio = image[mask] / (torch.tensor(ALBEDO) * torch.tensor([0.5, 1.0, 2.0]))
    assert 0.88 < float(ratio.mean()) <= 1.001
    assert float(ratio.max()) <= 1.02
    # relative to the fitted light: colour 1 is the fitted light's exposure
    relative = relight(face, dataclasses_replace(settings, absolute=False))
    level = float(exposure(state.sh[0]))
    assert float(relative.image[mask].mean() / image[mask].mean()) == pytest.approx(level, rel=1e-3)


def dataclasses_replace(settings: RelightSettings, **changes) -> RelightSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_a_preset_or_file_is_scaled_to_the_fitted_exposure(tmp_path, result):
    face = load_fitted_face(result)
    fitted = relight(face, RelightSettings(spp=16, size=CROP))
    for envmap in ("ambient", str(write_map(tmp_path / "bright.hdr", torch.full((8, 16, 3), 40.0)))):
        relit = relight(face, RelightSettings(envmap=envmap, spp=16, size=CROP))
        assert float(relit.image.mean() / fitted.image.mean()) == pytest.approx(1.0, rel=0.03)
    brighter = relight(face, RelightSettings(envmap="ambient", exposure=1.0, spp=16, size=CROP))
    assert float(brighter.image.mean() / fitted.image.mean()) == pytest.approx(2.0, rel=0.03)


# -- environment maps --------------------------------------------------------------------------

def test_envmap_exposure_sampling_and_resampling():
    constant = torch.full((16, 32, 3), 0.7)
    assert envmap_exposure(constant) == pytest.approx(0.7, rel=2e-3)  # quadrature of max(0, n.w)
    env = preset_envmap("studio", 64, 128).float()
    assert envmap_exposure(env) == pytest.approx(float(exposure(envmap_to_sh(env.double(), 9))), rel=0.02)
    # sampling at the texel directions returns the texels (Mitsuba's layout)
    assert torch.allclose(sample_envmap(env, envmap_directions(64, 128)), env, atol=1e-5)
    # resampling a smooth (band-limited) map keeps it; a turn by whole columns is a column shift
    smooth = sh_to_envmap(preset_sh("studio", 3).double(), 256, 512, clamp=False)
    small = transform_envmap(smooth, 32)
    assert torch.allclose(small, sh_to_envmap(preset_sh("studio", 3).double(), 32, 64, clamp=False),
                          atol=0.03 * float(smooth.abs().max()))  # the prefilter blurs a little
    turned = transform_envmap(env, rotate=360.0 * 8 / 128)
    assert torch.allclose(turned, env.roll(-8, dims=1), atol=1e-5)  # out[j] = env[j + 8]


def test_exr_and_hdr_written_and_read_back(tmp_path):
    from mfface.scenes.exr import read_hdr_image, write_exr

    env = torch.rand(8, 16, 3) * 5
    write_exr(tmp_path / "a.exr", env)
    assert torch.equal(read_envmap(tmp_path / "a.exr"), env)
    write_map(tmp_path / "a.hdr", env)
    back = read_envmap(tmp_path / "a.hdr")   # RGBE: 8-bit mantissas sharing the largest channel's exponent
    assert ((back - env).abs() <= env.amax(-1, keepdim=True) / 128).all()
    rgba = torch.rand(4, 6, 4)
    write_exr(tmp_path / "rgba.exr", rgba)
    assert torch.equal(read_hdr_image(tmp_path / "rgba.exr"), rgba[..., :3])


# -- the photo itself --------------------------------------------------------------------------

@pytest.fixture
def photo_result(tmp_path, lite) -> tuple[Path, Path]:
    """A result whose 'photo' is the fitted render itself (placed in a larger frame), so relit
    photo = new render inside the face."""
    from mfface.fitting.pipeline import photo_digest
    from mfface.images import read_image
    from mfface.scenes.relight_scene import RelightRenderer

    state = face_state(lite)
    state.sh[0, 3] = 0.8                       # fitted light: from the image right
    vertices = ForwardModel(lite).vertices(state)
    renderer = RelightRenderer(lite.triangles, lite.uvs, CROP, CROP, max_depth=2)
    with torch.no_grad():
        render, _ = renderer.render(vertices, state.diffuse, state.specular, state.roughness,
                                    ForwardModel.envmap(state.sh, 64), state.focal, spp=256, seed=7)
    photo = torch.full((*PHOTO_SIZE, 3), 0.2)
    x0, y0, size = BOX
    photo[y0:y0 + size, x0:x0 + size] = render[0] + (render[0].amax(-1, keepdim=True) == 0) * 0.2
    path = tmp_path / "photo.png"
    write_png(path, photo, gamma=2.2)
    digest = photo_digest(read_image(path))
    return result_folder(tmp_path / "face", lite, state, path, digest), path


def test_relit_photo_has_the_new_shading_inside_the_face(photo_result):
    from mfface.images import linearize, read_image

    folder, path = photo_result
    face = load_fitted_face(folder)
    settings = RelightSettings(envmap="left", spp=128, photo=True)
    relighter = Relighter(face, settings)
    relit_photo = relighter.relit_photo()
    new, alpha = relighter.render(relighter.vertices())
    x0, y0, size = BOX
    inside = relit_photo[y0:y0 + size, x0:x0 + size]
    eroded = -torch.nn.functional.max_pool2d(-alpha[None, None], 7, 1, 3)[0, 0]   # 3 px inside the face
    interior = (eroded > 0.5) & (new.mean(-1) > 0.02)
    error = ((inside - new).abs().mean(-1) / new.mean(-1))[interior]
    assert float(error.median()) < 0.08, float(error.median())
    # the light changed: the image-left half gets brighter, the right half darker
    original = linearize(read_image(path), 2.2)[y0:y0 + size, x0:x0 + size]
    half = CROP // 2
    assert inside[:, :half][interior[:, :half]].mean() > 1.5 * original[:, :half][interior[:, :half]].mean()
    assert inside[:, half:][interior[:, half:]].mean() < original[:, half:][interior[:, half:]].mean()
    # outside the crop the photo is untouched
    whole = linearize(read_image(path), 2.2)
    assert torch.equal(relit_photo[:y0], whole[:y0]) and torch.equal(relit_photo[:, :x0], whole[:, :x0])


def test_photo_background_and_a_moved_or_changed_photo(photo_result, tmp_path):
    folder, path = photo_result
    out = tmp_path / "out"
    assert invoke(folder, "-o", out, "--background", "photo", "--spp", 2).exit_code == 0
    relit = np.asarray(Image.open(out / "relit.png"))
    assert relit.shape == (CROP, CROP, 3)
    corner = np.asarray(Image.open(path))[BOX[1], BOX[0]]
    assert np.abs(relit[0, 0].astype(int) - corner.astype(int)).max() <= 2   # the photo behind
    moved = tmp_path / "moved.png"
    shutil.move(path, moved)
    fails(invoke(folder, "-o", tmp_path / "o2", "--photo"), "is gone", "--photo-file")
    assert invoke(folder, "-o", tmp_path / "o3", "--photo", "--photo-file", moved, "--spp", 2).exit_code == 0
    assert np.asarray(Image.open(tmp_path / "o3" / "photo_relit.png")).shape == (*PHOTO_SIZE, 3)
    other = tmp_path / "other.png"
    write_png(other, torch.rand(*PHOTO_SIZE, 3), gamma=None)
    fails(invoke(folder, "-o", tmp_path / "o4", "--photo", "--photo-file", other),
          "is not the photo", "pixels differ")


# -- the command -------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(cli, ["relight", *map(str, args)])


def fails(run, *fragments: str) -> None:
    assert run.exit_code != 0, run.output
    assert run.output.startswith("Error: ") and run.output.count("\n") == 1, run.output
    for fragment in fragments:
        assert fragment in run.output, run.output


def test_every_option_through_the_command(photo_result, tmp_path):
    folder, path = photo_result
    rig = tmp_path / "rig.toml"
    write_map(tmp_path / "env.hdr", preset_envmap("sunset", 16, 32).float())
    rig.write_text('envmap = "env.hdr"\nbounces = 1\n\n[[lamp]]\ntype = "area"\n'
                   'position = [0, 300, 600]\ncolour = [1, 0.9, 0.8]\nsize = [150, 100]\n')
    out = tmp_path / "out"
    run = invoke(folder, "-o", out, "--rig", rig, "--rotate", 30, "--exposure", 0.5, "--absolute",
                 "--light", "point:200,100,400:0.5", "--light", "directional:-1,1,1:0.3,0.3,0.4",
                 "--spp", 2, "--size", 40, "--background", "transparent", "--turntable", 3,
                 "--yaw-range", 40, "--fps", 5, "--photo", "--photo-file", path, "--seed", 3)
    assert run.exit_code == 0, run.output
    for name in ("relit.png", "relit.exr", "light.exr", "light.png", "rig.toml", "turntable.gif",
                 "turntable.mp4", "photo_relit.png"):
        assert (out / name).is_file(), name
    relit = np.asarray(Image.open(out / "relit.png"))
    assert relit.shape == (40, 40, 4)                                  # transparent: RGBA
    assert relit[0, 0, 3] == 0 and relit[20, 20, 3] == 255 and relit[..., :3].std() > 5
    gif = iio.imread(out / "turntable.gif", index=None)
    assert gif.shape == (3, 40, 40, 3) and iio.immeta(out / "turntable.gif")["duration"] == 200
    assert np.abs(gif[1].astype(int) - gif[0]).mean() > 1             # the head turns
    settings = load_rig(out / "rig.toml")
    assert settings["rotate"] == 30.0 and settings["absolute"] is True and settings["bounces"] == 1
    assert [lamp.kind for lamp in settings["lamps"]] == ["area", "point", "directional"]
    assert settings["lamps"][0].size == (150.0, 100.0)
    # rig.toml holds everything: a re-run from it alone gives the same image
    again = invoke(folder, "-o", tmp_path / "again", "--rig", out / "rig.toml")
    assert again.exit_code == 0, again.output
    from mfface.scenes.exr import read_exr
    assert torch.allclose(read_exr(tmp_path / "again" / "relit.exr"), read_exr(out / "relit.exr"), atol=1e-6)
    # outputs are not replaced unasked
    fails(invoke(folder, "-o", out, "--spp", 1), "already holds", "--overwrite")
    assert invoke(folder, "-o", out, "--spp", 1, "--overwrite", "--background", "black").exit_code == 0
    assert np.asarray(Image.open(out / "relit.png")).shape == (CROP, CROP, 3)


def test_environment_background_and_a_folder_of_results(tmp_path, lite):
    state = face_state(lite)
    for name in ("a", "b"):
        result_folder(tmp_path / "fits" / name, lite, state)
    run = invoke(tmp_path / "fits", "-o", tmp_path / "out", "--envmap", "sunset",
                 "--background", "environment", "--spp", 1, "--size", 24, "--bounces", 1)
    assert run.exit_code == 0, run.output
    for name in ("a", "b"):
        relit = np.asarray(Image.open(tmp_path / "out" / name / "relit.png"))
        assert relit.shape == (24, 24, 3) and relit[0, 0].sum() > 0   # the sky behind, not black


# -- bad input ---------------------------------------------------------------------------------

def test_bad_environment_maps(result, tmp_path):
    out = tmp_path / "out"
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "missing.exr"), "does not exist")
    (tmp_path / "bad.exr").write_bytes(b"\x76\x2f\x31\x01" + b"\0" * 64)
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "bad.exr"), "could not be read as OpenEXR")
    (tmp_path / "bad.hdr").write_bytes(b"not radiance")
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "bad.hdr"), "could not be read as a Radiance")
    (tmp_path / "map.png").write_bytes(b"png")
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "map.png"), "neither OpenEXR (.exr) nor Radiance")
    write_map(tmp_path / "square.exr", torch.ones(16, 16, 3))
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "square.exr"), "16x16 px", "not a lat-long",
          "2:1")
    nan = torch.ones(8, 16, 3)
    nan[2, 3] = float("nan")
    write_map(tmp_path / "nan.exr", nan)
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "nan.exr"), "1 NaN or infinite pixels")
    negative = torch.ones(8, 16, 3)
    negative[1, 1, 0] = -0.5
    write_map(tmp_path / "negative.exr", negative)
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "negative.exr"), "negative values",
          "light cannot be negative")
    write_map(tmp_path / "black.exr", torch.zeros(8, 16, 3))
    fails(invoke(result, "-o", out, "--envmap", tmp_path / "black.exr"), "is black")
    fails(invoke(result, "-o", out, "--envmap", "none"), "in the dark")
    assert not out.exists()                                           # nothing half-written


@pytest.mark.parametrize("spec, fragment", [
    ("spot:0,0,500:1", "does not parse"),
    ("point:0,500:1", "position '0,500' is not 3"),
    ("point:a,b,c:1", "is not 3"),
    ("point:0,0,500:1,1", "colour '1,1' is not 1 or 3"),
    ("point:0,0,500", "does not parse"),
    ("point:0,0,0:1", "gives no direction"),
    ("directional:0,0,1:1:100", "only an area lamp takes a size"),
    ("area:0,0,500:1:0,100", "is empty"),
    ("point:0,0,500:-1", "negative"),
    ("point:0,0,nan:1", "is not 3"),
])
def test_bad_light_specs(result, tmp_path, spec, fragment):
    fails(invoke(result, "-o", tmp_path / "out", "--light", spec), fragment)
    assert not (tmp_path / "out").exists()


def test_bad_rig_files(result, tmp_path):
    out = tmp_path / "out"
    rig = tmp_path / "rig.toml"
    fails(invoke(result, "-o", out, "--rig", rig), "does not exist")
    rig.write_text("envmap = \n")
    fails(invoke(result, "-o", out, "--rig", rig), "is not valid TOML")
    rig.write_text("brightness = 2\n")
    fails(invoke(result, "-o", out, "--rig", rig), "unknown setting 'brightness'")
    rig.write_text("spp = 'many'\n")
    fails(invoke(result, "-o", out, "--rig", rig), "spp = 'many' should be a whole number")
    rig.write_text("[[lamp]]\ntype = 'point'\ncolour = 1\n")
    fails(invoke(result, "-o", out, "--rig", rig), "needs a position")
    rig.write_text("[[lamp]]\ntype = 'point'\nposition = [0, 0, 500]\nshape = 'round'\n")
    fails(invoke(result, "-o", out, "--rig", rig), "unknown key(s) shape")
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (("--size", 4), "--size 4 is out of range"),
    (("--size", 5000), "--size 5000 is out of range"),
    (("--spp", 0), "--spp 0 is out of range"),
    (("--spp", 100000), "--spp 100000 is out of range"),
    (("--bounces", 17), "--bounces 17 is out of range"),
    (("--turntable", 1), "--turntable 1 is out of range"),
    (("--exposure", "nan"), "--exposure nan is out of range"),
    (("--yaw-range", 0), "--yaw-range 0.0 is out of range"),
    (("--background", "white"), "Unknown background 'white'"),
])
def test_settings_out_of_range(result, tmp_path, args, fragment):
    fails(invoke(result, "-o", tmp_path / "out", *args), fragment)
    assert not (tmp_path / "out").exists()


def test_result_folders_that_cannot_be_relit(tmp_path, result):
    out = tmp_path / "out"
    fails(invoke(tmp_path / "nope", "-o", out), "does not exist")
    (tmp_path / "empty").mkdir()
    fails(invoke(tmp_path / "empty", "-o", out), "is not a result folder")
    shutil.rmtree(result / "checkpoints")
    fails(invoke(result, "-o", out), "has no checkpoints/stageN.npz")
    (tmp_path / "file").write_text("x")
    fails(invoke(tmp_path / "empty", "-o", tmp_path / "file"), "is not a result folder")
    assert not out.exists()


def test_output_that_is_a_file(result, tmp_path):
    (tmp_path / "file").write_text("mine")
    fails(invoke(result, "-o", tmp_path / "file"), "is a file")
    assert (tmp_path / "file").read_text() == "mine"


def test_lamp_syntax():
    lamp = parse_lamp("area:0,300,600:2:100")
    assert lamp == Lamp("area", (0.0, 300.0, 600.0), (2.0, 2.0, 2.0), (100.0, 100.0))
    assert parse_lamp(" Directional:1,1,1:0.5,0.6,0.7 ").kind == "directional"
    with pytest.raises(RelightError, match="KIND:X,Y,Z:R,G,B"):
        parse_lamp("point")
    assert math.isclose(parse_lamp("point:0,0,500:1").vector[2], 500.0)
