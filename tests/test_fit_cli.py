"""`mfface fit` through click's runner: outputs, folder batches, resuming, and every bad input."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from click.testing import CliRunner
from PIL import Image

from conftest import command_fails, data_file, run_command
from mfface.cli.main import cli
from mfface.config import load_config
from mfface.checkpoints import load_checkpoint

# Tiny settings: 48 px crops, 1-2 spp, a handful of iterations; what is checked is the plumbing.
TINY = ["--input-max-resolution", "48", "--stage1-iterations", "20", "--stage2-iterations", "4",
        "--stage2-geometry-start", "2", "--stage3-iterations", "3", "--stage2-spp", "1",
        "--stage3-spp", "1", "--render-final-spp", "2", "--render-texture-size", "32",
        "--stage2-albedo-resolution", "16"]
OUTPUTS = ["mesh.obj", "mesh.mtl", "mesh_diffuse.png", "mesh_specular.png", "mesh_roughness.png",
           "mesh.glb", "envmap.exr", "envmap.hdr", "envmap.png", "render.png", "overview.png", "landmarks.png",
           "losses.png", "params.json", "config.toml", "checkpoints/stage1.npz",
           "checkpoints/stage2.npz", "checkpoints/stage3.npz"]


run = functools.partial(run_command, "fit")
fail = functools.partial(command_fails, "fit")  # a fit that must fail with one clear `Error:` line


@pytest.fixture(scope="module")
def fitted(installed_ict, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit")
    result = run(str(data_file("images/astronaut.png")), "-o", str(out), *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_every_output(fitted: Path) -> None:
    folder = fitted / "astronaut"
    for name in OUTPUTS:
        assert (folder / name).is_file(), name
    assert not list(fitted.glob(".*")), "temporary or checkpoint folders were left behind"
    params = json.loads((folder / "params.json").read_text())
    assert params["model"]["name"] == "ict"
    assert len(params["light"]["sh_rgb"]) == 81
    assert set(params["expression"]) == set(params["model"]["expression_names"])
    assert 0 < params["camera"]["focal_px_crop"] < 10_000
    uncertainty = params["uncertainty"]   # README "Reading the uncertainty"
    assert len(uncertainty["identity_std"]) == params["model"]["identity_components"]
    assert set(uncertainty["expression_std"]) == set(params["expression"])
    assert uncertainty["scale_std"] > 0 and uncertainty["visible_landmarks"] > 100
    width, height = params["image"]["size_px"]  # the principal point is the photo's centre
    assert params["camera"]["principal_px_image"] == pytest.approx([width / 2, height / 2], abs=1e-3)
    box, scale = params["image"]["crop_box_px"], params["image"]["crop_scale"]
    assert params["camera"]["principal_px_crop"] == pytest.approx(
        [(width / 2 - box["x0"]) * scale, (height / 2 - box["y0"]) * scale], abs=1e-4)
    assert params["pose"]["translation_mm"][2] > 0  # the face is in front of the camera
    assert load_config(folder / "config.toml").stage2.iterations == 4
    overview = np.asarray(Image.open(folder / "overview.png"))
    assert overview.shape[1] > 6 * overview.shape[0] // 2 and overview.std() > 5
    mesh = trimesh.load(folder / "mesh.glb", force="mesh")
    obj = trimesh.load(folder / "mesh.obj", force="mesh", process=False)
    assert len(obj.vertices) == 9547
    # GLB is in metres, OBJ in millimetres: the same head, 1000x apart.
    assert np.ptp(obj.vertices[:, 1]) == pytest.approx(1000 * np.ptp(mesh.vertices[:, 1]), rel=1e-3)


def test_checkpoint_resume_reproduces_the_fit(fitted: Path, tmp_path: Path) -> None:
    folder = fitted / "astronaut"
    result = run(str(data_file("images/astronaut.png")), "-o", str(tmp_path), *TINY,
                 "--checkpoint", str(folder / "checkpoints" / "stage2.npz"))
    assert result.exit_code == 0, result.output
    first, stage, _ = load_checkpoint(folder / "checkpoints" / "stage3.npz")
    again, _, _ = load_checkpoint(tmp_path / "astronaut" / "checkpoints" / "stage3.npz")
    assert stage == 3
    for name in ("diffuse", "specular", "roughness", "sh", "euler", "expression"):
        np.testing.assert_allclose(getattr(again, name).numpy(), getattr(first, name).numpy(),
                                   atol=1e-4, err_msg=name)


def test_folder_batch_skips_a_bad_image(installed_ict, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data_file("images/astronaut.png"), photos / "astronaut.png")
    (photos / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fit", str(photos), "-o", str(out), *TINY])
    assert result.exit_code == 1
    assert "skipped" in result.output and "broken.png" in result.output
    assert "1 of 2 photos could not be processed" in result.output
    assert (out / "astronaut" / "params.json").is_file()
    assert not (out / "broken").exists()


def test_missing_file(installed_ict, tmp_path: Path) -> None:
    assert "does not exist" in fail(str(tmp_path / "nope.png"), "-o", str(tmp_path / "out"))


def test_file_that_is_not_an_image(installed_ict, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    assert "not an image" in fail(str(fake), "-o", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "fake").exists()


def test_image_without_a_face(installed_ict, tmp_path: Path) -> None:
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(blank)
    assert "No face was found" in fail(str(blank), "-o", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "wall").exists()


def test_model_not_installed(installed_ict, tmp_path: Path) -> None:
    output = fail(str(data_file("images/astronaut.png")), "-o", str(tmp_path / "out"), "--model", "bfm2017")
    assert "mfface models install bfm2017" in output


def test_output_folder_that_cannot_be_written(installed_ict, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert "cannot write results" in fail(str(data_file("images/astronaut.png")), "-o", str(blocker / "out"))


def test_config_with_unknown_key(installed_ict, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[stage2]\niterationz = 3\n")
    output = fail(str(data_file("images/astronaut.png")), "-o", str(tmp_path / "out"), "--config", str(config))
    assert "iterationz" in output and "valid keys" in output


def test_config_with_wrong_type(installed_ict, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[stage2]\niterations = "many"\n')
    output = fail(str(data_file("images/astronaut.png")), "-o", str(tmp_path / "out"), "--config", str(config))
    assert "stage2.iterations must be an integer" in output


def test_landmark_file_for_several_photos_is_refused(installed_ict, tmp_path: Path) -> None:
    pts = data_file("images/takeo.pts")
    output = fail(str(data_file("images/astronaut.png")), str(data_file("images/takeo.ppm")),
                  "-o", str(tmp_path / "out"), "--landmarks", str(pts))
    assert "one photo" in output


def test_fit_with_an_ibug68_landmark_file(installed_ict, tmp_path: Path, monkeypatch) -> None:
    import mfface.landmarks

    def no_detector(*args, **kwargs):
        raise AssertionError("a fit from a landmark file built MediaPipe's detector")

    monkeypatch.setattr(mfface.landmarks, "LandmarkDetector", no_detector)
    result = run(str(data_file("images/takeo.ppm")), "-o", str(tmp_path), *TINY,
                 "--landmarks", str(data_file("images/takeo.pts")))
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "takeo" / "params.json").read_text())
    assert params["fit"]["stage1_landmark_rms_px"] < 5.0


def test_fit_from_a_mediapipe_landmark_file_needs_no_mediapipe(installed_ict, tmp_path: Path, monkeypatch) -> None:
    """Landmarks detected elsewhere (here by MediaPipe, before it is made unimportable) are all a
    fit needs: a machine without MediaPipe (a GPU server with numpy 2, say) fits from the file."""
    import sys

    from mfface.landmarks import LandmarkDetector

    photo = data_file("images/astronaut.png")
    with LandmarkDetector() as detector:
        points = detector.detect(np.asarray(Image.open(photo).convert("RGB")))
    np.save(tmp_path / "landmarks.npy", points)
    monkeypatch.setitem(sys.modules, "mediapipe", None)   # any import of it now fails
    result = run(str(photo), "-o", str(tmp_path / "out"), *TINY, "--landmarks", str(tmp_path / "landmarks.npy"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "astronaut" / "params.json").is_file()


def test_shared_identity_shares_identity_and_maps(installed_ict, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(data_file("images/astronaut.png"), photos / "a.png")
    flipped = np.asarray(Image.open(data_file("images/astronaut.png")))[:, ::-1]
    Image.fromarray(np.ascontiguousarray(flipped)).save(photos / "b.png")
    result = run(str(photos), "-o", str(tmp_path / "out"), "--shared-identity",
                 *TINY, "--stage1-fit-identity")
    assert result.exit_code == 0, result.output
    a = json.loads((tmp_path / "out" / "a" / "params.json").read_text())
    b = json.loads((tmp_path / "out" / "b" / "params.json").read_text())
    assert a["identity"] == b["identity"] and any(abs(v) > 0 for v in a["identity"])
    assert a["fit"]["shared_identity_with"] == ["b"]
    # The mirrored photo turns the head the other way: yaw changes sign.
    assert a["pose"]["yaw_pitch_roll_deg"][0] * b["pose"]["yaw_pitch_roll_deg"][0] <= 0 or \
        abs(a["pose"]["yaw_pitch_roll_deg"][0]) < 2
    same = (Image.open(tmp_path / "out" / "a" / "mesh_diffuse.png"), Image.open(tmp_path / "out" / "b" / "mesh_diffuse.png"))
    assert np.array_equal(np.asarray(same[0]), np.asarray(same[1]))


def test_example_fits_the_bundled_portrait_with_the_built_in_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MFFACE_HOME", str(tmp_path / "empty_home"))   # nothing installed: ict-lite
    result = CliRunner().invoke(cli, ["fit", "--example", "-o", str(tmp_path / "out"), *TINY])
    assert result.exit_code == 0, result.output
    assert "model ict-lite" in result.output and "Results: " in result.output
    params = json.loads((tmp_path / "out" / "example_face" / "params.json").read_text())
    assert params["model"]["name"] == "ict-lite"


def test_example_and_photos_or_neither_are_refused(tmp_path: Path) -> None:
    assert "not both" in fail("--example", str(data_file("images/astronaut.png")), "-o", str(tmp_path))
    assert "--example for the sample portrait" in fail("-o", str(tmp_path))


def test_ranks_of_a_distributed_run_split_a_folder(installed_ict, tmp_path: Path, monkeypatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(data_file("images/astronaut.png"), photos / f"{name}.png")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run(str(photos), "-o", str(tmp_path / "out"), *TINY)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b"]   # rank 1 of 2: the 2nd photo
