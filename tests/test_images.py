"""Reading photos (formats, depths, orientation, bad files), gamma, crops, PNG/EXR writing, atomic writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mfface import atomic
from mfface.images import (Affine2D, CropBox, ImageReadError, crop_and_resize, crop_box_around,
                           delinearize, linearize, read_image, write_png)

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (6, 9, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, fmt, kwargs", [
    ("a.png", "PNG", {}), ("a.ppm", "PPM", {}), ("a.tif", "TIFF", {}),
    ("a.webp", "WEBP", {"lossless": True}),
])
def test_lossless_formats_read_exactly(tmp_path, name, fmt, kwargs):
    Image.fromarray(RGB8).save(tmp_path / name, format=fmt, **kwargs)
    img = read_image(tmp_path / name)
    assert img.dtype == torch.float32 and img.shape == (6, 9, 3)
    assert torch.equal(img, torch.from_numpy(RGB8.astype(np.float32) / 255))


def test_jpeg_reads_close(tmp_path):
    smooth = np.tile(np.linspace(40, 200, 32, dtype=np.uint8)[None, :, None], (16, 1, 3))
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (16, 32, 3)
    assert (img - torch.from_numpy(smooth / 255.0).float()).abs().max() < 4 / 255


def test_grayscale_and_rgba(tmp_path):
    gray = RGB8[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (6, 9, 3)
    assert torch.equal(img[..., 0], img[..., 2]) and torch.equal(img[..., 1], torch.from_numpy(gray / 255.0).float())
    rgba = np.concatenate([RGB8, np.full((6, 9, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert torch.equal(read_image(tmp_path / "a.png"), torch.from_numpy(RGB8 / 255.0).float())


def test_16_bit_gray_and_color_keep_their_depth(tmp_path):
    import cv2

    gray16 = RNG.integers(0, 65536, (5, 4), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert torch.allclose(img[..., 1], torch.from_numpy(gray16 / 65535.0).float())
    rgb16 = RNG.integers(0, 65536, (5, 4, 3), dtype=np.uint16)
    for name in ("c16.png", "c16.tif"):  # Pillow cannot write 16-bit colour; OpenCV stores BGR
        assert cv2.imwrite(str(tmp_path / name), rgb16[..., ::-1])
        img = read_image(tmp_path / name)
        assert torch.allclose(img, torch.from_numpy(rgb16 / 65535.0).float()), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    base = Image.fromarray(RGB8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    base.save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")) / 255.0
    got = read_image(path)
    assert got.shape == expected.shape
    assert torch.equal(got, torch.from_numpy(expected).float())


def test_exif_rotated_jpeg_comes_upright(tmp_path):
    tall = np.zeros((32, 16, 3), np.uint8)
    tall[:4] = 255  # a white bar at the top of the upright image
    stored = np.rot90(tall, k=1)  # what a camera stores when held sideways (16 x 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "r.jpg")
    assert img.shape == (32, 16, 3)
    assert img[:3].mean() > 0.9 and img[8:].mean() < 0.1


def test_bad_inputs_raise_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "text.png").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image(tmp_path / "text.png")
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="damaged or truncated"):
        read_image(tmp_path / "cut.png")
    assert issubclass(ImageReadError, ValueError)


def test_gamma_round_trip_and_values():
    x = torch.linspace(0, 1, 11)
    assert torch.allclose(delinearize(linearize(x)), x, atol=1e-6)
    assert linearize(torch.tensor([0.5]))[0].item() == pytest.approx(0.5 ** 2.2)
    assert linearize(np.array([1.5, -0.1])).tolist() == [1.0, 0.0]


def test_write_png_applies_gamma_and_is_readable(tmp_path):
    lin = torch.tensor([[[0.0, 0.5 ** 2.2, 1.0]]]).expand(2, 3, 3)
    write_png(tmp_path / "out" / "a.png", lin)
    back = read_image(tmp_path / "out" / "a.png")
    assert torch.allclose(back[0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    write_png(tmp_path / "b.png", np.full((2, 2), 0.5), gamma=None)
    assert np.asarray(Image.open(tmp_path / "b.png")).tolist() == [[128, 128], [128, 128]]
    with pytest.raises(ValueError, match="NaN"):
        write_png(tmp_path / "c.png", np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "c.png", np.zeros((2, 2, 2)))
    assert sorted(os.listdir(tmp_path)) == ["b.png", "out"] and os.listdir(tmp_path / "out") == ["a.png"]


def test_crop_box_is_square_centered_and_inside():
    pts = np.array([[40.0, 50.0], [80.0, 70.0]])
    box = crop_box_around(pts, (200, 300), margin=0.25)
    assert box == CropBox(30, 30, 60)  # side 40 * 1.5, centred on (60, 60)
    near_edge = crop_box_around(np.array([[2.0, 5.0], [30.0, 40.0]]), (200, 300), margin=0.5)
    assert near_edge.x0 == 0 and near_edge.y0 == 0 and near_edge.size == 70  # shifted, not padded
    too_big = crop_box_around(np.array([[0.0, 0.0], [290.0, 10.0]]), (100, 300), margin=0.2)
    assert too_big.size == 100 and 0 <= too_big.x0 <= 200 and too_big.y0 == 0
    with pytest.raises(ValueError, match="outside"):
        crop_box_around(np.array([[400.0, 10.0], [500.0, 20.0]]), (100, 300))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        crop_box_around(np.array([1.0, 2.0]), (100, 300))


def test_crop_and_resize_maps_a_landmark():
    h, w = 300, 400
    img = torch.zeros(h, w, 3)
    img[150:154, 220:224] = 1.0  # a 4x4 bright square, centre at (u, v) = (222, 152)
    box = crop_box_around(np.array([[140.0, 100.0], [300.0, 220.0]]), (h, w), margin=0.25)
    crop, to_crop = crop_and_resize(img, box, max_resolution=50)
    assert crop.shape == (50, 50, 3)
    landmark = np.array([222.0, 152.0])
    u, v = to_crop.apply(landmark)
    vv, uu = torch.meshgrid(torch.arange(50) + 0.5, torch.arange(50) + 0.5, indexing="ij")
    wgt = crop[..., 0]
    centroid = np.array([(wgt * uu).sum() / wgt.sum(), (wgt * vv).sum() / wgt.sum()])
    assert np.allclose(centroid, [u, v], atol=0.05)
    assert np.allclose(to_crop.inverse().apply(to_crop.apply(landmark)), landmark)
    t = to_crop.apply(torch.tensor([[222.0, 152.0]], dtype=torch.float64))
    assert t.dtype == torch.float64 and torch.allclose(t[0], torch.tensor([u, v], dtype=torch.float64))
    small, same = crop_and_resize(img, CropBox(0, 0, 20), max_resolution=256)
    assert small.shape == (20, 20, 3) and same == Affine2D(1.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="does not fit"):
        crop_and_resize(img, CropBox(390, 0, 20))


def test_atomic_write_leaves_nothing_when_writer_raises(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.txt"]
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "new.png") as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png"
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == ["r.txt"]
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["r.txt"]
    assert (target.stat().st_mode & 0o777) == (0o666 & ~atomic._UMASK)


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "result"
    with atomic.atomic_dir(out) as d:
        (d / "a.txt").write_text("1")
        assert not out.exists()
    assert sorted(os.listdir(out)) == ["a.txt"]
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out) as d:
            (d / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(out)) == ["a.txt"] and os.listdir(tmp_path) == ["result"]
    with atomic.atomic_dir(out) as d:
        (d / "c.txt").write_text("3")
    assert sorted(os.listdir(out)) == ["c.txt"] and os.listdir(tmp_path) == ["result"]
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic.atomic_dir(out, overwrite=False):
            pass


def test_exr_round_trip(tmp_path, variant):
    from mfface.scenes.exr import read_exr, write_exr

    hdr = torch.from_numpy(RNG.random((5, 7, 3), dtype=np.float32) * 20.0)
    hdr[0, 0] = torch.tensor([1e4, 0.0, 1e-3])
    write_exr(tmp_path / "env.exr", hdr)
    back = read_exr(tmp_path / "env.exr")
    assert back.dtype == torch.float32 and torch.equal(back, hdr)
    assert os.listdir(tmp_path) == ["env.exr"]
    with pytest.raises(ValueError, match=r"\.exr"):
        write_exr(tmp_path / "env.png", hdr)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_exr(tmp_path / "x.exr", hdr[..., :2])
    (tmp_path / "bad.exr").write_text("not exr")
    with pytest.raises(ValueError, match="could not be read as OpenEXR"):
        read_exr(tmp_path / "bad.exr")
