"""Tests for mfface.synthetic: determinism, landmarks on the face, ground truth reproduces the photo."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

SIZE = 64


@pytest.fixture(scope="module")
def render(ict, variant):
    from mfface.forward import ForwardModel

    return ForwardModel(ict)


@pytest.fixture(scope="module")
def face(ict, render):
    from mfface.synthetic import random_face

    return random_face(ict, SIZE, 3, spp=64, texture_size=64, forward=render)


def test_same_seed_same_face_other_seed_other_face(ict, render, face):
    from mfface.synthetic import random_face

    again = random_face(ict, SIZE, 3, spp=64, texture_size=64, forward=render)
    other = random_face(ict, SIZE, 4, spp=16, texture_size=64, forward=render)
    # Same seed, same samples; Dr.Jit's threads add them into the film in a varying order, so the
    # sums agree to float rounding, not bit for bit, and the BVH is rebuilt in parallel, so a
    # sample that lands exactly on a triangle edge (the low-discrepancy pattern makes that
    # likelier than random samples) may hit either triangle: 3 of 12288 values differed by up to
    # 0.002 here.
    differ = (face.photo - again.photo).abs()
    assert float((differ > 1e-5).float().mean()) < 1e-3 and float(differ.max()) < 0.01
    np.testing.assert_array_equal(face.landmarks, again.landmarks)
    assert torch.equal(face.state.sh, again.state.sh)
    assert not torch.equal(face.state.identity, other.state.identity)
    assert (face.photo - other.photo).abs().mean() > 0.01


def test_shapes_ranges_and_truth(ict, face):
    assert face.photo.shape == (SIZE, SIZE, 3) and face.coverage.shape == (SIZE, SIZE)
    assert 0.0 <= float(face.photo.min()) and float(face.photo.max()) <= 1.0
    assert face.landmarks.shape == (478, 2)
    assert face.vertices.shape == (ict.n_vertices, 3)
    st = face.state
    assert st.identity.shape == (1, ict.n_identity) and st.expression.shape == (1, ict.n_expression)
    assert (st.identity[0, 40:] == 0).all() and 1 <= int((st.expression > 0).sum()) <= 3
    assert float(st.expression.max()) <= 0.6
    assert 0.03 <= float(st.specular.mean()) <= 0.06 and 0.3 <= float(st.roughness.mean()) <= 0.5
    assert st.euler.abs().max() <= np.radians(25.0) + 1e-6
    assert st.sh.shape == (1, 81, 3) and float(st.sh[0, 0].min()) > 0
    torch.testing.assert_close(face.vertices, ict.vertices(st.identity, st.expression)[0])
    # the face fills most of the image: its landmarks span 60-70% of it
    extent = (face.clean_landmarks.max(0) - face.clean_landmarks.min(0)).max()
    assert 0.55 * SIZE <= extent <= 0.75 * SIZE


def test_landmarks_land_on_the_rendered_face(ict, face):
    covered = np.asarray(ict.landmarks["mediapipe478"]) >= 0
    ij = np.floor(face.clean_landmarks[covered]).astype(int)
    assert ((ij >= 0) & (ij < SIZE)).all()
    on_face = face.coverage.numpy()[ij[:, 1], ij[:, 0]] > 0.5
    assert on_face.mean() > 0.9
    # iris stand-ins sit between their eye's corners (MediaPipe 33/133 right eye, 263/362 left eye)
    lm = face.clean_landmarks
    for iris, corners in ((468, (33, 133)), (473, (263, 362))):
        lo, hi = np.sort(lm[list(corners), 0])
        assert lo < lm[iris, 0] < hi


def test_landmark_noise_has_the_requested_size(ict, render):
    from mfface.synthetic import random_face

    noisy = random_face(ict, SIZE, 5, spp=1, texture_size=16, landmark_noise_px=2.0, forward=render)
    diff = noisy.landmarks - noisy.clean_landmarks
    assert 1.6 < diff.std() < 2.4


def _pooled_difference(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean abs difference of 4x4-pixel block means over blocks fully inside `mask` (the block
    means average out most of the Monte Carlo noise of the low-spp renders)."""
    def pool(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)
    full = pool(mask[..., None].float())[..., 0] > 0.999
    assert full.sum() > 20
    return float((pool(image) - pool(target))[full].abs().mean())


def test_ground_truth_reproduces_the_photo(ict, render, face):
    """Re-rendering the true state (other seed) gives the photo after the pipeline's linearisation."""
    from mfface.config import FitConfig
    from mfface.forward import RenderSettings
    from mfface.fitting.pipeline import prepare_photo

    prepared = prepare_photo(face.photo, face.landmarks, "mediapipe478", FitConfig(), "synthetic")
    box = prepared.box
    assert prepared.target.shape[0] == box.size  # no resize at this size: pixels align
    crop = (slice(box.y0, box.y0 + box.size), slice(box.x0, box.x0 + box.size))

    def rendered(state):
        with torch.no_grad():
            out = render(state, RenderSettings.from_config(FitConfig(), SIZE, 64, 99))
            image, coverage = out.image, out.coverage
        return image[0][crop], coverage[0][crop]

    image, coverage = rendered(face.state)
    mask = (prepared.skin > 0) & (coverage > 0.999)
    right = _pooled_difference(image, prepared.target, mask)
    assert right < 0.012
    wrong_light = dataclasses.replace(face.state, sh=face.state.sh * torch.tensor([1.0, 1.0, 0.8]))
    assert _pooled_difference(rendered(wrong_light)[0], prepared.target, mask) > 2 * right
    wrong_pose = dataclasses.replace(face.state, euler=face.state.euler + torch.tensor([[0.15, 0.0, 0.0]]))
    assert _pooled_difference(rendered(wrong_pose)[0], prepared.target, mask) > 2 * right


def test_bad_inputs(ict, render):
    from mfface.synthetic import random_face

    with pytest.raises(ValueError, match="at least 16"):
        random_face(ict, 8, 0)
    with pytest.raises(ValueError, match="landmark_noise_px"):
        random_face(ict, SIZE, 0, landmark_noise_px=-1.0)
    other = dataclasses.replace(ict, name="other")
    with pytest.raises(ValueError, match="is for model 'ict'; pass one made for 'other'"):
        random_face(other, 32, 0, forward=render)


def test_a_uint8_photo_prepares_as_its_float_copy(face):
    """A photo held as uint8 (a video's frames) gives the same crop, mask, landmarks and digest as
    the float copy `read_image` would give, and is kept as uint8, not converted whole."""
    from mfface.config import FitConfig
    from mfface.fitting.pipeline import prepare_photo

    config = FitConfig()
    pixels = (face.photo * 255.0).round().to(torch.uint8)
    as_bytes = prepare_photo(pixels, face.landmarks, "mediapipe478", config, "bytes", size=48)
    as_float = prepare_photo(pixels.float() / 255.0, face.landmarks, "mediapipe478", config, "float", size=48)
    assert as_bytes.photo.dtype == torch.uint8 and as_bytes.photo.data_ptr() == pixels.data_ptr()
    assert torch.allclose(as_bytes.target, as_float.target, atol=1e-6)
    assert torch.equal(as_bytes.skin, as_float.skin)
    assert np.allclose(as_bytes.crop_landmarks, as_float.crop_landmarks)
    assert np.allclose(as_bytes.principal, as_float.principal)
    assert as_bytes.digest == as_float.digest
