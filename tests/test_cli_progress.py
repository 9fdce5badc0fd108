"""The commands' progress display redraws from the caller's thread: no refresh thread in which the
garbage collector could free a Mitsuba scene while the main thread renders (`mfface.cli.progress`)."""
from __future__ import annotations

import io
import threading

from rich.console import Console
from rich.progress import BarColumn, TextColumn

from mfface.cli.progress import Progress


def test_progress_starts_no_thread_and_still_draws() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    before = {t.ident for t in threading.enumerate()}
    with Progress(TextColumn("{task.description}"), BarColumn(), console=console) as progress:
        task = progress.add_task("rendering faces", total=3)
        progress.advance(task)
        assert {t.ident for t in threading.enumerate()} == before
        drawn = console.file.getvalue()
        assert "rendering faces" in drawn  # the first advance redraws at once
        progress.update(task, completed=2, description="still rendering", refresh=True)
        assert "still rendering" in console.file.getvalue()[len(drawn):]
        progress.advance(task)  # within the refresh interval: not drawn now...
    assert progress.tasks[0].completed == 3  # ...but counted, and drawn when the display stops
    assert {t.ident for t in threading.enumerate()} == before
