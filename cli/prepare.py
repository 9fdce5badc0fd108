"""`mfface prepare`: photos -> a face dataset (HDF5) to train on; `--merge` joins shards."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mfface.cli.dataset_run import (CONSOLE, RateColumn, dataset_command, kind_rows, print_merge_hint,
                                    print_report, result_rows, rows_table, run_progress,
                                    share_rows)
from mfface.cli.errors import UserError
from mfface.cli.progress import Progress

_SHOWN_FAILURES = 20  # rows of the not-added table; the file's report has them all


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The dataset file to write or add to (e.g. faces.h5).")
@click.option("--size", type=click.IntRange(32, 2048), default=None,
              help="Side of the square face crops in pixels  [default: 224; with --merge: the shards']")
@click.option("--margin", type=click.FloatRange(0.0, 2.0), default=None,
              help="Space around the landmarks: crop side = landmark box's larger side x "
                   "(1 + 2 x margin)  [default: 0.25]")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes that read photos and detect faces; 0: one per CPU core (divided "
                   "among the ranks of a distributed run). At most one per 128 photos is started "
                   "(each takes seconds to start).")
@click.option("--retry-failed", is_flag=True,
              help="Try again the photos that failed in an earlier run even if they did not change.")
@click.option("--merge", is_flag=True,
              help="INPUTS are dataset files (e.g. the shards of a torchrun run) to join into OUTPUT.")
def prepare(inputs: tuple[Path, ...], output: Path, size: int | None, margin: float | None,
            workers: int, retry_failed: bool, merge: bool) -> None:
    """Build a face dataset from photos (files or folders, walked recursively): per photo
    MediaPipe's 478 landmarks, a square face crop, the skin mask, the crop box and the source
    path, in one HDF5 file (docs/datasets.md). Running again adds only new photos. Under torchrun
    each rank writes its own shard (OUTPUT.rank<r>-of-<w>.h5); join them with --merge."""
    from mfface.learning.prepare import PrepareError

    with dataset_command(output, (PrepareError,)):
        if merge:
            _merge(inputs, output, size, margin)
        else:
            _prepare(inputs, output, size, margin, workers, retry_failed)


def _prepare(inputs: tuple[Path, ...], output: Path, size: int | None, margin: float | None,
             workers: int, retry_failed: bool) -> None:
    """Prepare this rank's share of the photos into OUTPUT (or its shard); print the summary."""
    from mfface.learning.prepare import (DEFAULT_MARGIN, DEFAULT_SIZE, PrepareSettings,
                                         collect_photos, default_workers, distributed_rank,
                                         output_for_rank, prepare_dataset, share)

    if not inputs:
        raise UserError("give the photos (files or folders) to prepare, or --merge and the "
                        "dataset files to join.")
    rank, world = distributed_rank()
    photos = collect_photos(inputs)
    mine = share(photos, rank, world)
    target = output_for_rank(output, rank, world)
    settings = PrepareSettings(size=size or DEFAULT_SIZE,
                               margin=DEFAULT_MARGIN if margin is None else margin,
                               workers=workers or default_workers())
    settings.check()
    label = f"rank {rank}/{world} " if world > 1 else ""
    started = time.perf_counter()
    with run_progress(target) as progress:
        on_start, on_result = progress.run_callbacks(f"{label}prepare {target.name}")
        summary = prepare_dataset(mine, target, settings, shard=(rank, world) if world > 1 else None,
                                  retry_failed=retry_failed, on_start=on_start, on_result=on_result)
    CONSOLE.print(_summary_table(summary, len(photos), time.perf_counter() - started))
    print_report("not added", "photo", summary.not_added, _SHOWN_FAILURES, target)
    print_merge_hint(output, target, rank, world)


def _summary_table(summary: Any, found_total: int, wall: float) -> Table:
    """The end-of-run table: counts by outcome, samples in the file, time and images/s."""
    rows = [("photos found", str(found_total))] + share_rows(summary, summary.found)
    if summary.failed_before:
        rows.append(("failed before, unchanged (--retry-failed)", str(summary.failed_before)))
    rows.append(("added", str(summary.added)))
    rows += kind_rows("not added", summary.not_added)
    rows += result_rows(summary, wall, ".1f")
    return rows_table(f"mfface prepare -> {summary.output}", rows)


def _merge(inputs: tuple[Path, ...], output: Path, size: int | None, margin: float | None) -> None:
    """Join dataset files into OUTPUT (merge_datasets), checking --size/--margin when given."""
    from mfface.learning.dataset_format import merge_datasets, read_info
    from mfface.learning.prepare import distributed_rank

    if not inputs:
        raise UserError("--merge needs the dataset files to join (e.g. faces.rank*-of-2.h5).")
    if distributed_rank()[1] > 1:
        raise UserError("--merge runs once, after every rank has finished; run it without torchrun.")
    first = read_info(inputs[0])
    if size is not None and first["size"] != size:
        raise UserError(f"{inputs[0]} holds {first['size']} px crops, not --size {size}.")
    have_margin = first["attrs"].get("crop_margin")
    if margin is not None and have_margin is not None and abs(have_margin - margin) > 1e-9:
        raise UserError(f"{inputs[0]} was made with --margin {have_margin}, not {margin}.")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn(), TimeElapsedColumn(), console=CONSOLE) as progress:
        bar = progress.add_task(f"merge into {output.name}", total=None)
        result = merge_datasets(inputs, output, on_progress=lambda done, total:
                                progress.update(bar, completed=done, total=total))
    rows = [(name, str(result[key])) for name, key in (
        ("files joined", "inputs"), ("samples added", "added"), ("duplicates skipped", "skipped_duplicates"),
        ("not added (report)", "report"), ("samples in the dataset", "count"))]
    CONSOLE.print(rows_table(f"mfface prepare --merge -> {output}", rows))
