"""What a photometric fit compares against: the cropped photos, their skin masks and landmarks."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FitTargets:
    """B cropped photos of one size S, in the pixel frame the fit works in.

    images (B, S, S, 3) linear RGB; skin (B, S, S) in {0, 1} (where a photometric loss may count);
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
