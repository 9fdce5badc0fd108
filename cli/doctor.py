"""`mfface doctor`: what backend, libraries and face model this installation will use."""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table


def _installed_model() -> str:
    try:
        from mfface.morphable.store import ModelStore
    except ImportError:
        return "none (model store not available)"
    store = ModelStore()
    default = store.default_name()
    if default is None:
        return "none (install one with `mfface models install ict`)"
    return f"{default} (in {store.root})"


@click.command()
def doctor() -> None:
    """Print the rendering variant, LLVM/CUDA, library versions and the installed face model."""
    from mfface.backend import describe

    table = Table(show_header=False, box=None)
    for key, value in describe().items():
        table.add_row(key, value)
    table.add_row("face model", _installed_model())
    Console().print(table)
