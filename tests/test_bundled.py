"""The built-in model (`ict-lite`) and the sample photo shipped inside the package.

The shipped model must be exactly what `python -m mfface.morphable.build_bundled` makes from the
shared ICT-FaceKit archive; a damaged copy is reported with the command that restores it.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import data_file
from mfface.cli.main import cli
from mfface.morphable import builtin
from mfface.morphable.build_bundled import derive, main, write_bundle
from mfface.morphable.builtin import (BUILTIN_NAME, CHECKSUM_FILE, CREDITS_FILE, LICENSE_FILE,
                                      MODEL_FILE, N_IDENTITY, BundledModelError, load_builtin)
from mfface.morphable.format import STORAGE_COMPACT, read_header
from mfface.morphable.store import ModelStore
from mfface.sample import NOTICE_FILE, SOURCE_SHA256, derive_example_photo, example_photo_path

SHIPPED = Path(builtin.__file__).parent / "data"
FACE_FINGERPRINT = "1cca1cd802e589ce"  # ict-lite's fingerprint since it shipped (without parts)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    """The bundle made by the build script's command line from the shared archive."""
    out = tmp_path_factory.mktemp("bundle")
    assert main([str(data_file("ICT-FaceKit.tar.xz")), str(out)]) == 0
    return out


def test_shipped_model_is_what_the_build_script_makes(rebuilt):
    shipped, made = _arrays(SHIPPED / MODEL_FILE), _arrays(rebuilt / MODEL_FILE)
    assert list(shipped) == list(made)
    for key in shipped:
        assert shipped[key].dtype == made[key].dtype, key
        np.testing.assert_array_equal(shipped[key], made[key], err_msg=key)
    for name in (LICENSE_FILE, CREDITS_FILE):
        assert (SHIPPED / name).read_bytes() == (rebuilt / name).read_bytes()
    # each checksum file is the SHA256 of the model beside it
    for folder in (SHIPPED, rebuilt):
        recorded = (folder / CHECKSUM_FILE).read_text().split()
        assert recorded == [hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest(), MODEL_FILE]


def test_build_is_deterministic(rebuilt, ict, tmp_path):
    """The same model written again gives the same bytes (fixed zip timestamps, member order)."""
    texts = {"LICENSE": (rebuilt / LICENSE_FILE).read_bytes(),
             "CREDITS.md": (rebuilt / CREDITS_FILE).read_bytes()}
    paths = write_bundle(derive(ict), texts, tmp_path)
    assert paths["model"].read_bytes() == (rebuilt / MODEL_FILE).read_bytes()


def test_shipped_model_content(ict):
    header = read_header(SHIPPED / MODEL_FILE)
    assert header["name"] == BUILTIN_NAME and header["storage"] == STORAGE_COMPACT
    assert (SHIPPED / MODEL_FILE).stat().st_size < 8_000_000  # 4.2 MB face + 3.1 MB parts
    model = load_builtin()
    assert (model.n_vertices, model.n_identity, model.n_expression) == (9547, N_IDENTITY, 55)
    assert model.identity_basis.dtype == np.float32 and model.expression_basis.dtype == np.float32
    np.testing.assert_array_equal(model.mean_shape, ict.mean_shape)
    np.testing.assert_array_equal(model.triangles, ict.triangles)
    np.testing.assert_array_equal(model.uvs, ict.uvs)
    for name in ict.landmarks:
        np.testing.assert_array_equal(model.landmarks[name], ict.landmarks[name])
    for name in ict.regions:
        np.testing.assert_array_equal(model.regions[name], ict.regions[name])
    # float16 rounding of the bases: below 0.02 mm per basis value (ICT's are up to ~30 mm)
    assert np.abs(model.identity_basis - ict.identity_basis[:N_IDENTITY]).max() < 0.02
    assert np.abs(model.expression_basis - ict.expression_basis).max() < 0.02
    assert model.expression_names == ict.expression_names and model.expression_range == (0.0, 1.0)
    assert "MIT License" in model.license and "Copyright (c) 2020" in model.license
    assert "da5f95a607f5e6b37755b38d3385d7f2853732e5" in model.provenance
    assert f"identity modes 0..{N_IDENTITY - 1} of 100" in model.provenance
    # the parts (eyeballs, mouth interior, teeth) ship too, cut to the same identity modes
    assert [p.name for p in model.parts] == [p.name for p in ict.parts]
    for part, full in zip(model.parts, ict.parts):
        assert part.identity_basis.shape == (N_IDENTITY, part.n_vertices, 3)
        np.testing.assert_array_equal(part.triangles, full.triangles)
        assert np.abs(part.identity_basis - full.identity_basis[:N_IDENTITY]).max() < 0.02
        assert np.abs(part.expression_basis - full.expression_basis).max() < 0.02
    # the face is what it was before the model had parts: fits and checkpoints stay valid
    assert model.fingerprint() == FACE_FINGERPRINT
    assert "MIT" in (SHIPPED / LICENSE_FILE).read_text()
    assert "ICT-FaceKit - Credits" in (SHIPPED / CREDITS_FILE).read_text()


