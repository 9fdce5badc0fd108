"""Tracking (mfface.tracking): the tracker recovers a synthetic clip's truth, temporal smoothness
lowers jitter, frames that cannot be read are found and reported, and animation.glb reads back."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import data_file
from mfface.tracking.clips import rotation_error_deg
from mfface.tracking.config import TrackConfig
from mfface.tracking.temporal import TemporalPrior, interpolate_gaps, jitter, smoothness

N_FRAMES = 16
SIZE = 128


@pytest.fixture(scope="module")
def model():
    from mfface.morphable.store import ModelStore

    return ModelStore().load("ict-lite")


@pytest.fixture(scope="module")
def clip(model, variant):
    """16 frames of a rendered face with known pose and ARKit curves, 128 px, 8 spp."""
    from mfface.tracking.clips import synthetic_clip

    return synthetic_clip(model, N_FRAMES, SIZE, seed=3, spp=8)


def _index(model) -> np.ndarray:
    from mfface.fitting.pipeline import landmark_index

    return landmark_index(model, "mediapipe478", 478)


def _track(model, clip, landmarks, **track):
    """Track `landmarks` (T, 478, 2) of the clip with the true identity and focal."""
    from mfface.tracking.tracker import track_landmarks, working_scale

    config = TrackConfig()
    found = np.ones(len(landmarks), bool)
    scale = working_scale(landmarks, found, config.input.max_resolution)
    return track_landmarks(model, landmarks, found, _index(model), clip.identity, clip.focal, SIZE, SIZE, scale,
                           dataclasses.replace(config.track, **track), config.landmarks)


def test_exact_landmarks_give_the_truth(model, clip) -> None:
    """The solver on the clip's projected model landmarks (no detector error) recovers pose and
    blend weights: every frame within 0.1 deg and 0.02."""
    track = _track(model, clip, clip.landmarks, rotation_smoothness=0, translation_smoothness=0,
                   expression_smoothness=0, expression_prior=0.1,
                   expression_sparsity=0.0)  # exact landmarks need no pull to 0
    assert track.status == ["tracked"] * N_FRAMES
    assert rotation_error_deg(track.euler, clip.euler).max() < 0.1
    assert np.abs(track.expression - clip.expression).max() < 0.02
    assert np.abs(track.translation - clip.translation).max() < 1.0


def test_adam_solver_is_stage_one_with_a_prior(model, clip) -> None:
    """solver = adam runs fit_landmarks with the temporal prior; on exact landmarks it gets close
    (Adam converges slowly on this problem, hence the looser bound)."""
    track = _track(model, clip, clip.landmarks, solver="adam", adam_iterations=300, lr=0.05, expression_sparsity=0.0,
                   rotation_smoothness=0, translation_smoothness=0, expression_smoothness=0)
    assert np.median(rotation_error_deg(track.euler, clip.euler)) < 1.0
    assert np.median(np.abs(track.expression - clip.expression)[:, clip.active]) < 0.1


def test_mediapipe_clip_recovers_the_truth(model, clip) -> None:
    """End to end on the rendered frames with MediaPipe (identity and focal from the truth): head
    rotation within 5 deg in the median frame (bench/track.py measures ~2 deg on longer clips),
    jawOpen follows the truth (correlation > 0.5), every frame tracked."""
    from mfface.landmarks import LandmarkDetector
    from mfface.tracking.detect import FaceFollower

    with LandmarkDetector() as detector:
        follower = FaceFollower(detector)
        found = [follower.find(frame) for frame in clip.frames]
    assert all(f is not None for f in found)
    track = _track(model, clip, np.stack(found))
    assert track.status == ["tracked"] * N_FRAMES
    assert np.median(rotation_error_deg(track.euler, clip.euler)) < 5.0
    jaw = model.expression_names.index("jawOpen")
    assert np.corrcoef(track.expression[:, jaw], clip.expression[:, jaw])[0, 1] > 0.5
    assert follower.stats.followed >= N_FRAMES - 2


def test_smoothness_reduces_jitter(model, clip) -> None:
    """With 1.5 px of landmark noise per frame the unsmoothed tracker jitters several times more
    than the truth; the temporal terms bring rotation and expression jitter down by at least half
    without moving the pose away from the truth."""
    rng = np.random.default_rng(0)
    noisy = clip.landmarks + rng.normal(0.0, 1.5, clip.landmarks.shape)
    raw = _track(model, clip, noisy, rotation_smoothness=0, translation_smoothness=0, expression_smoothness=0)
    smooth = _track(model, clip, noisy)
    active = clip.active
    for series in (lambda t: np.degrees(t.euler), lambda t: t.expression[:, active]):
        assert jitter(series(smooth)) < 0.5 * jitter(series(raw))
    assert np.median(rotation_error_deg(smooth.euler, clip.euler)) <= np.median(
        rotation_error_deg(raw.euler, clip.euler)) + 0.2


@pytest.mark.parametrize("solver", ["gauss-newton", "adam"])
def test_sparsity_keeps_unsupported_shapes_at_zero(model, clip, solver) -> None:
    """Landmarks with a fixed per-point offset (a detector that disagrees with the model, as
    MediaPipe does) and noise make the tracker put weight on shapes the clip never drives; the L1
    expression prior holds more of them at exactly 0, lowers their mean weight and the error of
    the driven shapes (measured: Gauss-Newton 0.116 -> 0.017 undriven mean, 0.19 -> 0.07 driven
    MAE; Adam 0.18 -> 0.13, 0.20 -> 0.12), and jawOpen still follows the truth. Both solvers
    minimise the same objective."""
    rng = np.random.default_rng(1)
    biased = clip.landmarks + rng.normal(0.0, 1.5, (1, *clip.landmarks.shape[1:])) \
        + rng.normal(0.0, 0.5, clip.landmarks.shape)
    undriven = np.delete(np.arange(model.n_expression), clip.active)
    options = dict(solver=solver, expression_prior=1.0, adam_iterations=300, lr=0.05)
    dense = _track(model, clip, biased, expression_sparsity=0.0, **options)
    sparse = _track(model, clip, biased, expression_sparsity=6.0, **options)
    assert (sparse.expression[:, undriven] == 0).mean() > (dense.expression[:, undriven] == 0).mean() + 0.1
    assert sparse.expression[:, undriven].mean() < 0.8 * dense.expression[:, undriven].mean()
    driven = clip.active
    error = {name: np.abs(t.expression[:, driven] - clip.expression[:, driven]).mean()
             for name, t in (("dense", dense), ("sparse", sparse))}
    assert error["sparse"] < 0.8 * error["dense"]
    jaw = model.expression_names.index("jawOpen")
    assert np.corrcoef(sparse.expression[:, jaw], clip.expression[:, jaw])[0, 1] > 0.8


def test_lost_frames_are_interpolated(model, clip) -> None:
    """Frames without a face are marked lost and filled between their neighbours; the tracker
    picks the face up again after the gap."""
    from mfface.tracking.tracker import track_landmarks, working_scale

    found = np.ones(N_FRAMES, bool)
    found[5:8] = False
    unreadable = np.zeros(N_FRAMES, bool)
    unreadable[6] = True
    config = TrackConfig()
    scale = working_scale(clip.landmarks, found, 256)
    track = track_landmarks(model, clip.landmarks, found, _index(model), clip.identity, clip.focal, SIZE, SIZE,
                            scale, dataclasses.replace(config.track, reinit_gap=1), config.landmarks, unreadable)
    assert track.status[5:8] == ["lost", "unreadable", "lost"]
    assert track.reinitialised == [0, 8]
    assert np.isnan(track.rms[5:8]).all() and np.isfinite(track.rms[8:]).all()
    assert rotation_error_deg(track.euler[8:], clip.euler[8:]).max() < 0.5
    for t in range(5, 8):  # between the neighbours
        lo, hi = np.minimum(track.expression[4], track.expression[8]), np.maximum(track.expression[4], track.expression[8])
        assert np.all(track.expression[t] >= lo - 1e-9) and np.all(track.expression[t] <= hi + 1e-9)


def test_interpolation_slerps_rotation_and_holds_the_ends() -> None:
    euler = np.zeros((5, 3))
    euler[0, 0], euler[4, 0] = 0.0, 0.4
    good = np.array([False, True, False, False, True])
    euler[1, 0] = 0.1
    out, translation, expression = interpolate_gaps(good, euler, np.zeros((5, 3)), np.zeros((5, 2)))
    assert out[0, 0] == pytest.approx(0.1)                 # held before the first good frame
    assert out[2, 0] == pytest.approx(0.2, abs=1e-6) and out[3, 0] == pytest.approx(0.3, abs=1e-6)
    with pytest.raises(ValueError):
        interpolate_gaps(np.zeros(3, bool), np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((3, 1)))


def test_temporal_prior_terms() -> None:
    """S_1 / S_2 against history, and the prior's Hessian equals autodiff's."""
    from torch.func import hessian

    x = torch.tensor([[1.0], [3.0], [6.0]])
    assert float(smoothness(x, None, 1)) == pytest.approx((4 + 9) / 2)
    assert float(smoothness(x, None, 2)) == pytest.approx(1.0)
    assert float(smoothness(x, torch.tensor([[0.0], [0.0]]), 2)) == pytest.approx((1 + 1 + 1) / 3)
    prior = TemporalPrior(2.0, 0.5, 10.0, 2, torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 4))

    def f(q: torch.Tensor) -> torch.Tensor:
        q = q.reshape(3, 10)
        return prior(q[:, :3], q[:, 3:6], q[:, 6:])
    assert torch.allclose(hessian(f)(torch.randn(30)), prior.hessian(3, 4), rtol=1e-4, atol=1e-2)
    assert jitter(np.arange(10.0)[:, None] ** 2) == pytest.approx(2.0)


def test_frame_folder_reports_missing_and_unreadable_frames(tmp_path) -> None:
    from mfface.tracking.clips import write_frames
    from mfface.tracking.video import open_frames

    frames = np.random.default_rng(0).integers(0, 255, (6, 24, 32, 3), dtype=np.uint8)
    paths = write_frames(tmp_path, frames)
    paths[2].unlink()                                 # frame 3 missing
    paths[4].write_bytes(b"not a png")               # frame 5 unreadable
    source = open_frames(tmp_path, fps=12)
    assert (source.count, source.width, source.height, source.fps) == (6, 32, 24, 12.0)
    got = list(source.frames())
    assert [f.index for f in got] == list(range(6))
    assert [f.index for f in got if f.image is None] == [2, 4]
    assert "missing" in got[2].problem and "unreadable" in got[4].problem
    assert np.array_equal(got[5].image, frames[5]) and got[5].time == pytest.approx(5 / 12)


def write_corrupt_avi(path, frames: list[np.ndarray], broken: int, fps: float = 10.0) -> None:
    """An MJPEG AVI of `frames` whose frame `broken` has its first 300 bytes of JPEG data zeroed."""
    import imageio.v2 as iio2

    writer = iio2.get_writer(path, format="FFMPEG", fps=fps, codec="mjpeg", pixelformat="yuvj420p",
                             macro_block_size=1)
    for frame in frames:
        writer.append_data(frame)
    writer.close()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[broken]:starts[broken] + 300] = bytes(300)
    path.write_bytes(bytes(data))


def test_video_drops_a_corrupt_frame_and_reports_it(tmp_path) -> None:
    """An MJPEG AVI whose 8th frame's data is destroyed: the decoder drops it, the probe's
    timestamps show the gap, and that grid frame comes back without an image."""
    from mfface.tracking.video import open_frames

    rng = np.random.default_rng(1)
    frames = [(rng.integers(0, 60, (64, 80, 3)) + 12 * i).astype(np.uint8) for i in range(14)]
    path = tmp_path / "clip.avi"
    write_corrupt_avi(path, frames, 7)
    source = open_frames(path)
    assert source.count == 14 and source.fps == pytest.approx(10.0)
    assert list(source.problems) == [7]
    got = list(source.frames())
    assert [f.index for f in got if f.image is None] == [7]
    errors = [np.abs(got[8].image.astype(int) - f.astype(int)).mean() for f in frames]
    assert int(np.argmin(errors)) == 8  # frame 8 is still frame 8


def test_video_errors(tmp_path) -> None:
    from mfface.tracking.video import VideoError, open_frames

    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello")
    (tmp_path / "photo.png").write_bytes(b"")
    (tmp_path / "nothing").mkdir()
    for name, words in (("missing.mp4", "does not exist"), ("empty.mp4", "empty"), ("text.mp4", "not a video"),
                        ("photo.png", "single image"), ("nothing", "holds no")):
        with pytest.raises(VideoError, match=words):
            open_frames(tmp_path / name)


def test_animation_glb_reads_back(model, tmp_path) -> None:
    """animation.glb: K morph targets with names, one keyframe per frame for the weights, rotation
    and translation; the mesh loads in trimesh; the head transform follows the glTF camera frame."""
    import trimesh

    from mfface.tracking.gltf_animation import read_glb, write_animation_glb

    frames, k = 5, model.n_expression
    times = np.arange(frames) / 30.0
    euler = np.zeros((frames, 3))
    euler[:, 0] = np.linspace(0, 0.3, frames)
    translation = np.tile([10.0, -20.0, 600.0], (frames, 1))
    expression = np.zeros((frames, k))
    expression[:, model.expression_names.index("jawOpen")] = np.linspace(0, 1, frames)
    maps = {"diffuse": np.full((8, 8, 3), 0.5), "specular": np.full((8, 8, 3), 0.04), "roughness": np.full((8, 8), 0.4)}
    path = write_animation_glb(tmp_path / "animation.glb", model, torch.zeros(1, model.n_identity), maps, times,
                               euler, translation, expression, 500.0, 640, 480)
    tree, binary = read_glb(path.read_bytes())
    mesh = tree["meshes"][0]
    primitive = mesh["primitives"][0]
    assert len(primitive["targets"]) == k == len(mesh["weights"]) == len(mesh["extras"]["targetNames"])
    assert mesh["extras"]["targetNames"] == model.expression_names
    assert all("min" in tree["accessors"][t["POSITION"]] for t in primitive["targets"])
    (animation,) = tree["animations"]
    paths = {c["target"]["path"]: animation["samplers"][c["sampler"]] for c in animation["channels"]}
    assert set(paths) == {"weights", "rotation", "translation"}
    accessors = tree["accessors"]
    for path_name, per_key in (("weights", k), ("rotation", 1), ("translation", 1)):
        sampler = paths[path_name]
        assert accessors[sampler["input"]]["count"] == frames
        assert accessors[sampler["output"]]["count"] == frames * per_key
    key_view = tree["bufferViews"][accessors[paths["translation"]["output"]]["bufferView"]]
    moved = np.frombuffer(binary, np.float32, 3 * frames, key_view["byteOffset"]).reshape(frames, 3)
    assert moved[0] == pytest.approx([0.01, 0.02, -0.6])   # glTF: +y up, camera looking down -z
    camera = tree["cameras"][0]["perspective"]
    assert camera["yfov"] == pytest.approx(2 * math.atan(240 / 500)) and camera["aspectRatio"] == pytest.approx(4 / 3)
    scene = trimesh.load(path)
    assert len(scene.geometry) == 1 and len(next(iter(scene.geometry.values())).vertices) == model.n_vertices


def test_arkit_curve_names(model) -> None:
    from mfface.tracking.animation import ARKIT_NAMES, expression_curves

    expression = np.zeros((2, model.n_expression))
    names = model.expression_names
    expression[:, names.index("eyeBlink_L")] = 0.7
    expression[:, names.index("browInnerUp_L")] = 0.2
    expression[:, names.index("browInnerUp_R")] = 0.4
    curves = expression_curves(expression, names, True, "arkit")
    assert curves.names == list(ARKIT_NAMES) and len(curves.names) == 52
    values = dict(zip(curves.names, curves.values[0]))
    assert values["eyeBlinkLeft"] == pytest.approx(0.7) and values["browInnerUp"] == pytest.approx(0.3)
    assert curves.untracked == ["tongueOut"]
    with pytest.raises(ValueError):
        expression_curves(expression, names, False, "arkit")


def test_identity_frames_are_sharp_frontal_and_varied(model) -> None:
    from mfface.tracking.config import SelectConfig
    from mfface.tracking.select import choose_frames

    rng = np.random.default_rng(0)
    table = np.asarray(model.landmarks["mediapipe478"])
    front = model.mean_shape[np.maximum(table, 0), :2] * [1.0, -1.0]      # a frontal face, y down
    base = 50 + 30 * (front - front.mean(0)) / np.abs(front - front.mean(0)).max()
    landmarks = np.stack([base + (i % 3) * rng.normal(0, 2, (478, 2)) for i in range(12)])
    found = np.ones(12, bool)
    found[0] = False
    sharp = np.ones(12)
    sharp[3] = 0.01  # blurred
    index = np.full(478, -1)
    covered = np.flatnonzero(np.asarray(model.landmarks["mediapipe478"]) >= 0)
    index[covered] = np.asarray(model.landmarks["mediapipe478"])[covered]
    chosen = choose_frames(model, landmarks, found, sharp, index, 100, 100,
                           SelectConfig(frames=3, shape_frames=1, max_angle=90))
    assert len(chosen) == 3 and 0 not in chosen and 3 not in chosen
    assert len({c % 3 for c in chosen}) >= 2  # different expressions, not three copies of one
    # the shape's frames: more of them, the maps' frames first (the picks are greedy, best first)
    more = choose_frames(model, landmarks, found, sharp, index, 100, 100,
                         SelectConfig(frames=3, shape_frames=8, max_angle=90))
    assert len(more) == 8 and more[:3] == chosen and 0 not in more and len(set(more)) == 8


def test_track_config_round_trips_through_toml(tmp_path) -> None:
    from mfface.config import apply_overrides, load_config, to_toml

    config = apply_overrides(TrackConfig(), {"track.window": 4, "photometric.iterations": 3,
                                             "output.curve_names": "arkit", "stage2.iterations": 7})
    path = tmp_path / "track.toml"
    path.write_text(to_toml(config))
    assert load_config(path, root=TrackConfig) == config
    assert config.fit_config().stage2.iterations == 7
    assert json.loads(json.dumps(dataclasses.asdict(config)))["track"]["window"] == 4


@pytest.mark.parametrize("retry", [True, False])
def test_a_cut_is_tracked_not_lost(model, clip, retry) -> None:
    """A cut mid-window (from frame 9 the head is rolled by 35 degrees and moved: the image's
    landmarks turned about the frame centre) is fitted again without the temporal prior, so the
    frames after it are tracked; without the retry the smoothed fit misses them and marks them lost."""
    landmarks = clip.landmarks.astype(np.float64).copy()
    angle = math.radians(35.0)
    turn = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([SIZE / 2.0, SIZE / 2.0])
    landmarks[9:] = (landmarks[9:] - centre) @ turn.T + centre + np.array([8.0, -5.0])
    track = _track(model, clip, landmarks, retry_missed=retry)
    assert track.status[:8] == ["tracked"] * 8
    if retry:
        assert track.status == ["tracked"] * N_FRAMES
        assert np.nanmax(track.rms) < 1.0
    else:
        assert "lost" in track.status[8:]


def test_a_still_face_in_camera_motion_keeps_its_expression(model) -> None:
    """A real photo (the shared astronaut, in a 256 px frame) moved by a smooth similarity
    (shift, zoom +-5%, rotation) is a face whose expression never changes. The tracked depth must
    follow the face's image size (1 / t_z against the landmark cloud's size) and the expression
    weights stay nearly constant. Measured on 150-frame clips of the shared photos: with a
    translation smoothness of 0.5 per mm^2 the depth swung by twice the zoom, following the
    vertical shift, and the weights compensated (mean range 0.38, up to 1); at 0.005 they range
    0.06-0.08 (bench/RESULTS.md, "Translation smoothness")."""
    from PIL import Image

    from mfface.landmarks import LandmarkDetector
    from mfface.tracking.clips import affine_clip
    from mfface.tracking.detect import FaceFollower
    from mfface.tracking.tracker import track_landmarks, working_scale

    photo = np.asarray(Image.open(data_file("images/astronaut.png")).convert("RGB"))
    frames = affine_clip(photo, 60, size=(256, 256), seed=0)
    with LandmarkDetector() as detector:
        follower = FaceFollower(detector)
        found = [follower.find(frame) for frame in frames]
    assert all(f is not None for f in found)
    landmarks = np.stack(found).astype(np.float64)
    config = TrackConfig()
    focal = 700.0  # the fitted focal of these clips is 700-720 px; the identity stays the mean face
    present = np.ones(len(landmarks), bool)
    scale = working_scale(landmarks, present, config.input.max_resolution)
    track = track_landmarks(model, landmarks, present, _index(model), torch.zeros(1, model.n_identity), focal,
                            256, 256, scale, config.track, config.landmarks)
    cloud = landmarks[:, :468]
    size = np.sqrt(((cloud - cloud.mean(1, keepdims=True)) ** 2).sum(-1).mean(-1))
    assert np.corrcoef(1.0 / track.translation[:, 2], size)[0, 1] > 0.9
    spread = track.expression.max(0) - track.expression.min(0)
    assert spread.mean() < 0.15 and spread.max() < 0.6


def test_photometric_refinement_keeps_unused_shapes_at_zero(model, variant) -> None:
    """The per-frame refinement has the landmark tracker's L1 expression prior: refining a neutral
    face from its true pose and neutral weights leaves more weights at exactly 0, and less weight
    in all, than the same refinement without it (photo noise otherwise walks them up)."""
    from mfface.config import apply_overrides
    from mfface.fitting.pipeline import prepare_photo
    from mfface.forward import ForwardModel
    from mfface.synthetic import random_face
    from mfface.tracking.refine import FrameRefiner

    face = random_face(model, 64, seed=4, spp=8, expression_scale=0.0)
    state = face.state
    weights = {}
    for sparsity in (0.0, 1.5):
        config = apply_overrides(TrackConfig(), {"input.max_resolution": 64, "photometric.iterations": 12,
                                                 "photometric.size": 64, "photometric.spp": 2,
                                                 "photometric.expression_sparsity": sparsity})
        prepared = prepare_photo(face.photo, face.landmarks, "mediapipe478", config.fit_config(), "frame",
                                 size=64, enlarge=True)
        refiner = FrameRefiner(ForwardModel(model), state, _index(model), config, 1.0)
        done = refiner.refine(prepared, 0, float(state.focal[0]), state.euler[0].numpy(),
                              state.translation[0].numpy(), np.zeros(model.n_expression))
        assert ("sparsity" in done.losses) == (sparsity > 0)
        weights[sparsity] = done.expression
    assert (weights[1.5] == 0).sum() > (weights[0.0] == 0).sum()
    assert weights[1.5].sum() < weights[0.0].sum()


def test_identity_passes_report_their_progress(model, clip) -> None:
    """Both identity passes report every iteration, labelled by pass: the many-frame shape pass
    ('shape stage1') and the maps pass on the best frames ('maps stage1', 'maps stage2')."""
    from mfface.config import apply_overrides
    from mfface.fitting.pipeline import Reconstructor
    from mfface.tracking.identity import fit_identity

    config = apply_overrides(TrackConfig(), {
        "input.max_resolution": 64, "stage1.iterations": 5, "stage2.iterations": 2, "stage2.spp": 1,
        "stage2.geometry_start": 1, "stage2.albedo_resolution": 16, "render.texture_size": 32,
        "select.frames": 2, "select.shape_frames": 4, "select.last_stage": 2})
    chosen = [0, 5, 10, 15]
    images = {i: clip.frames[i] for i in chosen}
    landmarks = {i: clip.landmarks[i] for i in chosen}
    steps: list[tuple[str, int, int]] = []
    identity = fit_identity(Reconstructor(model, config.fit_config()), images, landmarks, chosen, config,
                            lambda stage, i, n, losses: steps.append((stage, i, n)))
    assert identity.shape_frames == chosen and identity.frames == [0, 5]
    for label, count in (("shape stage1", 5), ("maps stage1", 5), ("maps stage2", 2)):
        calls = [(i, n) for s, i, n in steps if s == label]
        # stage 1 runs again, from 0, with stronger priors when a frame's landmarks look untrusted
        runs = max(1, len(calls) // count)
        assert calls == [(i, count) for i in range(count)] * runs, label
    assert {s for s, _, _ in steps} == {"shape stage1", "maps stage1", "maps stage2"}
