"""`mfface fit`: reconstruct faces from one photo, a folder of photos, or several photos of one person."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import click
from rich.console import Console

from mfface.cli.batch import (PROGRESS_COLUMNS, GroupJob, Interrupted, StageProgress, check_writable,
                              collect_images, plan, run_all)
from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.config import FitConfig, config_options, overrides_from_kwargs

_CONSOLE = Console(stderr=True)


def build_config(config_file: Path | None, device: str | None, kwargs: dict) -> FitConfig:
    from mfface.config import ConfigError, apply_overrides, load_config

    try:
        config = load_config(config_file) if config_file is not None else FitConfig()
        overrides = overrides_from_kwargs(kwargs)
        if device is not None:
            overrides["render.device"] = device
        return apply_overrides(config, overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _prepare(config: FitConfig, detector, landmark_file: Path | None, shared: bool) -> Callable:
    """`prepare` of the fit's GroupJob: read, detect, crop; photos fitted together share a size."""
    from mfface.fitting.pipeline import prepare_image, prepare_photo

    def prepare(paths: list[Path]) -> list:
        prepared = [prepare_image(p, config, detector, landmark_file) for p in paths]
        if shared and len({im.target.shape[0] for im in prepared}) > 1:
            # Photos fitted together share one crop size: re-crop (landmarks are already known).
            size = min(im.target.shape[0] for im in prepared)
            prepared = [prepare_photo(im.photo, im.landmarks, im.scheme, config, im.name, im.path, size)
                        for im in prepared]
        return prepared
    return prepare


def _resume_command(output: Path, shared: bool, model_name: str | None,
                    landmark_file: Path | None) -> Callable[[list[Path], Path], list[str]]:
    """The `mfface fit` command line (without --checkpoint) that resumes a group's run folder."""
    def command(paths: list[Path], run_dir: Path) -> list[str]:
        line = ["mfface", "fit", *map(str, paths), "-o", str(output), "--config", str(run_dir / "config.toml")]
        if shared:
            line.append("--shared-identity")
        if model_name:
            line += ["--model", model_name]
        if landmark_file is not None:
            line += ["--landmarks", str(landmark_file)]
        return line
    return command


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the results (one sub-folder per photo).")
@click.option("--example", is_flag=True,
              help="Fit the sample portrait that ships with mfface (NASA, public domain) instead of "
                   "photos of your own.")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results of the same photos in OUTPUT (only mfface's own result "
                   "folders, never other files).")
@click.option("--shared-identity", is_flag=True,
              help="The photos show one person: share identity and reflectance, fit pose, expression "
                   "and light per photo.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with settings (see `mfface fit --help` for every key as an option).")
@click.option("--model", "model_name", default=None, help="Installed face model (default: the store's default).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to render and optimise (same as --render-device).")
@click.option("--landmarks", "landmark_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Landmark file (.pts, .json, .txt, .npy) to use instead of detection (one photo only).")
@click.option("--skip-stage", "skip", type=click.IntRange(1, 3), multiple=True,
              help="Skip a stage (repeatable); a skipped stage 1 keeps only its PnP pose.")
@click.option("--init", "init_weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Start stage 2 from a trained network's maps and ambient light (weights.pt of `mfface train`) "
                   "instead of stage 1's defaults; the geometry still comes from stage 1.")
