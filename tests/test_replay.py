"""`mfface replay`: turntable GIF/MP4 from result folders, relighting presets, bad inputs."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mfface.camera import to_camera
from mfface.cli.main import cli
from mfface.config import FitConfig, to_toml
from mfface.checkpoints import CheckpointOwner, save_checkpoint
from mfface.state import FaceState
from mfface.replay import (ReplayError, ReplaySettings, head_centre, load_fitted_face,
                           render_turntable, replay_light, turned_vertices, yaw_offsets)
from mfface.scenes.light_presets import exposure, irradiance, preset_names, preset_sh
from mfface.sh import initial_coefficients

CROP = 40
FOCAL = 120.0
DISTANCE = 600.0


@pytest.fixture(scope="session")
def installed_ict(ict) -> str:
    """The ICT model saved into the (temporary) model store; returns its name."""
    from mfface.morphable.format import save_model
    from mfface.morphable.store import ModelStore

    store = ModelStore()
    if not store.path(ict.name).is_file():
        save_model(ict, store.path(ict.name))
    return ict.name


def _state(model, batch: int = 1) -> FaceState:
    """A frontal face lit mostly from the image right (SH Y_1,1 > 0), with a left/right two-tone
    diffuse texture so that turning the head changes the image."""
    sh = initial_coefficients(9, 0.5, batch=batch)
    sh[:, 3] = 0.6
    diffuse = torch.full((1, 16, 16, 3), 0.5)
    diffuse[:, :, :8] = torch.tensor([0.8, 0.3, 0.2])
    euler = torch.zeros(batch, 3)
    euler[:, 0] = torch.linspace(0.0, 0.2, batch)
    return FaceState(identity=torch.zeros(1, 10), expression=torch.zeros(batch, model.n_expression),
                     euler=euler, translation=torch.tensor([[0.0, 10.0, DISTANCE]]).repeat(batch, 1),
                     focal=torch.full((batch,), FOCAL), sh=sh, diffuse=diffuse,
                     specular=torch.full((1, 16, 16, 3), 0.04), roughness=torch.full((1, 16, 16, 1), 0.4))


def _result_folder(folder: Path, model_name: str, n_vertices: int, state: FaceState, item: int = 0,
                   fingerprint: str = "") -> Path:
    """A result folder as `write_results` lays it out (the parts replay reads); `fingerprint` is
    the model's that the checkpoints record."""
    (folder / "checkpoints").mkdir(parents=True)
    params = {"format": "mfface-fit", "version": 1,
              "image": {"name": folder.name, "crop_size_px": CROP},
              "model": {"name": model_name, "n_vertices": n_vertices},
              "pose": {"euler_rad": state.euler[item].tolist(),
                       "translation_mm": state.translation[item].tolist()}}
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "config.toml").write_text(to_toml(FitConfig()))
    owner = CheckpointOwner(model_name, fingerprint, ("photo",))
    save_checkpoint(folder / "checkpoints" / "stage2.npz", state, 2, owner)
    save_checkpoint(folder / "checkpoints" / "stage3.npz", state, 3, owner)
    return folder


@pytest.fixture
def result(tmp_path, ict, installed_ict) -> Path:
    return _result_folder(tmp_path / "photo", installed_ict, ict.n_vertices, _state(ict),
                          fingerprint=ict.fingerprint())


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["replay", *map(str, args)])


# -- turntable geometry --------------------------------------------------------------------------

def test_yaw_offsets_start_at_the_fit_swing_half_the_range_and_loop():
    yaws = yaw_offsets(8, 60.0)
    assert yaws[0] == 0.0
    assert float(yaws.max()) == pytest.approx(math.radians(30.0))
    assert float(yaws.min()) == pytest.approx(-math.radians(30.0))
    assert torch.allclose(yaws, -yaws.flip(0).roll(1), atol=1e-12)  # symmetric swing


def test_turned_vertices_rotate_rigidly_about_the_head_centre(ict):
    state = _state(ict)
    state.euler, state.translation = state.euler.double(), state.translation.double()
    vertices = ict.vertices(state.identity, state.expression).double()
    centre = head_centre(vertices)
    posed = to_camera(vertices, state.euler, state.translation)
    assert torch.allclose(turned_vertices(vertices, state, 0.0), posed, atol=1e-9)
    yaw = math.radians(20.0)
    turned = turned_vertices(vertices, state, yaw)
    with_centre = turned_vertices(torch.cat([vertices, centre[:, None]], 1), state, yaw)
    centre_cam = to_camera(centre[:, None], state.euler, state.translation)
    assert torch.allclose(with_centre[:, -1:], centre_cam, atol=1e-9)  # the pivot stays put
    sample = torch.randperm(ict.n_vertices)[:200]
    dist = lambda v: torch.cdist(v[0, sample], v[0, sample], compute_mode="donot_use_mm_for_euclid_dist")  # noqa: E731
    assert torch.allclose(dist(turned), dist(posed), atol=1e-9)       # rigid
    nose = int(vertices[0, :, 2].argmax())
    assert turned[0, nose, 0] > posed[0, nose, 0] + 10.0              # nose towards image right
    assert torch.allclose(turned[0, :, 1], posed[0, :, 1], atol=1e-9)  # vertical axis: y unchanged


