"""The forward model: a `FaceState` and render settings -> image, coverage, vertices, landmarks.

Everything that renders a face goes through here: the fit's photometric stages, the result writer,
replay, synthetic faces, and the network's training and prediction. The chain is

    model.vertices(identity, expression)            model space, mm
 -> to_camera(., euler, translation)                camera space, mm (OpenCV: +z forward)
 -> project(., focal, principal)                    landmark pixels
 -> sh_to_envmap(sh)                                lat-long light (light frame)
 -> FaceRenderer.render(vertices, maps, envmap, camera)   Mitsuba through dr.wrap

and every step is differentiable in torch. `ForwardModel` owns the Mitsuba scenes: one
`FaceRenderer` per (image size, integrator, max_depth, sampler), built on first use and then only
updated, so a loop that renders at a fixed size never rebuilds a scene or recompiles a kernel. It
keeps only the most recently used scene (`max_scenes`): every live Mitsuba scene's shapes, BSDFs
and emitters are traced into every render's virtual calls, so each scene kept alive slows the
renders of the others (measured: a 128 px step 314 ms alone, 358 / 414 / 437 / 487 / 602 ms with
1-5 scenes of other sizes alive, 341 ms once they were dropped; bench/RESULTS.md, "Live scenes").
A fit of many photos of different crop sizes, or a light solve at 64 px before stage 2, would
otherwise render ever slower.

The model's parts (eyeballs, teeth, mouth interior: `MorphableModel.parts`) are rendered in every
image: `model.part_vertices` with the state's identity and expression, posed by the same
`to_camera`, passed to the renderer without gradients (the photometric loss counts skin pixels
only, which they never cover; docs/renderer.md, "Parts"). Models without parts render as before.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mfface.camera import project, to_camera
from mfface.state import FaceState
from mfface.morphable.model import MorphableModel
from mfface.sh import sh_to_envmap

if TYPE_CHECKING:
    from mfface.config import FitConfig
    from mfface.scenes.bridge import FaceRenderer
    from mfface.scenes.parts import PartMesh


@dataclass(frozen=True)
class RenderSettings:
    """How one render is made. `size` image side in px (square crops); `spp` samples per pixel;
    `seed` of the sampler (item b of a batch uses seed + b); `integrator` 'prb' (shading
    gradients) or 'prb_projective' / 'direct_projective' (plus silhouette gradients);
    `max_depth` 2 = direct light only; `envmap_height` of the lat-long map the SH light is baked
    into (width twice that); `sampler` the sensor's sampler (`mfface.scenes.face_scene.SAMPLERS`:
    low-discrepancy by default)."""
    size: int
    spp: int = 4
    seed: int = 0
    integrator: str = "prb"
    max_depth: int = 2
    envmap_height: int = 64
    sampler: str = "ldsampler"

    @classmethod
    def from_config(cls, config: "FitConfig", size: int, spp: int, seed: int = 0) -> "RenderSettings":
        """Settings of a fit's renders at `size` px with `spp` samples (renderer and light from
        `config.render` and `config.light`)."""
        return cls(size=int(size), spp=int(spp), seed=int(seed), integrator=config.render.integrator,
                   max_depth=config.render.max_depth, envmap_height=config.light.envmap_height,
                   sampler=config.render.sampler)

    def with_seed(self, seed: int) -> "RenderSettings":
        return dataclasses.replace(self, seed=int(seed))


@dataclass
class Rendered:
    """One forward pass: image (B, S, S, 3) linear RGB, differentiable; coverage (B, S, S) in
    [0, 1], not differentiable; vertices (B, V, 3) camera-space mm; landmarks (B, M, 2) px of the
    requested landmark vertices (None when none were requested)."""
    image: torch.Tensor
    coverage: torch.Tensor
    vertices: torch.Tensor
    landmarks: torch.Tensor | None


class ForwardModel:
    """The differentiable forward model of one morphable model on one torch device."""

    def __init__(self, model: MorphableModel, device: torch.device | str = "cpu",
                 part_gradients: bool = False, max_scenes: int = 1) -> None:
        """`part_gradients` renders the parts differentiably (their vertices keep the autograd
        graph to identity, expression and pose); off by default: the fit's loss never counts them
        and detached parts cost less (docs/renderer.md, "Parts"). `max_scenes` scenes are kept
        (the most recently used); a caller that alternates between settings in a loop raises it
        to their number, at the cost of slower renders while they are all alive."""
        if max_scenes < 1:
            raise ValueError(f"max_scenes must be at least 1, got {max_scenes}.")
        self.model = model
        self.device = torch.device(device)
        self.part_gradients = bool(part_gradients)
        self.max_scenes = int(max_scenes)
        self._renderers: OrderedDict[tuple[int, str, int, str], FaceRenderer] = OrderedDict()

    @property
    def part_meshes(self) -> "tuple[PartMesh, ...]":
        """The model's parts as the renderer takes them (topology and material), in model order."""
        from mfface.scenes.parts import PartMesh

        return tuple(PartMesh(p.name, p.material, p.triangles, p.material_coord) for p in self.model.parts)

    def renderer(self, settings: RenderSettings) -> "FaceRenderer":
        """The Mitsuba scene for `settings`' size, integrator, depth and sampler: built on first
        use, reused while it is among the `max_scenes` most recently used, dropped after."""
        key = (settings.size, settings.integrator, settings.max_depth, settings.sampler)
        renderer = self._renderers.pop(key, None)
        if renderer is None:
            from mfface.scenes.bridge import FaceRenderer

            while len(self._renderers) >= self.max_scenes:  # free the old scene before building
                self._renderers.popitem(last=False)
            renderer = FaceRenderer(self.model.triangles, self.model.uvs, settings.size, settings.size,
                                    integrator=settings.integrator, max_depth=settings.max_depth,
                                    sampler=settings.sampler, parts=self.part_meshes)
        self._renderers[key] = renderer
        return renderer

    def vertices(self, state: FaceState) -> torch.Tensor:
        """Camera-space vertices (B, V, 3) mm of `state` (shared identity broadcast over B)."""
        model_space = self.model.vertices(state.identity.expand(state.batch, -1), state.expression)
        return to_camera(model_space, state.euler, state.translation)

    def part_vertices(self, state: FaceState) -> torch.Tensor | None:
        """Camera-space part vertices (B, P, 3) mm of `state`, detached unless `part_gradients`;
        None when the model has no parts."""
        if not self.model.parts:
            return None
        with torch.set_grad_enabled(self.part_gradients and torch.is_grad_enabled()):
            model_space = self.model.part_vertices(state.identity.expand(state.batch, -1),
                                                   state.expression)
            return to_camera(model_space, state.euler, state.translation)

    @staticmethod
    def envmap(sh: torch.Tensor, height: int) -> torch.Tensor:
        """Lat-long envmap (B, height, 2 height, 3) of SH coefficients (B, n, 3), light frame."""
        return sh_to_envmap(sh, height, 2 * height)

    @staticmethod
    def landmarks(state: FaceState, vertices: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        """Pixel positions (B, M, 2) of camera-space `vertices`' rows `index` (M,) in `state`'s
        camera, for a `size` x `size` image."""
        return project(vertices[:, index], state.focal, size, size, state.principal)

    def render(self, state: FaceState, settings: RenderSettings, vertices: torch.Tensor,
               envmap: torch.Tensor | None = None, renderer: "FaceRenderer | None" = None,
               parts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (B, S, S, 3), coverage (B, S, S)) of camera-space `vertices` with `state`'s maps,
        light and camera (for callers that move the vertices themselves, e.g. a turntable).
        `envmap` (B or 1, He, We, 3) replaces the light baked from `state.sh`, and `renderer` the
        scene of `settings` (relighting passes its lamp scene, a `FaceRenderer` too, built with
        `part_meshes`). `parts` (B, P, 3) camera-space part vertices; None = `part_vertices(state)`,
        which match `vertices` only when those are `vertices(state)`: a caller that moves the
        face itself moves the parts the same way and passes them."""
        batch = state.batch
        maps = [m.expand(batch, -1, -1, -1) for m in (state.diffuse, state.specular, state.roughness)]
        light = self.envmap(state.sh, settings.envmap_height) if envmap is None else envmap
        if parts is None:
            parts = self.part_vertices(state)
        return (renderer or self.renderer(settings)).render(
            vertices, *maps, light, state.focal, spp=settings.spp, seed=settings.seed,
            principal=state.principal, parts=parts)

    def __call__(self, state: FaceState, settings: RenderSettings,
                 landmark_index: torch.Tensor | None = None) -> Rendered:
        """Render `state` (batch B): image, coverage, camera-space vertices, and the projected
        landmarks of the model vertices `landmark_index` (M,) when given."""
        vertices = self.vertices(state)
        image, coverage = self.render(state, settings, vertices)
        landmarks = (None if landmark_index is None
                     else self.landmarks(state, vertices, landmark_index, settings.size))
        return Rendered(image, coverage, vertices, landmarks)
