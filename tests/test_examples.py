"""The example scripts run as a user runs them (tiny settings)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO, data_file

TINY = ["--set", "input.max_resolution=48", "--set", "stage2.iterations=3", "--set", "stage2.spp=1",
        "--set", "stage3.iterations=2", "--set", "stage3.spp=1", "--set", "render.texture_size=32",
        "--set", "render.final_spp=2", "--set", "stage2.albedo_resolution=16"]


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=os.environ.copy(),
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fit_photo_then_relight(installed_ict, tmp_path: Path) -> None:
    out = _run(str(REPO / "examples" / "fit_photo.py"), str(data_file("images/astronaut.png")),
               str(tmp_path), *TINY)
    assert "pose: yaw" in out and "strongest expressions" in out
    assert (tmp_path / "astronaut" / "params.json").is_file()
    strip = tmp_path / "relit.png"
    out = _run(str(REPO / "examples" / "relight.py"), str(tmp_path / "astronaut"), str(strip), "--spp", "2")
    assert "fitted, ambient" in out
    image = np.asarray(Image.open(strip))
    assert image.shape[1] >= 8 * 48 and image.std() > 5  # eight panels, not blank
