"""`mfface synth`: synthetic faces with their ground truth, as a face dataset to train on.

Sample i of a dataset seeded s is `mfface.synthetic.synth_face(model, size, s, i)`: every draw
(identity, expression, pose, focal, framing, skin, light environment, background, eyes) comes from
a generator seeded by (s, i) alone, so a sample is the same whichever process, shard or resumed
run renders it. It is stored in the layout of `mfface prepare` (mfface.learning.dataset_format)
with `boxes` = the crop in a virtual photo ([0, 0, S] unless camera.principal_offset is set),
zeros and "" for the source-file columns, and a `truth` group (the FaceState fields it was
rendered from, the exactly projected landmarks, the diffuse texture, plus specular, roughness,
environment and background kinds and the skin tone's ITA).

The root `landmarks` are what MediaPipe detects on the rendered crop (the detector's real
error). A render where MediaPipe finds no face, or landmarks that fail `check_landmarks`, or that
lie farther than MAX_LANDMARK_OFFSET of the face's size from the true ones (a detection of
something else) is not stored: it is counted and listed in the file's report (kinds `no_face`,
`bad_landmarks`) under its sample name, and a later run skips it (it would be rejected again).
So N renders give N minus the rejected samples.

Determinism: bit-identical results need each render in a scene of its own (synth_face does that)
and Dr.Jit and torch on one thread (`single_threaded`, used here and in every worker process);
parallelism comes from worker processes instead. This holds on the CPU (LLVM); on a GPU, atomic
accumulation makes renders agree only to float rounding.

Resuming and sharding follow `mfface prepare`: a sample is identified by its name
(`sample_name`: seed and index); a run adds the indices < N that are neither stored nor reported;
under RANK / WORLD_SIZE, rank r renders the indices r, r + W, ... into its own shard
(`dataset_format.shard_path`), joined by `mfface prepare --merge`. An existing output must have
been made with the same seed, spp, ranges (SynthConfig), background photos, model and size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from mfface.learning.dataset_format import (_SMALL_BLOCK, Column, DatasetSpec, DatasetWriter,
                                            ReportEntry, truth_columns)
from mfface.learning.dataset_run import (DEFAULT_SIZE, LANDMARK_DETECTOR, RunSummary, capped_workers,
                                         pool_results, write_results_as_they_come)
from mfface.synthetic import BackgroundPhoto, BackgroundPhotos
from mfface.synthetic_config import BACKGROUND_KINDS, ENVIRONMENTS, SynthConfig

if TYPE_CHECKING:
    from mfface.state import FaceState

DEFAULT_SPP = 64
# Fewer samples than this per worker: fewer workers. A spawned worker takes ~10 s to start
# (torch, Mitsuba, MediaPipe, the model, the first kernel), about 10-20 renders' worth.
SAMPLES_PER_WORKER = 24
# Detected landmarks whose median distance from the true ones exceeds this fraction of the true
# landmarks' larger extent are a detection of something else, not a landmark error: rejected.
MAX_LANDMARK_OFFSET = 0.25


class SynthError(ValueError):
    """Settings or inputs `synth` cannot work with; the message says what to do."""


@dataclass(frozen=True)
class SynthSettings:
    """One synth run: `count` N renders (indices 0..N-1), `size` crop side in px, `spp` samples
    per pixel, `seed` of the dataset, `workers` processes that render (1: this process), the
    ranges (`config`), `vertices`: also store the camera-space vertices as truth, `device`:
    'cpu', 'cuda' or None (auto, as mfface.backend.select_variant)."""
    count: int
    size: int = DEFAULT_SIZE
    spp: int = DEFAULT_SPP
    seed: int = 0
    workers: int = 1
    config: SynthConfig = field(default_factory=SynthConfig)
    vertices: bool = False
    device: str | None = None

    def check(self) -> None:
        """Raise SynthError for settings out of range."""
        if self.count < 1:
            raise SynthError(f"N must be at least 1 (the number of faces to render), got {self.count}.")
        if not 32 <= self.size <= 2048:
            raise SynthError(f"--size must be between 32 and 2048 px, got {self.size}.")
        if not 1 <= self.spp <= 16384:
            raise SynthError(f"--spp must be between 1 and 16384, got {self.spp}.")
        if not 0 <= self.seed < 2 ** 63:
            raise SynthError(f"--seed must be between 0 and 2^63 - 1, got {self.seed}.")
        if self.workers < 1:
            raise SynthError(f"--workers must be at least 1, got {self.workers}.")
        try:
            self.config.check()
        except ValueError as e:
            raise SynthError(str(e)) from None


def sample_name(seed: int, index: int) -> str:
    """The unique name a sample is stored under (the `paths` column): synth/seed<s>/<index>."""
    return f"synth/seed{seed}/{index:09d}"


def worker_count(settings: SynthSettings, samples: int) -> int:
    """Processes used for `samples` renders: settings.workers, but at most one per
    SAMPLES_PER_WORKER samples (at least 1; 1 means this process)."""
    return capped_workers(settings.workers, samples, SAMPLES_PER_WORKER)


def synth_truth_columns(model: Any, settings: SynthSettings) -> list[Column]:
    """The truth datasets of a synth run: `truth_columns` (FaceState's fields, the diffuse
    texture, statistical albedo coefficients when the model has them, vertices when asked for)
    plus specular, roughness, environment, background and ita."""
    small = _SMALL_BLOCK
    n_albedo = model.diffuse_albedo.n_components if model.diffuse_albedo is not None else None
    from mfface.config import FitConfig

    bands = FitConfig().light.sh_bands
    columns = truth_columns(model.n_identity, model.n_expression, bands * bands,
                            diffuse_size=settings.config.albedo.texture_size, n_albedo=n_albedo,
                            n_vertices=model.n_vertices if settings.vertices else None)
    return columns + [
        Column("truth/specular", (3,), "float32", "specular albedo (Schlick F0) per RGB channel, "
               "uniform over the face", per_chunk=small),
        Column("truth/roughness", (), "float32", "roughness, uniform over the face", per_chunk=small),
        Column("truth/environment", (), "int32", "light environment kind: index into the truth "
               "group's `environments` attribute", per_chunk=small),
        Column("truth/background", (), "int32", "background kind: index into the truth group's "
               "`backgrounds` attribute", per_chunk=small),
        Column("truth/ita", (), "float32", "skin tone's individual typology angle in degrees "
               "(< -30 very dark, > 55 very light)", per_chunk=small),
    ]


def dataset_spec(model: Any, settings: SynthSettings, backgrounds_digest: str = "") -> DatasetSpec:
    """The DatasetSpec a synth run writes; an existing output must match its seed, spp, ranges,
    background photos and truth (model, fingerprint)."""
    from mfface.config import config_to_dict

    match = {"synth_seed": int(settings.seed), "synth_spp": int(settings.spp),
             "synth_config": json.dumps(config_to_dict(settings.config), sort_keys=True),
             "synth_backgrounds": backgrounds_digest}
    return DatasetSpec(size=settings.size, source="synthetic",
                       truth=tuple(synth_truth_columns(model, settings)), match=match,
                       attrs={"landmark_detector": LANDMARK_DETECTOR},
                       truth_attrs={"model": model.name, "model_fingerprint": model.fingerprint(),
                                    "environments": json.dumps(list(ENVIRONMENTS)),
                                    "backgrounds": json.dumps(list(BACKGROUND_KINDS))})


# -- background photos ---------------------------------------------------------------------------

def background_paths(folder: str | os.PathLike) -> list[Path]:
    """The images under `folder` (walked as `mfface prepare` walks photos: recursively, image
    suffixes, hidden files skipped), sorted. Raises SynthError when there are none."""
    from mfface.learning.prepare import PrepareError, collect_photos

    folder = Path(folder)
    if not folder.exists():
        raise SynthError(f"--backgrounds {folder} does not exist; give a folder of background photos.")
    try:
        return collect_photos([folder])
    except PrepareError:
        raise SynthError(f"--backgrounds {folder} holds no images; give a folder of PNG, JPEG, PPM, "
                         "TIFF or WebP photos to cut backgrounds from.") from None


def backgrounds_digest(paths: Sequence[Path]) -> str:
    """SHA-256 (hex, 16 digits) of the background photos' paths, sizes and modification times:
    recorded in the dataset, so that a resumed run cuts its crops from the same photos."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16] if paths else ""


