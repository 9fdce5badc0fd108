"""`FaceDataset` and its augmentation, the MediaPipe mirror table, and the truth group layout.

The flip test runs MediaPipe on the flipped crop and checks that the flipped sample's landmarks
lie on the features it finds (128 px crops of the shared photos)."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import data_file
from mfface.images import delinearize
from mfface.learning.dataset import Augmentation, Draw, FaceDataset, jitter_colour, warp
from mfface.learning.dataset_format import (DatasetError, DatasetSpec, DatasetWriter,
                                            merge_datasets, read_info, sample_columns,
                                            truth_columns)
from mfface.mirror import (IRIS_MIRROR, derive_mirror_permutation, mirror_landmarks,
                                    mirror_permutation)
from mfface.learning.prepare import PrepareSettings, prepare_dataset

PHOTOS = ("images/astronaut.png", "images/takeo.ppm", "images/people/obama_a.jpg",
          "images/people/obama_d.jpg", "images/people/biden_b.jpg")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """A 128 px dataset of five shared photos."""
    out = tmp_path_factory.mktemp("faces") / "faces.h5"
    summary = prepare_dataset([data_file(p).resolve() for p in PHOTOS], out, PrepareSettings(size=128))
    assert summary.added == len(PHOTOS)
    return out


@pytest.fixture(scope="module")
def detector():
    from mfface.landmarks import LandmarkDetector

    with LandmarkDetector() as d:
        yield d


def _display(sample: dict) -> np.ndarray:
    """The sample's linear image back to display uint8 (H, W, 3), as MediaPipe wants it."""
    return np.round(delinearize(sample["image"].permute(1, 2, 0)).numpy() * 255).astype(np.uint8)


# -- reading ------------------------------------------------------------------------------------

def test_sample_shapes_types_and_gamma(faces):
    ds = FaceDataset(faces)
    assert len(ds) == len(PHOTOS) and ds.size == 128
    sample = ds[0]
    assert sample["image"].shape == (3, 128, 128) and sample["image"].dtype == torch.float32
    assert sample["landmarks"].shape == (478, 2) and sample["landmarks"].dtype == torch.float32
    assert sample["mask"].shape == (128, 128) and set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    assert sample["valid"].min() == 1.0 and sample["flipped"] is False
    assert torch.equal(sample["affine"], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert "truth" not in sample and sample["path"] == str(data_file(PHOTOS[0]).resolve())
    raw = ds.raw(0)
    linear = (raw["image"].astype(np.float32) / 255.0) ** 2.2
    assert np.allclose(sample["image"].permute(1, 2, 0).numpy(), linear, atol=1e-6)
    assert np.array_equal(sample["landmarks"].numpy(), raw["landmarks"])
    # the astronaut photo is 512 x 512: its centre in crop pixels from the stored box
    x0, y0, side = h5py.File(faces, "r")["boxes"][0]
    assert np.allclose(sample["principal"].numpy(), (np.array([256.0, 256.0]) - [x0, y0]) * 128 / side)
    assert ds[-1]["index"] == len(PHOTOS) - 1


def test_several_files_and_dataloader_workers(faces, tmp_path):
    """Files concatenate; each DataLoader worker opens its own handles (also after the parent
    has read, so a handle would otherwise cross the fork)."""
    other = tmp_path / "copy.h5"
    shutil.copyfile(faces, other)
    ds = FaceDataset([faces, other], augment=Augmentation.training())
    assert len(ds) == 2 * len(PHOTOS)
    assert ds.locate(len(PHOTOS) + 1) == (1, 1)
    ds[0]  # opens a handle in this process
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 128, 128) and batch["landmarks"].shape[1:] == (478, 2)
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(2 * len(PHOTOS)))
    ds.close()


@pytest.mark.parametrize("case", ["missing", "not hdf5", "truncated", "foreign", "other version",
                                  "different sizes"])
