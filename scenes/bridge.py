"""The torch -> Mitsuba bridge: differentiable face renders from torch tensors.

`FaceRenderer.render` writes vertices, textures, envmap and camera into a scene that was built once
(`mi.traverse` + `params.update()`), renders it inside a `@dr.wrap(source='torch', target='drjit')`
function and hands the image back to torch; torch's backward runs Mitsuba's `render_backward`.

Kernels are compiled once per scene: the seed, the field of view and the principal point enter as
opaque Dr.Jit variables (not literals), so changing them between calls reuses the compiled
kernels. Focal and principal point are converted to Mitsuba's field of view and offsets inside
Dr.Jit, so no value is read back to the host per call.

Batches use one scene per batch item (each item has its own camera and envmap; see
docs/renderer.md for the measurement behind this choice).

Parts (eyeballs, teeth, mouth interior; `mfface.scenes.parts`) are one extra mesh in the same
scenes, its positions written from one (B, P, 3) tensor like the face's. The forward model passes
them detached (no gradients: docs/renderer.md, "Parts").

Geometry is written only when it changed: a scene remembers the detached vertices (and parts) it
last received without gradients, and a render with the same values and no gradients on them
leaves the meshes alone. Writing positions makes `params.update()` rebuild the ray-tracing
acceleration structure (15-20 ms per 20k triangles on 2 CPU cores, whatever changed), which
stage 3 and the texel solve, whose geometry is fixed, paid on every render.
"""
from __future__ import annotations

import drjit as dr
import mitsuba as mi
import numpy as np
import torch

from mfface.backend import torch_device
from mfface.camera import principal_point
from mfface.scenes import face_scene as fs
from mfface.scenes.parts import PartMesh, check_parts


def _batched(x: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    """`x` with a leading batch axis: (...) of rank ndim-1 -> (1, ...); checks the rank."""
    if x.ndim == ndim - 1:
        return x.unsqueeze(0)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim - 1} or {ndim} dimensions, got shape {tuple(x.shape)}.")
    return x


def _needs_grad(vertices: torch.Tensor, parts: torch.Tensor | None) -> bool:
    return vertices.requires_grad or (parts is not None and parts.requires_grad)


