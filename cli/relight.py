"""`mfface relight`: render a fitted face under new light (HDR environments, presets, lamps),
as a still, a turntable, or the input photo itself relit."""
from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.scenes.light_presets import preset_names

_CONSOLE = Console()
# Options that map one to one onto RelightSettings fields (a rig TOML sets the same keys).
_SETTINGS = ("envmap", "rotate", "exposure", "absolute", "bounces", "spp", "size", "background",
             "turntable", "yaw_range", "fps", "photo", "photo_file", "seed")


@click.command()
@click.argument("result", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output folder (one sub-folder per result when RESULT holds several).")
@click.option("--envmap", default=None,
              help=f"The environment: 'fitted' (default: the fit's light), 'none' (lamps only), a "
                   f"preset ({', '.join(preset_names())}), or a lat-long .exr / .hdr file (2:1, any "
                   f"size; same frame as the fit's envmap.exr: centre column = light from the "
                   f"camera's side).")
@click.option("--rotate", type=float, default=None,
              help="Turn the light rig about the vertical axis, degrees, counter-clockwise seen "
                   "from above (+90: front light comes from the image right). [default: 0]")
@click.option("--exposure", type=float, default=None, help="Exposure change in EV (x 2^EV). [default: 0]")
@click.option("--absolute", is_flag=True, default=None,
              help="Use the environment's values and lamp colours as radiance, instead of scaling "
                   "the light to the fitted light's brightness.")
@click.option("--light", "lights", multiple=True,
              help="Add a lamp (repeatable): point:X,Y,Z:R,G,B, directional:X,Y,Z:R,G,B or "
                   "area:X,Y,Z:R,G,B[:W,H]. X,Y,Z in mm from the head centre (a direction towards "
                   "the lamp for directional), +x image right, +y up, +z towards the camera; R,G,B "
                   "(or one grey value) = brightness of a white surface facing it, 1 = as bright as "
                   "the fitted light; W,H area lamp size in mm [default 200,200].")
@click.option("--rig", type=click.Path(path_type=Path), default=None,
              help="TOML light rig: any of these settings as keys plus [[lamp]] tables (type, "
                   "position or direction, colour, size); options given here win.")
@click.option("--bounces", type=int, default=None,
              help="Indirect bounces (0: direct light only, as the fit). Shadows are always on. "
                   "[default: 0]")
@click.option("--spp", type=int, default=None, help="Samples per pixel, 1-16384. [default: 64]")
@click.option("--size", type=int, default=None,
              help="Image side in px, 8-4096 [default: the fit's crop size; the photo's camera].")
@click.option("--background", default=None,
              help="transparent (PNG with alpha), environment, photo (the input crop) or black. "
                   "[default: transparent]")
@click.option("--turntable", type=int, default=None,
              help="Also render a turntable of N frames (turntable.gif, turntable.mp4). [default: 0]")
@click.option("--yaw-range", type=float, default=None,
              help="Full yaw swing of the turntable in degrees. [default: 60]")
@click.option("--fps", type=float, default=None, help="Turntable frames per second. [default: 12]")
@click.option("--photo", is_flag=True, default=None,
              help="Also relight the input photo itself (photo_relit.png): its face is multiplied "
                   "by the ratio of new to fitted shading.")
@click.option("--photo-file", default=None,
              help="Where the input photo is, when it moved [default: the path in params.json].")
@click.option("--seed", type=int, default=None, help="Sampler seed. [default: 0]")
@click.option("--overwrite", is_flag=True, help="Replace relight outputs already in OUT.")
def relight(result: Path, out: Path, lights: tuple[str, ...], rig: Path | None, overwrite: bool,
            **options: object) -> None:
    """Relight the fit in RESULT (a result folder, or a folder of them) and write relit.png,
    relit.exr, light.exr/.png and rig.toml into OUT (plus turntable.gif/.mp4 with --turntable
    and photo_relit.png with --photo). Every input is checked before anything is rendered."""
    from mfface.backend import BackendError, select_variant, torch_device
    from mfface.relight import (RelightError, Relighter, RelightSettings, check_outputs,
                                load_rig, parse_lamp, write_relit)
    from mfface.replay import ReplayError, load_fitted_face, result_folders

    context = click.get_current_context()
    try:
        values = load_rig(rig) if rig is not None else {}
        for name in _SETTINGS:
            if context.get_parameter_source(name) == ParameterSource.COMMANDLINE:
                values[name] = options[name]
        values["lamps"] = tuple(values.get("lamps", ())) + tuple(parse_lamp(s) for s in lights)
        settings = RelightSettings(**values)
        settings.check()
        folders = result_folders(result)
        targets = [out] if len(folders) == 1 else [out / f.name for f in folders]
        for target in targets:
            check_outputs(target, settings, overwrite)
        select_variant()
        models: dict = {}
        faces = [load_fitted_face(f, device=torch_device(), models=models) for f in folders]
        relighters = [Relighter(face, settings) for face in faces]  # every input checked here
    except (RelightError, ReplayError, BackendError) as error:
        raise UserError(str(error)) from error
    relit = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=_CONSOLE, transient=True) as progress:
        for face, relighter in zip(faces, relighters):  # render everything before writing
            task = progress.add_task(f"relight {face.folder.name}", total=max(settings.turntable, 1))
            relit.append(relighter.run(on_frame=lambda k, n, task=task:
                                       progress.update(task, completed=k)))
            progress.update(task, completed=max(settings.turntable, 1))
    for face, target, item in zip(faces, targets, relit):
        written = write_relit(item, target)
        _CONSOLE.print(f"{face.folder.name}: wrote {', '.join(p.name for p in written)} in {target}")