def test_reader_refuses_bad_files(case, faces, tmp_path):
    path = tmp_path / "bad.h5"
    files = [path]
    if case == "not hdf5":
        path.write_bytes(b"GIF89a not a dataset")
    elif case == "truncated":
        data = faces.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "foreign":
        with h5py.File(path, "w") as f:
            f["images"] = np.zeros((1, 4, 4, 3), np.uint8)
    elif case == "other version":
        shutil.copyfile(faces, path)
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 2
    elif case == "different sizes":
        prepare_dataset([data_file(PHOTOS[0])], path, PrepareSettings(size=64))
        files = [faces, path]
    expected = {"missing": "does not exist", "not hdf5": "not an HDF5 file",
                "truncated": "damaged or truncated", "foreign": "not an mfface face dataset",
                "other version": "version 2", "different sizes": "different crop sizes"}[case]
    with pytest.raises(DatasetError, match=expected) as error:
        FaceDataset(files)
    assert "\n" not in str(error.value)


# -- augmentation -------------------------------------------------------------------------------

def _landmark_error(detector, sample) -> float:
    found = detector.detect(_display(sample))
    return float(np.linalg.norm(found - sample["landmarks"].numpy(), axis=1).mean())


def test_flipped_landmarks_land_on_the_flipped_features(faces, detector):
    """MediaPipe on the flipped crop finds the flipped sample's landmarks (same numbering)
    within about a pixel at 128 px; without the mirror renumbering they would be far off."""
    ds = FaceDataset(faces, augment=Augmentation(flip=1.0))
    errors, unpermuted, baseline = [], [], []
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["flipped"] is True
        found = detector.detect(_display(sample))
        errors.append(np.linalg.norm(found - sample["landmarks"].numpy(), axis=1).mean())
        raw = ds.raw(i)
        naive = raw["landmarks"].copy()
        naive[:, 0] = 128 - naive[:, 0]
        unpermuted.append(np.linalg.norm(found - naive, axis=1).mean())
        baseline.append(np.linalg.norm(detector.detect(raw["image"]) - raw["landmarks"], axis=1).mean())
    assert np.mean(errors) < 2.0, errors
    assert np.mean(errors) < np.mean(baseline) + 1.0, (errors, baseline)
    assert min(unpermuted) > 3 * max(errors), (unpermuted, errors)


def test_affine_augmentation_keeps_landmarks_on_features(faces, detector):
    """Scale, rotation and shift move landmarks with the image: MediaPipe on the augmented crop
    agrees with the moved landmarks as well as it agrees with the stored ones."""
    for draw in (Draw(scale=1.1, rotation_deg=10.0, shift=(6.0, -4.0), flip=True),
                 Draw(scale=0.9, rotation_deg=-10.0, shift=(-6.0, 6.0))):
        ds = FaceDataset(faces, augment=Augmentation())
        ds.augment = _Fixed(draw)
        errors = [_landmark_error(detector, ds[i]) for i in range(len(ds))]
        assert np.mean(errors) < 2.0, (draw, errors)


class _Fixed(Augmentation):
    """An augmentation that always makes the same draw (for tests)."""

    def __init__(self, draw: Draw) -> None:
        object.__setattr__(self, "_draw", draw)

    def draw(self, size, generator=None):
        return self._draw


def test_flip_moves_image_mask_and_principal_point_exactly(faces):
    plain, flipped = FaceDataset(faces)[2], FaceDataset(faces, augment=Augmentation(flip=1.0))[2]
    assert torch.allclose(flipped["image"], plain["image"].flip(-1), atol=1e-6)
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    assert torch.allclose(flipped["principal"][0], 128 - plain["principal"][0])
    expected = mirror_landmarks(plain["landmarks"].numpy(), 128)
    assert np.allclose(flipped["landmarks"].numpy(), expected, atol=1e-4)


