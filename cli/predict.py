"""`mfface predict`: reconstruct faces with a trained network, optionally refined by the fit."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from mfface.cli.batch import (PROGRESS_COLUMNS, GroupJob, Interrupted, StageProgress, check_writable,
                              collect_images, plan, run_all)
from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.cli.fit import build_config, load_model
from mfface.config import config_options

_CONSOLE = Console(stderr=True)


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the results (one sub-folder per photo, as `mfface fit` writes).")
@click.option("--weights", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="weights.pt (or checkpoints/latest.pt) of an `mfface train` run.")
@click.option("--refine", default=0, type=int, show_default=True,
              help="Refine each prediction with the fit: N photometric iterations at raised rates, "
                   "then the diffuse solve (0 = the network's prediction alone; about 20 takes a "
                   "third of a fit).")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Photos per network forward pass.")
@click.option("--overwrite", is_flag=True, help="Replace earlier mfface results of the same photos.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML fit settings (used by --refine and for the written renders).")
@click.option("--model", "model_name", default=None, help="Face model the weights were trained for.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to run (same as --render-device).")
@config_options
def predict(inputs: tuple[Path, ...], output: Path, weights: Path, refine: int, batch: int, overwrite: bool,
            config_file: Path | None, model_name: str | None, device: str | None, **kwargs) -> None:
    """Predict the face in each photo (files or folders) with a trained network into
    OUTPUT/<photo name>/, the same result folder as `mfface fit`. Under torchrun the ranks split
    the photos; a rerun skips photos whose results exist (unless --overwrite)."""
    if refine < 0:
        raise UserError(f"--refine {refine} is not a number of iterations; use 0 or more.")
    try:
        _predict(inputs, output, weights, refine, batch, overwrite, config_file, model_name, device, kwargs)
    except Interrupted as e:
        click.echo(e.message(), err=True)
        raise click.exceptions.Exit(130) from None
    except KeyboardInterrupt:
        click.echo("Interrupted; the results finished so far are written.", err=True)
        raise click.exceptions.Exit(130) from None


def _predict(inputs, output, weights, refine, batch, overwrite, config_file, model_name, device, kwargs) -> None:
    from mfface.backend import torch_device
    from mfface.distributed import rank_info
    from mfface.learning.checkpoint import WeightsError
    from mfface.learning.predict import Predictor
    from mfface.landmarks import LandmarkDetector

    config = build_config(config_file, device, kwargs)
    paths = collect_images(inputs)
    check_writable(output)
    try:
        info = rank_info()
    except ValueError as e:
        raise UserError(str(e)) from None
    groups, outcomes = plan([[p] for p in paths][info.rank::info.world], output, overwrite)
    model = load_model(config, model_name)
    try:
        predictor = Predictor(weights, model, config, torch_device())
    except WeightsError as e:
        raise UserError(str(e)) from None
    predicted: dict[Path, object] = {}

    with LandmarkDetector.from_config(config.input) as detector:
        def prepare(group: list[Path]) -> list:
            """Prepare the photo, and predict it together with the next `batch - 1` photos."""
            if group[0] not in predicted:
                _predict_batch(predictor, detector, [g[0] for g in groups], group[0], batch, predicted)
            found = predicted[group[0]]
            if isinstance(found, Exception):
                raise found
            return [found[0]]

        def solve(prepared: list, run_dir: Path, on_step: StageProgress):
            image, state = predicted[prepared[0].path]
            return predictor.finish(image, state, refine, on_step=on_step, checkpoint_dir=run_dir)

        def resume_command(group: list[Path], run_dir: Path) -> list[str]:
            return ["mfface", "fit", *map(str, group), "-o", str(output), "--config",
                    str(run_dir / "config.toml")]
        job = GroupJob(predictor.config_for(refine), output, overwrite,
                       Progress(*PROGRESS_COLUMNS, console=_CONSOLE), prepare, solve, resume_command)
        title = (f"mfface predict, {weights.name}" + (f" + refine {refine}" if refine else "")
                 + f", model {model.name}")
        run_all(job, groups, outcomes, title)


def _predict_batch(predictor, detector, paths: list[Path], first: Path, batch: int,
                   predicted: dict[Path, object]) -> None:
    """Prepare `first` and the next photos after it (up to `batch`), predict them in one forward
    pass, and record (prepared image, state) or the error of each in `predicted`."""
    from mfface.cli.batch import user_errors

    start = paths.index(first)
    ready = []
    for path in paths[start:start + batch]:
        try:
            ready.append(predictor.prepare(path, detector))
        except user_errors() as e:
            predicted[path] = e
    if ready:
        states = predictor.predict(ready)
        for b, image in enumerate(ready):
            predicted[image.path] = (image, states.item(b))
