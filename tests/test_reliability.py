"""Reliability of `mfface fit` and `mfface replay` under bad input, interruption and concurrency.

Each case asserts the exit code, the single `Error:` line, and what is on disk afterwards
(checksums of files that must not change). Tiny settings: 48 px crops, 1-2 spp, few iterations.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import data_file
from mfface.cli.main import cli
from mfface.outputs import HOUSEKEEPING, ResultLock, recover

TINY = ["--input-max-resolution", "48", "--stage1-iterations", "20", "--stage2-iterations", "4",
        "--stage2-geometry-start", "2", "--stage3-iterations", "3", "--stage2-spp", "1",
        "--stage3-spp", "1", "--render-final-spp", "2", "--render-texture-size", "32",
        "--stage2-albedo-resolution", "16"]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fails(*args: str) -> str:
    """Run a command that must fail with exactly one `Error:` line, exit 1, no traceback (the
    progress bars of stages that ran before the failure may precede it)."""
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (names and contents)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def astronaut() -> Path:
    return data_file("images/astronaut.png")


@pytest.fixture(scope="module")
def fitted(installed_ict, tmp_path_factory) -> Path:
    """One finished fit of the astronaut: OUT/astronaut."""
    out = tmp_path_factory.mktemp("fitted")
    result = invoke("fit", astronaut(), "-o", out, *TINY)
    assert result.exit_code == 0, result.output
    return out / "astronaut"


@pytest.fixture
def earlier(fitted, tmp_path) -> Path:
    """A copy of the finished fit in a fresh output folder."""
    shutil.copytree(fitted, tmp_path / "out" / "astronaut")
    return tmp_path / "out" / "astronaut"


# -- 1. never delete what mfface did not write -----------------------------------------------------

def test_the_input_photo_at_the_result_path_is_untouched(installed_ict, tmp_path):
    photo = tmp_path / "d" / "astronaut"
    photo.parent.mkdir()
    shutil.copy(astronaut(), photo)
    before = digest(photo)
    assert "is a file" in fails("fit", photo, "-o", photo.parent, *TINY, "--overwrite")
    assert photo.is_file() and digest(photo) == before


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_users_entry_at_the_result_path_is_untouched(installed_ict, tmp_path, kind):
    target = tmp_path / "out" / "astronaut"
    if kind == "file":
        target.parent.mkdir()
        target.write_text("my notes")
    else:
        target.mkdir(parents=True)
        (target / "keep.txt").write_text("mine")
    before = digest(target)
    assert "mfface will not replace it" in fails("fit", astronaut(), "-o", target.parent, *TINY, "--overwrite")
    assert digest(target) == before


def test_an_earlier_result_needs_overwrite(earlier):
    before = digest(earlier)
    line = fails("fit", astronaut(), "-o", earlier.parent, *TINY)
    assert "holds an earlier result" in line and "--overwrite" in line
    assert digest(earlier) == before


def test_files_a_user_added_to_an_earlier_result_are_kept(earlier):
    (earlier / "notes.txt").write_text("do not lose me")
    before = digest(earlier)
    assert "notes.txt" in fails("fit", astronaut(), "-o", earlier.parent, *TINY, "--overwrite")
    assert digest(earlier) == before


def test_overwrite_replaces_an_earlier_result_atomically(earlier):
    params = json.loads((earlier / "params.json").read_text())
    (earlier / "params.json").write_text(json.dumps({**params, "marker": 1}))
    result = invoke("fit", astronaut(), "-o", earlier.parent, *TINY, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "marker" not in json.loads((earlier / "params.json").read_text())
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["astronaut"]  # nothing hidden left


def test_a_batch_skips_earlier_results_without_overwrite(earlier, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(astronaut(), photos / "astronaut.png")
    shutil.copy(astronaut(), photos / "second.png")
    before = digest(earlier)
    result = invoke("fit", photos, "-o", earlier.parent, *TINY)
    assert result.exit_code == 0, result.output
    assert "holds an earlier result" in result.output and "skipped" in result.output
    assert digest(earlier) == before and (earlier.parent / "second" / "params.json").is_file()


# -- 3. checkpoints are validated before use -------------------------------------------------------

def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _crc_damaged(source: Path, target: Path) -> Path:
    """A copy of `source` with one byte of the identity array's data flipped (CRC no longer matches)."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("identity.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size - 1] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def _modified(source: Path, target: Path, **changes: np.ndarray) -> Path:
    return _write_npz(target, {**_arrays(source), **changes})


