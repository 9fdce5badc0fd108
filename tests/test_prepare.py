"""`mfface prepare`: photos -> face dataset (HDF5), resume, atomic append, shards and merge, and
every option and bad input through click's runner. CI-sized: 64 px crops of the shared photos."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import MFFACE, data_file, not_photos, torchrun_mfface
from mfface.cli.main import cli
from mfface.learning import prepare as prepare_module
from mfface.learning.dataset_format import (FORMAT_NAME, FORMAT_VERSION, DatasetError, read_info,
                                            read_report, shard_path)
from mfface.learning.prepare import (PrepareError, PrepareSettings, collect_photos,
                                     distributed_rank, file_digest, prepare_dataset)

SHARED = ("images/astronaut.png", "images/takeo.ppm", "images/people/obama_a.jpg",
          "images/people/obama_b.jpg", "images/people/obama_c.jpg", "images/people/obama_d.jpg",
          "images/people/biden_a.jpg")
EXTRA = "images/people/biden_b.jpg"  # added in a later run


def _link_photos(folder: Path, names=SHARED) -> list[Path]:
    """Symbolic links to shared photos in a nested folder tree (the photos are never copied)."""
    links = []
    for i, name in enumerate(names):
        sub = folder / ("people" if "people" in name else "misc") / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        link = sub / Path(name).name
        link.symlink_to(data_file(name))
        links.append(link)
    return links


def _write_bad_inputs(folder: Path) -> tuple[Path, Path]:
    """A file named .jpg that is not an image, and a smooth gradient with no face."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.jpg"
    text.write_text("not an image\n")
    ramp = np.linspace(0, 255, 160, dtype=np.float64)
    gradient = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (160, 1)),
                         np.tile(ramp[:, None], (1, 160))], axis=-1).astype(np.uint8)
    faceless = folder / "gradient.png"
    Image.fromarray(gradient).save(faceless)
    return text, faceless


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder tree: 7 shared photos (links), a non-image and a face-less image."""
    root = tmp_path_factory.mktemp("photos")
    _link_photos(root)
    _write_bad_inputs(root / "misc")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skipped.jpg").symlink_to(data_file(EXTRA))
    return root


@pytest.fixture(scope="module")
def base(photos, tmp_path_factory) -> Path:
    """The dataset of `photos` at 64 px, made once through the CLI (tests copy it to change it)."""
    out = tmp_path_factory.mktemp("base") / "faces.h5"
    result = CliRunner().invoke(cli, ["prepare", str(photos), "-o", str(out), "--size", "64",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    return out


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "faces.h5"
    shutil.copyfile(base, out)
    return out


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["prepare", *args], env=env)


def _sha(path: Path) -> str:
    return file_digest(path)


# -- the dataset a run writes -------------------------------------------------------------------

def test_prepare_writes_the_documented_layout(base, photos):
    info = read_info(base)
    assert info["count"] == 7 and info["size"] == 64
    with h5py.File(base, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["format"] == FORMAT_NAME and attrs["format_version"] == FORMAT_VERSION
        assert attrs["crop_size"] == 64 and attrs["landmark_scheme"] == "mediapipe478"
        assert attrs["pixel_convention"] == "pixel-corner" and attrs["gamma"] == 2.2
        assert attrs["source"] == "photos" and attrs["crop_margin"] == 0.25
        assert attrs["created_at"] and attrs["created_with"].startswith("mfface ")
        history = json.loads(attrs["history"])
        assert [h["tool"] for h in history] == ["prepare"] and history[0]["added"] == 7
        assert f["images"].shape == (7, 64, 64, 3) and f["images"].dtype == np.uint8
        assert f["images"].chunks == (1, 64, 64, 3) and f["images"].compression == "gzip"
        assert f["images"].maxshape[0] is None
        assert f["landmarks"].shape == (7, 478, 2) and f["landmarks"].dtype == np.float32
        assert f["masks"].shape == (7, 64, 64) and f["masks"].dtype == np.uint8
        assert f["boxes"].shape == (7, 3) and f["source_sizes"].shape == (7, 2)
        paths = [p.decode() for p in f["paths"][:]]
        landmarks, masks, boxes = f["landmarks"][:], f["masks"][:], f["boxes"][:]
        sizes, digests = f["source_sizes"][:], [d.decode() for d in f["sha256"][:]]
        file_sizes = f["file_sizes"][:]
    # absolute, sorted, links resolved to the shared files; the hidden folder is not walked
    assert paths == sorted(str(data_file(n).resolve()) for n in SHARED)
    assert digests == [file_digest(Path(p)) for p in paths]
    assert list(file_sizes) == [Path(p).stat().st_size for p in paths]
    assert set(np.unique(masks)) == {0, 1} and (masks.reshape(7, -1).mean(axis=1) > 0.15).all()
    inside = (landmarks >= 0) & (landmarks <= 64)
    assert inside.mean() > 0.99
    for (x0, y0, side), (w, h) in zip(boxes, sizes):
        assert 0 <= x0 and 0 <= y0 and x0 + side <= w and y0 + side <= h
    # the failures are in the file's report, with their kind and the file as it was tried
    report = {Path(e.path).name: e for e in read_report(base)}
    assert set(report) == {"notes.jpg", "gradient.png"}
    assert report["notes.jpg"].kind == "unreadable" and report["gradient.png"].kind == "no_face"
    assert report["gradient.png"].file_size == (photos / "misc" / "gradient.png").stat().st_size


def test_stored_crop_is_the_source_crop(base):
    """A sample's crop, landmarks and box agree with cropping the source photo again."""
    from mfface.images import CropBox, crop_and_resize, read_image

    with h5py.File(base, "r") as f:
        row = [p.decode() for p in f["paths"][:]].index(str(data_file(SHARED[0]).resolve()))
        image, box = f["images"][row], f["boxes"][row]
    crop, _ = crop_and_resize(read_image(data_file(SHARED[0])), CropBox(*map(int, box)), 64)
    again = np.round(crop.clamp(0, 1).numpy() * 255).astype(np.uint8)
    assert np.abs(again.astype(int) - image).max() <= 1