def test_parts_turn_with_the_face(ict):
    """Eyes, teeth and mouth turn about the face's own head centre, rigidly with the face."""
    state = _state(ict)
    state.euler, state.translation = state.euler.double(), state.translation.double()
    face = ict.vertices(state.identity, state.expression).double()
    parts = ict.part_vertices(state.identity, state.expression).double()
    centre = head_centre(face)
    yaw = math.radians(25.0)
    turned_face = turned_vertices(face, state, yaw, centre)
    turned_parts = turned_vertices(parts, state, yaw, centre)
    torch.testing.assert_close(turned_face, turned_vertices(face, state, yaw))  # default centre
    sample = torch.arange(0, ict.n_part_vertices, 97)
    dist = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")  # noqa: E731
    before = dist(face[0, ::50], parts[0, sample])
    torch.testing.assert_close(dist(turned_face[0, ::50], turned_parts[0, sample]), before,
                               atol=1e-9, rtol=0)


def test_turntable_frames_have_no_holes_where_the_eyes_are(variant, result, monkeypatch):
    """Every turntable frame's coverage is solid inside the head's outline; without the parts
    the eyes and mouth leave holes (what replay showed before)."""
    from scipy import ndimage

    from mfface.forward import ForwardModel

    coverages = []
    original = ForwardModel.render

    def recording(self, *args, **kwargs):
        image, coverage = original(self, *args, **kwargs)
        coverages.append(coverage[0].numpy())
        return image, coverage

    monkeypatch.setattr(ForwardModel, "render", recording)
    face = load_fitted_face(result)
    settings = ReplaySettings(frames=4, spp=4, size=64)
    render_turntable(face, settings)
    bare = dataclasses.replace(face, model=dataclasses.replace(face.model, parts=[]))
    render_turntable(bare, settings)

    def holes(coverage: np.ndarray) -> int:
        solid = ndimage.binary_fill_holes(coverage > 0.5)
        return int((solid & (coverage < 0.5)).sum())

    assert [holes(c) for c in coverages[:4]] == [0, 0, 0, 0]
    assert all(holes(c) > 0 for c in coverages[4:])


# -- light presets ------------------------------------------------------------------------------