def index_backgrounds(paths: Sequence[Path], detector: Any, on_photo: Callable[[int, int], None] | None = None
                      ) -> tuple[BackgroundPhotos, list[tuple[Path, str]]]:
    """BackgroundPhotos.index of `paths` (faces found with `detector`); raises SynthError when
    none of them can be read."""
    photos, skipped = BackgroundPhotos.index(paths, detector, on_photo)
    if not len(photos):
        raise SynthError(f"none of the {len(paths)} background images could be read "
                         f"({skipped[0][1] if skipped else ''}); give readable photos.")
    return photos, skipped


# -- one sample ----------------------------------------------------------------------------------

@dataclass
class SynthSample:
    """A rendered, accepted sample: its index, the values of every dataset column (large ones
    encoded), and the seconds spent rendering and detecting."""
    index: int
    values: dict[str, Any]
    render_s: float = 0.0
    detect_s: float = 0.0


@dataclass
class SynthRejection:
    """A render MediaPipe found no face in (or unusable landmarks): index, report entry, times."""
    index: int
    entry: ReportEntry
    render_s: float = 0.0
    detect_s: float = 0.0


def process_sample(index: int, model: Any, settings: SynthSettings, detector: Any,
                   columns: Sequence[Column], backgrounds: BackgroundPhotos | None = None,
                   device: Any = "cpu") -> SynthSample | SynthRejection:
    """Render sample `index` (synth_face), detect its landmarks with `detector`, check them, draw
    the skin mask, and encode every column of `columns` (the run's DatasetSpec columns)."""
    from mfface.landmarks import LandmarkCheckError, NoFaceError, check_landmarks
    from mfface.masks import skin_mask
    from mfface.synthetic import synth_face

    name = sample_name(settings.seed, index)
    started = time.perf_counter()
    face = synth_face(model, settings.size, settings.seed, index, spp=settings.spp,
                      config=settings.config, backgrounds=backgrounds, device=device)
    render_s = time.perf_counter() - started
    size = settings.size
    try:
        detected = detector.detect(face.image, name=name)
        detected = check_landmarks(detected, "mediapipe478", (size, size),
                                   f"the landmarks detected in {name}")
        truth = face.landmarks.astype(np.float64)
        extent = float((truth.max(0) - truth.min(0)).max())
        offset = float(np.median(np.linalg.norm(detected[:468] - truth[:468], axis=1)))
        if offset > MAX_LANDMARK_OFFSET * extent:
            raise LandmarkCheckError(
                f"MediaPipe's landmarks lie a median {offset:.1f} px from the rendered face's "
                f"({100 * offset / extent:.0f}% of its size): it found something else.")
        landmarks = detected.astype(np.float32)
        mask = skin_mask(landmarks, size, size).astype(np.uint8)
    except NoFaceError as e:
        return SynthRejection(index, ReportEntry(name, "no_face", str(e)), render_s,
                              time.perf_counter() - started - render_s)
    except (LandmarkCheckError, ValueError) as e:
        return SynthRejection(index, ReportEntry(name, "bad_landmarks", str(e)), render_s,
                              time.perf_counter() - started - render_s)
    detect_s = time.perf_counter() - started - render_s
    state = face.state.to("cpu")
    x0, y0, side = face.box
    raw = {
        "images": face.image, "landmarks": landmarks, "masks": mask,
        "boxes": np.array([x0, y0, side], dtype=np.int32),
        "source_sizes": np.array(face.source_size, dtype=np.int32),
        "paths": name, "file_sizes": np.int64(0), "file_mtimes_ns": np.int64(0), "sha256": "",
        "truth/identity": state.identity[0].numpy(), "truth/expression": state.expression[0].numpy(),
        "truth/euler": state.euler[0].numpy(), "truth/translation": state.translation[0].numpy(),
        "truth/focal": np.float32(state.focal[0]), "truth/principal": state.principal[0].numpy(),
        "truth/sh": state.sh[0].numpy(), "truth/landmarks": face.landmarks,
        "truth/diffuse": state.diffuse[0].numpy().astype(np.float16),
        "truth/specular": state.specular[0, 0, 0].numpy(),
        "truth/roughness": np.float32(state.roughness[0, 0, 0, 0]),
        "truth/environment": np.int32(ENVIRONMENTS.index(face.environment)),
        "truth/background": np.int32(BACKGROUND_KINDS.index(face.background)),
        "truth/ita": np.float32(face.ita),
    }
    if state.albedo is not None:
        raw["truth/albedo"] = state.albedo[0].numpy()
    raw["truth/vertices"] = face.vertices.numpy()
    values = {}
    for column in columns:
        value = raw[column.name]
        values[column.name] = column.encode(value) if column.per_chunk == 1 else value
    return SynthSample(index, values, render_s, detect_s)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Dr.Jit and torch on one thread inside (restored after): with several threads, Dr.Jit's
    sums (the mesh normals, the film) depend on the thread schedule, so renders would differ in
    the last bits from run to run (see the module doc)."""
    import drjit as dr
    import torch

    jit_threads, torch_threads = dr.thread_count(), torch.get_num_threads()
    dr.set_thread_count(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        dr.set_thread_count(jit_threads)
        torch.set_num_threads(torch_threads)


# One renderer per worker process, made by _init_worker.
_WORKER: dict[str, Any] = {}


def _init_worker(model: Any, settings: SynthSettings, columns: list[Column],
                 photos: list[BackgroundPhoto] | None) -> None:
    """Worker start: Ctrl-C is the parent's to handle; the Mitsuba variant, one thread for
    Dr.Jit and torch, this process's detector and background cache."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import drjit as dr
    import torch

    from mfface.backend import select_variant, torch_device
    from mfface.landmarks import LandmarkDetector

    select_variant(settings.device)
    dr.set_thread_count(1)
    torch.set_num_threads(1)
    _WORKER.update(model=model, settings=settings, columns=columns, detector=LandmarkDetector(),
                   backgrounds=BackgroundPhotos(photos) if photos is not None else None,
                   device=torch_device())