@pytest.mark.parametrize("case, message", [
    ("truncated", "damaged or not an mfface checkpoint"),
    ("crc", "damaged or not an mfface checkpoint"),
    ("identity199", "does not fit model 'ict'"),
    ("float64", "is float64, not float32"),
    ("nan", "NaN or infinite"),
    ("stage7", "stages are 1, 2 and 3"),
    ("other_model", "belongs to a fit with model"),
])
def test_bad_checkpoints_are_refused(fitted, tmp_path, case, message):
    good = fitted / "checkpoints" / "stage2.npz"
    bad = tmp_path / "stage2.npz"
    arrays = _arrays(good)
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "crc":
        _crc_damaged(good, bad)
    elif case == "identity199":
        _modified(good, bad, identity=np.zeros((1, 199), np.float32))
    elif case == "float64":
        _modified(good, bad, euler=arrays["euler"].astype(np.float64))
    elif case == "nan":
        sh = arrays["sh"].copy()
        sh[0, 0, 0] = np.nan
        _modified(good, bad, sh=sh)
    elif case == "stage7":
        _modified(good, bad, stage=np.int64(7))
    elif case == "other_model":
        owner = json.loads(arrays["owner"].tobytes())
        owner["model_fingerprint"] = "0" * 16
        _modified(good, bad, owner=np.frombuffer(json.dumps(owner).encode(), np.uint8))
    assert message in fails("fit", astronaut(), "-o", tmp_path / "out", *TINY, "--checkpoint", bad)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_another_photo_is_refused(fitted, tmp_path):
    flipped = tmp_path / "flipped.png"
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(astronaut()))[:, ::-1])).save(flipped)
    line = fails("fit", flipped, "-o", tmp_path / "out", *TINY,
                 "--checkpoint", fitted / "checkpoints" / "stage2.npz")
    assert "belongs to a fit of other photos" in line


def test_a_checkpoint_for_other_settings_is_refused(fitted, tmp_path):
    line = fails("fit", astronaut(), "-o", tmp_path / "out", *TINY, "--light-sh-bands", "3",
                 "--checkpoint", fitted / "checkpoints" / "stage2.npz")
    assert "9 SH bands" in line and "--light-sh-bands 9" in line


@pytest.mark.parametrize("case", ["stage0", "identity199", "crc", "other_photo"])
def test_replay_refuses_bad_checkpoints(earlier, case):
    checkpoint = earlier / "checkpoints" / "stage3.npz"
    arrays = _arrays(checkpoint)
    if case == "stage0":
        _modified(checkpoint, checkpoint, stage=np.int64(0))
    elif case == "identity199":
        _modified(checkpoint, checkpoint, identity=np.zeros((1, 199), np.float32))
    elif case == "crc":
        _crc_damaged(checkpoint, checkpoint.with_name("damaged"))
        checkpoint.with_name("damaged").replace(checkpoint)
    else:
        owner = json.loads(arrays["owner"].tobytes())
        owner["photos"] = ["ffffffffffffffff"]
        _modified(checkpoint, checkpoint, owner=np.frombuffer(json.dumps(owner).encode(), np.uint8))
    before = digest(earlier)
    fails("replay", earlier, "--frames", "2", "--spp", "1")
    assert digest(earlier) == before


# -- 4. numbers are checked at the door ------------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--stage2-photo-weight", "nan", "stage2.photo_weight must be a finite number"),
    ("--stage1-lr", "nan", "stage1.lr must be a finite number"),
    ("--stage2-sh-lr", "inf", "stage2.sh_lr must be a finite number"),
    ("--render-texture-size", "100000", "render.texture_size must be at most 8192"),
    ("--input-max-resolution", "100000", "input.max_resolution must be at most 4096"),
])
def test_bad_numbers_on_the_command_line(installed_ict, tmp_path, option, value, message):
    assert message in fails("fit", astronaut(), "-o", tmp_path / "out", *TINY, option, value)
    assert not (tmp_path / "out").exists()