def test_warp_convention():
    """A one-pixel shift moves pixel values by one pixel; rotation by 90 degrees about the
    centre maps pixel centres onto pixel centres (pixel-corner convention)."""
    image = torch.arange(16.0).reshape(1, 4, 4)
    shifted = warp(image, Draw(shift=(1.0, 0.0)).affine(4), 4)
    assert torch.allclose(shifted[0, :, 1:], image[0, :, :3])
    assert torch.all(shifted[0, :, 0] == 0)
    turned = warp(image, Draw(rotation_deg=90.0).affine(4), 4)
    # counter-clockwise on screen: the top row becomes the left column, read bottom-up
    assert torch.allclose(turned[0, :, 0], image[0, 0, :].flip(0), atol=1e-5)
    affine = Draw(rotation_deg=90.0).affine(4)
    top_right_centre = np.array([3.5, 0.5])
    assert np.allclose(affine[:, :2] @ top_right_centre + affine[:, 2], [0.5, 0.5])


def test_colour_jitter_is_documented_arithmetic():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    assert torch.allclose(jitter_colour(image, Draw(brightness=1.5)), image * 1.5, atol=1e-6)
    stretched = jitter_colour(image, Draw(contrast=1.2))
    mean = (image * torch.tensor([0.2126, 0.7152, 0.0722])[:, None, None]).sum(0).mean()
    assert torch.allclose(stretched, (mean + 1.2 * (image - mean)).clamp(0, 1), atol=1e-6)
    gray = jitter_colour(image, Draw(saturation=0.0))
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    flat = jitter_colour(image, Draw(contrast=0.0))
    assert torch.allclose(flat, flat.flatten()[0].expand_as(flat), atol=1e-6)