def _damaged_copy(monkeypatch, tmp_path: Path, checkout: bool) -> Path:
    """Point the package data at a copy of it (a source checkout or an installed package) whose
    model has one byte changed; returns the damaged file."""
    data = tmp_path / "pkg" / "morphable" / "data"
    shutil.copytree(SHIPPED, data)
    if checkout:
        (tmp_path / "pkg" / ".git").mkdir()
        (tmp_path / "pkg" / "setup.sh").write_text("")
    model = data / MODEL_FILE
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    monkeypatch.setattr(builtin, "data_path", lambda name: data / name)
    return model


@pytest.mark.parametrize("checkout, command", [
    (False, "`pip install --force-reinstall mfface`"),
    (True, "checkout -- morphable/data` and run ./setup.sh again")])
def test_damaged_builtin_model_names_the_fix(monkeypatch, tmp_path, checkout, command):
    damaged = _damaged_copy(monkeypatch, tmp_path, checkout)
    with pytest.raises(BundledModelError) as caught:
        ModelStore(tmp_path / "store").load()
    message = str(caught.value)
    assert f"the built-in model {damaged} is damaged" in message and command in message
    result = CliRunner().invoke(cli, ["models", "info", BUILTIN_NAME],
                                env={"MFFACE_HOME": str(tmp_path / "home")})
    assert result.exit_code == 1 and result.output.count("Error:") == 1
    assert "is damaged" in result.output and "Traceback" not in result.output
    listing = CliRunner().invoke(cli, ["models", "list"], env={"MFFACE_HOME": str(tmp_path / "home")})
    assert listing.exit_code == 0 and "unusable" in listing.output
    doctor = CliRunner().invoke(cli, ["doctor"], env={"MFFACE_HOME": str(tmp_path / "home")})
    assert doctor.exit_code == 0 and "unusable" in doctor.output


def test_missing_checksum_file(monkeypatch, tmp_path):
    _damaged_copy(monkeypatch, tmp_path, checkout=False)
    (tmp_path / "pkg" / "morphable" / "data" / CHECKSUM_FILE).unlink()
    with pytest.raises(BundledModelError, match="checksum file .* is missing.*pip install"):
        ModelStore(tmp_path / "store").load()


def test_doctor_names_the_model_in_use(tmp_path, ict):
    from mfface.morphable.format import save_model

    env = {"MFFACE_HOME": str(tmp_path)}
    fresh = " ".join(CliRunner().invoke(cli, ["doctor"], env=env).output.split())
    assert f"ict-lite (built in, {N_IDENTITY} identity modes; no model installed in" in fresh
    assert "`mfface models install ict` installs the full ICT model" in fresh
    save_model(ict, tmp_path / "models" / "ict.mfmodel")
    store = ModelStore(tmp_path / "models")
    store.set_default("ict")
    chosen = " ".join(CliRunner().invoke(cli, ["doctor"], env=env).output.split())
    assert "ict (the default, 100 identity modes, installed in" in chosen
    (tmp_path / "models" / "default").write_text("gone\n")
    broken = " ".join(CliRunner().invoke(cli, ["doctor"], env=env).output.split())
    assert "none: the default-model marker" in broken and "names 'gone'" in broken


def test_sample_photo():
    path = example_photo_path()
    assert path.is_file() and path.suffix == ".jpg" and path.stat().st_size < 100_000
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (320, 320) and image.mode == "RGB"
    notice = (path.parent / NOTICE_FILE).read_text()
    assert "public domain" in notice and SOURCE_SHA256 in notice and "NASA" in notice


def test_sample_photo_is_derived_from_the_astronaut(tmp_path):
    """The shipped JPEG is what `python -m mfface.sample` makes from astronaut.png (the shared
    copy is byte-identical to scikit-image's); decoded pixels agree up to JPEG codec rounding."""
    made = derive_example_photo(data_file("images/astronaut.png"), tmp_path / "example.jpg")
    with Image.open(made) as a, Image.open(example_photo_path()) as b:
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
    assert diff.mean() < 0.5 and diff.max() <= 8
    with pytest.raises(ValueError, match="is not scikit-image's astronaut.png"):
        derive_example_photo(made, tmp_path / "again.jpg")


def test_sample_photo_has_a_face():
    from mfface.landmarks import LandmarkDetector

    with Image.open(example_photo_path()) as image:
        rgb = np.asarray(image.convert("RGB"))
    with LandmarkDetector(max_num_faces=1) as detector:
        points = detector.detect(rgb)
    width = points[:, 0].max() - points[:, 0].min()
    assert 120 < width < 200  # px: comfortably above the detector's limit


def test_build_script_reports_a_bad_source(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out")]) == 1
    assert "Error:" in capsys.readouterr().err
    assert not (tmp_path / "out" / MODEL_FILE).exists()