def test_bad_numbers_in_a_config_file(installed_ict, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[stage2]\nphoto_weight = nan\n")
    assert "must be a finite number" in fails("fit", astronaut(), "-o", tmp_path / "out", "--config", config)
    config.write_text("[stage3]\ndiffuse_lr = -inf\n")
    assert "must be a finite number" in fails("fit", astronaut(), "-o", tmp_path / "out", "--config", config)


def test_textures_that_do_not_fit_in_memory_are_refused_early(installed_ict, tmp_path, monkeypatch):
    monkeypatch.setenv("MFFACE_MEMORY_LIMIT", "2G")
    line = fails("fit", astronaut(), "-o", tmp_path / "out", *TINY, "--render-texture-size", "4096")
    assert "needs about" in line and "2.0 GB are available" in line
    assert "--render-texture-size 1024 or less" in line
    assert not (tmp_path / "out").exists()


def test_params_json_is_strict_json(fitted):
    def refuse(constant: str) -> None:
        raise AssertionError(f"params.json holds {constant}")
    params = json.loads((fitted / "params.json").read_text(), parse_constant=refuse)
    assert params["format"] == "mfface-fit" and len(params["image"]["digest"]) == 16


def test_a_diverging_fit_stops_with_one_line(installed_ict, tmp_path, monkeypatch):
    import mfface.fitting.photometric_stage as stage2

    real = stage2.itemwise_photometric
    monkeypatch.setattr(stage2, "itemwise_photometric", lambda *a: real(*a) * float("nan"))
    line = fails("fit", astronaut(), "-o", tmp_path / "out", *TINY)
    assert "diverged in stage 2 at iteration 1" in line
    assert not (tmp_path / "out" / "astronaut").exists()


def test_learning_rates_have_a_sane_ceiling(installed_ict, tmp_path):
    # 1e38 once crashed Adam ("cannot be converted to type float without overflow").
    assert "must be at most 10.0" in fails("fit", astronaut(), "-o", tmp_path / "out", "--stage2-sh-lr", "1e38")


# -- 5. no traceback for these user situations -----------------------------------------------------

@pytest.mark.parametrize("points", ["equal", "collinear"])
def test_degenerate_landmark_files(installed_ict, tmp_path, points):
    if points == "equal":
        landmarks = np.full((68, 2), 100.0)
    else:
        landmarks = np.stack([np.linspace(50, 400, 68), np.linspace(60, 300, 68)], axis=1)
    path = tmp_path / "lm.txt"
    np.savetxt(path, landmarks)
    fails("fit", astronaut(), "-o", tmp_path / "out", *TINY, "--landmarks", path)
    assert not (tmp_path / "out").exists()


def test_mirrored_landmark_file_is_refused(installed_ict, tmp_path):
    pts = [line.split() for line in data_file("images/takeo.pts").read_text().splitlines()
           if re.match(r"^[\d.]+ [\d.]+$", line.strip())]
    mirrored = np.array(pts, dtype=float)
    mirrored[:, 0] = 150 - mirrored[:, 0]
    path = tmp_path / "mirrored.txt"
    np.savetxt(path, mirrored)
    assert "mirrored" in fails("fit", data_file("images/takeo.ppm"), "-o", tmp_path / "out", *TINY,
                               "--landmarks", path)


def test_a_full_disk_while_writing(installed_ict, tmp_path, monkeypatch):
    import mfface.results

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(mfface.results, "write_glb", full)
    line = fails("fit", astronaut(), "-o", tmp_path / "out", *TINY)
    assert "disk is full" in line and "mesh.glb" in line
    left = [p.name for p in (tmp_path / "out").iterdir()]
    assert "astronaut" not in left and not [n for n in left if n.endswith(".tmp")]


def test_too_little_disk_space_is_refused_before_fitting(installed_ict, tmp_path, monkeypatch):
    import shutil as shutil_module
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage",
                        lambda path: usage._replace(free=1_000_000))
    line = fails("fit", astronaut(), "-o", tmp_path / "out", *TINY)
    assert "MB are free" in line
    assert not (tmp_path / "out").exists()


