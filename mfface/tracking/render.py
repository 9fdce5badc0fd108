"""The frames of tracked.mp4: the video with the fitted face overlaid | the render alone.

Each frame is rendered through the forward model (`mfface.forward.ForwardModel`) into a square
box around the fitted face (its projected vertices' box, 1.2 x its larger side, so that one
Mitsuba scene of `output.render_size` px serves every frame), with the identity fit's maps and
light. Left panel: the video frame scaled to `output.video_height`, with the render resampled into
the box and blended over it where the face covers it (figures.overlay, 75%). Right panel: the
render alone, `video_height` px square, on dark grey. Frames that were not tracked (interpolated)
are labelled in the left panel's corner.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mfface.camera import project
from mfface.config import FitConfig
from mfface.figures import overlay, to_display
from mfface.forward import ForwardModel, RenderSettings
from mfface.state import FaceState
from mfface.tracking.identity import crop_camera, frame_state

BOX_MARGIN = 1.2
BACKGROUND = 0.02  # linear grey behind the render panel
SEED_OFFSET = 7_000_000


class OverlayRenderer:
    """Makes tracked.mp4's frames for one video (width x height px, focal `focal_px`)."""

    def __init__(self, forward: ForwardModel, appearance: FaceState, fit_config: FitConfig, width: int,
                 height: int, focal_px: float, video_height: int, render_size: int, spp: int) -> None:
        self.forward, self.appearance = forward, appearance
        self.width, self.height, self.focal = width, height, focal_px
        self.gamma = fit_config.input.gamma
        self.out_h = int(video_height)
        self.out_w = max(2, round(width * video_height / height))
        self.size = int(render_size)
        self.settings = RenderSettings.from_config(fit_config, self.size, spp)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames made: both panels side by side."""
        return self.out_w + self.out_h, self.out_h

    def box(self, state: FaceState, vertices: torch.Tensor) -> tuple[float, float, float]:
        """Square (x0, y0, side) video px around the projected vertices (camera space, (1, V, 3))."""
        uv = project(vertices, state.focal, self.width, self.height, state.principal)[0]
        lo, hi = uv.min(0).values.cpu().numpy(), uv.max(0).values.cpu().numpy()
        side = float(max((hi - lo).max(), 1.0)) * BOX_MARGIN
        centre = (lo + hi) / 2.0
        return float(centre[0] - side / 2), float(centre[1] - side / 2), side

    @torch.no_grad()
    def frame(self, image: np.ndarray | None, index: int, euler: np.ndarray, translation: np.ndarray,
              expression: np.ndarray, label: str = "", sh: torch.Tensor | None = None) -> np.ndarray:
        """uint8 (out_h, out_w + out_h, 3): frame `index` (uint8 (H, W, 3), or None: black) with the
        face of the given pose and expression overlaid, and the render; `label` in the corner."""
        video_state = frame_state(self.appearance, euler, translation, expression, self.focal,
                                  (self.width / 2.0, self.height / 2.0), sh)
        vertices = self.forward.vertices(video_state)
        box = self.box(video_state, vertices)
        focal, principal = crop_camera(self.focal, self.width, self.height, box, self.size)
        state = frame_state(self.appearance, euler, translation, expression, focal, principal, sh)
        rgb, coverage = self.forward.render(state, self.settings.with_seed(SEED_OFFSET + index), vertices)
        rgb, coverage = rgb[0].clamp(0, 1).cpu().numpy(), coverage[0].cpu().numpy()
        left = self._video_panel(image, rgb, coverage, box)
        right = BACKGROUND * (1.0 - coverage[..., None]) + rgb * coverage[..., None]
        right = np.asarray(Image.fromarray(to_display(right, self.gamma)).resize((self.out_h, self.out_h),
                                                                                  Image.BILINEAR))
        panel = Image.fromarray(np.concatenate([left, right], axis=1))
        if label:
            ImageDraw.Draw(panel).text((6, 4), label, fill=(255, 200, 40), font=ImageFont.load_default())
        return np.asarray(panel)

    def _video_panel(self, image: np.ndarray | None, rgb: np.ndarray, coverage: np.ndarray,
                     box: tuple[float, float, float]) -> np.ndarray:
        """The scaled frame with the render blended into `box` (video px)."""
        if image is None:
            frame = np.zeros((self.out_h, self.out_w, 3), np.float32)
        else:
            frame = np.asarray(Image.fromarray(image).resize((self.out_w, self.out_h), Image.BILINEAR),
                               dtype=np.float32) / 255.0
        linear = frame ** self.gamma
        k = self.out_h / self.height
        x0, y0, side = (round(v * k) for v in box)
        side = max(side, 1)
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + side, self.out_w), min(y0 + side, self.out_h)
        if ix1 > ix0 and iy1 > iy0:
            render = np.asarray(Image.fromarray(to_display(rgb, 1.0)).resize((side, side), Image.BILINEAR),
                                dtype=np.float32) / 255.0
            mask = np.asarray(Image.fromarray(np.round(coverage * 255).astype(np.uint8)).resize(
                (side, side), Image.BILINEAR), dtype=np.float32) / 255.0
            window = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
            linear[iy0:iy1, ix0:ix1] = overlay(linear[iy0:iy1, ix0:ix1], render[window], mask[window])
        return to_display(linear, self.gamma)
