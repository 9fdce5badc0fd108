"""`mfface models` through click's CliRunner: install over HTTP (loopback), list, info, default, remove."""
from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from functools import partial

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import data_file
from mfface.cli.main import cli
from mfface.morphable.store import ModelStore
from mfface.sample import example_photo_path

ARCHIVE_SHA256 = "0a9f5b67beb11d5261c6ff319f866e586afd6dee57b47e821fb028a776baf850"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """MFFACE_HOME with 'ict' installed by `mfface models install ict --from URL --sha256 ...`."""
    archive = data_file("ICT-FaceKit.tar.xz")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Quiet, directory=str(archive.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path_factory.mktemp("cli_home")
    url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
    try:
        result = CliRunner().invoke(cli, ["models", "install", "ict", "--from", url,
                                          "--sha256", ARCHIVE_SHA256], env={"MFFACE_HOME": str(home)})
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    return home


def run(home, *args):
    return CliRunner().invoke(cli, ["models", *args], env={"MFFACE_HOME": str(home)})


def test_install_list_info(installed, ict):  # noqa: F811
    listing = run(installed, "list")
    assert listing.exit_code == 0 and "ict" in listing.output and "*" in listing.output
    rows = {line.split("│")[2].strip(): line for line in listing.output.splitlines() if "│" in line}
    assert "*" in rows["ict"] and "*" not in rows["ict-lite"] and "built in" in rows["ict-lite"]
    assert "100" in rows["ict"] and "installed" in rows["ict"]
    info = run(installed, "info", "ict")
    assert info.exit_code == 0
    assert "9547 / 18460" in info.output and "MIT License" in info.output
    model = ModelStore(installed / "models").load()
    assert ARCHIVE_SHA256 in model.provenance and "(verified)" in model.provenance
    np.testing.assert_array_equal(model.mean_shape, ict.mean_shape)
    np.testing.assert_array_equal(model.landmarks["mediapipe478"], ict.landmarks["mediapipe478"])


def test_default_and_remove(installed, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(installed / "models", home / "models")
    shutil.copy(home / "models" / "ict.mfmodel", home / "models" / "ict-narrow.mfmodel")
    assert run(home, "default", "ict-narrow").exit_code == 0
    assert ModelStore(home / "models").default_name() == "ict-narrow"
    removed = run(home, "remove", "ict-narrow")
    assert removed.exit_code == 0 and "The default model is ict-lite." in removed.output
    assert ModelStore(home / "models").default_name() == "ict-lite"
    gone = run(home, "remove", "ict-narrow")
    assert gone.exit_code == 1
    assert "Error: face model 'ict-narrow' is not installed" in gone.output
    assert "mfface models install ict --region narrow" in gone.output


def test_user_errors(tmp_path):
    for args, message in ((["info", "ict"], "mfface models install ict"),
                          (["install", "bfm2009"], "University of Basel"),
                          (["install", "flame"], "unknown model 'flame'"),
                          (["install", "ict", "--from", str(tmp_path / "none.zip")], "does not exist"),
                          (["default", "ict"], "is not installed"),
                          (["remove", "ict-lite"], "built into mfface and cannot be removed"),
                          (["install", "ict-lite"], "needs no install"),
                          (["install", "ict", "--from", "ftp://example.com/a.zip"], "mfface downloads")):
        result = run(tmp_path, *args)
        assert result.exit_code == 1 and result.output.count("Error:") == 1, result.output
        assert message in " ".join(result.output.split())
        if args[:2] in (["install", "ict-lite"], ["install", "flame"]):  # a bad name: no "Installing"
            assert "Installing" not in result.output
    listing = run(tmp_path, "list")
    assert "No models installed" in listing.output and "ict-lite" in listing.output
    assert "built in" in listing.output


def test_builtin_model_on_a_fresh_machine(tmp_path):
    """Nothing installed: the built-in model is listed, is the default, can be inspected and chosen."""
    info = run(tmp_path, "info", "ict-lite")
    assert info.exit_code == 0, info.output
    assert "ict-lite (built in, default)" in info.output and "float16" in info.output
    assert "MIT License" in info.output and "50 / 55" in info.output
    chosen = run(tmp_path, "default", "ict-lite")
    assert chosen.exit_code == 0 and (tmp_path / "models" / "default").read_text() == "ict-lite\n"
    (tmp_path / "models" / "ict-lite.mfmodel").write_bytes(b"a user file with the built-in name")
    for args in (["info", "ict-lite"], ["default", "ict-lite"]):
        refused = run(tmp_path, *args)
        assert refused.exit_code == 1 and refused.output.count("Error:") == 1
        assert "has the name of the model built into mfface" in " ".join(refused.output.split())
    fitted = CliRunner().invoke(cli, ["fit", str(example_photo_path()), "-o", str(tmp_path / "out")],
                                env={"MFFACE_HOME": str(tmp_path)})
    assert fitted.exit_code == 1 and fitted.output.count("Error:") == 1, fitted.output
    assert "has the name of the model built into mfface" in " ".join(fitted.output.split())


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["../../evil/x", "../evil/x", "/abs/evil/x", "..", "evil/../x"])
def test_model_names_stay_inside_the_store(tmp_path, name):
    """`remove`, `info`, `default`, `install` and `fit --model` refuse a path-like name with one
    line; the file outside the store that the name points at is untouched."""
    home = tmp_path / "home" / "sub"
    (home / "models").mkdir(parents=True)
    (home / "models" / "default").write_text("ict-lite\n")
    evil = tmp_path / "home" / "evil"
    evil.mkdir()
    victim = evil / "x.mfmodel"
    victim.write_bytes(b"not yours")
    before = _digest(victim), _digest(home / "models" / "default")
    for args in (["remove", name], ["info", name], ["default", name], ["install", name]):
        result = run(home, *args)
        assert result.exit_code == 1 and result.output.count("Error:") == 1, result.output
        assert "invalid model name" in result.output and "Traceback" not in result.output
    fitted = CliRunner().invoke(cli, ["fit", str(example_photo_path()), "-o", str(tmp_path / "out"),
                                      "--model", name], env={"MFFACE_HOME": str(home)})
    assert fitted.exit_code == 1 and "invalid model name" in fitted.output, fitted.output
    assert (_digest(victim), _digest(home / "models" / "default")) == before
    assert sorted(p.name for p in (home / "models").iterdir()) == ["default"]


@pytest.mark.parametrize("command", ["list", "install", "info", "remove", "default"])
def test_help(command):
    result = CliRunner().invoke(cli, ["models", command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_unusable_default_marker_is_named_by_list_and_fit(tmp_path):
    """Only the marker is wrong (names a model that is not there): say that and list the models."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "default").write_text("gone\n")
    listing = run(tmp_path, "list")
    text = " ".join(listing.output.split())
    assert listing.exit_code == 0 and "No default model:" in text and "names 'gone'" in text
    fitted = CliRunner().invoke(cli, ["fit", str(example_photo_path()), "-o", str(tmp_path / "out")],
                                env={"MFFACE_HOME": str(tmp_path)})
    text = " ".join(fitted.output.split())
    assert fitted.exit_code == 1 and text.count("Error:") == 1, fitted.output
    assert "the default-model marker" in text and "names 'gone', which is not installed" in text
    assert "installed: none; built in: ict-lite" in text and "no face model is installed" not in text