def _run_dirs(out: Path, name: str) -> list[Path]:
    return sorted((out / HOUSEKEEPING / "checkpoints" / name).glob("run-*"))


def test_ctrl_c_keeps_checkpoints_and_says_how_to_resume(installed_ict, tmp_path):
    out = tmp_path / "out"
    mfface = Path(sys.executable).with_name("mfface")
    slow = [*TINY, "--stage2-iterations", "100000"]
    process = subprocess.Popen([str(mfface), "fit", str(astronaut()), "-o", str(out), *slow],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not any(any(r.glob("stage1.npz")) for r in _run_dirs(out, "astronaut")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    message = [line for line in stderr.splitlines() if line.startswith("Interrupted")]
    assert len(message) == 1 and "Resume with: " in message[0], stderr
    command = shlex.split(message[0].split("Resume with: ", 1)[1])
    assert command[:2] == ["mfface", "fit"] and Path(command[-1]).is_file()
    resumed = invoke(*command[1:], "--stage2-iterations", "2")
    assert resumed.exit_code == 0, resumed.output
    assert (out / "astronaut" / "params.json").is_file()


# -- 6. concurrent runs do not corrupt each other -----------------------------------------------

def test_a_second_run_writing_the_same_result_refuses(installed_ict, tmp_path):
    out = tmp_path / "out"
    with ResultLock(out, ["astronaut"]):
        assert "another mfface run is writing" in fails("fit", astronaut(), "-o", out, *TINY)
    assert not (out / "astronaut").exists()


def test_leftovers_of_killed_runs_are_cleaned_up_or_reported(earlier, tmp_path):
    out = earlier.parent
    unfinished = out / ".astronaut.abcd1234.tmp"
    unfinished.mkdir()
    (unfinished / "params.json").write_text("{}")
    killed = out / HOUSEKEEPING / "checkpoints" / "astronaut" / "run-20260101-000000-1"
    killed.mkdir(parents=True)
    shutil.copy(earlier / "checkpoints" / "stage1.npz", killed / "stage1.npz")
    result = invoke("fit", astronaut(), "-o", out, *TINY, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not unfinished.exists()
    assert "removed .astronaut.abcd1234.tmp" in result.output
    assert "interrupted fit left checkpoints" in result.output and (killed / "stage1.npz").is_file()


def test_a_result_moved_aside_by_a_killed_replacement_is_restored(tmp_path):
    aside = tmp_path / ".photo.zz99yy88.old"
    (aside / "photo").mkdir(parents=True)
    (aside / "photo" / "params.json").write_text('{"format": "mfface-fit"}')
    with ResultLock(tmp_path, ["photo"]):
        notes = recover(tmp_path, ["photo"], "photo")
    assert (tmp_path / "photo" / "params.json").is_file() and not aside.exists()
    assert "restored the earlier result" in notes[0]


def test_stale_entries_of_other_names_are_not_touched(tmp_path):
    other = tmp_path / ".photo.v2.abcd1234.tmp"   # belongs to a live run of "photo.v2"
    other.mkdir()
    with ResultLock(tmp_path, ["photo"]):
        assert recover(tmp_path, ["photo"], "photo") == []
    assert other.is_dir()


# -- 9. smaller ones ---------------------------------------------------------------------------

def test_a_fifo_or_device_is_not_a_regular_file(installed_ict, tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    assert "is not a regular file" in fails("fit", fifo, "-o", tmp_path / "out")
    assert "is not a regular file" in fails("fit", "/dev/zero", "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_the_listed_formats_are_read(installed_ict, tmp_path):
    eps = tmp_path / "photo.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    assert "is not an image file that can be read" in fails("fit", eps, "-o", tmp_path / "out")
    gif = tmp_path / "photo2.png"
    Image.new("RGB", (64, 64)).save(gif, format="GIF")
    assert "is not an image file that can be read" in fails("fit", gif, "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_decompression_bomb_says_it_is_too_large(installed_ict, tmp_path):
    bomb = tmp_path / "huge.png"
    Image.new("1", (20000, 9000)).save(bomb)
    line = fails("fit", bomb, "-o", tmp_path / "out")
    assert "too large" in line and "megapixels" in line
    assert not (tmp_path / "out").exists()
