"""What `mfface fit` and `mfface predict` share: photos in, one result folder per photo out.

Finding the photos, checking every result path before anything runs (`plan`), and running one group
of photos (`run_group`) under the lock of its result names, in a checkpoint folder of its own, with
the results written atomically (`mfface.outputs` says what may be replaced); interruptions and
full disks become one line (`Interrupted`, `os_error_message`); a summary table at the end.
What a command does with the photos is its `GroupJob`'s `prepare` and `solve`.
"""
from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mfface.atomic import write_text
from mfface.cli.errors import UserError
from mfface.cli.progress import Progress
from mfface.config import FitConfig, to_toml

PROGRESS_COLUMNS = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[loss]}"), TimeElapsedColumn())


def collect_images(inputs: tuple[Path, ...]) -> list[Path]:
    """The photos named by `inputs`: files as given, folders expanded to their image files."""
    from mfface.images import IMAGE_SUFFIXES

    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path} contains no PNG, JPEG, PPM, TIFF or WebP images.")
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            raise UserError(f"{path} does not exist; give an image file or a folder of images.")
    names = [p.stem for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several inputs are named {', '.join(duplicates)}; their results would share a "
                        "folder, so rename them.")
    return images


def check_writable(folder: Path) -> None:
    """Raise UserError unless results can be written into `folder`. A folder created only to
    probe it is removed again, so that a run that fails later leaves no empty output folder."""
    created = []
    try:
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        probe = folder / ".mfface-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write results to {folder} ({e.strerror or e}); choose another "
                        "output folder with -o.") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError:
                pass


@dataclass
class Outcome:
    """One fitted group of photos (or why it failed, or why it was skipped)."""
    names: list[str]
    folders: list[Path]
    seconds: float = 0.0
    rms_px: list[float] | None = None
    losses: dict | None = None
    warnings: list[list[str]] | None = None  # per photo: mfface.fitting.untrusted_landmarks
    error: str | None = None
    skipped: str | None = None


class Interrupted(Exception):
    """Ctrl-C during a fit; `run_dir` keeps the config and the checkpoints of finished stages."""

    def __init__(self, resume_command: list[str], run_dir: Path) -> None:
        super().__init__("interrupted")
        self.resume_command, self.run_dir = resume_command, run_dir

    def message(self) -> str:
        stages = sorted(self.run_dir.glob("stage*.npz"))
        if not stages:
            return "Interrupted before any stage finished; nothing was written."
        command = " ".join(shlex.quote(a) for a in [*self.resume_command, "--checkpoint", str(stages[-1])])
        return f"Interrupted; the finished stages are kept in {self.run_dir}. Resume with: {command}"


