"""`mfface synth N -o DATASET.h5`: synthetic faces with ground truth, as a face dataset (HDF5)."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from mfface.cli.dataset_run import (CONSOLE, dataset_command, kind_rows, print_merge_hint, print_report,
                                    result_rows, rows_table, run_progress, share_rows)
from mfface.cli.errors import UserError
from mfface.config import config_options
from mfface.synthetic_config import SynthConfig

_SHOWN_REJECTED = 10  # rows of the rejected table; the file's report has them all


@click.command()
@click.argument("count", metavar="N", type=int)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The dataset file to write or add to (e.g. synth.h5).")
@click.option("--size", type=int, default=224, show_default=True,
              help="Side of the square crops in pixels (32-2048).")
@click.option("--spp", type=int, default=64, show_default=True, help="Samples per pixel of each render.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the dataset: sample i depends only on (seed, i).")
@click.option("--model", "model_name", default=None,
              help="Face model to render (default: the store's default, else the built-in one).")
@click.option("--backgrounds", type=click.Path(path_type=Path), default=None,
              help="Folder of photos to cut backgrounds from (away from any face in them); without "
                   "it, backgrounds are procedural (textured noise and gradients).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes that render; 0: one per CPU core (divided among the ranks of a "
                   "distributed run). At most one per 24 samples is started (each takes ~10 s to "
                   "start).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to render.")
@click.option("--truth-vertices", is_flag=True,
              help="Also store the camera-space vertices as truth (V x 3 floats per sample).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file with [identity], [expression], [pose], [camera], [light], [albedo], "
                   "[material], [background] and [face] ranges (options below override it).")
@functools.partial(config_options, root=SynthConfig)
def synth(count: int, output: Path, size: int, spp: int, seed: int, model_name: str | None,
          backgrounds: Path | None, workers: int, device: str, truth_vertices: bool,
          config_file: Path | None, **kwargs: Any) -> None:
    """Render N synthetic faces with their ground truth into a face dataset (the layout of
    `mfface prepare` plus a `truth` group; docs/datasets.md): identity from the model's prior,
    sparse expressions, yaw up to 60 deg, focal 500-5000 px at 224 px, skin from very dark to
    very light, light from procedural environments, varied backgrounds. The stored landmarks are
    MediaPipe's on each render; renders where it finds no face are counted and skipped. The same
    seed gives the same dataset; running again with a larger N adds the new samples. Under
    torchrun each rank writes its own shard (OUTPUT.rank<r>-of-<w>.h5); join them with
    `mfface prepare --merge`."""
    from mfface.learning.prepare import PrepareError
    from mfface.learning.synth import SynthError

    with dataset_command(output, (SynthError, PrepareError)):
        _synth(count, output, size, spp, seed, model_name, backgrounds, workers,
               None if device == "auto" else device, truth_vertices, config_file, kwargs)


def _config(config_file: Path | None, kwargs: dict[str, Any]) -> SynthConfig:
    """The ranges: SynthConfig's defaults, then the TOML file, then the options given."""
    from mfface.config import ConfigError, apply_overrides, load_config, overrides_from_kwargs

    try:
        config = load_config(config_file, root=SynthConfig) if config_file is not None else SynthConfig()
        return apply_overrides(config, overrides_from_kwargs(kwargs, root=SynthConfig))
    except ConfigError as e:
        raise UserError(str(e)) from None


def _synth(count: int, output: Path, size: int, spp: int, seed: int, model_name: str | None,
           backgrounds: Path | None, workers: int, device: str | None, truth_vertices: bool,
           config_file: Path | None, kwargs: dict[str, Any]) -> None:
    """Render this rank's share into OUTPUT (or its shard); print the summary."""
    from mfface.backend import BackendError, select_variant
    from mfface.learning.prepare import default_workers, distributed_rank, output_for_rank
    from mfface.learning.synth import (SynthSettings, background_paths, pin_local_gpu,
                                       rank_indices, synth_dataset)
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    settings = SynthSettings(count=count, size=size, spp=spp, seed=seed, workers=workers or default_workers(),
                             config=_config(config_file, kwargs), vertices=truth_vertices, device=device)
    settings.check()
    rank, world = distributed_rank()
    files = background_paths(backgrounds) if backgrounds is not None else []
    if device != "cpu":
        pin_local_gpu()
    try:
        select_variant(device)
        model = ModelStore().load(model_name)
    except (BackendError, ModelNotInstalledError, ModelFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    target = output_for_rank(output, rank, world)
    label = f"rank {rank}/{world} " if world > 1 else ""
    started = time.perf_counter()
    with run_progress(target) as progress:
        def on_backgrounds(i: int, n: int) -> None:
            if "backgrounds" not in progress.bars:
                progress.add("backgrounds", f"{label}finding faces in backgrounds", n)
            progress.update("backgrounds", i)

        on_start, on_result = progress.run_callbacks(f"{label}synth {target.name}")
        summary = synth_dataset(model, target, settings, rank_indices(count, rank, world),
                                shard=(rank, world) if world > 1 else None, background_files=files,
                                on_backgrounds=on_backgrounds, on_start=on_start, on_result=on_result)
    CONSOLE.print(_summary_table(summary, model.name, settings, time.perf_counter() - started))
    print_report("rejected by the detector", "sample", summary.rejected, _SHOWN_REJECTED, target)
    print_merge_hint(output, target, rank, world)


def _summary_table(summary: Any, model: str, settings: Any, wall: float) -> Table:
    """The end-of-run table: counts, rejected renders, samples in the file, time and images/s."""
    rows = [("model, size, spp, seed", f"{model}, {settings.size} px, {settings.spp}, {settings.seed}"),
            ("renders asked for (N)", str(summary.requested))]
    rows += share_rows(summary, summary.share)
    if summary.rejected_before:
        rows.append(("rejected in an earlier run", str(summary.rejected_before)))
    rows.append(("added", str(summary.added)))
    rows += kind_rows("rejected", summary.rejected)
    if summary.processed:
        rows.append(("rejected fraction", f"{100 * summary.rejected_fraction:.1f}%"))
    if summary.backgrounds:
        rows.append(("background photos", str(summary.backgrounds)))
    rows += result_rows(summary, wall, ".2f")
    if summary.processed:
        rows.append(("MediaPipe's share of the time", f"{100 * summary.detector_share:.0f}%"))
    return rows_table(f"mfface synth -> {summary.output}", rows)
