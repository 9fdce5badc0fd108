"""`mfface track` through click's runner: every output, every option, and every bad input."""
from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import command_fails, data_file, run_command

# Tiny settings: 64 px identity crops, stage 1 only, small renders; what is checked is the plumbing.
TINY = ["--model", "ict-lite", "--input-max-resolution", "64", "--stage1-iterations", "20", "--select-frames", "2",
        "--select-shape-frames", "3", "--select-last-stage", "1", "--render-final-spp", "2", "--render-texture-size", "32",
        "--stage2-albedo-resolution", "16", "--output-video-height", "48", "--output-render-size", "32",
        "--output-video-spp", "1", "--no-output-glb"]
N_FRAMES = 12
ENTRIES = {"animation.json", "animation.csv", "tracked.mp4", "config.toml", "identity"}


run = functools.partial(run_command, "track")
fail = functools.partial(command_fails, "track")  # a tracking that must fail with one clear `Error:` line


@pytest.fixture(scope="module")
def frames(variant) -> np.ndarray:
    """12 rendered frames of a moving, talking face, 128 px."""
    from mfface.morphable.store import ModelStore
    from mfface.tracking.clips import synthetic_clip

    return synthetic_clip(ModelStore().load("ict-lite"), N_FRAMES, 128, seed=5, spp=8).frames


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory) -> Path:
    from mfface.tracking.clips import write_video

    path = tmp_path_factory.mktemp("video") / "talk.mp4"
    write_video(path, frames, 30.0)
    return path


