"""Shared test set-up: the shared test data folder, an isolated model store, the Mitsuba variant,
and helpers to run `mfface` commands (click's runner, torchrun)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# mfface sets torch's OpenMP wait policy on import, so it must load before any test module imports
# torch: spinning OpenMP threads made a 0.6 s stage-1 fit take 17-21 s on a loaded 2-core machine.
import mfface  # noqa: F401,E402
import pytest

# rich wraps the commands' messages at the console width (80 columns when not a terminal), so a
# phrase a test looks for could be split wherever a long tmp path ends; a wide console keeps each
# message on one line (rich reads COLUMNS when a Console is made, after this runs).
os.environ["COLUMNS"] = "250"

REPO = Path(__file__).resolve().parents[1]
MFFACE = Path(sys.executable).parent / "mfface"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_data_dir() -> Path:
    """`MFFACE_TEST_DATA`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("MFFACE_TEST_DATA", REPO.parent / "shared" / "data"))


def data_file(relative: str) -> Path:
    """A file of the shared test data; skips with a reason when missing, fails in CI
    (`MFFACE_REQUIRE_TEST_DATA=1`) so that a missing file is never a silent skip there."""
    path = test_data_dir() / relative
    if not path.is_file():
        message = f"shared test data {path} is missing (set MFFACE_TEST_DATA)"
        if os.environ.get("MFFACE_REQUIRE_TEST_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_model_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or write the user's model store."""
    os.environ["MFFACE_HOME"] = str(tmp_path_factory.mktemp("mfface_home"))


@pytest.fixture(scope="session")
def variant() -> str:
    """The Mitsuba variant selected for this machine (llvm_ad_rgb without a GPU)."""
    from mfface.backend import select_variant

    return select_variant()


@pytest.fixture(scope="session")
def ict_indexed():
    """(ICT face model, original ICT index per vertex), imported once per session."""
    from mfface.morphable.ict import import_ict_indexed

    return import_ict_indexed(data_file("ICT-FaceKit.tar.xz"))


@pytest.fixture(scope="session")
def ict(ict_indexed):
    """The ICT Face Model (face region) imported from the shared archive."""
    return ict_indexed[0]


@pytest.fixture(scope="session")
def own_render_targets():
    """`targets(forward, state, config, size)`: FitTargets whose photo is `state`'s own render
    (`size` px, 64 spp) and whose skin mask is its coverage, for tests that recover a known scene."""
    import torch

    from mfface.fitting.targets import FitTargets
    from mfface.forward import RenderSettings

    def targets(forward, state, config, size: int) -> FitTargets:
        with torch.no_grad():
            out = forward(state, RenderSettings.from_config(config, size, 64, seed=99))
        return FitTargets(images=out.image, skin=(out.coverage > 0.5).float(),
                          landmarks=torch.zeros(1, 478, 2), landmark_index=torch.zeros(478, dtype=torch.long),
                          landmark_weights=torch.ones(478), principal=torch.tensor([[size / 2, size / 2]]))

    return targets


@pytest.fixture(scope="session")
def installed_ict(ict):
    """The ICT model saved into the test session's store as its default model."""
    from mfface.morphable.format import save_model
    from mfface.morphable.store import ModelStore

    store = ModelStore()
    save_model(ict, store.root / "ict.mfmodel")
    store.set_default("ict")
    return store


def not_photos(folder: Path) -> tuple[Path, Path]:
    """Two paths under `folder` that a dataset command refuses: a folder `empty` holding no image
    (a text file only), and an empty plain file `file` (no path below it can be written)."""
    empty = folder / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    blocker = folder / "file"
    blocker.write_text("")
    return empty, blocker


def run_command(command: str, *args: str) -> Any:
    """`mfface COMMAND ARGS` through click's runner (exceptions propagate); the click Result."""
    from click.testing import CliRunner

    from mfface.cli.main import cli

    return CliRunner().invoke(cli, [command, *args], catch_exceptions=False)


def command_fails(command: str, *args: str) -> str:
    """Run `mfface COMMAND ARGS`, which must fail with one clear `Error:` line and a non-zero
    exit (no traceback); its output."""
    from click.testing import CliRunner

    from mfface.cli.main import cli

    result = CliRunner().invoke(cli, [command, *args])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Error:" in result.output
    return result.output


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_mfface(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`mfface ARGS` as two ranks under torchrun on this machine (one OpenMP thread each, no
    RANK / WORLD_SIZE / LOCAL_RANK inherited from this process); output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    return subprocess.run(
        [str(TORCHRUN), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "--no-python", str(MFFACE), *args],
        capture_output=True, text=True, env=env, timeout=timeout)
