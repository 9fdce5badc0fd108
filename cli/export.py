"""`mfface export`: hand a fitted face to other programs (today: a Blender set-up script)."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from mfface.cli.errors import UserError

_CONSOLE = Console()


@click.command()
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--blender", is_flag=True,
              help="Write blender_scene.py: imports mesh.glb, wires the fitted maps into a "
                   "Principled BSDF, sets the world light in mfface's orientation and adds the "
                   "photo's camera.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the script (a .py file, or a folder) [default: the result folder].")
@click.option("--envmap", default="fitted", show_default=True,
              help="The world light: 'fitted' (envmap.exr) or a lat-long .exr/.hdr file in the "
                   "light frame (as `mfface relight --envmap`; relight's light.exr is one).")
@click.option("--rotate", type=float, default=0.0, show_default=True,
              help="Turn the world about the vertical axis, degrees, as `mfface relight --rotate`.")
@click.option("--exposure", type=float, default=0.0, show_default=True, help="World strength change in EV.")
@click.option("--absolute", is_flag=True,
              help="Use a chosen map's values as they are (default: scaled to the fitted light's "
                   "brightness, as relight does).")
def export(result: Path, blender: bool, out: Path | None, envmap: str, rotate: float,
           exposure: float, absolute: bool) -> None:
    """Export the fit in RESULT (a result folder, or a folder of them) for another program.
    Blender: `mfface export RESULT --blender`, then `blender --python RESULT/blender_scene.py`."""
    from mfface.blender import SCRIPT_NAME, ExportError, blender_script, write_script
    from mfface.backend import BackendError, select_variant
    from mfface.replay import ReplayError, load_fitted_face, result_folders

    if not blender:
        raise UserError("say what to export: --blender (a Blender set-up script); the mesh, maps "
                        "and light are already in the result folder as GLB, OBJ, PNG, EXR and HDR.")
    try:
        folders = result_folders(result)
        if out is not None and len(folders) > 1 and out.suffix == ".py":
            raise ExportError(f"{result} holds {len(folders)} results; give -o a folder, not a file.")
        select_variant()
        models: dict = {}
        faces = [load_fitted_face(f, models=models) for f in folders]
        targets = []
        for face in faces:
            if out is None:
                targets.append(face.folder / SCRIPT_NAME)
            elif out.suffix == ".py":
                targets.append(out)
            else:
                name = SCRIPT_NAME if len(faces) == 1 else f"{face.folder.name}_{SCRIPT_NAME}"
                targets.append(out / name)
        for target in targets:
            if target.exists() and not target.is_file():
                raise ExportError(f"{target} exists and is not a file; choose another -o.")
        texts = [blender_script(face, envmap=envmap, rotate=rotate, exposure=exposure,
                                absolute=absolute) for face in faces]  # all checked before writing
    except (ExportError, ReplayError, BackendError) as error:
        raise UserError(str(error)) from error
    for face, target, text in zip(faces, targets, texts):
        path = write_script(target, text)
        _CONSOLE.print(f"{face.folder.name}: wrote {path}; run `blender --python {path}`")