def _work(index: int) -> SynthSample | SynthRejection:
    """process_sample in a worker process, with that process's detector."""
    w = _WORKER
    return process_sample(index, w["model"], w["settings"], w["detector"], w["columns"],
                          w["backgrounds"], w["device"])


def _results(indices: list[int], model: Any, settings: SynthSettings, columns: list[Column],
             backgrounds: BackgroundPhotos | None) -> Iterator[SynthSample | SynthRejection]:
    """process_sample for each index in order, here or in worker processes (spawned)."""
    if not indices:
        return
    workers = worker_count(settings, len(indices))
    if workers == 1:
        from mfface.backend import select_variant, torch_device
        from mfface.landmarks import LandmarkDetector

        select_variant(settings.device)
        device = torch_device()
        with single_threaded(), LandmarkDetector() as detector:
            for index in indices:
                yield process_sample(index, model, settings, detector, columns, backgrounds, device)
        return
    light_model = dataclasses.replace(model)  # a copy without the torch cache: tensors are made again there
    photos = backgrounds.photos if backgrounds is not None else None
    yield from pool_results(_work, indices, workers, _init_worker, (light_model, settings, columns, photos))


# -- the run -------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class SynthSummary(RunSummary):
    """What one synth run did: RunSummary's counts and times (an item is a render, start-up is
    the renderer's), plus: `share`: this rank's indices below N; `already` of them stored,
    `rejected_before` in the report from an earlier run; `rejected` this run (with reasons);
    `render_s` / `detect_s` summed over samples; `backgrounds`: background photos indexed."""
    requested: int
    share: int
    rejected_before: int = 0
    rejected: list[ReportEntry] = field(default_factory=list)
    render_s: float = 0.0
    detect_s: float = 0.0
    backgrounds: int = 0

    @property
    def processed(self) -> int:
        """Samples rendered this run (added or rejected)."""
        return self.added + len(self.rejected)

    @property
    def rejected_fraction(self) -> float:
        """Fraction of this run's renders that MediaPipe rejected."""
        return len(self.rejected) / self.processed if self.processed else 0.0

    @property
    def detector_share(self) -> float:
        """MediaPipe's share of the per-sample time (detection / (render + detection))."""
        total = self.render_s + self.detect_s
        return self.detect_s / total if total > 0 else 0.0


