"""`mfface doctor`: what backend, libraries and face model this installation will use."""
from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table


def model_in_use() -> str:
    """One line: the model `mfface fit` uses without --model, where it comes from, or why none."""
    from mfface.morphable.builtin import BUILTIN_NAME, BundledModelError, verified_builtin_path
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelStore

    store = ModelStore()
    name = store.default_name()
    if name is None:
        return f"none: {store.default_problem()}"
    if name != BUILTIN_NAME:
        try:
            info = store.info(name)
        except (ModelFormatError, LookupError, ValueError) as error:
            return f"{name} (the default), unusable: {error}"
        return (f"{name} (the default, {info.header['n_identity']} identity modes, installed in "
                f"{store.root})")
    try:
        verified_builtin_path()
        info = store.info(name)
    except (BundledModelError, ValueError) as error:
        return f"{name} (built in), unusable: {error}"
    installed = [i.name for i in store.list() if not i.builtin]
    how = ("chosen as the default" if store.default_is_set()
           else f"no model installed in {store.root}" if not installed
           else "no default set: choose one with `mfface models default NAME`")
    hint = "" if "ict" in installed else "; `mfface models install ict` installs the full ICT model"
    return f"{name} (built in, {info.header['n_identity']} identity modes; {how}{hint})"


@click.command()
def doctor() -> None:
    """Print the rendering variant, LLVM/CUDA, library versions and the face model in use."""
    from mfface.backend import describe

    table = Table(show_header=False, box=None)
    for key, value in describe().items():
        table.add_row(key, value)
    table.add_row("face model", model_in_use())
    Console().print(table)
