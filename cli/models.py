"""`mfface models`: list, install, inspect, remove installed face models and pick the default."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mfface.cli.errors import UserError

_CONSOLE = Console()


def _store():
    from mfface.morphable.store import ModelStore

    return ModelStore()


def _user_errors(call, *args, **kwargs):
    """Run a store call, turning the store's user-facing errors into `Error: ...` lines."""
    from mfface.morphable.format import ModelFormatError, ModelSourceError
    from mfface.morphable.store import ModelNotInstalledError

    try:
        return call(*args, **kwargs)
    except (ModelNotInstalledError, ModelSourceError, ModelFormatError, ValueError) as error:
        raise UserError(str(error)) from error


@click.group()
def models() -> None:
    """Install and manage the morphable face models mfface fits."""


@models.command("list")
def list_models() -> None:
    """List the built-in and installed models (the default is marked with *)."""
    from mfface.morphable.builtin import BUILTIN_NAME

    store = _store()
    infos = store.list()
    table = Table(title=f"face models (installed in {store.root})")
    for column in ("", "name", "source", "vertices", "identity", "expression", "albedo", "size"):
        table.add_column(column)
    for info in infos:
        h = info.header
        mark = "*" if info.is_default else ""
        source = "built in" if info.builtin else "installed"
        if info.error:
            table.add_row(mark, info.name, source, "[red]unusable[/red]", "", "", "",
                          f"{info.size_bytes / 1e6:.1f} MB")
            continue
        table.add_row(mark, info.name, source, str(h["n_vertices"]), str(h["n_identity"]),
                      str(h["n_expression"]), h["albedo"]["diffuse"] or "none",
                      f"{info.size_bytes / 1e6:.1f} MB")
    _CONSOLE.print(table)
    for info in infos:
        if info.error:
            _CONSOLE.print(f"[red]{info.name}: {info.error}[/red]", soft_wrap=True)
    problem = store.default_problem()
    if problem:
        _CONSOLE.print(f"[red]No default model: {problem}[/red]", soft_wrap=True)
    elif not any(not info.builtin for info in infos):
        _CONSOLE.print(f"No models installed in {store.root}; the built-in {BUILTIN_NAME} is used. "
                       f"`mfface models install ict` installs the full ICT model.", soft_wrap=True)


@models.command()
@click.argument("name")
@click.option("--from", "source", metavar="PATH|URL",
              help="Source folder, archive or URL (default for ict: its GitHub archive).")
@click.option("--region", help="Model region, e.g. face (default), narrow or head for ict; "
                               "stored as NAME-REGION.")
@click.option("--canonical-mesh", type=click.Path(dir_okay=False, path_type=Path),
              help="MediaPipe's canonical_face_model.obj, to map its 478 landmarks onto a model "
                   "without a shipped table (else env MFFACE_MEDIAPIPE_MESH).")
@click.option("--sha256", help="Expected SHA256 of a downloaded source; checked when given.")
def install(name: str, source: str | None, region: str | None, canonical_mesh: Path | None,
            sha256: str | None) -> None:
    """Import model NAME (ict, bfm2017, bfm2009) into the model store."""
    from mfface.morphable.store import split_name

    _user_errors(split_name, name, region)  # a bad name fails before anything is printed
    _CONSOLE.print(f"Installing {name} (importing takes a few seconds)...")
    info = _user_errors(_store().install, name, source=source, region=region,
                        canonical_mesh=canonical_mesh, sha256=sha256, progress=True)
    default = " (default)" if info.is_default else ""
    _CONSOLE.print(f"Installed {info.name}{default}: {info.header['n_vertices']} vertices, "
                   f"{info.header['n_identity']} identity and {info.header['n_expression']} "
                   f"expression components -> {info.path}")


@models.command()
@click.argument("name")
def info(name: str) -> None:
    """Show an installed model's size, components, landmarks, regions and provenance."""
    entry = _user_errors(_store().info, name)
    h = entry.header
    table = Table(show_header=False, box=None)
    notes = [note for note, on in (("built in", entry.builtin), ("default", entry.is_default)) if on]
    rows = [
        ("name", entry.name + (f" ({', '.join(notes)})" if notes else "")),
        ("file", f"{entry.path} ({entry.size_bytes / 1e6:.1f} MB"
                 + (f", {h.get('storage')}" if h.get("storage") else "") + ")"),
        ("vertices / triangles", f"{h['n_vertices']} / {h['n_triangles']}"),
        ("identity / expression", f"{h['n_identity']} / {h['n_expression']}"),
        ("albedo", f"diffuse {h['albedo']['diffuse'] or 'none'}, specular "
                   f"{h['albedo']['specular'] or 'none'}"),
        ("texture size", "x".join(str(v) for v in h["texture_size"])),
        ("landmarks", ", ".join(h["landmarks"]) or "none"),
        ("regions", ", ".join(h["regions"]) or "none"),
        ("provenance", h["provenance"]),
        ("license", (h["license"].strip().splitlines() or ["unknown"])[0]),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    _CONSOLE.print(table)


@models.command()
@click.argument("name")
def remove(name: str) -> None:
    """Delete installed model NAME (the built-in model cannot be removed)."""
    store = _store()
    _user_errors(store.remove, name)
    after = store.default_name()
    _CONSOLE.print(f"Removed {name}." + (f" The default model is {after}." if after else ""))


@models.command()
@click.argument("name")
def default(name: str) -> None:
    """Make model NAME (installed, or the built-in one) the default."""
    _user_errors(_store().set_default, name)
    _CONSOLE.print(f"Default model: {name}.")