@pytest.fixture(scope="module")
def tracked(video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("track")
    result = run(str(video), "-o", str(out), *[a for a in TINY if a != "--no-output-glb"])
    assert result.exit_code == 0, result.output
    assert "mfface track" in result.output and "frames/s" in result.output
    assert "no maps (--select-last-stage 1)" in result.output  # the shape pass only: no maps claimed
    return out / "talk"


def test_track_writes_every_output(tracked: Path) -> None:
    import imageio.v3 as iio

    from mfface.config import load_config
    from mfface.tracking.config import TrackConfig
    from mfface.tracking.gltf_animation import read_glb

    assert {p.name for p in tracked.iterdir()} == ENTRIES | {"animation.glb"}
    assert not [p for p in tracked.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    doc = json.loads((tracked / "animation.json").read_text())
    assert doc["format"] == "mfface-track" and doc["source"]["frames"] == N_FRAMES
    assert doc["curves"]["naming"] == "model" and doc["curves"]["range"] == [0.0, 1.0]
    names = doc["curves"]["names"]
    assert "jawOpen" in names and "eyeBlink_L" in names and len(names) == 55
    frames = doc["frames"]
    assert [f["frame"] for f in frames] == list(range(N_FRAMES))
    assert frames[3]["time_s"] == pytest.approx(3 / 30, abs=1e-6)
    # MediaPipe may miss the face in a frame of such a small, noisy render: it is then marked
    # lost and interpolated.
    assert {f["status"] for f in frames} <= {"tracked", "lost"}
    assert sum(f["status"] == "tracked" for f in frames) >= N_FRAMES - 2
    assert all(0.0 <= v <= 1.0 for f in frames for v in f["curves"].values())
    assert all(f["translation_mm"][2] > 0 for f in frames)
    assert set(frames[0]["rotation_deg"]) == {"yaw", "pitch", "roll"}
    # stage 1 only: the shape pass (3 frames) is the identity result
    assert len(doc["identity"]["frames"]) == 3 and doc["identity"]["shape_frames"] == doc["identity"]["frames"]
    assert doc["summary"]["frames_per_second"]["track"] > 0 and doc["summary"]["frames_per_second"]["mediapipe"] > 0
    rows = list(csv.reader((tracked / "animation.csv").open()))
    assert rows[0][:9] == ["frame", "time_s", "status", "yaw_deg", "pitch_deg", "roll_deg", "tx_mm", "ty_mm", "tz_mm"]
    assert rows[0][9:] == names and len(rows) == N_FRAMES + 1
    assert float(rows[2][9 + names.index("jawOpen")]) == pytest.approx(frames[1]["curves"]["jawOpen"], abs=1e-5)
    video = iio.imread(tracked / "tracked.mp4")
    assert video.shape[:3] == (N_FRAMES, 48, 96)  # frame | render, 48 px high
    tree, _ = read_glb((tracked / "animation.glb").read_bytes())
    assert len(tree["meshes"][0]["primitives"][0]["targets"]) == 55
    sampler = tree["animations"][0]["samplers"][0]
    assert tree["accessors"][sampler["input"]]["count"] == N_FRAMES
    for name in doc["identity"]["folders"]:
        params = json.loads((tracked / name / "params.json").read_text())
        assert params["format"] == "mfface-fit" and params["fit"]["shared_identity_with"]
    assert load_config(tracked / "config.toml", root=TrackConfig).select.frames == 2


def test_earlier_result_needs_overwrite(tracked: Path, video: Path) -> None:
    out = tracked.parent
    assert "--overwrite" in fail(str(video), "-o", str(out), *TINY)
    before = (tracked / "animation.json").stat().st_mtime_ns
    result = run(str(video), "-o", str(out), *TINY, "--overwrite", "--output-curve-names", "arkit")
    assert result.exit_code == 0, result.output
    doc = json.loads((tracked / "animation.json").read_text())
    assert (tracked / "animation.json").stat().st_mtime_ns != before
    assert doc["curves"]["naming"] == "arkit" and "eyeBlinkLeft" in doc["frames"][0]["curves"]
    assert not (tracked / "animation.glb").exists()  # --no-output-glb: the new result replaced the old


def test_foreign_folders_are_never_replaced(video: Path, tmp_path: Path) -> None:
    (tmp_path / "talk").mkdir()
    (tmp_path / "talk" / "mine.txt").write_text("keep")
    assert "not an mfface tracking result" in fail(str(video), "-o", str(tmp_path), *TINY, "--overwrite")
    assert (tmp_path / "talk" / "mine.txt").read_text() == "keep"


def test_frame_folder_options_and_skipped_frames(frames: np.ndarray, tmp_path: Path) -> None:
    """A folder of numbered frames with one missing and one unreadable, at 15 frames/s, from 0.1 s
    to 0.6 s, ARKit names, whole-frame detection, the Adam solver, a config file and a name."""
    from mfface.tracking.clips import write_frames

    paths = write_frames(tmp_path / "frames", frames)
    paths[4].unlink()
    paths[6].write_bytes(b"broken")
    config = tmp_path / "track.toml"
    config.write_text("[track]\nwindow = 4\n[select]\nframes = 2\n")
    out = tmp_path / "out"
    result = run(str(tmp_path / "frames"), "-o", str(out), *TINY, "--config", str(config), "--name", "take1",
                 "--video-fps", "15", "--video-start", "0.1", "--video-end", "0.6", "--output-curve-names", "arkit",
                 "--no-detect-follow", "--track-solver", "adam", "--track-adam-iterations", "30",
                 "--device", "cpu", "--no-output-video")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "frame 4 skipped: missing" in output and "frame 6 skipped: unreadable" in output
    doc = json.loads((out / "take1" / "animation.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == list(range(2, 10))  # 0.1 s -> frame 2 (rounded up)
    status = {f["frame"]: f["status"] for f in doc["frames"]}
    assert status[4] == status[6] == "unreadable" and status[5] in ("tracked", "lost")
    assert doc["frames"][0]["time_s"] == pytest.approx(2 / 15, abs=1e-6)
    assert doc["source"]["fps"] == 15 and doc["curves"]["untracked"] == ["tongueOut"]
    assert doc["summary"]["detection"]["followed"] == 0
    assert not (out / "take1" / "tracked.mp4").exists()
    from mfface.config import load_config
    from mfface.tracking.config import TrackConfig

    saved = load_config(out / "take1" / "config.toml", root=TrackConfig)
    assert saved.track.window == 4 and saved.track.solver == "adam" and saved.video.fps == 15


def test_maps_from_fewer_frames_than_the_shape(video: Path, tmp_path: Path) -> None:
    """With stage 2, the shape and focal come from stage 1 on 4 frames, the maps from 2 of them
    with that shape fixed: the identity folders are those 2 frames, each with the shape pass's
    identity."""
    from mfface.morphable.store import ModelStore

    options = list(TINY)
    options[options.index("--select-shape-frames") + 1] = "4"
    options[options.index("--select-last-stage") + 1] = "2"
    result = run(str(video), "-o", str(tmp_path), *options, "--stage2-iterations", "2", "--no-output-video")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "talk" / "animation.json").read_text())
    identity = doc["identity"]
    assert "maps from frames " + ", ".join(map(str, identity["frames"])) in result.output
    assert len(identity["shape_frames"]) == 4 and len(identity["frames"]) == 2
    assert set(identity["frames"]) < set(identity["shape_frames"])
    assert np.abs(identity["coefficients"]).max() > 0  # fitted, not the mean face
    n = ModelStore().load("ict-lite").n_identity
    for name in identity["folders"]:
        params = json.loads((tmp_path / "talk" / name / "params.json").read_text())
        assert "stage2" in params["fit"]["final_losses"]
        assert np.allclose(params["identity"][:n], identity["coefficients"], atol=1e-6)


def test_photometric_refinement(video: Path, tmp_path: Path) -> None:
    result = run(str(video), "-o", str(tmp_path), *TINY, "--photometric", "2", "--photometric-size", "32",
                 "--photometric-spp", "1", "--video-end", "0.15", "--no-output-video")
    assert result.exit_code == 0, result.output
    assert "photometric" in result.output
    doc = json.loads((tmp_path / "talk" / "animation.json").read_text())
    assert doc["summary"]["frames_per_second"]["photometric"] > 0
    assert doc["summary"]["photometric_l1"]["last_iteration"] is not None
    assert len(doc["frames"]) == 5


def test_corrupt_frame_in_a_video_is_skipped_and_reported(frames: np.ndarray, tmp_path: Path) -> None:
    from test_track import write_corrupt_avi

    path = tmp_path / "broken.avi"
    write_corrupt_avi(path, list(frames), 6, fps=30.0)
    result = run(str(path), "-o", str(tmp_path / "out"), *TINY, "--no-output-video")
    assert result.exit_code == 0, result.output
    assert "frame 6 skipped" in " ".join(result.output.split())
    doc = json.loads((tmp_path / "out" / "broken" / "animation.json").read_text())
    assert doc["frames"][6]["status"] == "unreadable" and doc["summary"]["status_counts"]["unreadable"] == 1


def test_real_clip_from_a_photo(tmp_path: Path) -> None:
    """A real face (the shared astronaut photo) moved by a small affine motion, 10 frames."""
    from PIL import Image

    from mfface.tracking.clips import affine_clip, write_video

    photo = np.asarray(Image.open(data_file("images/astronaut.png")).convert("RGB").resize((160, 160)))
    write_video(tmp_path / "astronaut.mp4", affine_clip(photo, 10, seed=2), 30.0)
    result = run(str(tmp_path / "astronaut.mp4"), "-o", str(tmp_path / "out"), *TINY, "--no-output-video")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "astronaut" / "animation.json").read_text())
    assert doc["summary"]["status_counts"]["tracked"] == 10
    assert doc["summary"]["landmark_rms_px"]["median"] < 5


