"""Benchmark of the differentiable face renderer (forward + backward through the torch bridge).

A face-sized mesh (a UV-mapped ellipsoid with ~28k vertices split at the UV seam), 512x512
textures, a 64x128 envmap, a 256x256 image at 8 spp, prb with max_depth=2. Prints the median time
of one forward+backward through `FaceRenderer`; the ratio of that to the same update + render +
backward written in pure Dr.Jit (the bridge's overhead); the number of kernels compiled per
iteration after warm-up; the peak RSS. With --batch-compare it also times a batch of two through
one scene per item against one scene holding both meshes seen by two sensors.
The last line printed is one JSON object with the figures.

    .venv/bin/python bench/render.py [--iters 10] [--spp 8] [--batch-compare]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

# mfface sets torch's OpenMP wait policy to PASSIVE on import (its threads spin after each parallel
# region by default and take CPU from Dr.Jit's kernels: +0.13 CPU-s per fwd+bwd on 2 cores), so it
# is imported before numpy and torch. Run with OMP_WAIT_POLICY=ACTIVE to see the default behaviour.
import mfface  # noqa: F401,E402
import numpy as np  # noqa: E402
import torch  # noqa: E402 - after mfface's OpenMP setting


def ellipsoid(n_lat: int = 120, n_lon: int = 232, radii: tuple[float, float, float] = (75.0, 100.0, 85.0)
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lat-long ellipsoid in the model frame (mm, +y up, +z out of the face): vertices (V, 3),
    triangles (F, 3) counter-clockwise from outside, uvs (V, 2) with v = 0 at the bottom; the
    seam column is duplicated so every vertex has one UV. 121 x 233 = 28,193 vertices."""
    theta = np.linspace(0.0, np.pi, n_lat + 1)
    phi = np.linspace(-np.pi, np.pi, n_lon + 1)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    v = np.stack([np.sin(t) * np.sin(p) * radii[0], np.cos(t) * radii[1], np.sin(t) * np.cos(p) * radii[2]], -1)
    uv = np.stack([(p + np.pi) / (2 * np.pi), 1.0 - t / np.pi], -1)
    idx = np.arange((n_lat + 1) * (n_lon + 1)).reshape(n_lat + 1, n_lon + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    lower = np.stack([a, b, c], -1)[1:].reshape(-1, 3)     # skip the degenerate ones at the poles
    upper = np.stack([a, c, d], -1)[:-1].reshape(-1, 3)
    tris = np.concatenate([lower, upper]).astype(np.int32)
    verts = v.reshape(-1, 3).astype(np.float32)
    p0, p1, p2 = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    if np.einsum("ij,ij->", np.cross(p1 - p0, p2 - p0), p0) < 0:  # make the normals point outward
        tris = tris[:, [0, 2, 1]]
    return verts, tris, uv.reshape(-1, 2).astype(np.float32)


def to_camera(v: np.ndarray, distance: float = 600.0) -> np.ndarray:
    """Frontal pose: R = diag(1, -1, -1), t = (0, 0, distance) (the lead's camera convention)."""
    return v * np.array([1.0, -1.0, -1.0], np.float32) + np.array([0.0, 0.0, distance], np.float32)


def inputs(v: np.ndarray, tex: int, env: tuple[int, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "vertices": torch.from_numpy(to_camera(v)).requires_grad_(True),
        "diffuse": (0.3 + 0.4 * torch.rand(tex, tex, 3, generator=g)).requires_grad_(True),
        "specular": torch.full((tex, tex, 3), 0.2).requires_grad_(True),
        "roughness": torch.full((tex, tex, 1), 0.4).requires_grad_(True),
        "envmap": (0.5 + torch.rand(*env, 3, generator=g)).requires_grad_(True),
    }


def compiled_kernels(history: list[dict]) -> int:
    import drjit as dr
    return sum(1 for k in history if k["type"] == dr.KernelType.JIT and not k["cache_hit"])


def bridge_step(renderer, x: dict, weights: torch.Tensor, focal: float, spp: int, seed: int) -> None:
    """One render + backward through the bridge (gradients land in x[...].grad)."""
    img, _ = renderer.render(focal=focal, spp=spp, seed=seed, **x)
    (img * weights).sum().backward()


class PureDrJit:
    """The same update + render + backward in Dr.Jit only (no torch, no dr.wrap), on the
    renderer's own scene."""

    def __init__(self, renderer, x: dict, weights: torch.Tensor, focal: float) -> None:
        import drjit as dr
        import mitsuba as mi
        from mfface.scenes import face_scene as fs

        self.scene, self.params = next(iter(renderer._scenes.values()))[0]  # the bridge's scene 0
        self.verts = mi.Float(x["vertices"].detach().numpy().ravel())
        self.tensors = {fs.DIFFUSE: mi.TensorXf(x["diffuse"].detach().numpy()),
                        fs.SPECULAR: mi.TensorXf(x["specular"].detach().numpy()),
                        fs.ROUGHNESS: mi.TensorXf(x["roughness"].detach().numpy()),
                        fs.ENVMAP: mi.TensorXf(fs.envmap_with_halo(x["envmap"].detach()).numpy())}
        self.weights = mi.TensorXf(weights[0].numpy())
        self.fov = dr.opaque(mi.Float, fs.focal_to_x_fov(focal, renderer.width))
        self.zero = dr.opaque(mi.Float, 0.0)

    def step(self, spp: int, seed: int) -> None:
        import drjit as dr
        import mitsuba as mi
        from mfface.scenes import face_scene as fs

        # Fresh values every step, as after an optimiser step (identical objects would make
        # params.update() a no-op and skip the mesh/texture/envmap refresh).
        self.verts = self.verts + self.zero
        self.tensors = {k: t + self.zero for k, t in self.tensors.items()}
        leaves = [self.verts, *self.tensors.values()]
        dr.make_opaque(*leaves)
        for t in leaves:
            dr.enable_grad(t)
        self.params[fs.POSITIONS] = self.verts
        for k, t in self.tensors.items():
            self.params[k] = t
        self.params[fs.X_FOV] = self.fov
        self.params.update()
        img = mi.render(self.scene, self.params, spp=spp, seed=dr.opaque(mi.UInt32, seed))
        dr.backward(dr.sum(img[:, :, :3] * self.weights, axis=None))
        dr.eval(*[dr.grad(t) for t in leaves])
        for t in leaves:
            dr.disable_grad(t)


CPU_SECONDS: list[float] = []   # process CPU seconds of each `timed` call, in call order


def timed(fn, *args) -> float:
    """Wall seconds of fn(*args) including the kernels it queued: Dr.Jit's LLVM backend runs
    kernels asynchronously, so without the final sync their time would leak into the next call.
    The process CPU seconds (all threads) are appended to CPU_SECONDS: on a machine shared with
    other jobs they measure the work done, which wall time mixes with waiting for a core."""
    import drjit as dr
    dr.sync_thread()
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    dr.sync_thread()
    CPU_SECONDS.append(time.process_time() - c0)
    return time.perf_counter() - t0


def batch_compare(v, tris, uv, x, size, spp, iters, focal) -> dict[str, float]:
    """Median fwd+bwd seconds of a batch of 2: one scene per item (FaceRenderer) vs. one scene
    with both meshes (the second 10 m to the side) rendered through two sensors. The second layout
    cannot give each item its own envmap; it is timed to see whether it would be worth that."""
    import drjit as dr
    import mitsuba as mi
    from mfface.scenes import FaceRenderer, bsdf as _bsdf, face_scene as fs

    renderer = FaceRenderer(tris, uv, size, size)
    xb = {k: torch.stack([t.detach(), t.detach()]).requires_grad_(True) for k, t in x.items()}
    w = torch.rand(2, size, size, 3)
    per_item = [timed(bridge_step, renderer, xb, w, focal, spp, it) for it in range(iters)][2:]
    per_item_cpu = CPU_SECONDS[-(iters - 2):]

    _bsdf.register()
    spec = fs.SceneSpec(size, size, tuple(x["diffuse"].shape[:2]), tuple(x["envmap"].shape[:2]))
    meshes = {}
    for b in range(2):
        bsdf = mi.load_dict({"type": "mfface", "diffuse": fs._texture(spec.texture_size, 3, 0.5),
                             "specular": fs._texture(spec.texture_size, 3, 0.04),
                             "roughness": fs._texture(spec.texture_size, 1, 0.5)})
        meshes[f"face{b}"] = fs.build_mesh(tris, uv, bsdf)
    sensors = {f"sensor{b}": {"type": "perspective", "fov": fs.focal_to_x_fov(focal, size),
                              "to_world": mi.ScalarTransform4f.translate([1e4 * b, 0, 0]) @
                              mi.ScalarTransform4f.scale([-1, -1, 1]),
                              "film": {"type": "hdrfilm", "width": size, "height": size,
                                       "pixel_format": "rgba", "rfilter": {"type": "box"}}}
               for b in range(2)}
    scene = mi.load_dict({"type": "scene", "integrator": {"type": "prb", "max_depth": 2, "hide_emitters": True},
                          "light": {"type": "envmap", "bitmap": mi.Bitmap(np.ones((*spec.envmap_size, 3), np.float32)),
                                    "to_world": mi.ScalarTransform4f.scale([1, -1, -1])},
                          **meshes, **sensors})
    params = mi.traverse(scene)
    base = x["vertices"].detach().numpy()
    data = {f"face{b}.vertex_positions": mi.Float((base + np.array([1e4 * b, 0, 0], np.float32)).ravel())
            for b in range(2)}
    for b in range(2):
        for key, t in (("diffuse", x["diffuse"]), ("specular", x["specular"]), ("roughness", x["roughness"])):
            data[f"face{b}.bsdf.{key}.data"] = mi.TensorXf(t.detach().numpy())
    data["light.data"] = mi.TensorXf(fs.envmap_with_halo(x["envmap"].detach()).numpy())
    wd = mi.TensorXf(w[0].numpy())
    one_scene, one_scene_cpu = [], []
    for it in range(iters):
        dr.sync_thread()
        t0, c0 = time.perf_counter(), time.process_time()
        for t in data.values():
            dr.enable_grad(t)
        params.update(data)
        loss = 0
        for b in range(2):
            img = mi.render(scene, params, sensor=b, spp=spp, seed=dr.opaque(mi.UInt32, it))
            loss = loss + dr.sum(img[:, :, :3] * wd, axis=None)
        dr.backward(loss)
        dr.eval(*[dr.grad(t) for t in data.values()])
        dr.sync_thread()
        one_scene.append(time.perf_counter() - t0)
        one_scene_cpu.append(time.process_time() - c0)
        for t in data.values():
            dr.disable_grad(t)
    return {"batch2_scene_per_item_s": statistics.median(per_item),
            "batch2_scene_per_item_cpu_s": statistics.median(per_item_cpu),
            "batch2_one_scene_two_sensors_s": statistics.median(one_scene[2:]),
            "batch2_one_scene_two_sensors_cpu_s": statistics.median(one_scene_cpu[2:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--spp", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--texture", type=int, default=512)
    ap.add_argument("--batch-compare", action="store_true")
    args = ap.parse_args()

    from mfface.backend import select_variant
    variant = select_variant()
    import drjit as dr
    from mfface.scenes import FaceRenderer

    v, tris, uv = ellipsoid()
    x = inputs(v, args.texture, (64, 128))
    focal = 2.2 * args.size   # the ellipsoid fills about 60 % of the image width
    renderer = FaceRenderer(tris, uv, args.size, args.size)
    weights = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(1))
    dr.set_flag(dr.JitFlag.KernelHistory, True)
    warm = 2
    bridge, kernels, pure_times = [], [], []
    for it in range(warm):
        bridge.append(timed(bridge_step, renderer, x, weights, focal, args.spp, it))
    pure = PureDrJit(renderer, x, weights, focal)
    for it in range(warm):
        pure.step(args.spp, 100 + it)
    bridge_cpu, pure_cpu = [], []
    for it in range(warm, warm + args.iters):   # interleaved, so that other load hits both alike
        dr.kernel_history()
        bridge.append(timed(bridge_step, renderer, x, weights, focal, args.spp, it))
        bridge_cpu.append(CPU_SECONDS[-1])
        kernels.append(compiled_kernels(dr.kernel_history()))
        pure_times.append(timed(pure.step, args.spp, 100 + it))
        pure_cpu.append(CPU_SECONDS[-1])
    bridge_s, pure_s = statistics.median(bridge[warm:]), statistics.median(pure_times)
    bridge_c, pure_c = statistics.median(bridge_cpu), statistics.median(pure_cpu)
    result = {
        "fwd_bwd_s": round(bridge_s, 4),
        "overhead_ratio": round(bridge_c / pure_c, 3),
        "overhead_ratio_wall": round(bridge_s / pure_s, 3),
        "fwd_bwd_cpu_s": round(bridge_c, 4),
        "kernels_per_iter": max(kernels),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.batch_compare:
        result.update({k: round(t, 4) for k, t in
                       batch_compare(v, tris, uv, x, args.size, args.spp, warm + 5, focal).items()})
    print(f"variant {variant}, {len(v)} vertices, {len(tris)} triangles, textures {args.texture}^2, "
          f"envmap 64x128, image {args.size}^2, {args.spp} spp, prb max_depth=2")
    print(f"bridge fwd+bwd median {bridge_s:.3f} s (first iterations: {', '.join(f'{t:.2f}' for t in bridge[:warm])})")
    print(f"pure Dr.Jit fwd+bwd median {pure_s:.3f} s -> overhead ratio {bridge_s / pure_s:.3f} (wall)")
    print(f"CPU seconds (all threads): bridge {bridge_c:.3f}, pure Dr.Jit {pure_c:.3f} "
          f"-> overhead ratio {bridge_c / pure_c:.3f}")
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, torch threads {torch.get_num_threads()}")
    print(f"load average at the end: {', '.join(f'{a:.2f}' for a in os.getloadavg())}")
    print(f"kernels compiled per iteration after warm-up: {kernels}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
