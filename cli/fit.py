"""`mfface fit`: reconstruct faces from one photo, a folder of photos, or several photos of one person."""
from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mfface.cli.errors import UserError
from mfface.atomic import write_text
from mfface.config import FitConfig, config_options, overrides_from_kwargs, to_toml

_CONSOLE = Console(stderr=True)


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


def build_config(config_file: Path | None, device: str | None, kwargs: dict) -> FitConfig:
    from mfface.config import ConfigError, apply_overrides, load_config

    try:
        config = load_config(config_file) if config_file is not None else FitConfig()
        overrides = overrides_from_kwargs(kwargs)
        if device is not None:
            overrides["render.device"] = device
        return apply_overrides(config, overrides)
    except ConfigError as e:
        raise UserError(str(e)) from None


@dataclass
class Outcome:
    """One fitted group of photos (or why it failed, or why it was skipped)."""
    names: list[str]
    folders: list[Path]
    seconds: float = 0.0
    rms_px: list[float] | None = None
    losses: dict | None = None
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
        shown = f"loss {losses['total']:.4g}  photo {losses.get('photo', float('nan')):.4g}"
        self.progress.update(self.tasks[stage], completed=i + 1, loss=shown)


@dataclass
class FitJob:
    """What every group of one `mfface fit` shares."""
    reconstructor: object
    config: FitConfig
    detector: object
    landmark_file: Path | None
    shared: bool
    resume: Path | None
    skip: tuple[int, ...]
    output: Path
    overwrite: bool
    progress: Progress
    model_name: str | None


def _prepared(job: FitJob, paths: list[Path]) -> list:
    from mfface.fitting.pipeline import prepare_image, prepare_photo

    prepared = [prepare_image(p, job.config, job.detector, job.landmark_file) for p in paths]
    if job.shared and len({im.target.shape[0] for im in prepared}) > 1:
        # Photos fitted together share one crop size: re-crop (landmarks are already known).
        size = min(im.target.shape[0] for im in prepared)
        prepared = [prepare_photo(im.photo, im.landmarks, im.scheme, job.config, im.name, im.path, size)
                    for im in prepared]
    return prepared


def _resume_command(job: FitJob, paths: list[Path], run_dir: Path) -> list[str]:
    """The `mfface fit` command line (without --checkpoint) that resumes this group's run."""
    command = ["mfface", "fit", *map(str, paths), "-o", str(job.output),
               "--config", str(run_dir / "config.toml")]
    if job.shared:
        command.append("--shared-identity")
    if job.model_name:
        command += ["--model", job.model_name]
    if job.landmark_file is not None:
        command += ["--landmarks", str(job.landmark_file)]
    return command


def _fit_group(job: FitJob, paths: list[Path]) -> Outcome:
    """Fit one group under the lock of its result names, in a checkpoint folder of its own."""
    from mfface.memory import check_disk, check_memory
    from mfface.outputs import ResultLock, check_target, finish_run_dir, new_run_dir, recover
    from mfface.results import write_results

    started = time.perf_counter()
    prepared = _prepared(job, paths)
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
            result = job.reconstructor.fit(prepared, shared_identity=job.shared, skip_stages=job.skip,
                                           resume=job.resume, checkpoint_dir=run_dir,
                                           on_step=StageProgress(job.progress, label))
            folders = write_results(result, job.output, run_dir, job.overwrite)
        except KeyboardInterrupt:
            raise Interrupted(_resume_command(job, paths, run_dir), run_dir) from None
        except BaseException:
            if not any(run_dir.glob("stage*.npz")):
                finish_run_dir(run_dir)
            raise
        finish_run_dir(run_dir)
    losses = {stage: rep.last("photo") for stage, rep in result.reports.items()}
    return Outcome(names, folders, time.perf_counter() - started, result.stage1_rms_px, losses)


def _summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="mfface fit")
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


def _plan(groups: list[list[Path]], output: Path, overwrite: bool) -> tuple[list[list[Path]], list[Outcome]]:
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


@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the results (one sub-folder per photo).")
@click.option("--example", is_flag=True,
              help="Fit the sample portrait that ships with mfface (NASA, public domain) instead of "
                   "photos of your own.")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results of the same photos in OUTPUT (only mfface's own result "
                   "folders, never other files).")
@click.option("--shared-identity", is_flag=True,
              help="The photos show one person: share identity and reflectance, fit pose, expression "
                   "and light per photo.")
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
              help="TOML file with settings (see `mfface fit --help` for every key as an option).")
@click.option("--model", "model_name", default=None, help="Installed face model (default: the store's default).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where to render and optimise (same as --render-device).")
@click.option("--landmarks", "landmark_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Landmark file (.pts, .json, .txt, .npy) to use instead of detection (one photo only).")
@click.option("--skip-stage", "skip", type=click.IntRange(1, 3), multiple=True,
              help="Skip a stage (repeatable); a skipped stage 1 keeps only its PnP pose.")
