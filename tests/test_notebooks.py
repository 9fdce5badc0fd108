"""The example notebooks in examples/ run top to bottom (at the small settings their parameter
cell picks when MFFACE_NOTEBOOK_SMALL=1) and are committed without outputs.

They are plain .ipynb files, not jupytext pairs: that is what users open first and what GitHub
shows, and stripped outputs keep their diffs readable; this test keeps them stripped."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = ("01_fit_a_photo", "02_relight", "03_export")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(REPO / "examples" / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}.ipynb has outputs; clear them before committing"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "MFFACE_NOTEBOOK_SMALL" in tagged[0].source


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the three notebooks: 02 and 03 reuse the fit of 01."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFFACE_NOTEBOOK_SMALL", "1")   # the kernel inherits the environment
    notebook = nbformat.read(REPO / "examples" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()   # raises CellExecutionError, with the failing cell, when a cell fails
    last = notebook.cells[-1]
    text = "".join(output.get("text", "") for output in last.outputs)
    assert "present" in text, text