def test_no_face_in_any_frame(tmp_path: Path) -> None:
    from mfface.tracking.clips import write_video

    noise = np.random.default_rng(0).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.mp4", noise, 30.0)
    output = fail(str(tmp_path / "noise.mp4"), "-o", str(tmp_path / "out"), *TINY)
    assert "no face was found in any of the 6 frames" in " ".join(output.split())
    assert not (tmp_path / "out").exists()


def _made(path: Path, content: bytes | None) -> Path:
    """`path` as a file with `content`, or as an empty folder (None)."""
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, words", [
    ("missing.mp4", b"", "does not exist"),
    ("empty.mp4", b"", "empty"),
    ("text.mov", b"not a video", "not a video"),
    ("still.jpg", b"", "single image"),
    ("nothing", None, "holds no"),
])
def test_bad_inputs(tmp_path: Path, name: str, content: bytes | None, words: str) -> None:
    source = tmp_path / name if name == "missing.mp4" else _made(tmp_path / name, content)
    output = fail(str(source), "-o", str(tmp_path / "out"))
    assert words in " ".join(output.split())
    assert not (tmp_path / "out").exists()


def test_zero_length_video(tmp_path: Path) -> None:
    """A container that holds a video stream but no frame."""
    import subprocess

    import imageio_ffmpeg

    path = tmp_path / "zero.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "quiet", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=1",
                    "-frames:v", "0", "-c:v", "libx264", str(path)], check=False)
    if not path.exists() or path.stat().st_size == 0:  # this ffmpeg writes no file for 0 frames
        path.write_bytes(b"")
    output = " ".join(fail(str(path), "-o", str(tmp_path / "out")).split())
    assert "no frames" in output or "empty" in output or "not a video" in output


def test_unwritable_output_and_bad_settings(video: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "cannot write results" in fail(str(video), "-o", str(blocker / "out"))
    assert "track.window must be at least 1" in fail(str(video), "-o", str(tmp_path), "--track-window", "0")
    fail(str(video), "-o", str(tmp_path), "--photometric", "-1")
    assert "holds no frame" in fail(str(video), "-o", str(tmp_path / "o"), *TINY, "--video-start", "100")
    bad = tmp_path / "bad.toml"
    bad.write_text("[track]\nwindw = 3\n")
    assert "Unknown key 'windw'" in fail(str(video), "-o", str(tmp_path), "--config", str(bad))
    assert not list(tmp_path.glob("o*"))