def test_presets_have_unit_exposure_and_light_from_their_side():
    left_normal, right_normal = torch.tensor([[-1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    for name in preset_names():
        assert float(exposure(preset_sh(name, 9))) == pytest.approx(1.0, rel=1e-4)
    left = preset_sh("left", 9)
    assert (irradiance(left, left_normal) > 3 * irradiance(left, right_normal)).all()
    top = preset_sh("top", 9)
    assert (irradiance(top, torch.tensor([[0.0, 1.0, 0.0]]))
            > 3 * irradiance(top, torch.tensor([[0.0, -1.0, 0.0]]))).all()
    ambient = preset_sh("ambient", 3)
    assert torch.allclose(ambient[0], torch.full((3,), math.sqrt(4 * math.pi)), rtol=1e-3)
    assert ambient[1:].abs().max() < 1e-3


def test_replay_light_matches_the_fitted_exposure_and_bands(ict):
    state = _state(ict)
    state.sh = initial_coefficients(3, 0.7, batch=1)
    assert replay_light(state, "fitted") is state.sh
    relit = replay_light(state, "studio")
    assert relit.shape == (1, 9, 3)
    assert float(exposure(relit[0])) == pytest.approx(0.7, rel=1e-3)
    with pytest.raises(ReplayError, match="Unknown light preset 'disco'"):
        replay_light(state, "disco")


def test_preset_relights_the_face_from_its_side(variant, result):
    """Fitted light comes from the image right; the 'left' preset from the image left."""
    face = load_fitted_face(result)

    def right_minus_left(light: str) -> float:
        frame = render_turntable(face, ReplaySettings(frames=2, spp=2, size=24, light=light))[0]
        grey = frame.astype(np.float64).mean(-1)
        return float(grey[:, 12:].mean() - grey[:, :12].mean())

    assert right_minus_left("fitted") > 5.0
    assert right_minus_left("left") < -5.0


# -- the command --------------------------------------------------------------------------------

def test_replay_writes_gif_and_mp4_with_the_frames_turning(variant, result):
    run = _invoke(result, "--frames", 4, "--spp", 1, "--fps", 10)
    assert run.exit_code == 0, run.output
    gif = iio.imread(result / "turntable.gif", index=None)
    assert gif.shape == (4, CROP, CROP, 3)
    assert iio.immeta(result / "turntable.gif")["duration"] == 100
    mp4 = iio.imread(result / "turntable.mp4", plugin="FFMPEG", index=None)
    assert iio.immeta(result / "turntable.mp4", plugin="FFMPEG")["fps"] == pytest.approx(10.0)
    assert mp4.shape == (4, CROP, CROP, 3)
    g = gif.astype(np.int16)
    assert np.abs(g[1] - g[0]).mean() > 2.0        # the head turns
    assert np.abs(g[3] - g[1]).mean() > 2.0        # to both sides
    assert np.abs(g[2] - g[0]).mean() < 0.5        # and comes back (frames 0 and 2: yaw 0)
    assert np.abs(mp4.astype(np.int16)[1] - g[1]).mean() < 12.0
    assert not list(result.glob(".*.tmp*"))         # nothing half-written left behind


def test_replay_of_a_folder_of_results_odd_size_and_preset(variant, tmp_path, ict, installed_ict):
    state = _state(ict, batch=2)
    for item, name in enumerate(("a", "b")):
        _result_folder(tmp_path / "fits" / name, installed_ict, ict.n_vertices, state, item,
                       fingerprint=ict.fingerprint())
    run = _invoke(tmp_path / "fits", "--frames", 3, "--spp", 1, "--size", 25, "--light", "sunset")
    assert run.exit_code == 0, run.output
    for name in ("a", "b"):
        assert iio.imread(tmp_path / "fits" / name / "turntable.gif", index=None).shape == (3, 25, 25, 3)
        mp4 = iio.imread(tmp_path / "fits" / name / "turntable.mp4", plugin="FFMPEG", index=None)
        assert mp4.shape == (3, 26, 26, 3)          # H.264 needs even sizes: padded by one row/column


def test_each_folder_replays_its_own_photo_of_a_shared_checkpoint(tmp_path, ict, installed_ict):
    state = _state(ict, batch=2)
    folder = _result_folder(tmp_path / "second", installed_ict, ict.n_vertices, state, item=1,
                            fingerprint=ict.fingerprint())
    face = load_fitted_face(folder)
    assert face.state.batch == 1
    assert torch.equal(face.state.euler, state.euler[1:2])
    assert face.crop_size == CROP


# -- bad input ----------------------------------------------------------------------------------

def _fails(run, *fragments: str) -> None:
    assert run.exit_code != 0
    assert run.output.startswith("Error: ") and run.output.count("\n") == 1, run.output
    for fragment in fragments:
        assert fragment in run.output, run.output


def test_missing_folder_and_folder_without_results(tmp_path):
    _fails(_invoke(tmp_path / "nope"), "does not exist")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    _fails(_invoke(tmp_path / "empty"), "is not a result folder", "mfface fit")


def test_corrupt_params_json(result):
    (result / "params.json").write_text("{not json")
    _fails(_invoke(result), "params.json is not valid JSON")
    (result / "params.json").write_text(json.dumps({"format": "something else"}))
    _fails(_invoke(result), "is not an mfface fit's params.json")


def test_corrupt_or_missing_checkpoint(result):
    (result / "checkpoints" / "stage3.npz").write_bytes(b"garbage")
    _fails(_invoke(result), "stage3.npz is damaged or not an mfface checkpoint")
    shutil.rmtree(result / "checkpoints")
    _fails(_invoke(result), "has no checkpoints/stageN.npz")


def test_corrupt_config(result):
    (result / "config.toml").write_text("[render\n")
    _fails(_invoke(result), "config.toml is not valid TOML")


def test_model_not_installed(tmp_path, ict):
    folder = _result_folder(tmp_path / "r", "bfm2017", 53149, _state(ict))
    _fails(_invoke(folder), "'bfm2017' is not installed", "mfface models install bfm2017")


def test_model_that_differs_from_the_fitted_one(tmp_path, ict, installed_ict):
    folder = _result_folder(tmp_path / "r", installed_ict, ict.n_vertices + 1, _state(ict),
                            fingerprint=ict.fingerprint())
    _fails(_invoke(folder), "different 'ict' model", "mfface models install ict")


def test_unknown_preset_and_bad_options(result):
    _fails(_invoke(result, "--light", "disco"), "Unknown light 'disco'", "studio")
    assert _invoke(result, "--frames", 1).exit_code == 2
    assert _invoke(result, "--yaw-range", 0).exit_code == 2
    with pytest.raises(ReplayError, match="--size 4 is too small"):
        ReplaySettings(size=4).check()
