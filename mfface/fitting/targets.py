"""What a photometric fit compares against: the cropped photos, their skin masks and landmarks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class FitTargets:
    """B cropped photos of one size S, in the pixel frame the fit works in.

    images (B, S, S, 3) linear RGB; skin (B, S, S) weights in [0, 1] (where a photometric loss may
    count; {0, 1} at the crop's size);
    landmarks (B, N, 2) px; landmark_index (N,) model vertex per landmark (-1 = not covered);
    landmark_weights (N,) (jaw contour down-weighted); principal (B, 2) px each crop's principal
    point (the photo's centre, carried through the crop).
    """
    images: torch.Tensor
    skin: torch.Tensor
    landmarks: torch.Tensor
    landmark_index: torch.Tensor
    landmark_weights: torch.Tensor
    principal: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @property
    def batch(self) -> int:
        return int(self.images.shape[0])

    def valid_landmarks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target (B, M, 2), vertex index (M,), weights (M,)) of the landmarks the model covers."""
        valid = self.landmark_index >= 0
        return self.landmarks[:, valid], self.landmark_index[valid], self.landmark_weights[valid]

    def at_size(self, size: int) -> "FitTargets":
        """These targets seen at `size` px (coarse to fine): images and skin area-averaged,
        landmarks and principal points scaled by size / S (pixel i covers [i, i + 1), so a point
        scales with the image). `size` = S returns self."""
        if size == self.size:
            return self
        if not 0 < size < self.size:
            raise ValueError(f"a coarse size must lie between 1 and the crop's {self.size} px, got {size}.")
        scale = size / self.size

        def area(x: torch.Tensor) -> torch.Tensor:  # (B, S, S, C) -> (B, size, size, C)
            return F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="area").permute(0, 2, 3, 1)

        return dataclasses.replace(self, images=area(self.images), skin=area(self.skin[..., None])[..., 0],
                                   landmarks=self.landmarks * scale, principal=self.principal * scale)