def test_small_faces_are_enlarged_to_the_crop_size(tmp_path):
    """takeo (150 x 225 px) at --size 224: its crop box (at most 150 px) is enlarged to 224 px,
    and the landmarks follow: crop px = (source px - box corner) * 224 / side."""
    from mfface.images import read_image
    from mfface.landmarks import LandmarkDetector

    out = tmp_path / "big.h5"
    photo = data_file("images/takeo.ppm")
    summary = prepare_dataset([photo], out, PrepareSettings(size=224))
    assert summary.added == 1
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (1, 224, 224, 3)
        x0, y0, side = f["boxes"][0]
        stored = f["landmarks"][0]
    assert side < 224
    with LandmarkDetector() as detector:
        source = detector.detect(np.round(read_image(photo).numpy() * 255).astype(np.uint8))
    expected = (source - [x0, y0]) * 224 / side
    assert np.abs(stored - expected).max() < 1e-3


# -- resuming -----------------------------------------------------------------------------------

def test_resume_adds_only_new_photos(base, photos, tmp_path):
    out = _copy(base, tmp_path)
    before = _sha(out)
    again = _invoke(str(photos), "-o", str(out), "--size", "64", "--workers", "1")
    assert again.exit_code == 0, again.output
    assert "already in the dataset" in again.output and "--retry-failed" in again.output
    assert _sha(out) == before  # nothing new: the file is not even rewritten
    with h5py.File(out, "r") as f:
        first_images = f["images"][:]
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "biden_b.jpg").symlink_to(data_file(EXTRA))
    third = _invoke(str(photos), str(extra), "-o", str(out), "--size", "64", "--workers", "1")
    assert third.exit_code == 0, third.output
    info = read_info(out)
    assert info["count"] == 8
    with h5py.File(out, "r") as f:
        assert np.array_equal(f["images"][:7], first_images)
        assert f["paths"][7].decode() == str(data_file(EXTRA).resolve())
        assert [h["added"] for h in json.loads(f.attrs["history"])] == [7, 1]
    # the failures stay reported, and are tried again on request
    assert {Path(e.path).name for e in read_report(out)} == {"notes.jpg", "gradient.png"}
    retry = _invoke(str(photos), "-o", str(out), "--size", "64", "--workers", "1", "--retry-failed")
    assert retry.exit_code == 0 and "not added: no face" in retry.output
    assert read_info(out)["count"] == 8


