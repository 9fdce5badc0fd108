"""What `mfface prepare` and `mfface synth` share on the command line: SIGTERM as Ctrl-C, the
refusals turned into one-line errors, the progress bars, Ctrl-C's message and exit code, and the
pieces of the end-of-run tables."""
from __future__ import annotations

import signal
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from mfface.cli.errors import UserError
from mfface.cli.progress import Progress

CONSOLE = Console(stderr=True)
Row = tuple[str, str]


class RateColumn(ProgressColumn):
    """Images per second over the bar's recent updates."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (what torchrun and schedulers send) like Ctrl-C while inside: the samples
    finished so far are committed. The handler raises KeyboardInterrupt and also records the
    request, which the dataset loop checks after each sample: a KeyboardInterrupt that lands in a
    finaliser is dropped by Python (CI once saw a SIGTERM printed and the run finish with exit 0).
    Only possible in the main thread; elsewhere a no-op."""
    from mfface import interrupt

    def handler(signum: int, frame: Any) -> None:
        interrupt.request()
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    interrupt.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        interrupt.clear()


@contextmanager
def dataset_command(output: Path, refusals: tuple[type[Exception], ...]) -> Iterator[None]:
    """Run a dataset command's body: SIGTERM acts as Ctrl-C (`sigterm_as_interrupt`); a
    DatasetError or one of `refusals` becomes a UserError with its message, an OSError one that
    says `output` was left as it was."""
    from mfface.learning.dataset_format import DatasetError

    try:
        with sigterm_as_interrupt():
            yield
    except (DatasetError, *refusals) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"could not write {output} ({e.strerror or e}); nothing half-written was "
                        "left and an earlier dataset there is unchanged. Check free space and "
                        "permissions.") from None


class RunProgress:
    """The progress bars of a dataset run on stderr, shown from the first bar added."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=CONSOLE, transient=False)
        self.bars: dict[str, TaskID] = {}
        self.started = False

    def add(self, key: str, description: str, total: int) -> None:
        """Add the bar `key` of `total` steps, starting the display if it is not yet shown."""
        if not self.started:
            self.progress.start()
            self.started = True
        self.bars[key] = self.progress.add_task(description, total=total)

    def update(self, key: str, completed: int) -> None:
        """Move the bar `key` to `completed` steps."""
        self.progress.update(self.bars[key], completed=completed)

    def run_callbacks(self, description: str) -> tuple[Callable[[int], None], Callable[[int, int, Any], None]]:
        """`on_start(n)` and `on_result(done, n, result)` for prepare_dataset / synth_dataset:
        one bar, `description`, of the n inputs to process."""
        def on_start(n: int) -> None:
            self.add("run", description, n)

        def on_result(done: int, n: int, result: Any) -> None:
            self.update("run", done)

        return on_start, on_result

    def stop(self) -> None:
        """Stop the display if it was started (stopping an unstarted one prints an empty line)."""
        if self.started:
            self.started = False
            self.progress.stop()


@contextmanager
def run_progress(target: Path) -> Iterator[RunProgress]:
    """A RunProgress for filling `target`, stopped on leaving. Ctrl-C (or SIGTERM, see
    `sigterm_as_interrupt`) inside says that `target` keeps the finished samples and exits with
    status 130."""
    progress = RunProgress()
    try:
        yield progress
    except KeyboardInterrupt:
        progress.stop()
        click.echo(f"Interrupted; {target} keeps every sample finished so far. Run the same "
                   "command again to continue.", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        progress.stop()


def rows_table(title: str, rows: Sequence[Row]) -> Table:
    """A table of (name, right-aligned value) rows under `title`."""
    table = Table(title=title)
    table.add_column("")
    table.add_column("", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def share_rows(summary: Any, share: int) -> list[Row]:
    """The rows of this rank's `share` of the inputs (in a distributed run only) and of those
    already in the dataset."""
    rows = []
    if summary.world_size > 1:
        rows.append((f"this rank's share (rank {summary.rank} of {summary.world_size})", str(share)))
    rows.append(("already in the dataset", str(summary.already)))
    return rows


def kind_rows(prefix: str, entries: Sequence[Any]) -> list[Row]:
    """One row per kind of report entry, `prefix: kind` and how many, sorted by kind."""
    kinds = Counter(entry.kind for entry in entries)
    return [(f"{prefix}: {kind.replace('_', ' ')}", str(n)) for kind, n in sorted(kinds.items())]


def result_rows(summary: Any, wall: float, rate_format: str) -> list[Row]:
    """The last rows of a run's table: samples in the file, workers, time, steady images/s
    (formatted with `rate_format`, '-' when nothing was processed)."""
    rate = format(summary.images_per_second, rate_format) if summary.processed else "-"
    return [("samples in the dataset", str(summary.count)),
            ("workers", str(summary.workers)),
            ("time", f"{wall:.1f} s (start-up {summary.startup:.1f} s)"),
            ("images/s after the first", rate)]


def print_report(title: str, what: str, entries: Sequence[Any], shown: int, target: Path) -> None:
    """The inputs that were not added (report entries): a table of the first `shown`, with the
    column `what` naming them, and where to find the rest."""
    if not entries:
        return
    table = Table(title=f"{title} ({len(entries)})")
    table.add_column(what)
    table.add_column("why")
    for entry in entries[:shown]:
        table.add_row(entry.path, f"{entry.kind}: {entry.reason}")
    CONSOLE.print(table)
    if len(entries) > shown:
        CONSOLE.print(f"... and {len(entries) - shown} more: all are listed in "
                      f"{target}'s report (docs/datasets.md).")


def print_merge_hint(output: Path, target: Path, rank: int, world: int) -> None:
    """In a distributed run (world > 1): which shard this rank wrote and how to join them."""
    if world > 1:
        pattern = target.with_name(f"{output.stem}.rank*-of-{world}{output.suffix or '.h5'}")
        CONSOLE.print(f"rank {rank} of {world} wrote {target}. When every rank has finished, join "
                      f"the shards: mfface prepare --merge {pattern} -o {output}")