class _SceneSlot:
    """One cached scene, its parameters, and the geometry it holds when that was written without
    gradients (None otherwise): detached copies of the face's vertices (V, 3) and the parts' (P, 3)."""

    def __init__(self, scene: mi.Scene, params: mi.SceneParameters, sampler: str) -> None:
        self.scene, self.params, self.sampler = scene, params, sampler
        self.geometry: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def holds(self, vertices: torch.Tensor, parts: torch.Tensor | None) -> bool:
        """True when the scene already holds exactly these vertices and parts and neither needs
        gradients, so that writing them again would only rebuild the acceleration structure."""
        if self.geometry is None or _needs_grad(vertices, parts):
            return False
        held_vertices, held_parts = self.geometry
        return (torch.equal(held_vertices, vertices)
                and (parts is None or (held_parts is not None and torch.equal(held_parts, parts))))

    def write(self, vertices: torch.Tensor, parts: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Record the geometry about to be written and return what to write. Without gradients:
        private copies, kept as the held geometry (Dr.Jit shares the memory of a torch tensor it is
        given, so a geometry kept between renders must be one nobody else can change). With
        gradients: the tensors themselves, and nothing is held."""
        if _needs_grad(vertices, parts):
            self.geometry = None
            return vertices, parts
        self.geometry = (vertices.detach().clone(), None if parts is None else parts.detach().clone())
        return self.geometry


class FaceRenderer:
    """Renders a fixed-topology face mesh from torch tensors, differentiably.

    triangles (F, 3) int and uvs (V, 2) (v = 0 at the texture bottom) fix the topology; width and
    height the image in pixels. `integrator` is 'prb' (default: shading gradients only),
    'prb_projective' or 'direct_projective' (adding silhouette gradients, several times slower),
    or 'path' (Mitsuba's C++ path tracer); max_depth=2 is direct light only. `sampler` is one of
    `face_scene.SAMPLERS` ('ldsampler', low-discrepancy, by default; `face_scene.sampler_for`
    says which one a render at a given spp uses). `parts` are the
    meshes rendered beside the face (`PartMesh`: eyeballs, teeth, mouth interior), in the order
    of the rows of `render`'s `parts` tensor.
    """

    def __init__(self, triangles: np.ndarray, uvs: np.ndarray, width: int, height: int, *,
                 integrator: str = "prb", max_depth: int = 2, hide_emitters: bool = True,
                 fresnel: str = "schlick", sampler: str = "ldsampler",
                 parts: tuple[PartMesh, ...] = ()) -> None:
        self.triangles = np.asarray(triangles)
        self.uvs = np.asarray(uvs, dtype=np.float32)
        self.width = int(width)
        self.height = int(height)
        self.settings = dict(integrator=integrator, max_depth=max_depth,
                             hide_emitters=hide_emitters, fresnel=fresnel)
        fs.check_topology(self.triangles, self.uvs)
        fs.check_spec(fs.SceneSpec(self.width, self.height, (1, 1), (1, 1), **self.settings, sampler=sampler))
        self.sampler = sampler
        self.parts = tuple(parts)
        check_parts(self.parts)
        for part in self.parts:
            fs.check_topology(np.asarray(part.triangles), np.zeros((part.n_vertices, 2)))
        self.n_vertices = self.uvs.shape[0]
        self.n_part_vertices = sum(part.n_vertices for part in self.parts)
        # scenes per (texture size, envmap size, sampler), one per batch item
        self._scenes: dict[tuple, list[_SceneSlot]] = {}
        # The wrapped function takes the renderer as an argument rather than being bound to it: a
        # bound method stored on `self` is a reference cycle, and a renderer in a cycle (with its
        # Mitsuba scenes) is freed by the garbage collector, in whatever thread it runs, instead of
        # when its last reference goes; freeing Dr.Jit memory from another thread while this one
        # renders can hang both (mfface.cli.progress).
        self._wrapped = dr.wrap(source="torch", target="drjit")(type(self)._render_drjit)

    # -- scene cache ---------------------------------------------------------------------------
    def _scene(self, index: int, texture_size: tuple[int, int], envmap_size: tuple[int, int],
               sampler: str) -> _SceneSlot:
        """Scene `index` (one per batch item) with `sampler`; scenes of other texture or envmap
        sizes are dropped (those of another sampler are kept: a fit alternates spp)."""
        sizes = (texture_size, envmap_size)
        for stale in [key for key in self._scenes if key[:2] != sizes]:
            del self._scenes[stale]
        scenes = self._scenes.setdefault((*sizes, sampler), [])
        while len(scenes) <= index:
            spec = fs.SceneSpec(self.width, self.height, texture_size, envmap_size, **self.settings,
                                sampler=sampler)
            scene = self._build_scene(spec)
            params = mi.traverse(scene)
            params.keep([fs.POSITIONS, fs.DIFFUSE, fs.SPECULAR, fs.ROUGHNESS, fs.ENVMAP, fs.X_FOV,
                         fs.PRINCIPAL_X, fs.PRINCIPAL_Y] + ([fs.PARTS_POSITIONS] if self.parts else []))
            scenes.append(_SceneSlot(scene, params, sampler))
        return scenes[index]

    def _build_scene(self, spec: fs.SceneSpec) -> mi.Scene:
        """The Mitsuba scene for `spec` (the face scene with the parts; `RelightRenderer` adds its
        lamps here)."""
        return fs.build_scene(self.triangles, self.uvs, spec, self.parts)

    # -- the Dr.Jit side -----------------------------------------------------------------------
    def _render_drjit(self, slot: _SceneSlot, write_geometry: bool, vertices: mi.TensorXf,
                      diffuse: mi.TensorXf, specular: mi.TensorXf, roughness: mi.TensorXf,
                      envmap: mi.TensorXf, camera: mi.TensorXf, spp: int, seed: int,
                      parts: mi.TensorXf | None = None) -> tuple[mi.TensorXf, mi.TensorXf]:
        """Update the scene of `slot` and render it: returns (H, W, 3) radiance and (H, W) coverage.

        camera (3,) = (focal, c_x, c_y) px; parts (P, 3) the parts' vertices (None: no parts);
        the vertices and parts are written only when `write_geometry`.
        """
        params = slot.params
        if write_geometry:
            params[fs.POSITIONS] = vertices.array   # a flat buffer: assign .array or the AD graph is lost
            if self.parts:
                params[fs.PARTS_POSITIONS] = parts.array
        params[fs.DIFFUSE] = diffuse
        params[fs.SPECULAR] = specular
        params[fs.ROUGHNESS] = roughness
        params[fs.ENVMAP] = envmap
        cam = dr.detach(camera.array)
        f, cx, cy = (dr.gather(mi.Float, cam, i) for i in range(3))
        params[fs.X_FOV] = fs.focal_to_x_fov(f, self.width)
        params[fs.PRINCIPAL_X] = (0.5 * self.width - cx) / self.width
        params[fs.PRINCIPAL_Y] = (0.5 * self.height - cy) / self.height
        params.update()
        img = mi.render(slot.scene, params, spp=fs.sample_count(slot.sampler, spp), seed=dr.opaque(mi.UInt32, seed))
        rgb = img[:, :, :3]
        alpha = dr.detach(img[:, :, 3])
        return rgb, alpha

    # -- the torch side ------------------------------------------------------------------------
    def render(self, vertices: torch.Tensor, diffuse: torch.Tensor, specular: torch.Tensor,
               roughness: torch.Tensor, envmap: torch.Tensor, focal: float | torch.Tensor,
               spp: int = 8, seed: int = 0, principal: torch.Tensor | None = None,
               parts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Render a batch: image (B, H, W, 3) linear RGB and mask (B, H, W) coverage in [0, 1].

        vertices (B, V, 3) camera-space mm; diffuse/specular (B, Ht, Wt, 3); roughness
        (B, Ht, Wt, 1); envmap (B, He, We, 3) lat-long radiance in the light frame without halo;
        focal in pixels, a scalar or (B,); principal (B, 2) or (2,) px, None = the image centre
        (`mfface.camera`); parts (B, P, 3) or (P, 3) camera-space mm, the vertices of
        `self.parts` concatenated in order (required when the renderer has parts; pass them
        detached unless their gradients are wanted). Unbatched inputs (no leading B) give B = 1.
        Inputs on another torch device than the Mitsuba variant's (CPU tensors under
        `cuda_ad_rgb`) are copied there, and the image and mask return to the vertices' device.
        The image is differentiable w.r.t. vertices, the three textures and the envmap (and
        parts that require grad); the mask, the coverage of face and parts, is not.
        Item b uses seed `seed + b` so that the items' noise is independent.
        """
        home = vertices.device  # the image comes back here; Mitsuba renders on the variant's device
        device = torch_device()
        vertices = _batched(vertices, "vertices", 3).to(device)
        diffuse = _batched(diffuse, "diffuse", 4).to(device)
        specular = _batched(specular, "specular", 4).to(device)
        roughness = _batched(roughness, "roughness", 4).to(device)
        envmap = _batched(envmap, "envmap", 4).to(device)
        batch = vertices.shape[0]
        if vertices.shape[1:] != (self.n_vertices, 3):
            raise ValueError(f"vertices must have shape (B, {self.n_vertices}, 3), got {tuple(vertices.shape)}.")
        tex = diffuse.shape[1:3]
        for name, t, c in (("diffuse", diffuse, 3), ("specular", specular, 3), ("roughness", roughness, 1)):
            if t.shape[1:] != (*tex, c):
                raise ValueError(f"{name} must have shape (B, {tex[0]}, {tex[1]}, {c}) like diffuse, "
                                 f"got {tuple(t.shape)}.")
        if envmap.shape[-1] != 3:
            raise ValueError(f"envmap must have 3 channels, got shape {tuple(envmap.shape)}.")
        focal_t = torch.as_tensor(focal, dtype=torch.float32, device=vertices.device).detach().reshape(-1)
        if focal_t.numel() not in (1, batch):
            raise ValueError(f"focal has {focal_t.numel()} values but vertices have batch {batch}; "
                             "give one per item or one for all.")
        centre = principal_point(principal, self.width, self.height, batch, vertices.device)
        camera = torch.cat([focal_t.expand(batch)[:, None], centre.detach().float()], dim=1)
        items = {"diffuse": diffuse, "specular": specular, "roughness": roughness, "envmap": envmap,
                 "camera": camera}
        for name, t in items.items():
            if t.shape[0] not in (1, batch):
                raise ValueError(f"{name} has batch size {t.shape[0]} but vertices have {batch}; "
                                 "give one per item or one for all.")
        if self.parts:
            if parts is None:
                raise ValueError(f"this renderer shows {len(self.parts)} parts "
                                 f"({', '.join(p.name for p in self.parts)}); pass their vertices as parts=.")
            parts = _batched(parts, "parts", 3).to(device)
            if parts.shape[1:] != (self.n_part_vertices, 3) or parts.shape[0] not in (1, batch):
                raise ValueError(f"parts must have shape (B, {self.n_part_vertices}, 3) with B = 1 or "
                                 f"{batch}, got {tuple(parts.shape)}.")
        elif parts is not None and parts.numel() > 0:
            raise ValueError("this renderer has no parts; pass parts=None.")
        if spp < 1:
            raise ValueError(f"spp={spp} renders nothing; use 1 or more samples per pixel.")
        images, masks = [], []
        # A differentiable item keeps its scene until its backward pass; items without gradients
        # share scene 0, since every live scene slows every render (docs/renderer.md, "Batches").
        differentiable = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (vertices, diffuse, specular, roughness, envmap, parts))
        sampler = fs.sampler_for(self.sampler, spp)
        for b in range(batch):
            pick = {k: t[b if t.shape[0] > 1 else 0] for k, t in items.items()}
            vertex_item = vertices[b].float().contiguous()
            part_item = (None if not self.parts
                         else parts[b if parts.shape[0] > 1 else 0].float().contiguous())
            slot = self._scene(b if differentiable else 0, tuple(diffuse.shape[1:3]), tuple(envmap.shape[1:3]),
                               sampler)
            write_geometry = not slot.holds(vertex_item, part_item)
            if write_geometry:
                vertex_item, part_item = slot.write(vertex_item, part_item)
            rgb, alpha = self._wrapped(
                self, slot, write_geometry, vertex_item, pick["diffuse"].float().contiguous(),
                pick["specular"].float().contiguous(), pick["roughness"].float().contiguous(),
                fs.envmap_with_halo(pick["envmap"].float()).contiguous(),
                pick["camera"].float().contiguous(), int(spp), int(seed) + b, part_item)
            images.append(_OneBackward.apply(rgb) if rgb.requires_grad else rgb)
            masks.append(alpha.detach())
        return torch.stack(images).to(home), torch.stack(masks).to(home)


class _OneBackward(torch.autograd.Function):
    """The identity on a render's image, whose backward may run once. Mitsuba's backward pass
    consumes the render's Dr.Jit graph, and a second one (torch's `retain_graph=True`) returned the
    first one's gradients again, whatever the new output gradient: it now raises instead."""

    @staticmethod
    def forward(ctx, image: torch.Tensor) -> torch.Tensor:
        ctx.done = False
        return image.view_as(image)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.done:
            raise RuntimeError("A render can be differentiated once (Mitsuba's backward pass consumes it); "
                               "render again for another gradient.")
        ctx.done = True
        return grad