def test_changed_and_touched_photos(tmp_path):
    """A touched copy (same bytes, new mtime) is already in; new content is reported `changed`."""
    photo = tmp_path / "in" / "face.ppm"
    photo.parent.mkdir()
    shutil.copyfile(data_file("images/takeo.ppm"), photo)
    out = tmp_path / "faces.h5"
    settings = PrepareSettings(size=64)
    assert prepare_dataset([photo.resolve()], out, settings).added == 1
    os.utime(photo, ns=(time.time_ns(), time.time_ns() + 10**9))
    touched = prepare_dataset([photo.resolve()], out, settings)
    assert touched.already == 1 and touched.added == 0
    Image.open(data_file("images/astronaut.png")).convert("RGB").resize((150, 150)).save(photo, format="PPM")
    changed = prepare_dataset([photo.resolve()], out, settings)
    assert changed.added == 0 and [e.kind for e in changed.not_added] == ["changed"]
    assert [e.kind for e in read_report(out)] == ["changed"] and read_info(out)["count"] == 1


# -- interruptions ------------------------------------------------------------------------------

def test_failed_append_keeps_the_earlier_file(base, photos, tmp_path):
    """An exception half-way through an append leaves the earlier file byte for byte."""
    out = _copy(base, tmp_path)
    before = _sha(out)
    new = tmp_path / "new"
    _link_photos(new, [EXTRA, "images/people/obama_a.jpg"])
    photos_now = collect_photos([photos, new])
    # obama_a's link in `new` resolves to a path already stored; biden_b is new
    calls = []

    def explode(done, n, result):
        calls.append(done)
        raise RuntimeError("simulated failure after a sample was written")

    with pytest.raises(RuntimeError):
        prepare_dataset(photos_now, out, PrepareSettings(size=64), on_result=explode)
    assert calls == [1]
    assert _sha(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".faces.h5")]


def test_interrupt_commits_finished_samples(tmp_path):
    """Ctrl-C (KeyboardInterrupt) keeps the samples finished so far; the next run completes."""
    out = tmp_path / "faces.h5"
    paths = [data_file(n).resolve() for n in SHARED[:3]]

    def interrupt(done, n, result):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(paths, out, PrepareSettings(size=64), on_result=interrupt)
    assert read_info(out)["count"] == 2
    rest = prepare_dataset(paths, out, PrepareSettings(size=64))
    assert (rest.already, rest.added, rest.count) == (2, 1, 3)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sigterm_swallowed_by_a_finaliser_still_stops(tmp_path):
    """A SIGTERM whose KeyboardInterrupt is raised inside a finaliser (Python prints and drops it;
    CI once saw such a run finish with exit 0) still stops the run after the current sample."""
    from mfface.cli.dataset_run import sigterm_as_interrupt

    out = tmp_path / "faces.h5"
    paths = [data_file(n).resolve() for n in SHARED[:3]]

    class SignalledInFinaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside __del__

    def terminate(done, n, result):
        if done == 1:
            SignalledInFinaliser()  # collected at once: the KeyboardInterrupt is dropped

    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt):
        prepare_dataset(paths, out, PrepareSettings(size=64), on_result=terminate)
    assert read_info(out)["count"] == 1


def _variants(folder: Path, n: int) -> Path:
    """`n` distinct small photos (crops of the astronaut portrait at several sizes) in `folder`."""
    folder.mkdir(parents=True)
    portrait = Image.open(data_file("images/astronaut.png")).convert("RGB")
    for k in range(n):
        side = 200 + 3 * k
        portrait.resize((side, side)).save(folder / f"variant{k:03d}.jpg", quality=90)
    return folder