@click.option("--checkpoint", "resume", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Resume from a stageN.npz checkpoint of an earlier run of the same photo(s).")
@config_options
def fit(inputs: tuple[Path, ...], output: Path, example: bool, overwrite: bool, shared_identity: bool,
        config_file: Path | None, model_name: str | None, device: str | None, landmark_file: Path | None,
        skip: tuple[int, ...], init_weights: Path | None, resume: Path | None, **kwargs) -> None:
    """Reconstruct the face in each photo (files or folders) into OUTPUT/<photo name>/."""
    inputs = _inputs(inputs, example)
    if init_weights is not None and resume is not None:
        raise UserError("--init and --checkpoint both give the start; use one of them.")
    try:
        _fit(inputs, output, overwrite, shared_identity, config_file, model_name, device, landmark_file,
             skip, resume, init_weights, kwargs)
    except Interrupted as e:
        click.echo(e.message(), err=True)
        raise click.exceptions.Exit(130) from None
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        raise click.exceptions.Exit(130) from None


def _inputs(inputs: tuple[Path, ...], example: bool) -> tuple[Path, ...]:
    """The photos to fit: those given, or the sample photo with --example (not both)."""
    from mfface.sample import SamplePhotoError, example_photo_path

    if example and inputs:
        raise UserError("give photos or --example, not both.")
    if not example and not inputs:
        raise UserError("give one or more photos (files or folders) to fit, or --example for the "
                        "sample portrait.")
    if not example:
        return inputs
    try:
        return (example_photo_path(),)
    except SamplePhotoError as e:
        raise UserError(str(e)) from None


def _fit(inputs: tuple[Path, ...], output: Path, overwrite: bool, shared_identity: bool,
         config_file: Path | None, model_name: str | None, device: str | None,
         landmark_file: Path | None, skip: tuple[int, ...], resume: Path | None, init_weights: Path | None,
         kwargs: dict) -> None:
    from mfface.backend import torch_device
    from mfface.distributed import rank_info
    from mfface.fitting.pipeline import Reconstructor
    from mfface.landmarks import LandmarkDetector

    config = build_config(config_file, device, kwargs)
    paths = collect_images(inputs)
    if landmark_file is not None and len(paths) != 1:
        raise UserError("--landmarks gives the landmarks of one photo; fit the photos one at a time.")
    if resume is not None and len(paths) != 1 and not shared_identity:
        raise UserError("--checkpoint resumes one fit; give the one photo (or, with --shared-identity, "
                        "the same photos) it was written for.")
    check_writable(output)
    groups = [paths] if shared_identity else [[p] for p in paths]
    try:
        info = rank_info()   # under torchrun each rank fits its share of the photos
    except ValueError as e:
        raise UserError(str(e)) from None
    groups, outcomes = plan(groups[info.rank::info.world], output, overwrite)
    model = load_model(config, model_name)
    reconstructor = Reconstructor(model, config, torch_device())
    predictor = _predictor(init_weights, model, config) if init_weights is not None else None

    def solve(prepared: list, run_dir: Path, on_step: StageProgress):
        appearance = None if predictor is None else predictor.start_state(prepared, shared_identity)
        return reconstructor.fit(prepared, shared_identity=shared_identity, skip_stages=skip, resume=resume,
                                 checkpoint_dir=run_dir, on_step=on_step, appearance=appearance)
    # a landmark file needs no detector: MediaPipe is not even loaded (a machine without it fits)
    detecting = landmark_file is None
    with (LandmarkDetector.from_config(config.input) if detecting else nullcontext()) as detector:
        job = GroupJob(config, output, overwrite, Progress(*PROGRESS_COLUMNS, console=_CONSOLE),
                       _prepare(config, detector, landmark_file, shared_identity), solve,
                       _resume_command(output, shared_identity, model_name, landmark_file))
        run_all(job, groups, outcomes, f"mfface fit, model {model.name} ({model.n_identity} identity, "
                                       f"{model.n_expression} expression components)")


def _predictor(weights: Path, model, config: FitConfig):
    """The trained network of `--init`, checked against the model; one line when unusable."""
    from mfface.backend import torch_device
    from mfface.learning.checkpoint import WeightsError
    from mfface.learning.predict import Predictor

    try:
        return Predictor(weights, model, config, torch_device())
    except WeightsError as e:
        raise UserError(str(e)) from None


def load_model(config: FitConfig, model_name: str | None):
    """Select the Mitsuba variant for `render.device` and load the face model; one line on failure."""
    from mfface.backend import BackendError, select_variant
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    try:
        select_variant(None if config.render.device == "auto" else config.render.device)
        model = ModelStore().load(model_name)
    except (BackendError, ModelNotInstalledError, ModelFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    return model