@click.option("--checkpoint", "resume", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Resume from a stageN.npz checkpoint of an earlier run of the same photo(s).")
@config_options
def fit(inputs: tuple[Path, ...], output: Path, example: bool, overwrite: bool, shared_identity: bool,
        config_file: Path | None, model_name: str | None, device: str | None, landmark_file: Path | None,
        skip: tuple[int, ...], resume: Path | None, **kwargs) -> None:
    """Reconstruct the face in each photo (files or folders) into OUTPUT/<photo name>/."""
    inputs = _inputs(inputs, example)
    try:
        _fit(inputs, output, overwrite, shared_identity, config_file, model_name, device, landmark_file,
             skip, resume, kwargs)
    except Interrupted as e:
        click.echo(e.message(), err=True)
        raise click.exceptions.Exit(130) from None
    except KeyboardInterrupt:
        click.echo("Interrupted; nothing was written.", err=True)
        raise click.exceptions.Exit(130) from None


def _inputs(inputs: tuple[Path, ...], example: bool) -> tuple[Path, ...]:
    """The photos to fit: those given, or the sample photo with --example (not both)."""
    from mfface.sample import SamplePhotoError, example_photo_path

    if example and inputs:
        raise UserError("give photos or --example, not both.")
    if not example and not inputs:
        raise UserError("give one or more photos (files or folders) to fit, or --example for the "
                        "sample portrait.")
    if not example:
        return inputs
    try:
        return (example_photo_path(),)
    except SamplePhotoError as e:
        raise UserError(str(e)) from None


def _fit(inputs: tuple[Path, ...], output: Path, overwrite: bool, shared_identity: bool,
         config_file: Path | None, model_name: str | None, device: str | None,
         landmark_file: Path | None, skip: tuple[int, ...], resume: Path | None, kwargs: dict) -> None:
    from mfface.backend import BackendError, select_variant, torch_device
    from mfface.fitting.pipeline import FitInputError, Reconstructor
    from mfface.checkpoints import CheckpointError
    from mfface.images import ImageReadError
    from mfface.landmarks import LandmarkDetector, LandmarkFileError, NoFaceError
    from mfface.memory import ResourceError
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore
    from mfface.outputs import OutputError

    config = build_config(config_file, device, kwargs)
    paths = collect_images(inputs)
    if landmark_file is not None and len(paths) != 1:
        raise UserError("--landmarks gives the landmarks of one photo; fit the photos one at a time.")
    if resume is not None and len(paths) != 1 and not shared_identity:
        raise UserError("--checkpoint resumes one fit; give the one photo (or, with --shared-identity, "
                        "the same photos) it was written for.")
    check_writable(output)
    groups, outcomes = _plan([paths] if shared_identity else [[p] for p in paths], output, overwrite)
    try:
        select_variant(None if config.render.device == "auto" else config.render.device)
        model = ModelStore().load(model_name)
    except (BackendError, ModelNotInstalledError, ModelFormatError, ValueError) as e:
        raise UserError(str(e)) from None
    _CONSOLE.print(f"model: {model.name} ({model.n_identity} identity, {model.n_expression} "
                   f"expression components)")
    user_errors = (ImageReadError, NoFaceError, LandmarkFileError, CheckpointError, FitInputError,
                   OutputError, ResourceError)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())
    progress = Progress(*columns, console=_CONSOLE, transient=False)
    with LandmarkDetector(max_num_faces=config.input.max_faces) as detector, _stopped(progress):
        job = FitJob(Reconstructor(model, config, torch_device()), config, detector, landmark_file,
                     shared_identity, resume, skip, output, overwrite, progress, model_name)
        for group in groups:
            try:
                outcomes.append(_fit_group(job, group))
            except OSError as e:
                raise UserError(_os_error_message(e, output, config)) from None
            except user_errors as e:
                if len(groups) == 1 and not outcomes:
                    raise UserError(str(e)) from None
                progress.console.print(f"[red]skipped {group[0]}: {e}")
                outcomes.append(Outcome([p.stem for p in group], [], error=str(e)))
    _CONSOLE.print(_summary(outcomes))
    done = [f for o in outcomes for f in o.folders]
    if done:
        _CONSOLE.print(f"Results: {', '.join(str(f) for f in done)} (README, 'Outputs', lists the files; "
                       f"`mfface replay {done[0]}` makes a turntable).")
    for o in outcomes:
        if o.skipped:
            _CONSOLE.print(f"[yellow]{', '.join(o.names)}: {o.skipped}")
    failed = [o for o in outcomes if o.error]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} photos could not be fitted (see above); the "
                        "others were written to " + str(output))


@contextmanager
def _stopped(progress: Progress) -> Iterator[Progress]:
    """Stop `progress` on the way out (it starts itself at a fit's first step)."""
    try:
        yield progress
    finally:
        progress.stop()


def _os_error_message(error: OSError, output: Path, config: FitConfig) -> str:
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