def _wait_for_temporary(out: Path, process: subprocess.Popen, limit: float = 240.0) -> None:
    """Wait until the run has started appending (its temporary copy exists)."""
    waited = 0.0
    while not list(out.parent.glob(f".{out.name}.*.tmp.h5")):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
        waited += 0.05
        assert waited < limit, "the run never started appending"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_killed_append(base, tmp_path, how):
    """SIGKILL mid-append leaves the earlier file untouched (the next run removes the dead run's
    temporary); SIGTERM commits the finished samples and exits with 130."""
    out = _copy(base, tmp_path)
    before, count = _sha(out), read_info(out)["count"]
    photos = 150  # enough that the signal lands mid-run however fast the machine is
    folder = _variants(tmp_path / "many", photos)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([str(MFFACE), "prepare", str(folder), "-o", str(out), "--size", "64",
                                "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env, text=True)
    try:
        _wait_for_temporary(out, process)
        time.sleep(0.5)
        process.send_signal(getattr(signal, how))
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    if how == "SIGKILL":
        assert process.returncode == -signal.SIGKILL
        assert _sha(out) == before and read_info(out)["count"] == count
        assert list(tmp_path.glob(".faces.h5.*.tmp.h5"))  # the dead run's temporary...
        result = _invoke(str(data_file(SHARED[0])), "-o", str(out), "--size", "64")
        assert result.exit_code == 0, result.output
        assert not list(tmp_path.glob(".faces.h5.*.tmp.h5"))  # ...removed by the next run
    else:
        assert process.returncode == 130, stderr
        assert "keeps every sample finished so far" in stderr
        info = read_info(out)
        assert count < info["count"] < count + photos
        assert not list(tmp_path.glob(".faces.h5.*.tmp.h5"))


# -- distributed runs ---------------------------------------------------------------------------

def test_torchrun_shards_and_merge(photos, base, tmp_path):
    """Two ranks under torchrun each prepare every second photo into a shard; --merge joins them
    into the same samples as a one-process run."""
    out = tmp_path / "faces.h5"
    result = torchrun_mfface("prepare", str(photos), "-o", str(out), "--size", "64", "--workers", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    shards = [shard_path(out, r, 2) for r in range(2)]
    assert [s.name for s in shards] == ["faces.rank0-of-2.h5", "faces.rank1-of-2.h5"]
    assert not out.exists()
    everything = collect_photos([photos])
    for rank, shard in enumerate(shards):
        with h5py.File(shard, "r") as f:
            assert (f.attrs["shard_rank"], f.attrs["shard_world_size"]) == (rank, 2)
            stored = [p.decode() for p in f["paths"][:]]
        mine = [str(p) for p in everything[rank::2]]
        reported = [e.path for e in read_report(shard)]
        assert sorted(stored + reported) == sorted(mine)
    assert "--merge" in result.stderr + result.stdout
    # only some of the shards: refused
    partial = _invoke("--merge", str(shards[0]), "-o", str(tmp_path / "partial.h5"))
    assert partial.exit_code == 1 and "rank(s) 1 missing" in partial.output
    merged = _invoke("--merge", *map(str, shards), "-o", str(out))
    assert merged.exit_code == 0, merged.output
    info = read_info(out)
    assert info["count"] == 7 and "shard_rank" not in info["attrs"]
    with h5py.File(out, "r") as f, h5py.File(base, "r") as g:
        assert sorted(f["paths"][:]) == sorted(g["paths"][:])
        order = np.argsort(f["paths"][:])
        assert np.allclose(f["landmarks"][:][order], g["landmarks"][:], atol=1e-3)
        assert json.loads(f.attrs["history"])[-1]["tool"] == "merge"
    assert {Path(e.path).name for e in read_report(out)} == {"notes.jpg", "gradient.png"}
    # merging again adds nothing (samples already in the output are skipped)
    again = _invoke("--merge", *map(str, shards), "-o", str(out))
    assert again.exit_code == 0 and read_info(out)["count"] == 7
    assert "duplicates skipped" in again.output


def test_rank_environment():
    from mfface.learning.prepare import default_workers, worker_count

    assert default_workers({"LOCAL_WORLD_SIZE": "64", "WORLD_SIZE": "128"}) == 1
    assert default_workers({}) == len(os.sched_getaffinity(0))
    assert worker_count(PrepareSettings(workers=4), 10) == 1
    assert worker_count(PrepareSettings(workers=4), 100 * prepare_module.PHOTOS_PER_WORKER) == 4
    assert distributed_rank({}) == (0, 1)
    assert distributed_rank({"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    with pytest.raises(PrepareError):
        distributed_rank({"RANK": "3", "WORLD_SIZE": "3"})
    with pytest.raises(PrepareError):
        distributed_rank({"RANK": "x", "WORLD_SIZE": "2"})


def test_rank_share_in_process(photos, tmp_path):
    """RANK/WORLD_SIZE in the environment (as any launcher sets them) select the share and shard."""
    out = tmp_path / "faces.h5"
    result = _invoke(str(photos), "-o", str(out), "--size", "64", "--workers", "1",
                     env={"RANK": "1", "WORLD_SIZE": "4"})
    assert result.exit_code == 0, result.output
    shard = shard_path(out, 1, 4)
    everything = collect_photos([photos])
    stored = [e.path for e in read_report(shard)] + [
        p.decode() for p in h5py.File(shard, "r")["paths"][:]]
    assert sorted(stored) == [str(p) for p in everything[1::4]]


# -- options and bad input ----------------------------------------------------------------------

def test_worker_processes_give_the_same_dataset(base, photos, tmp_path, monkeypatch):
    """--workers 2 (spawned processes) writes the same samples in the same order."""
    monkeypatch.setattr(prepare_module, "PHOTOS_PER_WORKER", 1)
    out = tmp_path / "faces.h5"
    result = _invoke(str(photos), "-o", str(out), "--size", "64", "--workers", "2")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f, h5py.File(base, "r") as g:
        assert list(f["paths"][:]) == list(g["paths"][:])
        assert np.array_equal(f["images"][:], g["images"][:])
        assert np.allclose(f["landmarks"][:], g["landmarks"][:], atol=1e-3)


def test_margin_option(tmp_path):
    out = tmp_path / "wide.h5"
    result = _invoke(str(data_file(SHARED[0])), "-o", str(out), "--size", "64", "--margin", "0.5")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        assert f.attrs["crop_margin"] == 0.5
        wide = f["boxes"][0, 2]
        spread = np.ptp(f["landmarks"][0], axis=0).max()
    assert spread < 64 / 1.9  # the face fills half the crop's side (1 + 2 * 0.5 = 2)
    refused = _invoke(str(data_file(SHARED[0])), "-o", str(out), "--size", "64")
    assert refused.exit_code == 1 and "crop_margin" in refused.output
    assert wide > 0


def test_help_lists_every_option():
    result = CliRunner().invoke(cli, ["prepare", "--help"])
    assert result.exit_code == 0
    for option in ("--output", "--size", "--margin", "--workers", "--retry-failed", "--merge"):
        assert option in result.output


@pytest.mark.parametrize("case", ["no inputs", "missing input", "no images", "output parent is a file",
                                  "output is a folder", "size too small", "bad rank"])
def test_bad_input_gives_one_line(case, tmp_path):
    out = tmp_path / "faces.h5"
    photo = str(data_file(SHARED[0]))
    empty, blocker = not_photos(tmp_path)
    args, env, expected = {
        "no inputs": (["-o", str(out)], None, "give the photos"),
        "missing input": ([str(tmp_path / "nope.jpg"), "-o", str(out)], None, "does not exist"),
        "no images": ([str(empty), "-o", str(out)], None, "no images found"),
        "output parent is a file": ([photo, "-o", str(blocker / "faces.h5")], None, "cannot write"),
        "output is a folder": ([photo, "-o", str(empty)], None, "is a folder"),
        "size too small": ([photo, "-o", str(out), "--size", "8"], None, "--size"),
        "bad rank": ([photo, "-o", str(out)], {"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
    }[case]
    result = _invoke(*args, env=env)
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output
    if case != "size too small":  # click's own usage message is several lines
        assert result.output.strip().count("\n") == 0, result.output
    assert not out.exists()


def _with_attr(base: Path, tmp_path: Path, name: str, value) -> Path:
    out = _copy(base, tmp_path)
    with h5py.File(out, "r+") as f:
        f.attrs[name] = value
    return out


@pytest.mark.parametrize("case", ["other version", "other size", "not hdf5", "truncated",
                                  "foreign hdf5"])
def test_existing_output_that_cannot_be_added_to(case, base, tmp_path):
    """Refused with one line, before any photo is processed, and left exactly as it was."""
    if case == "other version":
        out, expected = _with_attr(base, tmp_path, "format_version", 99), "version 99"
    elif case == "other size":
        out, expected = _copy(base, tmp_path), "holds 64 px crops, not 128 px"
    elif case == "not hdf5":
        out, expected = tmp_path / "faces.h5", "not an HDF5 file"
        out.write_text("my notes")
    elif case == "truncated":
        out, expected = _copy(base, tmp_path), "damaged or truncated"
        data = out.read_bytes()
        out.write_bytes(data[: len(data) // 2])
    else:
        out, expected = tmp_path / "faces.h5", "not an mfface face dataset"
        with h5py.File(out, "w") as f:
            f["x"] = np.zeros(3)
    before = _sha(out)
    size = "128" if case == "other size" else "64"
    result = _invoke(str(data_file(SHARED[0])), "-o", str(out), "--size", size)
    assert result.exit_code == 1
    assert expected in result.output and result.output.startswith("Error:")
    assert result.output.strip().count("\n") == 0, result.output
    assert _sha(out) == before


def test_merge_refusals(base, tmp_path):
    other = tmp_path / "other.h5"
    prepare_dataset([data_file(SHARED[0])], other, PrepareSettings(size=96))
    result = _invoke("--merge", str(base), str(other), "-o", str(tmp_path / "m.h5"))
    assert result.exit_code == 1 and "crop_size" in result.output
    assert _invoke("--merge", "-o", str(tmp_path / "m.h5")).exit_code == 1
    notes = tmp_path / "notes.h5"
    notes.write_text("x")
    result = _invoke("--merge", str(notes), "-o", str(tmp_path / "m.h5"))
    assert result.exit_code == 1 and "not an HDF5 file" in result.output
    result = _invoke("--merge", str(base), "-o", str(tmp_path / "m.h5"), "--size", "128")
    assert result.exit_code == 1 and "not --size 128" in result.output
    result = _invoke("--merge", str(base), "-o", str(tmp_path / "m.h5"),
                     env={"RANK": "0", "WORLD_SIZE": "2"})
    assert result.exit_code == 1 and "without torchrun" in result.output
    assert not (tmp_path / "m.h5").exists()


def test_merge_of_plain_files_skips_duplicates(base, tmp_path):
    out = tmp_path / "m.h5"
    result = _invoke("--merge", str(base), str(base), "-o", str(out), "--size", "64", "--margin", "0.25")
    assert result.exit_code == 0, result.output
    assert read_info(out)["count"] == 7


def test_another_writer_is_refused(base, tmp_path):
    """A second run on the same output while one holds it refuses at once."""
    from mfface.outputs import ResultLock

    out = _copy(base, tmp_path)
    with ResultLock(out.parent, [out.name]):
        result = _invoke(str(data_file(SHARED[0])), "-o", str(out), "--size", "64")
    assert result.exit_code == 1 and "another mfface run is writing" in result.output


def test_collect_photos_errors(tmp_path):
    with pytest.raises(PrepareError, match="no images found"):
        collect_photos([tmp_path])
    with pytest.raises(PrepareError, match="does not exist"):
        collect_photos([tmp_path / "missing"])


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)
