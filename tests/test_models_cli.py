"""`mfface models` through click's CliRunner: install over HTTP (loopback), list, info, default, remove."""
from __future__ import annotations

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
    assert run(home, "remove", "ict-narrow").exit_code == 0
    assert ModelStore(home / "models").default_name() is None
    gone = run(home, "remove", "ict-narrow")
    assert gone.exit_code == 1
    assert "Error: face model 'ict-narrow' is not installed" in gone.output
    assert "mfface models install ict --region narrow" in gone.output


def test_user_errors(tmp_path):
    for args, message in ((["info", "ict"], "mfface models install ict"),
                          (["install", "bfm2009"], "University of Basel"),
                          (["install", "flame"], "unknown model 'flame'"),
                          (["install", "ict", "--from", str(tmp_path / "none.zip")], "does not exist"),
                          (["default", "ict"], "is not installed")):
        result = run(tmp_path, *args)
        assert result.exit_code == 1 and result.output.count("Error:") == 1, result.output
        assert message in result.output
    assert "No models installed" in run(tmp_path, "list").output


@pytest.mark.parametrize("command", ["list", "install", "info", "remove", "default"])
def test_help(command):
    result = CliRunner().invoke(cli, ["models", command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
