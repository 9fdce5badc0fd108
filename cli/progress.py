"""rich's progress display without its refresh thread.

rich's `Progress` redraws from a background thread. Any Python thread that allocates can run the
garbage collector, and a collection there may free a Mitsuba scene left in a reference cycle:
its destructor then releases Dr.Jit memory from that thread while the main thread is inside a
Dr.Jit render, and the two wait on each other for good (seen in the test suite: a `mfface synth`
run hung inside `mi.render` for 17 minutes, the refresh thread in `Scene::~Scene` ->
`jit_enqueue_host_func`). `Progress` here redraws from the thread that reports progress instead,
at most `refresh_per_second` times a second, so only the main thread runs Python while a command
renders.
"""
from __future__ import annotations

import time
from typing import Any

from rich.progress import Progress as RichProgress
from rich.progress import TaskID


class Progress(RichProgress):
    """`rich.progress.Progress` that redraws on `update` and `advance` (throttled) instead of from
    a refresh thread; the same arguments, without `auto_refresh`."""

    def __init__(self, *columns: Any, refresh_per_second: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*columns, auto_refresh=False, refresh_per_second=refresh_per_second, **kwargs)
        self._interval = 1.0 / refresh_per_second
        self._drawn = 0.0

    def update(self, task_id: TaskID, *, refresh: bool = False, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._redraw(refresh)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._redraw(False)

    def _redraw(self, now: bool) -> None:
        """Redraw if `now` or if the last redraw is older than the refresh interval."""
        clock = time.monotonic()
        if now or clock - self._drawn >= self._interval:
            self._drawn = clock
            self.refresh()
