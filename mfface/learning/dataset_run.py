"""What `mfface prepare` and `mfface synth` share when they fill a face dataset.

The name of the landmark detector recorded in the file, the default crop side, the cap on worker
processes, the pool of spawned workers, the fields every run's summary has (`RunSummary`), and
the loop that writes each result as it comes (keeping the summary's start-up time, duration and
counts, and committing on Ctrl-C). `mfface.learning.prepare` and `mfface.learning.synth` supply
what differs: how one input becomes a sample and what a worker process holds.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from mfface.interrupt import raise_if_requested
from mfface.learning.dataset_format import DatasetWriter

DEFAULT_SIZE = 224
LANDMARK_DETECTOR = ("MediaPipe face mesh with irises, averaged with its mirror image (mediapipe 0.10.21, "
                     "mfface.landmarks.LandmarkDetector)")

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(kw_only=True)
class RunSummary:
    """What every run that fills a dataset reports (`PrepareSummary` and `SynthSummary` add their
    own counts). Times in seconds: `seconds` from the start of processing (detector, renderer or
    worker start-up included) to the last item, `startup` until the first item was done;
    `images_per_second` is the steady rate after the first item."""
    output: Path
    already: int = 0            # inputs skipped: already in the dataset
    added: int = 0
    count: int = 0              # samples in the dataset after the run
    seconds: float = 0.0
    startup: float = 0.0
    workers: int = 1
    rank: int = 0
    world_size: int = 1
    interrupted: bool = False

    @property
    def processed(self) -> int:
        """Inputs processed this run (added or not); each kind of run counts its own."""
        raise NotImplementedError

    @property
    def images_per_second(self) -> float:
        """Steady rate after the first item (start-up excluded), or overall for fewer than two."""
        steady = self.seconds - self.startup
        if self.processed >= 2 and steady > 0:
            return (self.processed - 1) / steady
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def capped_workers(asked: int, items: int, per_worker: int) -> int:
    """Processes to use for `items` inputs: `asked`, but at most one per `per_worker` inputs (a
    spawned worker takes seconds to start); at least 1, which means this process."""
    return min(asked, max(1, items // per_worker))


def pool_results(work: Callable[[Item], Result], items: Sequence[Item], workers: int,
                 initializer: Callable[..., None], initargs: tuple[Any, ...]) -> Iterator[Result]:
    """`work(item)` for each item, in order, in `workers` spawned processes that each ran
    `initializer(*initargs)` first. The pool is ended when the iterator is exhausted, closed or
    interrupted."""
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield from pool.imap(work, items, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def write_results_as_they_come(writer: DatasetWriter, results: Iterable[Result], total: int,
                               summary: RunSummary, store: Callable[[Result], None],
                               on_start: Callable[[int], None] | None = None,
                               on_result: Callable[[int, int, Result], None] | None = None) -> None:
    """Pass each of the `total` results to `store` (which appends it to `writer` or to its
    report) as it comes, keeping `summary`'s start-up time (until the first result), duration,
    added and count. `on_start(total)` is called first, `on_result(done, total, result)` after
    each. A KeyboardInterrupt marks the summary interrupted and is re-raised (the writer commits
    what was stored)."""
    if on_start is not None:
        on_start(total)
    started = time.perf_counter()
    try:
        for done, result in enumerate(results, start=1):
            store(result)
            if done == 1:
                summary.startup = time.perf_counter() - started
            summary.added = writer.added
            if on_result is not None:
                on_result(done, total, result)
            raise_if_requested()  # a SIGTERM whose KeyboardInterrupt a finaliser swallowed
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        summary.added = writer.added
        summary.count = writer.count


__all__ = ["DEFAULT_SIZE", "LANDMARK_DETECTOR", "RunSummary", "capped_workers", "pool_results",
           "write_results_as_they_come"]
