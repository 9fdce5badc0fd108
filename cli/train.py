"""`mfface train`: train a face network self-supervised through the renderer (DeepNextFace's method)."""
from __future__ import annotations

import functools
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.config import config_options, overrides_from_kwargs
from mfface.learning.config import TrainConfig

_CONSOLE = Console(stderr=True)


def build_train_config(config_file: Path | None, kwargs: dict) -> TrainConfig:
    """TrainConfig from a TOML file (or the defaults) and the `--section-key` options given."""
    from mfface.config import ConfigError, apply_overrides, load_config

    try:
        config = load_config(config_file, TrainConfig) if config_file is not None else TrainConfig()
        config = apply_overrides(config, overrides_from_kwargs(kwargs, TrainConfig))
        from mfface.learning.config import mix_ratios

        mix_ratios(config, 1 if not config.data.mix.strip() else len(config.data.mix.split(",")))
        return config
    except ConfigError as e:
        raise UserError(str(e)) from None


@click.command()
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder: checkpoints, logs, previews, weights.pt. An existing run is resumed.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with settings (every key is also an option below).")
@click.option("--model", "model_name", default=None, help="Face model (default: the store's default).")
@click.option("--backbone-weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A torchvision ResNet state_dict (e.g. ImageNet weights) to start the encoder from.")
@click.option("--weights", "init_weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Start from a trained network (weights.pt of an earlier run, e.g. pre-trained on "
                   "synthetic data) to fine-tune it.")
@functools.partial(config_options, root=TrainConfig)
def train(datasets: tuple[Path, ...], run_dir: Path, config_file: Path | None, model_name: str | None,
          backbone_weights: Path | None, init_weights: Path | None, **kwargs) -> None:
    """Train a network on DATASETS (files of `mfface prepare` / `mfface synth`) into RUN_DIR.

    Runs DeepNextFace's schedule (encoder, then decoders, then both) through Mitsuba with the fit's
    own losses. Under torchrun each rank trains on its share of every batch (DDP). Running it again
    on the same RUN_DIR resumes from checkpoints/latest.pt."""
    from mfface.backend import BackendError, select_variant, torch_device
    from mfface.distributed import destroy_process_group, init_process_group, rank_info
    from mfface.interrupt import deferred
    from mfface.learning.checkpoint import WeightsError
    from mfface.learning.dataset_format import DatasetError
    from mfface.learning.train import Trainer, TrainError
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    config = build_train_config(config_file, kwargs)
    if backbone_weights is not None and not backbone_weights.is_file():
        raise UserError(f"{backbone_weights} does not exist; give a torchvision ResNet state_dict file.")
    try:
        info = rank_info()
        select_variant(None if config.render.device == "auto" else config.render.device)
        device = torch_device()
        model = ModelStore().load(model_name)
        init_process_group(info, device.type == "cuda")
        trainer = Trainer(model, config, list(datasets), run_dir, device, info,
                          config_file.read_text() if config_file is not None else None, backbone_weights,
                          init_weights)
    except (BackendError, ModelNotInstalledError, ModelFormatError, DatasetError, TrainError,
            WeightsError, ValueError) as e:
        raise UserError(str(e)) from None
    if trainer.step >= config.total_steps:
        _CONSOLE.print(f"{run_dir} has finished its {config.total_steps} steps; raise the schedule's step "
                       f"counts to train further.")
        return
    if trainer.resumed_from is not None and info.is_main:
        _CONSOLE.print(f"resuming {run_dir} at step {trainer.resumed_from}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=_CONSOLE, disable=not info.is_main)
    task = progress.add_task("training", total=config.total_steps, completed=trainer.step, status="")

    def on_step(step: int, total: int, terms: dict[str, float]) -> None:
        progress.update(task, completed=step, status=f"{trainer.phase}  loss {terms['total']:.4g}  "
                                                      f"{terms['images_per_s']:.2f} img/s")
    try:
        with progress, deferred():
            summary = trainer.run(on_step=on_step)
    except KeyboardInterrupt:
        if info.is_main:
            trainer.save_checkpoint()
        click.echo(f"Interrupted at step {trainer.step}; checkpoints/latest.pt is saved. Resume with the "
                   f"same command.", err=True)
        raise click.exceptions.Exit(130) from None
    except (TrainError, DatasetError) as e:
        raise UserError(str(e)) from None
    finally:
        destroy_process_group(info)
    if info.is_main:
        _CONSOLE.print(_summary(summary, run_dir))


def _summary(summary, run_dir: Path) -> Table:
    table = Table(title=f"mfface train: {run_dir}", show_header=False)
    table.add_row("steps run (now / in all)", f"{summary.steps_run} / {summary.step}")
    table.add_row("images per second", f"{summary.images_per_s:.2f}")
    table.add_row("last losses", ", ".join(f"{k} {v:.4g}" for k, v in summary.last.items()))
    table.add_row("validation", ", ".join(f"{k} {v:.4g}" for k, v in summary.validation.items()) or "-")
    table.add_row("weights", str(run_dir / "weights.pt") if (run_dir / "weights.pt").is_file() else
                  "not yet (the schedule has steps left)")
    return table