def test_training_augmentation_draws_within_ranges(faces):
    augment = Augmentation.training()
    generator = torch.Generator().manual_seed(1)
    draws = [augment.draw(128, generator) for _ in range(200)]
    assert all(0.9 <= d.scale <= 1.1 and -10 <= d.rotation_deg <= 10 for d in draws)
    assert all(abs(d.shift[0]) <= 0.05 * 128 and 0.7 <= d.brightness <= 1.3 for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140
    sample = FaceDataset(faces, augment=augment)[0]
    assert sample["image"].min() >= 0 and sample["image"].max() <= 1
    with pytest.raises(ValueError):
        FaceDataset(faces, augment=Augmentation(flip=2.0))
    with pytest.raises(ValueError):
        FaceDataset(faces, augment=Augmentation(scale=(1.1, 0.9)))


# -- the mirror table ---------------------------------------------------------------------------

def test_mirror_table_matches_the_canonical_mesh():
    """The shipped table is what the derivation gives from MediaPipe's canonical mesh."""
    derived = derive_mirror_permutation(data_file("mediapipe/canonical_face_model.obj"))
    table = mirror_permutation()
    assert np.array_equal(derived, table)
    assert np.array_equal(table[table], np.arange(478))
    assert (table == np.arange(478)).sum() == 28  # the midline
    assert all(table[k] == v for k, v in IRIS_MIRROR.items())


def test_mirror_derivation_refuses_other_meshes(tmp_path):
    obj = tmp_path / "m.obj"
    obj.write_text("v 1 0 0\nv 2 0 0\n")
    with pytest.raises(ValueError, match="468"):
        derive_mirror_permutation(obj)


# -- truth (the layout `mfface synth` writes) ---------------------------------------------------

def _synthetic(path: Path, n: int, seed: int = 0, size: int = 64, texture: bool = False) -> dict:
    """A small synthetic-style dataset written through DatasetWriter with truth columns (the
    albedo as a texture or as a seed)."""
    rng = np.random.default_rng(seed)
    truth = truth_columns(n_identity=5, n_expression=3, sh_coefficients=9, n_vertices=10,
                          diffuse_size=8 if texture else None, n_albedo=4 if texture else None)
    spec = DatasetSpec(size=size, source="synthetic", truth=tuple(truth),
                       truth_attrs={"model": "test-model", "model_fingerprint": "abc"})
    values = []
    with DatasetWriter(path, spec, tool="synth") as writer:
        for i in range(n):
            sample = {c.name: rng.random(c.shape).astype(c.dtype) if c.dtype != "str" else ""
                      for c in sample_columns(size) + truth}
            sample["images"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            sample["masks"] = np.ones((size, size), np.uint8)
            sample["boxes"] = np.array([0, 0, size], np.int32)
            sample["source_sizes"] = np.array([size, size], np.int32)
            sample["paths"] = f"synth:{seed}:{i}"
            sample["landmarks"] = (rng.random((478, 2)) * size).astype(np.float32)
            sample["truth/landmarks"] = sample["landmarks"] + 0.5
            sample["truth/principal"] = np.array([size / 2, size / 2], np.float32)
            sample["truth/focal"] = np.float32(100.0)
            if not texture:
                sample["truth/albedo_seed"] = np.int64(1000 + i)
            writer.append(sample)
            values.append(sample)
    return {"values": values, "truth": truth}


def test_truth_round_trip_and_augmentation(tmp_path):
    path = tmp_path / "synth.h5"
    written = _synthetic(path, 3, texture=True)
    ds = FaceDataset(path)
    sample = ds[1]
    truth = sample["truth"]
    assert set(truth) == {c.name.split("/", 1)[1] for c in written["truth"]}
    assert {"identity", "expression", "euler", "translation", "focal", "principal", "sh",
            "landmarks", "diffuse", "albedo", "vertices"} == set(truth)
    for column in written["truth"]:
        name = column.name.split("/", 1)[1]
        assert tuple(truth[name].shape) == column.shape
        assert truth[name].dtype == getattr(torch, column.dtype)
        assert np.allclose(truth[name].numpy(), written["values"][1][column.name])
    with h5py.File(path, "r") as f:
        assert f["truth"].attrs["model"] == "test-model" and f.attrs["source"] == "synthetic"
        assert f["truth/focal"].attrs["geometry"] == "length"
    draw = Draw(scale=1.1, rotation_deg=5.0, shift=(2.0, 1.0), flip=True)
    ds.augment = _Fixed(draw)
    moved = ds[1]
    affine = draw.affine(64)

    def mapped(p):
        return p @ affine[:, :2].T + affine[:, 2]

    plain = written["values"][1]
    assert np.allclose(moved["truth"]["landmarks"].numpy(),
                       mapped(plain["truth/landmarks"].astype(np.float64))[mirror_permutation()], atol=1e-3)
    assert np.allclose(moved["truth"]["principal"].numpy(), mapped(np.array([32.0, 32.0])), atol=1e-4)
    assert np.isclose(float(moved["truth"]["focal"]), 110.0, rtol=1e-5)
    assert np.allclose(moved["truth"]["identity"].numpy(), plain["truth/identity"])  # 3D truth as is
    # truth is included only when every file has it
    photos = tmp_path / "photos.h5"
    prepare_dataset([data_file(PHOTOS[0])], photos, PrepareSettings(size=64))
    assert "truth" not in FaceDataset([path, photos])[0]
    with pytest.raises(DatasetError, match="truth"):
        FaceDataset([path, photos], truth=True)


def test_synthetic_shards_merge_with_their_truth(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _synthetic(a, 2, seed=0)
    _synthetic(b, 3, seed=1)
    out = tmp_path / "all.h5"
    result = merge_datasets([a, b], out)
    assert result["count"] == 5 and read_info(out)["truth"]
    merged = FaceDataset(out)
    assert merged[4]["truth"]["albedo_seed"].item() == 1002
    assert np.array_equal(merged.raw(2)["image"], FaceDataset(b).raw(0)["image"])
    # appending synthetic samples to a photo dataset is refused
    photos = tmp_path / "photos.h5"
    prepare_dataset([data_file(PHOTOS[0])], photos, PrepareSettings(size=64))
    with pytest.raises(DatasetError):
        merge_datasets([a], photos)
