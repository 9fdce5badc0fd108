"""Landmark embedding calibration (mfface.morphable.landmark_calibration): it recovers a known
offset between a detector and the model, and the shipped calibrated ICT table lowers the landmark
residuals on held-out renders (MediaPipe run on `mfface synth` renders, no fitting)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import data_file  # noqa: F401
from mfface.camera import project, to_camera
from mfface.cli.main import cli
from mfface.learning.dataset_format import DatasetError, read_calibration_samples
from mfface.morphable.correspondence import MEDIAPIPE_CONTOUR
from mfface.morphable.ict import mediapipe_table, table_to_model
from mfface.morphable.landmark_calibration import (CalibrationSamples, calibrate_landmarks,
                                                   camera_vertices, reliability, residuals)
from mfface.objectives import landmark_weights
from mfface.morphable.store import ModelStore

SIZE = 256


@pytest.fixture(scope="module")
def lite():
    return ModelStore().load("ict-lite")


def _samples(model, count: int, rng: np.random.Generator) -> CalibrationSamples:
    """Random faces of `model` in front of a 256 px camera, with no detections yet."""
    euler = np.radians(np.column_stack([rng.uniform(-30, 30, count), rng.uniform(-12, 12, count),
                                        rng.uniform(-10, 10, count)]))
    euler[: count // 3, :2] = np.radians(rng.uniform(-5, 5, (count // 3, 2)))  # some frontal ones
    return CalibrationSamples(
        detected=np.zeros((count, 478, 2)), identity=rng.normal(0, 1, (count, model.n_identity)),
        expression=np.zeros((count, model.n_expression)), euler=euler,
        translation=np.column_stack([rng.normal(0, 5, (count, 2)), rng.uniform(500, 700, count)]),
        focal=rng.uniform(700, 1000, count), principal=np.full((count, 2), SIZE / 2), size=SIZE)


def _project(model, samples: CalibrationSamples, table: np.ndarray) -> np.ndarray:
    import torch

    camera = camera_vertices(model, samples)[:, table]
    uv = project(camera, torch.as_tensor(samples.focal, dtype=torch.float32), SIZE, SIZE,
                 torch.as_tensor(samples.principal, dtype=torch.float32))
    return uv.numpy().astype(np.float64)


def test_calibration_recovers_a_detector_that_marks_other_vertices(lite):
    rng = np.random.default_rng(3)
    start = lite.landmarks["mediapipe478"]
    mean_face = lite.mean_shape.reshape(-1, 3)
    fit = lite.regions["fit"]
    # the "detector" marks, for each landmark, a fit vertex 2-4 mm from the table's
    truth = start.copy()
    for l in np.flatnonzero(start >= 0):
        gap = np.linalg.norm(mean_face[fit] - mean_face[start[l]], axis=1)
        ring = fit[(gap > 2) & (gap < 4)]
        truth[l] = rng.choice(ring) if len(ring) else start[l]
    samples = _samples(lite, 45, rng)
    covered = truth >= 0
    samples.detected[:, covered] = _project(lite, samples, truth[covered]) + rng.normal(0, 0.3, (45, covered.sum(), 2))

    found = calibrate_landmarks(lite, samples, start, fit, MEDIAPIPE_CONTOUR)
    inner = np.setdiff1d(np.flatnonzero(covered), MEDIAPIPE_CONTOUR)
    recovered = np.linalg.norm(mean_face[found.table[inner]] - mean_face[truth[inner]], axis=1)
    assert np.mean(recovered < 0.5) > 0.9, np.percentile(recovered, [50, 90])
    assert np.all(found.table[~covered] == -1)
    assert np.nanmax(found.cost_after - found.cost_before) <= 0
    assert np.median(found.moved_mm[inner]) > 2
    res_start = residuals(lite, samples, start)
    res_found = residuals(lite, samples, found.table)
    assert np.nanmedian(res_found[:, inner]) < 0.5 * np.nanmedian(res_start[:, inner])


def test_calibration_refuses_a_table_of_another_scheme(lite):
    samples = _samples(lite, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="478 detected points per render, but the table has 68"):
        calibrate_landmarks(lite, samples, lite.landmarks["ibug68"], lite.regions["fit"])
    samples.identity = np.zeros((3, lite.n_identity + 50))
    with pytest.raises(ValueError, match="use renders of this model"):
        calibrate_landmarks(lite, samples, lite.landmarks["mediapipe478"], lite.regions["fit"])


def test_reading_samples_needs_a_synthetic_dataset(tmp_path):
    path = tmp_path / "prepared.h5"
    with h5py.File(path, "w") as f:
        f["landmarks"] = np.zeros((1, 478, 2), dtype=np.float32)
    with pytest.raises(DatasetError, match="has no truth"):
        read_calibration_samples(path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_calibration_samples(tmp_path / "missing.h5")


def test_calibrated_ict_table_lowers_residuals_on_held_out_renders(lite, ict_indexed, tmp_path):
    """MediaPipe on 10 renders of a seed the table was not calibrated on: the true face's
    landmark vertices lie closer to its points with the calibrated table than the geometric one."""
    _, to_orig = ict_indexed
    geometric = table_to_model(mediapipe_table(calibrated=False), to_orig)
    calibrated = lite.landmarks["mediapipe478"]
    np.testing.assert_array_equal(calibrated, table_to_model(mediapipe_table(), to_orig))

    out = tmp_path / "held.h5"
    result = CliRunner().invoke(cli, ["synth", "10", "-o", str(out), "--size", "192", "--spp", "16",
                                      "--seed", "909", "--model", "ict-lite", "--workers", "1",
                                      "--pose-max-yaw", "30"])
    assert result.exit_code == 0, result.output
    held = read_calibration_samples(out)
    assert len(held) >= 8
    before = np.nanmedian(residuals(lite, held, geometric), axis=1)
    after = np.nanmedian(residuals(lite, held, calibrated), axis=1)
    assert np.median(after) < 0.95 * np.median(before), (before, after)


def test_reliability_trusts_the_points_the_detector_places_consistently(lite):
    rng = np.random.default_rng(5)
    table = lite.landmarks["mediapipe478"]
    covered = table >= 0
    samples = _samples(lite, 30, rng)
    noise = np.where(np.arange(478) % 2 == 0, 0.5, 2.0)          # odd landmarks: 4x the noise
    samples.detected[:, covered] = _project(lite, samples, table[covered]) + \
        rng.normal(0, 1, (30, covered.sum(), 2)) * noise[covered][None, :, None]
    weights = reliability(lite, samples, table, MEDIAPIPE_CONTOUR)
    inner = np.setdiff1d(np.flatnonzero(covered), MEDIAPIPE_CONTOUR)
    even, odd = inner[inner % 2 == 0], inner[inner % 2 == 1]
    assert np.median(weights[even]) > 8 * np.median(weights[odd])     # weight ~ 1 / noise^2
    assert np.all(weights[list(MEDIAPIPE_CONTOUR)] == 1) and np.all(weights[~covered] == 0)
    assert weights.min() >= 0 and weights[covered].max() <= 5


def test_shipped_reliability_reaches_the_fit_weights(lite):
    weights = landmark_weights("mediapipe478", 478, 0.3, reliability=lite.landmark_reliability["mediapipe478"])
    inner = np.setdiff1d(np.flatnonzero(lite.landmarks["mediapipe478"] >= 0), MEDIAPIPE_CONTOUR)
    assert np.median(weights.numpy()[inner]) == pytest.approx(1.0, abs=0.05)
    assert weights.numpy()[inner].std() > 0.2                     # not uniform
    assert np.allclose(weights.numpy()[list(MEDIAPIPE_CONTOUR)], 0.3)
