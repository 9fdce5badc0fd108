"""Shared test set-up: the shared test data folder, an isolated model store, the Mitsuba variant."""
from __future__ import annotations

import os
from pathlib import Path

# mfface sets torch's OpenMP wait policy on import, so it must load before any test module imports
# torch: spinning OpenMP threads made a 0.6 s stage-1 fit take 17-21 s on a loaded 2-core machine.
import mfface  # noqa: F401,E402
import pytest

REPO = Path(__file__).resolve().parents[1]


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
def installed_ict(ict):
    """The ICT model saved into the test session's store as its default model."""
    from mfface.morphable.format import save_model
    from mfface.morphable.store import ModelStore

    store = ModelStore()
    save_model(ict, store.root / "ict.mfmodel")
    store.set_default("ict")
    return store
