"""`mfface fit`: reconstruct faces from one photo, a folder of photos, or several photos of one person."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mfface.cli.errors import UserError
from mfface.config import FitConfig, config_options, overrides_from_kwargs

_CONSOLE = Console(stderr=True)
CHECKPOINTS = ".checkpoints"  # OUT/.checkpoints/<name>/stageN.npz while a fit runs


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
    """Raise UserError unless results can be written into `folder` (created when missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".mfface-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write results to {folder} ({e.strerror or e}); choose another "
                        "output folder with -o.") from None


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
    """One fitted group of photos (or the reason it failed)."""
    names: list[str]
    folders: list[Path]
    seconds: float = 0.0
    rms_px: list[float] | None = None
    losses: dict | None = None
    error: str | None = None


class StageProgress:
    """A rich progress bar per stage, showing the current loss."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label, self.tasks = progress, label, {}

    def __call__(self, stage: str, i: int, n: int, losses: dict[str, float]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(f"{self.label} {stage}", total=n, loss="")
        shown = f"loss {losses['total']:.4g}  photo {losses.get('photo', float('nan')):.4g}"
        self.progress.update(self.tasks[stage], completed=i + 1, loss=shown)


def _fit_group(reconstructor, paths: list[Path], config: FitConfig, detector, landmark_file: Path | None,
               shared: bool, resume: Path | None, skip: tuple[int, ...], output: Path,
               progress: Progress) -> Outcome:
    from mfface.fitting.pipeline import prepare_image, prepare_photo
    from mfface.results import write_results

    started = time.perf_counter()
    prepared = [prepare_image(p, config, detector, landmark_file) for p in paths]
    if shared and len({im.target.shape[0] for im in prepared}) > 1:
        # Photos fitted together share one crop size: re-crop (landmarks are already known).
        size = min(im.target.shape[0] for im in prepared)
        prepared = [prepare_photo(im.photo, im.landmarks, im.scheme, config, im.name, im.path, size)
                    for im in prepared]
    label = prepared[0].name if len(prepared) == 1 else f"{len(prepared)} photos"
    checkpoints = output / CHECKPOINTS / "+".join(im.name for im in prepared)
    result = reconstructor.fit(prepared, shared_identity=shared, skip_stages=skip, resume=resume,
                               checkpoint_dir=checkpoints, on_step=StageProgress(progress, label))
    folders = write_results(result, output, checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    try:
        (output / CHECKPOINTS).rmdir()
    except OSError:
        pass  # other fits still keep theirs
    losses = {stage: rep.last("photo") for stage, rep in result.reports.items()}
    return Outcome([im.name for im in prepared], folders, time.perf_counter() - started,
                   result.stage1_rms_px, losses)


def _summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="mfface fit")
    for column in ("photo", "landmark rms (px)", "photometric loss", "time (s)", "result"):
        table.add_column(column)
    for o in outcomes:
        if o.error:
            table.add_row(", ".join(o.names), "-", "-", "-", f"[red]failed: {o.error}")
            continue
        for i, (name, folder) in enumerate(zip(o.names, o.folders)):
            rms = f"{o.rms_px[i]:.2f}" if o.rms_px else "-"
            loss = " / ".join(f"{k} {v:.3g}" for k, v in (o.losses or {}).items()) or "-"
            table.add_row(name, rms, loss, f"{o.seconds:.1f}", str(folder))
    return table


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the results (one sub-folder per photo).")
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
def fit(inputs: tuple[Path, ...], output: Path, shared_identity: bool, config_file: Path | None,
        model_name: str | None, device: str | None, landmark_file: Path | None, skip: tuple[int, ...],
        resume: Path | None, **kwargs) -> None:
    """Reconstruct the face in each photo (files or folders) into OUTPUT/<photo name>/."""
    from mfface.backend import BackendError, select_variant, torch_device
    from mfface.fitting.pipeline import FitInputError, Reconstructor
    from mfface.fitting.state import CheckpointError
    from mfface.images import ImageReadError
    from mfface.landmarks import LandmarkDetector, LandmarkFileError, NoFaceError
    from mfface.morphable.format import ModelFormatError
    from mfface.morphable.store import ModelNotInstalledError, ModelStore

    config = build_config(config_file, device, kwargs)
    paths = collect_images(inputs)
    if landmark_file is not None and len(paths) != 1:
        raise UserError("--landmarks gives the landmarks of one photo; fit the photos one at a time.")
    if resume is not None and len(paths) != 1 and not shared_identity:
        raise UserError("--checkpoint resumes one fit; give the one photo (or, with --shared-identity, "
                        "the same photos) it was written for.")
    check_writable(output)
    try:
        select_variant(None if config.render.device == "auto" else config.render.device)
        model = ModelStore().load(model_name)
    except (BackendError, ModelNotInstalledError, ModelFormatError) as e:
        raise UserError(str(e)) from None
    reconstructor = Reconstructor(model, config, torch_device())
    groups = [paths] if shared_identity else [[p] for p in paths]
    user_errors = (ImageReadError, NoFaceError, LandmarkFileError, CheckpointError, FitInputError)
    outcomes = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[loss]}"), TimeElapsedColumn())
    with LandmarkDetector(max_num_faces=config.input.max_faces) as detector, \
            Progress(*columns, console=_CONSOLE, transient=False) as progress:
        for group in groups:
            try:
                outcomes.append(_fit_group(reconstructor, group, config, detector, landmark_file,
                                           shared_identity, resume, skip, output, progress))
            except user_errors as e:
                if len(groups) == 1:
                    raise UserError(str(e)) from None
                progress.console.print(f"[red]skipped {group[0]}: {e}")
                outcomes.append(Outcome([p.stem for p in group], [], error=str(e)))
    _CONSOLE.print(_summary(outcomes))
    failed = [o for o in outcomes if o.error]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} photos could not be fitted (see above); the "
                        "others were written to " + str(output))