class StageProgress:
    """A rich progress bar per stage, showing the current loss."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.tasks = progress, label, {}

    def __call__(self, stage: str, i: int, n: int, losses: dict[str, float]) -> None:
        if stage not in self.tasks:
            self.progress.start()  # on the first step only, so a run that fails earlier prints no bar
            self.tasks[stage] = self.progress.add_task(f"{self.label} {stage}", total=n, loss="")
        shown = f"loss {losses['total']:.4g}" + (f"  photo {losses['photo']:.4g}" if "photo" in losses else "")
        self.progress.update(self.tasks[stage], completed=i + 1, loss=shown)


@dataclass
class GroupJob:
    """How one command turns a group of photos into written results: `prepare` reads and crops
    them (PreparedImage list), `solve` makes the FitResult (prepared, run folder for checkpoints,
    progress callback), `resume_command` is the command line that resumes from that run folder."""
    config: FitConfig
    output: Path
    overwrite: bool
    progress: Progress
    prepare: Callable[[list[Path]], list]
    solve: Callable[[list, Path, StageProgress], object]
    resume_command: Callable[[list[Path], Path], list[str]]


def run_group(job: GroupJob, paths: list[Path]) -> Outcome:
    """Solve one group under the lock of its result names, in a checkpoint folder of its own."""
    from mfface.memory import check_disk, check_memory
    from mfface.outputs import ResultLock, check_target, finish_run_dir, new_run_dir, recover
    from mfface.results import write_results

    started = time.perf_counter()
    prepared = job.prepare(paths)
    names = [im.name for im in prepared]
    group = "+".join(names)
    with ResultLock(job.output, names):
        for note in recover(job.output, names, group):
            job.progress.console.print(f"[yellow]{note}")
        for name in names:
            check_target(job.output / name, job.overwrite)
        check_memory(job.config, len(prepared))
        check_disk(job.output, job.config, len(prepared))
        run_dir = new_run_dir(job.output, group)
        write_text(run_dir / "config.toml", to_toml(job.config))
        try:
            label = names[0] if len(names) == 1 else f"{len(names)} photos"
            result = job.solve(prepared, run_dir, StageProgress(job.progress, label))
            folders = write_results(result, job.output, run_dir, job.overwrite)
        except KeyboardInterrupt:
            raise Interrupted(job.resume_command(paths, run_dir), run_dir) from None
        except BaseException:
            if not any(run_dir.glob("stage*.npz")):
                finish_run_dir(run_dir)
            raise
        finish_run_dir(run_dir)
    losses = {stage: rep.final_photo() for stage, rep in result.reports.items()}
    return Outcome(names, folders, time.perf_counter() - started, result.stage1_rms_px, losses,
                   warnings=result.landmark_warnings or None)


def summary(outcomes: list[Outcome], title: str) -> Table:
    """The table printed at the end: one row per photo, its result or why it has none."""
    table = Table(title=title)
    for column in ("photo", "landmark rms (px)", "photometric loss", "time (s)", "result"):
        table.add_column(column)
    for o in outcomes:
        if o.error or o.skipped:
            shown = f"[red]failed: {o.error}" if o.error else f"[yellow]skipped: {o.skipped}"
            table.add_row(", ".join(o.names), "-", "-", "-", shown)
            continue
        for i, (name, folder) in enumerate(zip(o.names, o.folders)):
            rms = f"{o.rms_px[i]:.2f}" if o.rms_px else "-"
            loss = " / ".join(f"{k} {v:.3g}" for k, v in (o.losses or {}).items()) or "-"
            table.add_row(name, rms, loss, f"{o.seconds:.1f}", str(folder))
    return table


def plan(groups: list[list[Path]], output: Path, overwrite: bool) -> tuple[list[list[Path]], list[Outcome]]:
    """Check every result path before anything is fitted: (groups to fit, groups skipped).

    Something that is not an mfface result at a result path stops the whole command (it is the
    user's, and -o probably points at the wrong place); an earlier result without --overwrite
    stops a single fit and is skipped, with a note, in a batch."""
    from mfface.outputs import OutputError, existing_result

    todo, skipped = [], []
    for group in groups:
        try:
            earlier = [p.stem for p in group if existing_result(output / p.stem)]
        except OutputError as e:
            raise UserError(str(e)) from None
        if earlier and not overwrite:
            reason = (f"{output / earlier[0]} holds an earlier result; pass --overwrite to replace it, "
                      f"or choose another output folder with -o.")
            if len(groups) == 1:
                raise UserError(reason)
            skipped.append(Outcome([p.stem for p in group], [], skipped=reason))
        else:
            todo.append(group)
    return todo, skipped


@contextmanager
def stopped(progress: Progress) -> Iterator[Progress]:
    """Stop `progress` on the way out (it starts itself at a fit's first step)."""
    try:
        yield progress
    finally:
        progress.stop()


def os_error_message(error: OSError, output: Path, config: FitConfig) -> str:
    """One sentence for a file-system failure while fitting or writing (full disk, permissions)."""
    import errno
    import shutil

    from mfface.memory import estimate_result_bytes

    where = f"{output} (at {Path(error.filename).name})" if error.filename else str(output)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        existing = next(p for p in (output, *output.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        return (f"the disk is full: writing the results into {where} failed with {free / 2**20:.0f} MB "
                f"free, and a result needs about {estimate_result_bytes(config) / 2**20:.0f} MB; nothing "
                f"half-written was left. Free some space or choose another output folder with -o.")
    return (f"could not write the results into {where} ({error.strerror or error}); nothing "
            f"half-written was left. Check the output folder's permissions.")


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a photo's group can end with that are the user's to fix (one line each)."""
    from mfface.checkpoints import CheckpointError
    from mfface.fitting.pipeline import FitInputError
    from mfface.images import ImageReadError
    from mfface.landmarks import LandmarkFileError, NoFaceError
    from mfface.memory import ResourceError
    from mfface.outputs import OutputError

    return (ImageReadError, NoFaceError, LandmarkFileError, CheckpointError, FitInputError, OutputError,
            ResourceError)


def run_all(job: GroupJob, groups: list[list[Path]], outcomes: list[Outcome], title: str) -> None:
    """Run every group; a failure of the only group is an error, in a batch it is reported and the
    rest go on. Then the summary, where the results are, and a non-zero exit if any failed."""
    from mfface.interrupt import deferred, raise_if_requested

    console = job.progress.console
    errors = user_errors()
    with stopped(job.progress), deferred():
        for group in groups:
            raise_if_requested()
            try:
                outcomes.append(run_group(job, group))
            except OSError as e:
                raise UserError(os_error_message(e, job.output, job.config)) from None
            except errors as e:
                if len(groups) == 1 and not outcomes:
                    raise UserError(str(e)) from None
                console.print(f"[red]skipped {group[0]}: {e}")
                outcomes.append(Outcome([p.stem for p in group], [], error=str(e)))
    console.print(summary(outcomes, title))
    done = [f for o in outcomes for f in o.folders]
    if done:
        console.print(f"Results: {', '.join(str(f) for f in done)} (README, 'Outputs', lists the files; "
                      f"`mfface replay {done[0]}` makes a turntable).")
    for o in outcomes:
        if o.skipped:
            console.print(f"[yellow]{', '.join(o.names)}: {o.skipped}")
        for name, problems in zip(o.names, o.warnings or []):
            for problem in problems:
                console.print(f"[yellow]{name}: {problem}; its shape was kept near the mean face "
                              f"(stronger identity prior).")
    failed = [o for o in outcomes if o.error]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} photos could not be processed (see above); the "
                        f"others were written to {job.output}")
