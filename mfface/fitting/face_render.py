"""From fitted quantities to a rendered face: model -> pose -> SH light -> Mitsuba, in torch.

This is the forward model both photometric stages differentiate: `FaceRender` owns one
`FaceRenderer` (the Mitsuba scene, built once for the model's topology and the image size) and
turns a `FaceState` into camera-space vertices, an envmap, an image, a coverage mask and the 2D
positions of the landmark vertices.
"""
from __future__ import annotations

import torch

from mfface.camera import project, to_camera
from mfface.config import FitConfig
from mfface.fitting.state import FaceState
from mfface.morphable.model import MorphableModel
from mfface.sh import sh_to_envmap


class FaceRender:
    """The differentiable forward model for images of `size` x `size` pixels."""

    def __init__(self, model: MorphableModel, size: int, config: FitConfig,
                 device: torch.device | str = "cpu") -> None:
        from mfface.scenes.bridge import FaceRenderer

        self.model = model
        self.size = int(size)
        self.config = config
        self.device = torch.device(device)
        self.renderer = FaceRenderer(model.triangles, model.uvs, self.size, self.size,
                                     integrator=config.render.integrator,
                                     max_depth=config.render.max_depth)
        self.envmap_size = (config.light.envmap_height, 2 * config.light.envmap_height)

    def vertices(self, state: FaceState) -> torch.Tensor:
        """Camera-space vertices (B, V, 3) mm."""
        batch = state.batch
        model_space = self.model.vertices(state.identity.expand(batch, -1), state.expression)
        return to_camera(model_space, state.euler, state.translation)

    def envmap(self, sh: torch.Tensor) -> torch.Tensor:
        """Lat-long envmap (B, He, We, 3) of SH coefficients (B, n, 3)."""
        return sh_to_envmap(sh, *self.envmap_size)

    def landmarks(self, state: FaceState, vertices: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Pixel positions (B, M, 2) of the camera-space `vertices`' rows `index` (M,) in `state`'s camera."""
        return project(vertices[:, index], state.focal, self.size, self.size, state.principal)

    def render(self, state: FaceState, vertices: torch.Tensor, diffuse: torch.Tensor,
               spp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, S, S, 3) and coverage (B, S, S) of `state` with the given diffuse texture."""
        batch = state.batch
        return self.renderer.render(
            vertices, diffuse.expand(batch, -1, -1, -1), state.specular.expand(batch, -1, -1, -1),
            state.roughness.expand(batch, -1, -1, -1), self.envmap(state.sh), state.focal,
            spp=spp, seed=seed, principal=state.principal)


def photometric_loss(image: torch.Tensor, coverage: torch.Tensor, target: torch.Tensor,
                     skin: torch.Tensor) -> torch.Tensor:
    """Mean L1 over channels of the pixels that are both rendered face and photographed skin.

    image/target (B, S, S, 3) linear; coverage/skin (B, S, S) weights in [0, 1]. NextFace's loss,
    with its background and hair excluded by the skin mask.
    """
    weight = (coverage * skin)[..., None]
    return (weight * (image - target).abs()).sum() / (3.0 * weight.sum().clamp_min(1.0))
