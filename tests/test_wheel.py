"""The sdist and the wheel carry the built-in model and the sample photo, and a fit runs from
the installed wheel.

CI-sized: build the wheel from a copy of the source tree (`pip wheel . --no-deps`, with the
project venv's setuptools so that no network is needed), check its contents, install it with
`pip install --no-deps --target DIR`, and run Python with PYTHONPATH=DIR so that the installed
wheel's `mfface` shadows the editable checkout (checked: `mfface.__file__` lies in DIR) while the
dependencies (torch, Mitsuba, ...) come from the project venv; a fresh venv would have to install
torch and Mitsuba again, which CI cannot afford per run. MFFACE_HOME is an empty store, so the fit
uses the built-in model, offline.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mfface.morphable.builtin import CHECKSUM_FILE, CREDITS_FILE, LICENSE_FILE, MODEL_FILE

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "mfface", "morphable", "scenes", "cli")
PACKAGE_DATA = [f"mfface/morphable/data/{name}" for name in
                (MODEL_FILE, CHECKSUM_FILE, LICENSE_FILE, CREDITS_FILE, "ict_mediapipe478.txt",
                 "ict_mediapipe478_calibrated.txt")]
PACKAGE_DATA += ["mfface/data/example_face.jpg", "mfface/data/example_face.txt", "mfface/py.typed",
                 "mfface/data/mediapipe_mirror478.txt"]
TINY = ["--input-max-resolution", "64", "--stage1-iterations", "20", "--stage2-iterations", "3",
        "--stage3-iterations", "2", "--render-final-spp", "2", "--render-texture-size", "64"]


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the package sources (building in the checkout would leave build/ behind)."""
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(tree, tmp_path_factory) -> Path:
    """The wheel built from the copied sources."""
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(out)], cwd=tree)
    wheels = list(out.glob("mfface-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_sdist_carries_model_and_photo(tree, tmp_path):
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
          "build_meta.build_sdist(sys.argv[1])", str(tmp_path)], cwd=tree)
    (sdist,) = tmp_path.glob("mfface-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in (MODEL_FILE, CHECKSUM_FILE, LICENSE_FILE, CREDITS_FILE):
        assert f"morphable/data/{name}" in names
    assert {"mfface/data/example_face.jpg", "mfface/data/example_face.txt"} <= names


@pytest.mark.slow
def test_wheel_carries_model_photo_and_checksums(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert set(PACKAGE_DATA) <= names, set(PACKAGE_DATA) - names
        shipped = REPO / "morphable" / "data"
        model = archive.read(f"mfface/morphable/data/{MODEL_FILE}")
        assert model == (shipped / MODEL_FILE).read_bytes()
        recorded = archive.read(f"mfface/morphable/data/{CHECKSUM_FILE}").decode().split()[0]
        assert hashlib.sha256(model).hexdigest() == recorded
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = {line.split(",")[0]: line.split(",")[1]
                for line in archive.read(record).decode().splitlines() if line}
        digest = base64.urlsafe_b64encode(hashlib.sha256(model).digest()).rstrip(b"=").decode()
        assert rows[f"mfface/morphable/data/{MODEL_FILE}"] == f"sha256={digest}"
        assert not any(n.startswith(("tests/", "bench/", "shared/")) for n in names)
    assert wheel.stat().st_size < 10_000_000


@pytest.mark.slow
def test_installed_wheel_fits_the_sample_offline(wheel, tmp_path):
    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
          "--target", str(target), str(wheel)])
    env = {**os.environ, "PYTHONPATH": str(target), "MFFACE_HOME": str(tmp_path / "home")}
    # Run outside the checkout: `python -c` puts the working folder first on sys.path.
    probe = _run([sys.executable, "-c", (
        "import json, mfface, mfface.morphable.builtin as b\n"
        "from mfface.morphable.store import ModelStore\n"
        "from mfface.sample import example_photo_path\n"
        "m = ModelStore().load()\n"
        "print(json.dumps({'package': mfface.__file__, 'model': m.name, 'identity': m.n_identity,\n"
        "                  'model_file': str(b.verified_builtin_path()),\n"
        "                  'photo': str(example_photo_path())}))")], env=env, cwd=tmp_path)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    for key in ("package", "model_file", "photo"):
        assert Path(found[key]).resolve().is_relative_to(target.resolve()), found  # not the checkout
    assert found["model"] == "ict-lite"

    script = target / "bin" / "mfface"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mfface.cli.main"]
    out = tmp_path / "results"
    fitted = _run(command + ["fit", "--example", "-o", str(out), *TINY], env=env, cwd=tmp_path, timeout=600)
    params = [json.loads(p.read_text()) for p in out.glob("*/params.json")]
    assert len(params) == 1 and (out / "example_face" / "params.json").is_file(), fitted.stdout + fitted.stderr
    assert params[0]["model"]["name"] == "ict-lite"
    assert not (tmp_path / "home" / "models").exists()  # nothing was installed or downloaded
