"""`mfface track`: head pose and ARKit expression curves from a video or a folder of numbered frames."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.config import config_options, overrides_from_kwargs
from mfface.tracking.config import TrackConfig

_CONSOLE = Console(stderr=True)
PHASES = {"detect": "detect (MediaPipe)", "track": "track (landmarks)", "photometric": "photometric",
          "video": "tracked.mp4"}


def build_config(config_file: Path | None, device: str | None, photometric: int | None, kwargs: dict) -> TrackConfig:
    """The TrackConfig of a TOML file (or the defaults) with the command line's settings on top."""
    from mfface.config import ConfigError, apply_overrides, load_config

    try:
        config = load_config(config_file, root=TrackConfig) if config_file is not None else TrackConfig()
        overrides = overrides_from_kwargs(kwargs, TrackConfig)
        if device is not None:
            overrides["render.device"] = device
        if photometric is not None:
            overrides["photometric.iterations"] = photometric
        return apply_overrides(config, overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


class PhaseProgress:
    """A rich progress bar per phase of the run, with its frames (or iterations) per second."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks, self.started = progress, {}, {}

    def __call__(self, phase: str, done: int, total: int, note: str) -> None:
        if phase not in self.tasks:
            self.progress.start()
            label = PHASES.get(phase, phase)
            self.tasks[phase] = self.progress.add_task(label, total=total, rate="", note="")
            self.started[phase] = time.perf_counter()
        elapsed = max(time.perf_counter() - self.started[phase], 1e-9)
        unit = "it/s" if phase.startswith("identity") else "frames/s"
        self.progress.update(self.tasks[phase], completed=done, total=total,
                             rate=f"{done / elapsed:.1f} {unit}", note=note)


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the result (a sub-folder named after the video).")
@click.option("--name", default=None, help="Name of the result folder in OUTPUT (default: the video's or "
                                           "folder's name).")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier tracking result of the same name in OUTPUT (only mfface's own).")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with settings (see `mfface track --help` for every key as an option).")
@click.option("--model", "model_name", default=None, help="Installed face model (default: the store's default).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to render and optimise (same as --render-device).")
@click.option("--photometric", type=click.IntRange(0, 100_000), default=None, metavar="N",
              help="Refine each frame with N photometric iterations through the renderer (same as "
                   "--photometric-iterations; 0 = landmarks only).")
@functools.partial(config_options, root=TrackConfig)
def track(source: Path, output: Path, name: str | None, overwrite: bool, config_file: Path | None,
          model_name: str | None, device: str | None, photometric: int | None, **kwargs) -> None:
    """Track head pose and expression (ARKit curves for ICT) through SOURCE, a video file (MP4, MOV,
    AVI, WebM, ...) or a folder of numbered frames, into OUTPUT/<name>/: animation.json and .csv,
    animation.glb, tracked.mp4 and the identity's fit results."""
    from mfface.interrupt import deferred

    config = build_config(config_file, device, photometric, kwargs)
    try:
        with deferred():
            _track(source, output, name, overwrite, config, model_name)
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        raise click.exceptions.Exit(130) from None


def _track(source: Path, output: Path, name: str | None, overwrite: bool, config: TrackConfig,
           model_name: str | None) -> None:
    from mfface.backend import torch_device
    from mfface.cli.batch import check_writable, os_error_message
    from mfface.cli.fit import load_model
    from mfface.landmarks import LandmarkDetector
    from mfface.outputs import OutputError, ResultLock, recover
    from mfface.tracking.pipeline import TrackError, VideoTracker, check_track_target
    from mfface.tracking.video import VideoError, open_frames

    try:
        frames = open_frames(source, config.video.fps)
    except VideoError as e:
        raise UserError(str(e)) from None
    name = name or (source.resolve().name if source.is_dir() else source.stem)
    if not name or name.startswith(".") or "/" in name:
        raise UserError(f"{name!r} cannot name a result folder; pass --name.")
    check_writable(output)
    folder = output / name
    try:
        check_track_target(folder, overwrite)
    except OutputError as e:
        raise UserError(str(e)) from None
    model = load_model(config.fit_config(), model_name)
    _CONSOLE.print(f"mfface track: {frames.path} ({frames.kind}, {frames.count} frames of {frames.width}x"
                   f"{frames.height} at {frames.fps:g} frames/s), model {model.name}")
    tracker = VideoTracker(model, config, torch_device())
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                        console=_CONSOLE)
    try:
        with ResultLock(output, [name]):
            for note in recover(output, [name], name):
                _CONSOLE.print(f"[yellow]{note}")
            with LandmarkDetector.from_config(config.input) as detector:
                try:
                    report = tracker.run(frames, folder, detector, overwrite, PhaseProgress(progress))
                finally:
                    progress.stop()
    except (VideoError, TrackError, OutputError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(os_error_message(e, output, config.fit_config())) from None
    _CONSOLE.print(summary(report, config.select.last_stage > 1))
    for index, problem in report.problems[:10]:
        _CONSOLE.print(f"[yellow]frame {index} skipped: {problem}")
    if len(report.problems) > 10:
        _CONSOLE.print(f"[yellow]... and {len(report.problems) - 10} more frames skipped (animation.json lists them)")
    _CONSOLE.print(f"Result: {report.folder} (README, 'Tracking a video', lists the files).")


def summary(report, maps_fitted: bool) -> Table:
    """The table printed at the end of a run: frames, what each phase took, and the fit quality."""
    table = Table(title=f"mfface track: {report.folder.name}")
    table.add_column("")
    table.add_column("")
    counts = report.status_counts
    table.add_row("frames", f"{report.frames} at {report.fps:g} frames/s: {counts.get('tracked', 0)} tracked, "
                            f"{counts.get('lost', 0)} lost (interpolated), {counts.get('unreadable', 0)} unreadable "
                            f"(skipped, interpolated)")
    d = report.detection
    table.add_row("MediaPipe", f"{report.rates.get('mediapipe', 0):.1f} frames/s ({d.followed} followed from the "
                               f"previous frame, {d.searched} searched, {d.missed} without a face)")
    table.add_row("identity", f"{report.seconds.get('identity', 0):.1f} s: shape and focal "
                              f"({report.focal_px:.0f} px) from {len(report.shape_frames)} frames, "
                              + (f"maps from frames {', '.join(map(str, report.identity_frames))}" if maps_fitted
                                 else "no maps (--select-last-stage 1)"))
    table.add_row("tracking", f"{report.rates.get('track', 0):.1f} frames/s (landmarks, after detection)")
    if "photometric" in report.rates:
        photo = report.photo_l1
        table.add_row("photometric", f"{report.rates['photometric']:.2f} frames/s; median L1 in the skin "
                                     f"{photo.get('first_iteration', float('nan')):.4f} -> "
                                     f"{photo.get('last_iteration', float('nan')):.4f}")
    if "video" in report.rates:
        table.add_row("tracked.mp4", f"{report.rates['video']:.1f} frames/s")
    table.add_row("landmark RMS", f"median {report.rms_px.get('median', float('nan')):.2f} px, 95% "
                                  f"{report.rms_px.get('p95', float('nan')):.2f} px (video px)")
    table.add_row("jitter", f"rotation {report.jitter.get('rotation_deg', float('nan')):.3f} deg/frame^2, "
                            f"expression {report.jitter.get('expression', float('nan')):.4f}/frame^2")
    return table