ProgressCallback = Callable[[int, int, "SynthSample | SynthRejection"], None]


def synth_dataset(model: Any, output: str | os.PathLike, settings: SynthSettings,
                  indices: Sequence[int] | None = None, shard: tuple[int, int] | None = None,
                  background_files: Sequence[Path] = (),
                  on_backgrounds: Callable[[int, int], None] | None = None,
                  on_start: Callable[[int], None] | None = None,
                  on_result: ProgressCallback | None = None) -> SynthSummary:
    """Render `indices` (default 0..N-1) into the dataset `output` (created, or appended to and
    resumed), with backgrounds cut from `background_files` (faces found first;
    `on_backgrounds(i, n)` per photo). `shard` = (rank, world_size) marks the file as that
    rank's shard (the caller chooses the indices and the name: `rank_indices`, `shard_path`).
    `on_start(n)` is called with the number of samples to render, `on_result(done, n, result)`
    after each. A KeyboardInterrupt (Ctrl-C, or SIGTERM turned into one by the caller) commits
    the samples finished so far and is then re-raised. Raises SynthError / DatasetError for
    refused settings or outputs, before anything is rendered."""
    settings.check()
    output = Path(output)
    indices = list(range(settings.count)) if indices is None else list(indices)
    files = list(background_files)
    spec = dataset_spec(model, settings, backgrounds_digest(files))
    columns = spec.columns
    summary = SynthSummary(output=output, requested=settings.count, share=len(indices),
                           rank=shard[0] if shard else 0, world_size=shard[1] if shard else 1)
    with DatasetWriter(output, spec, tool="synth", shard=shard) as writer:
        reported = {e.path for e in writer.earlier_report}
        todo = []
        for index in indices:
            name = sample_name(settings.seed, index)
            if name in writer.keys:
                summary.already += 1
            elif name in reported:
                summary.rejected_before += 1
            else:
                todo.append(index)
        backgrounds = None
        if files and todo:
            from mfface.landmarks import LandmarkDetector

            with LandmarkDetector() as detector:
                backgrounds, _ = index_backgrounds(files, detector, on_backgrounds)
            summary.backgrounds = len(backgrounds)
        writer.history_extra = {"seed": settings.seed, "indices": [min(todo), max(todo)] if todo else []}
        summary.rejected = writer.report
        summary.workers = worker_count(settings, len(todo))

        def store(result: SynthSample | SynthRejection) -> None:
            if isinstance(result, SynthSample):
                writer.append(result.values)
            else:
                writer.report.append(result.entry)
            summary.render_s += result.render_s
            summary.detect_s += result.detect_s

        write_results_as_they_come(writer, _results(todo, model, settings, columns, backgrounds),
                                   len(todo), summary, store, on_start, on_result)
    return summary


