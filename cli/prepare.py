"""`mfface prepare`: photos -> a face dataset (HDF5) to train on; `--merge` joins shards."""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from mfface.cli.errors import UserError

_CONSOLE = Console(stderr=True)
_SHOWN_FAILURES = 20  # rows of the not-added table; the file's report has them all


class _RateColumn(ProgressColumn):
    """Images per second over the bar's recent updates."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (what torchrun and schedulers send) like Ctrl-C while inside: the samples
    finished so far are committed. Only possible in the main thread; elsewhere a no-op."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    from mfface.learning.dataset_format import DatasetError
    from mfface.learning.prepare import PrepareError

    try:
        with _sigterm_as_interrupt():
            if merge:
                _merge(inputs, output, size, margin)
            else:
                _prepare(inputs, output, size, margin, workers, retry_failed)
    except (DatasetError, PrepareError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"could not write {output} ({e.strerror or e}); nothing half-written was "
                        "left and an earlier dataset there is unchanged. Check free space and "
                        "permissions.") from None


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
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=_CONSOLE, transient=False)
    tasks: dict[str, Any] = {}

    def on_start(n: int) -> None:
        progress.start()
        tasks["started"] = True
        tasks["bar"] = progress.add_task(f"{label}prepare {target.name}", total=n)

    def on_result(done: int, n: int, result: Any) -> None:
        progress.update(tasks["bar"], completed=done)

    started = time.perf_counter()
    try:
        summary = prepare_dataset(mine, target, settings, shard=(rank, world) if world > 1 else None,
                                  retry_failed=retry_failed, on_start=on_start, on_result=on_result)
    except KeyboardInterrupt:
        _stop(progress, tasks)
        click.echo(f"Interrupted; {target} keeps every sample finished so far. Run the same "
                   "command again to continue.", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        _stop(progress, tasks)
    _CONSOLE.print(_summary_table(summary, len(photos), time.perf_counter() - started))
    failures = summary.not_added
    if failures:
        table = Table(title=f"not added ({len(failures)})")
        table.add_column("photo")
        table.add_column("why")
        for entry in failures[:_SHOWN_FAILURES]:
            table.add_row(entry.path, f"{entry.kind}: {entry.reason}")
        _CONSOLE.print(table)
        if len(failures) > _SHOWN_FAILURES:
            _CONSOLE.print(f"... and {len(failures) - _SHOWN_FAILURES} more: all are listed in "
                           f"{target}'s report (docs/datasets.md).")
    if world > 1:
        pattern = target.with_name(f"{output.stem}.rank*-of-{world}{output.suffix or '.h5'}")
        _CONSOLE.print(f"rank {rank} of {world} wrote {target}. When every rank has finished, join "
                       f"the shards: mfface prepare --merge {pattern} -o {output}")


def _stop(progress: Progress, tasks: dict[str, Any]) -> None:
    """Stop the bar if it was started (stopping an unstarted one prints an empty line)."""
    if tasks.pop("started", False):
        progress.stop()


def _summary_table(summary: Any, found_total: int, wall: float) -> Table:
    """The end-of-run table: counts by outcome, samples in the file, time and images/s."""
    table = Table(title=f"mfface prepare -> {summary.output}")
    table.add_column("")
    table.add_column("", justify="right")
    rows = [("photos found", str(found_total))]
    if summary.world_size > 1:
        rows.append((f"this rank's share (rank {summary.rank} of {summary.world_size})", str(summary.found)))
    kinds: dict[str, int] = {}
    for entry in summary.not_added:
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    rows += [("already in the dataset", str(summary.already))]
    if summary.failed_before:
        rows.append(("failed before, unchanged (--retry-failed)", str(summary.failed_before)))
    rows.append(("added", str(summary.added)))
    rows += [(f"not added: {kind.replace('_', ' ')}", str(n)) for kind, n in sorted(kinds.items())]
    rows += [("samples in the dataset", str(summary.count)),
             ("workers", str(summary.workers)),
             ("time", f"{wall:.1f} s (start-up {summary.startup:.1f} s)"),
             ("images/s after the first", f"{summary.images_per_second:.1f}" if summary.processed else "-")]
    for name, value in rows:
        table.add_row(name, value)
    return table


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
                  _RateColumn(), TimeElapsedColumn(), console=_CONSOLE) as progress:
        bar = progress.add_task(f"merge into {output.name}", total=None)
        result = merge_datasets(inputs, output, on_progress=lambda done, total:
                                progress.update(bar, completed=done, total=total))
    table = Table(title=f"mfface prepare --merge -> {output}")
    table.add_column("")
    table.add_column("", justify="right")
    for name, key in (("files joined", "inputs"), ("samples added", "added"),
                      ("duplicates skipped", "skipped_duplicates"), ("not added (report)", "report"),
                      ("samples in the dataset", "count")):
        table.add_row(name, str(result[key]))
    _CONSOLE.print(table)
