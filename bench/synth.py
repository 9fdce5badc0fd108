"""Throughput of `mfface synth` and where the time goes.

Usage: python bench/synth.py [--samples 128:64,224:32] [--spp 64] [--workers 1,2] [--threads-compare 6]

For each `size:count` pair, `synth_dataset` (the library under `mfface synth`) renders `count`
samples (indices 0..count-1, seed 0, the built-in model, procedural backgrounds) into a fresh
file with each worker count, and reports: steady images/s after the first sample and with
start-up, the start-up, the CPU time per sample (this process plus its workers, their start-up
included), the per-sample render and MediaPipe times (MediaPipe's share), the rejected fraction
and the bytes per stored sample. `--threads-compare N` also times N renders (`synth_face` alone)
with Dr.Jit and torch on one thread (what synth uses, for bit-identical renders) and on all
cores, to show what the determinism costs a single process.

Times are wall and CPU: on a shared machine the wall times depend on the other load (reported as
the load average before and after), the CPU times much less. Prints one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (workers), all threads."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def end_to_end(model: Any, size: int, count: int, spp: int, workers: int, folder: Path) -> dict[str, Any]:
    """synth_dataset of `count` samples at `size` px with `workers` processes, into a new file."""
    from mfface.learning.synth import SynthSettings, synth_dataset

    out = folder / f"synth_{size}_{workers}.h5"
    settings = SynthSettings(count=count, size=size, spp=spp, workers=workers)
    from mfface.learning import synth as synth_module

    saved = synth_module.SAMPLES_PER_WORKER
    synth_module.SAMPLES_PER_WORKER = 1  # use the workers asked for, whatever the count
    cpu = _cpu_seconds()
    started = time.perf_counter()
    try:
        summary = synth_dataset(model, out, settings)
    finally:
        synth_module.SAMPLES_PER_WORKER = saved
    wall = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    stored = max(summary.count, 1)
    return {
        "size": size, "spp": spp, "samples": count, "workers": summary.workers,
        "images_per_s": round(summary.images_per_second, 3),
        "images_per_s_with_startup": round(summary.processed / wall, 3),
        "startup_s": round(summary.startup, 2), "total_s": round(wall, 1),
        "cpu_s_per_image": round(cpu / summary.processed, 3),
        "render_s_per_image": round(summary.render_s / summary.processed, 3),
        "mediapipe_s_per_image": round(summary.detect_s / summary.processed, 4),
        "mediapipe_share": round(summary.detector_share, 3),
        "rejected": len(summary.rejected), "rejected_fraction": round(summary.rejected_fraction, 3),
        "rejected_kinds": sorted({e.kind for e in summary.rejected}),
        "bytes_per_sample": int(out.stat().st_size / stored),
    }


def threads_compare(model: Any, size: int, spp: int, count: int) -> dict[str, Any]:
    """Median wall and CPU seconds of `count` synth_face renders with Dr.Jit and torch on one
    thread and on every core, in this process."""
    import statistics

    import drjit as dr
    import torch

    from mfface.synthetic import synth_face

    out: dict[str, Any] = {"size": size, "spp": spp, "renders": count}
    cores = len(os.sched_getaffinity(0))
    for threads in (1, cores):
        dr.set_thread_count(threads)
        torch.set_num_threads(threads)
        synth_face(model, size, 1, 0, spp=spp)  # warm-up: kernels compiled or loaded
        walls, cpus = [], []
        for i in range(count):
            wall, cpu = time.perf_counter(), time.process_time()
            synth_face(model, size, 1, i + 1, spp=spp)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        out[f"threads_{threads}"] = {"wall_s": round(statistics.median(walls), 3),
                                     "cpu_s": round(statistics.median(cpus), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", default="128:64,224:32", help="size:count pairs")
    parser.add_argument("--spp", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="worker counts to run")
    parser.add_argument("--threads-compare", type=int, default=6, help="renders per thread setting (0: skip)")
    args = parser.parse_args()

    import mfface  # noqa: F401  (OMP policy before torch)
    from mfface.backend import select_variant
    from mfface.morphable.store import ModelStore

    variant = select_variant("cpu")
    model = ModelStore().load("ict-lite")
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.samples.split(","):
            size, count = (int(v) for v in pair.split(":"))
            for workers in (int(w) for w in args.workers.split(",")):
                run = end_to_end(model, size, count, args.spp, workers, Path(tmp))
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
    compare = []
    if args.threads_compare:
        for pair in args.samples.split(","):
            size = int(pair.split(":")[0])
            compare.append(threads_compare(model, size, args.spp, args.threads_compare))
            print(json.dumps(compare[-1]), file=sys.stderr)
    renders = sum(r["samples"] for r in runs)
    rejected = sum(r["rejected"] for r in runs)
    result = {
        "bench": "synth", "variant": variant, "model": model.name, "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "runs": runs, "threads_compare": compare,
        "rejected_fraction": round(rejected / renders, 3) if renders else None,
        "mediapipe_share": round(sum(r["mediapipe_s_per_image"] * r["samples"] for r in runs)
                                 / sum((r["render_s_per_image"] + r["mediapipe_s_per_image"]) * r["samples"]
                                       for r in runs), 3) if runs else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
