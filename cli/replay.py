"""`mfface replay`: turntable GIF and MP4 of finished fits, under the fitted light or a preset."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.scenes.light_presets import PRESETS

_CONSOLE = Console()
_LIGHT_HELP = "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--frames", default=36, show_default=True, type=click.IntRange(min=2),
              help="Number of frames of the turntable.")
@click.option("--spp", default=16, show_default=True, type=click.IntRange(min=1),
              help="Samples per pixel of each frame.")
@click.option("--size", type=click.IntRange(min=8), default=None,
              help="Frame width and height in px [default: the fit's crop size].")
@click.option("--fps", default=12.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Frames per second of the GIF and MP4.")
@click.option("--light", default="fitted", show_default=True,
              help=f"'fitted' (the fit's own light) or a preset, scaled to the fitted light's "
                   f"brightness: {_LIGHT_HELP}.")
@click.option("--yaw-range", default=60.0, show_default=True,
              type=click.FloatRange(min=0, max=180, min_open=True),
              help="Full yaw swing in degrees: the head turns half of it to each side.")
def replay(out: Path, frames: int, spp: int, size: int | None, fps: float, light: str,
           yaw_range: float) -> None:
    """Render a turntable of the fit in OUT (a result folder, or a folder of them) and write
    turntable.gif and turntable.mp4 into each result folder. Every folder is checked before
    any is rendered."""
    from mfface.backend import BackendError, select_variant, torch_device
    from mfface.replay import (ReplayError, ReplaySettings, load_fitted_face, result_folders,
                               write_turntable)

    settings = ReplaySettings(frames=frames, spp=spp, size=size, fps=fps, light=light,
                              yaw_range=yaw_range)
    try:
        settings.check()
        folders = result_folders(out)
        select_variant()
        models: dict = {}
        faces = [load_fitted_face(folder, device=torch_device(), models=models) for folder in folders]
    except (ReplayError, BackendError) as error:
        raise UserError(str(error)) from error
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=_CONSOLE) as progress:
        for face in faces:
            task = progress.add_task(f"turntable {face.folder.name}", total=frames)
            gif, mp4 = write_turntable(face, settings, on_frame=lambda k, n, task=task:
                                       progress.update(task, completed=k))
            progress.console.print(f"{face.folder.name}: wrote {gif.name} and {mp4.name} in "
                                   f"{face.folder}")
