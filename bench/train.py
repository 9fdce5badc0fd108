"""The network's speed and quality: training throughput, prediction latency, and held-out accuracy.

Parts (`--part`, repeatable; all by default):
- `throughput`: images/s of `Trainer.train_step` (forward + backward through Mitsuba, batch 8,
  ResNet-18) at 128 px / 4 spp and 224 px / 8 spp, and at 128 px without the photometric term
  (geometry pre-training: no render), on `mfface synth` data made for it (a few timed steps after
  two warm-up steps); `--setting 224x4` picks others, `--data-dir` keeps the data for a machine
  without MediaPipe, `--device cuda` runs on a GPU.
- `latency`: the encoder alone (one 224 px crop, ResNet-18, 2 torch threads) in ms, and the whole
  prediction of one photo excluding start-up (detection, crop, network, result folder written at
  the default final spp) in s.
- `quality`: on held-out synthetic faces (a `mfface synth` file with truth; landmarks are MediaPipe's
  on the render, never the model's), for the trained `--weights` (without them, the fits alone):
  predict alone, predict + `--refine N`, the same short fit without the network (stage 1 and
  refine's iterations of stages 2-3 from the default light and albedo: what the network's start is
  worth), and the full default fit; per method the median landmark error (px, against the
  MediaPipe landmarks the fit sees), vertex error (mm, NoW-style similarity alignment over the
  model's skin region, as bench/fit_synthetic.py), PSNR in the skin mask (dB) and seconds per
  face; the model's mean face with the fit's pose (from stage 1) as the trivial baseline.
The last line printed is one JSON object with every figure.

    MFFACE_HOME=<store> .venv/bin/python bench/train.py --weights RUN/weights.pt --heldout H.h5 [--faces 50]
        [--fit-cache fits.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mfface  # noqa: F401 - sets torch's OpenMP wait policy before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_synthetic import image_metrics, landmark_error  # noqa: E402

from mfface.backend import select_variant, torch_device  # noqa: E402
from mfface.config import FitConfig, apply_overrides, to_toml  # noqa: E402
from mfface.metrics import aligned_distances  # noqa: E402


def _model(name: str | None):
    from mfface.morphable.store import ModelStore

    return ModelStore().load(name)


SETTINGS = ("128x4", "224x8", "128x0")


def throughput(model_name: str | None, steps: int, settings: list[str], data_dir: Path | None,
               device: torch.device, profile: bool = False) -> dict:
    """Training images/s at each `SIZExSPP` setting (SPP 0: geometry pre-training, no render).

    Each setting trains on 24 `mfface synth` faces of its size, made in `data_dir` when missing
    there (kept for the next run, so that a machine without MediaPipe can reuse files made
    elsewhere) or in a temporary folder. `profile` prints where the timed steps' host time goes
    (cProfile, the 25 functions of most own time). Each setting is timed twice: steps that load
    their batch (as `data.workers = 0`) and steps on batches loaded beforehand (`_preloaded`)."""
    from mfface.learning.config import TrainConfig
    from mfface.learning.train import Trainer

    rows = {}
    for setting in settings:
        size, spp = (int(v) for v in setting.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            data = (data_dir or Path(tmp)) / f"throughput_{size}.h5"
            if not data.exists():
                _synth(data, 24, size, 4, model_name)
            config = apply_overrides(TrainConfig(), {"data.batch": 8, "render.spp": max(spp, 1),
                                                     "data.val_fraction": 0.0,
                                                     "schedule.encoder_steps": 2 * steps + 2,
                                                     **({} if spp else {"losses.photo_weight": 0.0})})
            trainer = Trainer(_model(model_name), config, [data], Path(tmp) / "run", device)
            for step in range(2):
                trainer.train_step(step)
            _synchronize(device)
            name = f"{size}px_{spp}spp" if spp else f"{size}px_no_render"
            loading = _timed_steps(trainer, range(2, steps + 2), device, preload=False, profile=profile)
            # the next steps with their batches loaded beforehand, as `data.workers` provide them
            preloaded = _timed_steps(trainer, range(steps + 2, 2 * steps + 2), device, preload=True)
            rows[name] = {"images_per_s": round(8 / loading, 3), "seconds_per_step": round(loading, 3),
                          "images_per_s_preloaded": round(8 / preloaded, 3)}
            print(f"train {name}: {rows[name]}", flush=True)
    return rows


def _timed_steps(trainer, steps: range, device: torch.device, preload: bool, profile: bool = False) -> float:
    """Seconds per training step over `steps`: each step loading its batch (`preload` False) or
    on batches loaded before the clock starts; `profile` prints cProfile's top 25 by own time."""
    import cProfile
    import pstats

    batches = {step: trainer._batch(step) for step in steps} if preload else {}
    profiler = cProfile.Profile() if profile else None
    _synchronize(device)
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for step in steps:
        trainer.train_step(step, batches.get(step))
    _synchronize(device)
    seconds = (time.perf_counter() - started) / len(steps)
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return seconds


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (torch's and Dr.Jit's) so that a timer measures it."""
    if device.type == "cuda":
        import drjit as dr

        dr.sync_thread()
        torch.cuda.synchronize()


def _synth(path: Path, count: int, size: int, spp: int, model_name: str | None) -> None:
    from click.testing import CliRunner

    from mfface.cli.main import cli

    args = ["synth", str(count), "-o", str(path), "--size", str(size), "--spp", str(spp), "--workers", "1"]
    result = CliRunner().invoke(cli, args + (["--model", model_name] if model_name else []))
    if result.exit_code != 0:
        raise SystemExit(f"mfface synth failed: {result.output[-2000:]}")


def latency(weights: Path, model_name: str | None, photo: Path) -> dict:
    """Encoder-only ms per 224 px crop (2 threads) and seconds per photo of the whole prediction."""
    from mfface.landmarks import LandmarkDetector
    from mfface.learning.network import FaceNet, NetworkSpec
    from mfface.learning.predict import Predictor
    from mfface.results import write_results

    torch.set_num_threads(2)
    model = _model(model_name)
    net = FaceNet(model, NetworkSpec(crop=224)).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        for _ in range(3):
            net(x)
        started = time.perf_counter()
        for _ in range(20):
            net.encode(x)
        encoder_ms = (time.perf_counter() - started) / 20 * 1000
    predictor = Predictor(weights, model, FitConfig())
    times = []
    with LandmarkDetector() as detector, tempfile.TemporaryDirectory() as tmp:
        for k in range(4):
            started = time.perf_counter()
            image = dataclasses.replace(predictor.prepare(photo, detector), name=f"photo{k}")
            result = predictor.finish(image, predictor.predict([image]))
            write_results(result, Path(tmp))
            times.append(time.perf_counter() - started)
    return {"encoder_ms_224px_resnet18_2threads": round(encoder_ms, 1),
            "predict_command_s_per_photo": round(statistics.median(times[1:]), 3),
            "final_spp": FitConfig().render.final_spp}


def _cache_key(heldout: Path, size: int, config: FitConfig) -> dict:
    """What a cached full fit depends on: the faces, the crop size and every fit setting."""
    return {"heldout": str(heldout.resolve()), "size": size,
            "config": hashlib.sha256(to_toml(config).encode()).hexdigest()[:16]}


def _fit_cache(path: Path | None, key: dict) -> dict:
    """The full fit's and the mean face's rows per held-out face from an earlier run (they do not
    depend on the network), keyed by face index; {} when there is none or it was made for other
    faces or with other fit settings (`_cache_key`)."""
    if path is None or not path.is_file():
        return {}
    cached = json.loads(path.read_text())
    return cached.get("faces", {}) if all(cached.get(k) == v for k, v in key.items()) else {}


def _store_fit_cache(path: Path | None, key: dict, faces: dict) -> None:
    if path is not None:
        from mfface.atomic import write_text

        write_text(path, json.dumps({**key, "faces": faces}))


def quality(weights: Path, heldout: Path, faces: int, refine: int, model_name: str | None,
            fit_cache: Path | None = None) -> dict:
    """Predict / predict + refine / full fit / mean face on held-out synthetic faces. With
    `fit_cache`, the full fit's figures of a face already fitted for the same file are reused.
    Without `weights`, only the fits and the mean face (what the time ratio needs: refine costs
    the short fit's iterations plus one prediction)."""
    from mfface.fitting.pipeline import Reconstructor, prepare_photo
    from mfface.learning.dataset import FaceDataset
    from mfface.learning.predict import Predictor, refine_config
    from mfface.learning.synth import truth_state

    model = _model(model_name)
    data = FaceDataset([heldout], truth=True)
    size = data.size
    config = apply_overrides(FitConfig(), {"input.max_resolution": size})
    predictor = Predictor(weights, model, config) if weights is not None else None
    full = Reconstructor(model, config)
    short = Reconstructor(model, refine_config(config, refine))   # refine's iterations, no network
    short.forward = full.forward = predictor.reconstructor.forward if predictor else full.forward
    region = model.regions["skin"]
    methods = ("mean_face", "predict", "refine", "short_fit", "fit") if predictor else ("mean_face", "short_fit", "fit")
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    key = _cache_key(heldout, size, config)
    cache = _fit_cache(fit_cache, key)
    for index in range(min(faces, len(data))):
        raw = data.raw(index)
        photo = torch.from_numpy(raw["image"]).float() / 255.0
        image = prepare_photo(photo, raw["landmarks"].astype(np.float64), "mediapipe478", config, f"h{index}",
                              size=size, enlarge=True)
        truth = truth_state(raw["truth"])
        true_vertices = model.vertices(truth.identity, truth.expression)[0].numpy()[region]
        reference = image.crop_landmarks
        runs = {}
        if predictor:
            started = time.perf_counter()
            runs["predict"] = (predictor.finish(image, predictor.predict([image])), time.perf_counter() - started)
            started = time.perf_counter()
            runs["refine"] = (predictor.finish(image, predictor.predict([image]), refine),
                              time.perf_counter() - started)
        started = time.perf_counter()
        runs["short_fit"] = (short.fit([image]), time.perf_counter() - started)
        if str(index) not in cache:
            started = time.perf_counter()
            fitted = full.fit([image])
            runs["fit"] = (fitted, time.perf_counter() - started)
            mean_state = dataclasses.replace(fitted.stages[1], identity=torch.zeros_like(fitted.stages[1].identity),
                                             expression=torch.zeros_like(fitted.stages[1].expression))
            runs["mean_face"] = (dataclasses.replace(fitted, state=mean_state), 0.0)
        else:
            for method in ("fit", "mean_face"):
                rows[method].append(cache[str(index)][method])
        for method, (result, seconds) in runs.items():
            state = result.state
            shape = model.vertices(state.identity, state.expression)[0].numpy()[region]
            row = {"vertex_mm": float(np.median(aligned_distances(shape, true_vertices, scale=True))),
                   "landmark_px": landmark_error(result, state, reference), "seconds": seconds}
            if method != "mean_face":
                row["psnr_db"] = image_metrics(result, state, image, 64)["psnr_db"]
            rows[method].append(row)
        cache[str(index)] = {m: rows[m][-1] for m in ("fit", "mean_face")}
        _store_fit_cache(fit_cache, key, cache)
        print(index, {m: {k: round(v, 3) for k, v in rows[m][-1].items()} for m in methods}, flush=True)
    summary = {m: {k: round(statistics.median(r[k] for r in rows[m]), 4) for k in rows[m][0]} | {"faces": len(rows[m])}
               for m in methods}
    for method in ("refine", "short_fit")[0 if predictor else 1:]:
        summary[f"{method}_vs_fit"] = against_fit(rows[method], rows["fit"])
    return summary


def against_fit(rows: list[dict], fit_rows: list[dict]) -> dict:
    """Per face against the full fit: the median PSNR shortfall (dB), how many faces are within
    0.5 dB of it, and the median ratio of the seconds (issue 13's targets are per face)."""
    gaps = [f["psnr_db"] - r["psnr_db"] for r, f in zip(rows, fit_rows)]
    ratios = [r["seconds"] / f["seconds"] for r, f in zip(rows, fit_rows)]
    return {"psnr_gap_db": round(statistics.median(gaps), 3), "within_half_db": sum(g <= 0.5 for g in gaps),
            "time_ratio": round(statistics.median(ratios), 3), "faces": len(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=["throughput", "latency", "quality"])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--heldout", type=Path, help="mfface synth file with truth (quality)")
    parser.add_argument("--faces", type=int, default=50)
    parser.add_argument("--refine", type=int, default=22)
    parser.add_argument("--fit-cache", type=Path, default=None,
                        help="JSON file of the full fit's per-face figures: read when it is for the same "
                             "held-out file, updated after each face (quality)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (throughput)")
    parser.add_argument("--photo", type=Path, default=None, help="photo for the latency part")
    parser.add_argument("--model", default=None)
    parser.add_argument("--setting", action="append", default=None,
                        help=f"SIZExSPP training setting (throughput; repeatable; default {' '.join(SETTINGS)})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder for the throughput datasets, reused when present (throughput)")
    parser.add_argument("--profile", action="store_true", help="profile the timed steps (throughput)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where Mitsuba and torch run (cuda: a GPU machine)")
    args = parser.parse_args()
    parts = args.part or ["throughput", "latency", "quality"]
    variant = select_variant(args.device)
    device = torch_device()
    summary = {"machine": f"{os.cpu_count()} cores", "load_start": round(os.getloadavg()[0], 2),
               "torch_threads": torch.get_num_threads(), "variant": variant}
    if device.type == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    if "throughput" in parts:
        summary["throughput"] = throughput(args.model, args.steps, args.setting or list(SETTINGS),
                                           args.data_dir, device, args.profile)
    if "latency" in parts:
        from mfface.sample import example_photo_path

        summary["latency"] = latency(args.weights, args.model, args.photo or example_photo_path())
    if "quality" in parts:
        summary["quality"] = quality(args.weights, args.heldout, args.faces, args.refine, args.model,
                                     args.fit_cache)
        summary["refine_iterations"] = args.refine
    summary["load_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