def truth_state(truth: Mapping[str, Any], device: Any = "cpu") -> "FaceState":
    """The FaceState (batch 1) one sample's truth describes: a FaceDataset item's `truth` dict
    (tensors) or the rows of a file's `truth/` datasets (arrays, keys with or without the
    `truth/` prefix). Specular and roughness become uniform textures of the diffuse one's size;
    the diffuse texture is read back from float16. Re-rendering it gives the stored crop within
    Monte Carlo noise (tests/test_synth.py)."""
    import torch

    from mfface.state import FaceState

    def get(name: str) -> torch.Tensor:
        value = truth[name] if name in truth else truth[f"truth/{name}"]
        return torch.as_tensor(np.asarray(value), dtype=torch.float32)[None].to(device)

    diffuse = get("diffuse")
    height, width = diffuse.shape[1:3]
    specular = get("specular")[:, None, None, :].expand(1, height, width, 3).contiguous()
    roughness = get("roughness").reshape(1, 1, 1, 1).expand(1, height, width, 1).contiguous()
    has_albedo = "albedo" in truth or "truth/albedo" in truth
    return FaceState(identity=get("identity"), expression=get("expression"), euler=get("euler"),
                     translation=get("translation"), focal=get("focal").reshape(1), sh=get("sh"),
                     diffuse=diffuse, specular=specular, roughness=roughness,
                     albedo=get("albedo") if has_albedo else None, principal=get("principal"))


def rank_indices(count: int, rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s sample indices of a `world_size`-process run of N = `count`: every
    world_size-th index from `rank`."""
    return list(range(rank, count, world_size))


def pin_local_gpu(environ: dict[str, str] | None = None) -> None:
    """Under torchrun (LOCAL_RANK set), make only this rank's GPU visible before Dr.Jit or torch
    touch CUDA (Dr.Jit renders on the first visible device only): the LOCAL_RANK-th entry of
    CUDA_VISIBLE_DEVICES, or device LOCAL_RANK when it is not set. No-op without LOCAL_RANK."""
    env = os.environ if environ is None else environ
    if "LOCAL_RANK" not in env:
        return
    local = int(env["LOCAL_RANK"])
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        env["CUDA_VISIBLE_DEVICES"] = str(local)
    elif len(visible) > 1:
        env["CUDA_VISIBLE_DEVICES"] = visible[local % len(visible)]


__all__ = ["SynthError", "SynthSettings", "SynthSummary", "SynthSample", "SynthRejection",
           "synth_dataset", "process_sample", "dataset_spec", "synth_truth_columns", "sample_name",
           "rank_indices", "truth_state", "background_paths", "backgrounds_digest", "index_backgrounds",
           "single_threaded", "worker_count", "pin_local_gpu", "DEFAULT_SIZE", "DEFAULT_SPP",
           "MAX_LANDMARK_OFFSET"]
