"""`FaceDataset`: a torch Dataset over face-dataset files (mfface.learning.dataset_format).

Each item is a dict:
    image       float32 (3, S, S)  linear RGB in [0, 1]: the stored display-referred uint8 crop
                                   as (value / 255) ** gamma, gamma = 2.2 (mfface.images.linearize)
    landmarks   float32 (478, 2)   MediaPipe landmarks in pixels of the returned (augmented) crop,
                                   pixel-corner convention (pixel i's centre at i + 0.5)
    mask        float32 (S, S)     skin mask, 1 = skin (0 where augmentation left the crop)
    valid       float32 (S, S)     1 where the returned crop shows the stored crop, 0 where
                                   augmentation moved pixels in from outside it (black there)
    principal   float32 (2,)       the source photo's centre in crop pixels (mfface's camera
                                   assumes it is the principal point; FaceState.principal)
    affine      float32 (2, 3)     A = [M | t]: stored-crop pixel p -> returned pixel M p + t
                                   (identity without augmentation; includes the flip)
    flipped     bool               whether the sample was mirrored
    brightness  float              the colour jitter's exposure factor b (1 without jitter): the
                                   image is b x the stored one, as if the light were b x brighter
    index       int                the item's index; `path` str, the source path
    truth       dict of tensors    the `truth/` datasets, when the files have them (see below)

Augmentation (`Augmentation`; off unless given; `Augmentation.training()` is the documented
training setting) draws, per item, one similarity transform about the crop's centre (scale,
rotation, shift) and a horizontal flip, and applies that single affine to image, mask and
landmarks alike (image bilinear, mask bilinear then > 0.5, both sampled at pixel centres in the
pixel-corner convention), so the landmarks stay on the features they mark. A flip maps x to
S - x and renumbers the landmarks with MediaPipe's mirror permutation (mfface.mirror),
so landmark i is still the same anatomical point (e.g. the subject's right eye corner). Colour
jitter acts on the linear image: brightness b multiplies it (an exposure change), contrast c
scales its deviation from its mean luminance, saturation s scales each pixel's deviation from
its own luminance (Rec. 709 weights); the result is clipped to [0, 1].

Truth under augmentation: datasets whose `geometry` attribute is "points" or "landmarks" are
mapped by the affine (landmarks also renumbered on a flip), "length" ones (focal) scaled by the
affine's scale; all other truth values (pose, coefficients, light, vertices) describe the
un-augmented crop, and `affine` / `flipped` say how to relate them (a flipped face's identity
is not the flipped identity vector, so training code that needs exact 3D truth should not flip).

HDF5 handles are opened lazily in the process that reads (each DataLoader worker opens its own;
h5py handles must not cross a fork), and dropped when the dataset is pickled. Truth datasets of
at most `PRELOAD_ROW_BYTES` per sample (pose, coefficients, light) are read whole when the dataset
is opened, and the others' h5py objects are looked up once per process: h5py's per-call cost is
the same for a 4-byte row as for an image, and an item reads 18 datasets.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mfface.learning.dataset_format import (GAMMA, DatasetError, _decode_str, _open_h5,
                                            describe_file)
from mfface.mirror import mirror_permutation

# Truth datasets with rows of at most this many bytes are held in memory (20,000 samples of the
# ICT truth: about 30 MB); larger ones (maps, landmarks) are read per item.
PRELOAD_ROW_BYTES = 1024

# Rec. 709 luminance weights of linear RGB.
_LUMA = torch.tensor([0.2126, 0.7152, 0.0722])


@dataclass(frozen=True)
class Augmentation:
    """Random per-item augmentation; each range is (low, high) of a uniform draw.

    - `scale`: zoom about the crop's centre (1.1 = face 10% larger); drawn log-uniformly;
    - `rotation_deg`: in-plane rotation, degrees, positive = counter-clockwise on screen;
    - `shift`: translation as a fraction of the crop side, in x and in y independently;
    - `flip`: probability of a horizontal flip (landmarks renumbered, see the module doc);
    - `brightness`, `contrast`, `saturation`: factors of the colour jitter (1 = unchanged).
    The defaults change nothing; `training()` gives the documented training setting.
    """
    scale: tuple[float, float] = (1.0, 1.0)
    rotation_deg: tuple[float, float] = (0.0, 0.0)
    shift: tuple[float, float] = (0.0, 0.0)
    flip: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def training(cls) -> "Augmentation":
        """Scale 0.9-1.1, rotation +-10 deg, shift +-5% of the side, flip with p = 0.5,
        brightness 0.7-1.3 (linear exposure), contrast and saturation 0.8-1.2."""
        return cls(scale=(0.9, 1.1), rotation_deg=(-10.0, 10.0), shift=(-0.05, 0.05), flip=0.5,
                   brightness=(0.7, 1.3), contrast=(0.8, 1.2), saturation=(0.8, 1.2))

    def check(self) -> None:
        """Raise ValueError for ranges that are not finite, reversed, or out of bounds."""
        for name in ("scale", "rotation_deg", "shift", "brightness", "contrast", "saturation"):
            low, high = getattr(self, name)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"augmentation {name} must be a finite (low, high) range, got {(low, high)}.")
        if self.scale[0] <= 0 or min(self.brightness[0], self.contrast[0], self.saturation[0]) < 0:
            raise ValueError("augmentation scale must be > 0 and colour factors >= 0.")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"augmentation flip is a probability in [0, 1], got {self.flip}.")

    def draw(self, size: int, generator: torch.Generator | None = None) -> "Draw":
        """One random draw for a crop of `size` px (torch's RNG, or `generator`)."""
        u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()

        def between(r: tuple[float, float], x: float) -> float:
            return r[0] + (r[1] - r[0]) * x

        scale = math.exp(between((math.log(self.scale[0]), math.log(self.scale[1])), u[0]))
        return Draw(scale=scale, rotation_deg=between(self.rotation_deg, u[1]),
                    shift=(between(self.shift, u[2]) * size, between(self.shift, u[3]) * size),
                    flip=u[4] < self.flip, brightness=between(self.brightness, u[5]),
                    contrast=between(self.contrast, u[6]), saturation=between(self.saturation, u[7]))


@dataclass(frozen=True)
class Draw:
    """One augmentation: scale, rotation (degrees, counter-clockwise on screen), shift (px),
    flip, and colour factors."""
    scale: float = 1.0
    rotation_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    flip: bool = False
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    def affine(self, size: int) -> np.ndarray:
        """(2, 3) [M | t] mapping stored-crop pixels p to augmented pixels M p + t: flip
        (x -> size - x), then scale and rotate about the centre (size/2, size/2), then shift."""
        c = size / 2.0
        a = math.radians(self.rotation_deg)
        # y points down, so a counter-clockwise turn on screen is a clockwise one in (x, y).
        rot = self.scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        flip = np.array([[-1.0, 0.0], [0.0, 1.0]]) if self.flip else np.eye(2)
        flip_t = np.array([size, 0.0]) if self.flip else np.zeros(2)
        m = rot @ flip
        t = rot @ (flip_t - c) + c + np.asarray(self.shift)
        return np.concatenate([m, t[:, None]], axis=1)


def warp(image: torch.Tensor, affine: np.ndarray, size: int) -> torch.Tensor:
    """Resample (C, S, S) `image` so that stored pixel p lands at M p + t (bilinear, zeros
    outside), in the pixel-corner convention: output pixel centre q = j + 0.5 samples the input
    at M^-1 (q - t)."""
    m, t = affine[:, :2], affine[:, 2]
    inv = np.linalg.inv(m)
    # grid_sample with align_corners=False: normalised x = 2 u / S - 1 for pixel-corner u.
    # source = inv (q - t); in normalised coordinates n_src = A n_out + b.
    a = inv
    b = (inv @ (np.array([size / 2.0, size / 2.0]) - t) - size / 2.0) / (size / 2.0)
    theta = torch.tensor(np.concatenate([a, b[:, None]], axis=1), dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, image.shape[0], size, size], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def jitter_colour(image: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Brightness, contrast and saturation of a linear (3, H, W) image (see the module doc)."""
    if draw.brightness == 1.0 and draw.contrast == 1.0 and draw.saturation == 1.0:
        return image
    luma = _LUMA.to(image.dtype)[:, None, None]
    out = image * draw.brightness
    if draw.contrast != 1.0:
        mean = (out * luma).sum(0).mean()
        out = mean + draw.contrast * (out - mean)
    if draw.saturation != 1.0:
        gray = (out * luma).sum(0, keepdim=True)
        out = gray + draw.saturation * (out - gray)
    return out.clamp(0.0, 1.0)


class FaceDataset(Dataset):
    """Samples of one or more face-dataset files, concatenated in the order given.

    `augment`: an Augmentation (None: samples as stored); `gamma`: display -> linear exponent
    (default the files' 2.2); `truth`: include the `truth` dict (None: when every file has the
    same truth datasets; True: require it; False: never). Raises DatasetError for a missing,
    non-HDF5, damaged, foreign or other-version file, or files of different crop sizes.
    """

    def __init__(self, files: str | os.PathLike | Sequence[str | os.PathLike],
                 augment: Augmentation | None = None, gamma: float = GAMMA,
                 truth: bool | None = None) -> None:
        paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(p) for p in files]
        if not paths:
            raise DatasetError("FaceDataset needs at least one dataset file.")
        if augment is not None:
            augment.check()
        self.files = paths
        self.augment = augment
        self.gamma = float(gamma)
        infos = []
        for path in paths:
            f = _open_h5(path)
            try:
                info = describe_file(f, path)
                info["truth_geometry"] = {n: _decode_str(f[n].attrs.get("geometry", "none"))
                                          for n in info["truth"]}
                info["boxes"] = f["boxes"][:]
                info["source_sizes"] = f["source_sizes"][:]
                truth_attrs = f["truth"].attrs if "truth" in f else {}
                info["truth_model"] = {k: _decode_str(truth_attrs[k]) for k in ("model", "model_fingerprint")
                                       if k in truth_attrs}
                info["preloaded"] = _small_truth(f, info["truth"], path) if truth is not False else {}
            finally:
                f.close()
            infos.append(info)
        sizes = {info["size"] for info in infos}
        if len(sizes) != 1:
            raise DatasetError(f"the dataset files have different crop sizes ({sorted(sizes)} px); "
                               "use files prepared with the same --size together.")
        self.size = sizes.pop()
        schemas = {tuple((n, info["columns"][n]) for n in info["truth"]) for info in infos}
        if truth is None:
            truth = len(schemas) == 1 and bool(infos[0]["truth"])
        elif truth and (len(schemas) != 1 or not infos[0]["truth"]):
            raise DatasetError("truth was asked for but not every dataset file has the same truth "
                               "datasets (photo datasets have none).")
        self.truth_names: list[str] = list(infos[0]["truth"]) if truth else []
        self._geometry = infos[0]["truth_geometry"] if truth else {}
        # per file, the face model its truth was rendered with: {"model", "model_fingerprint"} or {}
        self.truth_models: list[dict[str, str]] = [info["truth_model"] for info in infos]
        self._counts = [info["count"] for info in infos]
        self._preloaded: list[dict[str, np.ndarray]] = [info["preloaded"] if truth else {} for info in infos]
        self._starts = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        self._boxes = np.concatenate([info["boxes"] for info in infos])
        self._source_sizes = np.concatenate([info["source_sizes"] for info in infos])
        self._handles: list[Any] | None = None
        self._pid = -1
        self._augment_seed: tuple[int, int] | None = None

    def seed_augmentation(self, seed: int, epoch: int) -> None:
        """Make item i's augmentation a function of (seed, epoch, i) alone, whatever process,
        worker or order loads it (training sets this per epoch, so a resumed run draws the same
        augmentations as an uninterrupted one). Without it, torch's global RNG is used."""
        self._augment_seed = (int(seed), int(epoch))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = None, -1
        return state

    def _datasets(self, k: int) -> dict[str, Any]:
        """File k's per-item h5py datasets by name, the file opened on first use in this process."""
        if self._handles is None or self._pid != os.getpid():
            self._handles = [None] * len(self.files)
            self._pid = os.getpid()
        if self._handles[k] is None:
            f = _open_h5(self.files[k])
            names = ["images", "masks", "landmarks", "paths",
                     *(n for n in self.truth_names if n not in self._preloaded[k])]
            try:
                self._handles[k] = (f, {name: f[name] for name in names})
            except (OSError, KeyError, ValueError) as e:
                f.close()
                raise DatasetError(f"{self.files[k]} is damaged ({e}); write the dataset again.") from None
        return self._handles[k][1]

    def close(self) -> None:
        """Close the HDF5 handles this process opened (they reopen on the next read)."""
        for handle in self._handles or []:
            if handle is not None:
                handle[0].close()
        self._handles = None

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, row in that file) of a dataset index."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} samples.")
        index %= len(self)
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return k, index - int(self._starts[k])

    def raw(self, index: int) -> dict[str, Any]:
        """The stored values of one sample (uint8 image and mask, landmarks, source path,
        truth), unaugmented."""
        k, row = self.locate(index)
        datasets, preloaded = self._datasets(k), self._preloaded[k]
        try:
            sample = {"image": datasets["images"][row], "mask": datasets["masks"][row],
                      "landmarks": datasets["landmarks"][row], "path": _decode_str(datasets["paths"][row])}
            sample["truth"] = {n.split("/", 1)[1]: (preloaded[n] if n in preloaded else datasets[n])[row]
                               for n in self.truth_names}
        except (OSError, KeyError, ValueError) as e:
            raise DatasetError(f"{self.files[k]} is damaged: sample {row} cannot be read ({e}); "
                               "write the dataset again.") from None
        return sample

    def principal_point(self, index: int) -> np.ndarray:
        """The source photo's centre in stored-crop pixels, (2,)."""
        x0, y0, side = self._boxes[index]
        width, height = self._source_sizes[index]
        return (np.array([width / 2.0 - x0, height / 2.0 - y0]) * self.size / side).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One item (see the module doc for its keys), augmented when `augment` is set."""
        k, row = self.locate(index)
        index = int(self._starts[k]) + row
        raw = self.raw(index)
        s = self.size
        image = torch.from_numpy(raw["image"]).permute(2, 0, 1).to(torch.float32) / 255.0
        image = image.clamp(0.0, 1.0) ** self.gamma
        mask = torch.from_numpy(raw["mask"].astype(np.float32))
        valid = torch.ones(s, s)
        landmarks = raw["landmarks"].astype(np.float64)
        principal = self.principal_point(index).astype(np.float64)
        truth = raw["truth"]
        generator = None
        if self._augment_seed is not None:
            seed, epoch = self._augment_seed
            generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)
        draw = self.augment.draw(s, generator) if self.augment is not None else Draw()
        affine = draw.affine(s)
        if self.augment is not None and not np.allclose(affine, [[1, 0, 0], [0, 1, 0]]):
            stacked = warp(torch.cat([image, mask[None], valid[None]]), affine, s)
            image, mask, valid = stacked[:3], (stacked[3] > 0.5).float(), (stacked[4] > 0.5).float()
            landmarks = _map_points(landmarks, affine)
            principal = _map_points(principal, affine)
            truth = {name: self._augment_truth(name, value, affine, draw.flip)
                     for name, value in truth.items()}
            if draw.flip:
                landmarks = landmarks[mirror_permutation()]
        image = jitter_colour(image, draw)
        sample: dict[str, Any] = {
            "image": image.contiguous(), "landmarks": torch.from_numpy(landmarks.astype(np.float32)),
            "mask": mask, "valid": valid,
            "principal": torch.from_numpy(principal.astype(np.float32)),
            "affine": torch.from_numpy(affine.astype(np.float32)), "flipped": bool(draw.flip),
            "brightness": float(draw.brightness),
            "index": index, "path": raw["path"],
        }
        if self.truth_names:
            sample["truth"] = {name: torch.as_tensor(np.asarray(value)) for name, value in truth.items()}
        return sample

    def _augment_truth(self, name: str, value: np.ndarray, affine: np.ndarray, flip: bool) -> np.ndarray:
        """Move one truth value by the augmentation, as its `geometry` attribute says."""
        geometry = self._geometry.get(f"truth/{name}", "none")
        if geometry in ("points", "landmarks"):
            value = _map_points(np.asarray(value, dtype=np.float64), affine).astype(np.float32)
            if geometry == "landmarks" and flip:
                value = value[mirror_permutation()]
        elif geometry == "length":
            value = (np.asarray(value) * math.sqrt(abs(np.linalg.det(affine[:, :2])))).astype(np.float32)
        return value


def _small_truth(f: Any, names: Sequence[str], path: Path) -> dict[str, np.ndarray]:
    """The truth datasets of at most PRELOAD_ROW_BYTES per sample, read whole: {name: array}."""
    small = {}
    try:
        for name in names:
            dataset = f[name]
            if dataset.dtype.kind != "O" and dataset.dtype.itemsize * math.prod(dataset.shape[1:]) <= PRELOAD_ROW_BYTES:
                small[name] = dataset[:]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path} is damaged: its truth cannot be read ({e}); write the dataset again.") from None
    return small


def _map_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Points (..., 2) -> M p + t."""
    return points @ affine[:, :2].T + affine[:, 2]
