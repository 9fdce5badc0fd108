"""`mfface synth`: synthetic faces with ground truth as a face dataset. CI-sized: 64 px crops of the
built-in model (16-64 spp: at 64 px a render costs the same whatever the spp, and MediaPipe finds
few faces in 1-4 spp renders, whose noise is salt and pepper), a few samples per run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import data_file, not_photos, torchrun_mfface
from mfface.cli.main import cli
from mfface.learning import synth as synth_module
from mfface.learning.dataset_format import FORMAT_VERSION, read_info, read_report, shard_path

MODEL = "ict-lite"  # the built-in model: no install, same in every test session
SIZE = 64
BASE = ("--size", str(SIZE), "--spp", "32", "--model", MODEL, "--workers", "1")


def _invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["synth", *args], env=env)


def _datasets(path: Path) -> dict[str, np.ndarray]:
    """Every per-sample dataset of a file (not the report), by name."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[:])
                     if isinstance(obj, h5py.Dataset) and not name.startswith("report/") else None)
    return out


def _by_name(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{sample name: {dataset: row}} of a file."""
    data = _datasets(path)
    names = [p.decode() for p in data["paths"]]
    return {n: {k: v[i] for k, v in data.items()} for i, n in enumerate(names)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """6 renders at 64 px, seed 0, through the CLI (tests copy it to change it)."""
    out = tmp_path_factory.mktemp("synth") / "synth.h5"
    result = _invoke("6", "-o", str(out), *BASE)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def model():
    from mfface.morphable.store import ModelStore

    return ModelStore().load(MODEL)


# -- the dataset a run writes -------------------------------------------------------------------

def test_synth_writes_the_documented_layout(base, model):
    info = read_info(base)
    assert info["attrs"]["format_version"] == FORMAT_VERSION and info["size"] == SIZE
    assert info["attrs"]["source"] == "synthetic" and info["attrs"]["synth_seed"] == 0
    report = read_report(base)
    assert info["count"] + len(report) == 6 and info["count"] >= 4
    assert all(e.kind in ("no_face", "bad_landmarks") for e in report)
    data = _datasets(base)
    n = info["count"]
    names = [p.decode() for p in data["paths"]]
    assert sorted(names + [e.path for e in report]) == [f"synth/seed0/{i:09d}" for i in range(6)]
    assert (data["boxes"] == [0, 0, SIZE]).all() and (data["source_sizes"] == [SIZE, SIZE]).all()
    assert (data["file_sizes"] == 0).all() and (data["file_mtimes_ns"] == 0).all()
    assert all(d in (b"", "") for d in data["sha256"])
    shapes = {"truth/identity": (model.n_identity,), "truth/expression": (model.n_expression,),
              "truth/euler": (3,), "truth/translation": (3,), "truth/focal": (), "truth/principal": (2,),
              "truth/sh": (81, 3), "truth/landmarks": (478, 2), "truth/diffuse": (128, 128, 3),
              "truth/specular": (3,), "truth/roughness": (), "truth/environment": (),
              "truth/background": (), "truth/ita": ()}
    assert {k: v.shape[1:] for k, v in data.items() if k.startswith("truth/")} == shapes
    assert all(v.shape[0] == n for v in data.values())
    assert data["truth/diffuse"].dtype == np.float16
    np.testing.assert_allclose(data["truth/principal"], SIZE / 2.0)
    # ranges: yaw +-60, pitch/roll +-25 deg; focal 500-5000 px at 224 px; ICT blend weights in [0, 1]
    assert np.abs(np.degrees(data["truth/euler"][:, 0])).max() <= 60.0 + 1e-4
    assert np.abs(np.degrees(data["truth/euler"][:, 1:])).max() <= 25.0 + 1e-4
    focal_224 = data["truth/focal"] * 224.0 / SIZE
    assert (focal_224 >= 500.0 - 1e-2).all() and (focal_224 <= 5000.0 + 1e-2).all()
    assert data["truth/expression"].min() >= 0.0 and data["truth/expression"].max() <= 1.0
    assert ((data["truth/expression"] > 0).sum(1) <= 8).all()  # sparse: <= 4 shapes and partners
    # the stored landmarks are MediaPipe's, near but not equal to the exact projection
    offset = np.linalg.norm(data["landmarks"][:, :468] - data["truth/landmarks"][:, :468], axis=2)
    assert 0.0 < np.median(offset) < 0.08 * SIZE
    with h5py.File(base, "r") as f:
        truth = dict(f["truth"].attrs)
        assert truth["model"] == MODEL and truth["model_fingerprint"] == model.fingerprint()
        assert json.loads(truth["environments"])[0] == "overcast"
        assert json.loads(f.attrs["history"])[-1]["tool"] == "synth"
        assert set(json.loads(f.attrs["match_keys"])) >= {"synth_seed", "synth_spp", "synth_config"}


def test_same_seed_gives_the_same_bytes(base, tmp_path):
    """A second run (in the same process, after other renders) writes the same arrays bit for
    bit; another seed gives other faces."""
    again = tmp_path / "again.h5"
    result = _invoke("6", "-o", str(again), *BASE)
    assert result.exit_code == 0, result.output
    first, second = _datasets(base), _datasets(again)
    assert first.keys() == second.keys()
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    other = tmp_path / "other.h5"
    assert _invoke("2", "-o", str(other), *BASE, "--seed", "7").exit_code == 0
    theirs = _datasets(other)
    assert not np.array_equal(theirs["truth/identity"][:1], first["truth/identity"][:1])
    assert theirs["paths"][0].decode().startswith("synth/seed7/")


def test_resume_adds_only_new_indices_and_they_match_a_fresh_run(base, tmp_path):
    """Running again with a larger N renders only indices 6, 7 (sample i depends on (seed, i)
    alone: the appended samples equal those of a fresh 8-sample run); the same N adds nothing."""
    out = tmp_path / "synth.h5"
    shutil.copyfile(base, out)
    before = read_info(base)["count"] + len(read_report(base))
    assert before == 6
    result = _invoke("8", "-o", str(out), *BASE)
    assert result.exit_code == 0, result.output
    assert "already in the dataset" in result.output
    resumed = _by_name(out)
    fresh_path = tmp_path / "fresh.h5"
    assert _invoke("8", "-o", str(fresh_path), *BASE).exit_code == 0
    fresh = _by_name(fresh_path)
    assert resumed.keys() == fresh.keys()
    for name in fresh:
        for key in fresh[name]:
            assert np.array_equal(resumed[name][key], fresh[name][key]), (name, key)
    stamp = _sha(out)
    assert _invoke("8", "-o", str(out), *BASE).exit_code == 0
    assert _sha(out) == stamp  # nothing to add: the file is untouched


def _pooled_difference(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(mean abs difference of 4x4 block means over blocks fully inside `mask`, mean target
    level there): block means average out most of the Monte Carlo noise."""
    def pool(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x.permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)
    full = pool(mask[..., None].float())[..., 0] > 0.999
    assert full.sum() >= 2
    return (float((pool(image) - pool(target))[full].abs().mean()),
            float(pool(target)[full].mean()))


def test_truth_round_trip(model, variant, tmp_path):
    """Re-rendering the stored truth (another sampler seed) gives the stored crop, read back by
    the dataset reader, within Monte Carlo noise inside the skin mask; a changed light or pose
    does not."""
    from mfface.config import FitConfig
    from mfface.forward import ForwardModel, RenderSettings
    from mfface.learning.dataset import FaceDataset
    from mfface.learning.synth import truth_state

    out = tmp_path / "rt.h5"
    result = _invoke("3", "-o", str(out), "--size", str(SIZE), "--spp", "64", "--model", MODEL,
                     "--workers", "1")
    assert result.exit_code == 0, result.output
    dataset = FaceDataset(out, truth=True)
    assert len(dataset) >= 2
    forward = ForwardModel(model)

    def rendered(state):
        with torch.no_grad():
            out_ = forward(state, RenderSettings.from_config(FitConfig(), SIZE, 64, 12345))
        return out_.image[0], out_.coverage[0]

    for i in range(len(dataset)):
        item = dataset[i]
        state = truth_state(item["truth"])
        target = item["image"].permute(1, 2, 0)
        image, coverage = rendered(state)
        mask = (item["mask"] > 0) & (coverage > 0.999) & (target.max(-1).values < 0.98)
        right, level = _pooled_difference(image, target, mask)
        assert right < 0.05 * level + 0.002, (i, right, level)
        wrong_light = dataclasses.replace(state, sh=state.sh * torch.tensor([1.0, 1.0, 0.7]))
        assert _pooled_difference(rendered(wrong_light)[0], target, mask)[0] > 1.5 * right
        wrong_pose = dataclasses.replace(state, euler=state.euler + torch.tensor([[0.15, 0.0, 0.0]]))
        assert _pooled_difference(rendered(wrong_pose)[0], target, mask)[0] > 2 * right


def test_reader_returns_the_truth(base):
    from mfface.learning.dataset import Augmentation, FaceDataset

    data = _datasets(base)
    dataset = FaceDataset(base)
    item = dataset[1]
    assert set(item["truth"]) == {k.split("/", 1)[1] for k in data if k.startswith("truth/")}
    for key, value in item["truth"].items():
        np.testing.assert_array_equal(value.numpy(), data[f"truth/{key}"][1])
    np.testing.assert_allclose(item["principal"].numpy(), SIZE / 2.0)
    np.testing.assert_allclose(item["landmarks"].numpy(), data["landmarks"][1])
    flipped = FaceDataset(base, augment=Augmentation(flip=1.0))[1]
    from mfface.mirror import mirror_landmarks

    expected = mirror_landmarks(data["truth/landmarks"][1], SIZE)
    assert flipped["flipped"]
    np.testing.assert_allclose(flipped["truth"]["landmarks"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(flipped["truth"]["principal"].numpy(), SIZE / 2.0, atol=1e-4)
    assert FaceDataset(base, truth=False)[0].get("truth") is None


def test_detector_rejections_are_counted_reported_and_skipped(tmp_path, monkeypatch):
    """Renders MediaPipe finds no face in are counted in the summary, listed in the file's report
    and not rendered again by a later run."""
    from mfface.landmarks import LandmarkDetector, NoFaceError

    real = LandmarkDetector.detect

    def detect(self, image, gamma=2.2, name="the image"):
        if name.endswith(("1", "3")):
            raise NoFaceError(f"No face was found in {name} (test).")
        return real(self, image, gamma, name)

    monkeypatch.setattr(LandmarkDetector, "detect", detect)
    out = tmp_path / "synth.h5"
    result = _invoke("4", "-o", str(out), *BASE)
    assert result.exit_code == 0, result.output
    assert "rejected: no face" in result.output and "rejected fraction" in result.output
    report = read_report(out)
    rejected = sorted(e.path for e in report if "(test)" in e.reason)
    assert rejected == ["synth/seed0/000000001", "synth/seed0/000000003"]
    assert all(e.kind == "no_face" for e in report if "(test)" in e.reason)
    assert read_info(out)["count"] + len(report) == 4
    calls = []
    monkeypatch.setattr(LandmarkDetector, "detect", lambda *a, **k: calls.append(1))
    again = _invoke("4", "-o", str(out), *BASE)
    assert again.exit_code == 0 and "rejected in an earlier run" in again.output and not calls


def test_summary_counts_from_the_library(tmp_path, model, monkeypatch):
    """synth_dataset's summary: rejected fraction, MediaPipe's share and the rate."""
    from mfface.landmarks import LandmarkDetector, NoFaceError
    from mfface.learning.synth import SynthSettings, synth_dataset

    real = LandmarkDetector.detect

    def detect(self, image, gamma=2.2, name="the image"):
        if name.endswith("0"):
            raise NoFaceError("test")
        return real(self, image, gamma, name)

    monkeypatch.setattr(LandmarkDetector, "detect", detect)
    summary = synth_dataset(model, tmp_path / "s.h5", SynthSettings(count=2, size=SIZE, spp=16))
    assert summary.processed == 2 and len(summary.rejected) >= 1
    assert summary.rejected_fraction == len(summary.rejected) / 2
    assert 0.0 < summary.detector_share < 1.0 and summary.images_per_second > 0


# -- options ------------------------------------------------------------------------------------

def test_config_file_and_options_set_the_ranges(tmp_path):
    config = tmp_path / "synth.toml"
    config.write_text("[pose]\nmax_yaw = 0.0\nmax_pitch = 0.0\n[light]\nenvironments = \"studio\"\n")
    out = tmp_path / "synth.h5"
    result = _invoke("2", "-o", str(out), *BASE, "--config", str(config), "--pose-max-roll", "0",
                     "--camera-principal-offset", "0.5")
    assert result.exit_code == 0, result.output
    data = _datasets(out)
    assert np.abs(data["truth/euler"]).max() == 0.0
    assert (data["truth/environment"] == 3).all()  # "studio"
    # the principal point is the virtual photo's centre: (w / 2 - x0, h / 2 - y0)
    boxes, sizes = data["boxes"], data["source_sizes"]
    np.testing.assert_allclose(data["truth/principal"], sizes / 2.0 - boxes[:, :2])
    assert (boxes[:, 2] == SIZE).all() and (sizes >= SIZE).all()
    bad = _invoke("2", "-o", str(tmp_path / "x.h5"), *BASE, "--pose-max-yaw", "120")
    assert bad.exit_code == 1 and bad.output.startswith("Error:") and "max_yaw" in bad.output
    config.write_text("[pose]\nmax_yawn = 1.0\n")
    bad = _invoke("2", "-o", str(tmp_path / "x.h5"), *BASE, "--config", str(config))
    assert bad.exit_code == 1 and "max_yawn" in bad.output and not (tmp_path / "x.h5").exists()


def test_background_photos_are_cut_away_from_faces(tmp_path):
    """--backgrounds: crops of the photos (faces found by MediaPipe are avoided)."""
    from mfface.synthetic import BackgroundPhoto, BackgroundPhotos, sample_generator

    folder = tmp_path / "backgrounds"
    folder.mkdir()
    for name in ("images/people/obama_a.jpg", "images/people/biden_a.jpg"):
        (folder / Path(name).name).symlink_to(data_file(name))  # test inputs: linked, never copied
    out = tmp_path / "synth.h5"
    result = _invoke("3", "-o", str(out), *BASE, "--backgrounds", str(folder), "--background-photo", "1")
    assert result.exit_code == 0, result.output
    data = _datasets(out)
    assert (data["truth/background"] == 2).all()  # "photo"
    # a crop never overlaps a (grown) face box: a photo that is all face gives none
    image = np.full((100, 200, 3), 128, np.uint8)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "plain.png")
    photos = BackgroundPhotos([BackgroundPhoto(str(tmp_path / "plain.png"), 200, 100, ((0.0, 0.0, 200.0, 100.0),))])
    assert photos.crop(sample_generator(0, 0), 32) is None
    half = BackgroundPhotos([BackgroundPhoto(str(tmp_path / "plain.png"), 200, 100, ((0.0, 0.0, 100.0, 100.0),))])
    crops = [half.crop(sample_generator(0, i), 32) for i in range(10)]
    assert all(c is not None and c.shape == (32, 32, 3) for c in crops)


def test_worker_processes_give_the_same_dataset(base, tmp_path, monkeypatch):
    """--workers 2 (spawned processes) writes the same samples, bit for bit, in the same order."""
    monkeypatch.setattr(synth_module, "SAMPLES_PER_WORKER", 1)
    out = tmp_path / "synth.h5"
    result = _invoke("6", "-o", str(out), "--size", str(SIZE), "--spp", "32", "--model", MODEL,
                     "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "workers" in result.output
    mine, theirs = _datasets(out), _datasets(base)
    for name in theirs:
        assert np.array_equal(mine[name], theirs[name]), name


def test_rank_shards_merge_into_the_one_process_dataset(base, tmp_path):
    """RANK / WORLD_SIZE (as torchrun sets them): each rank renders every second index into its
    shard; `mfface prepare --merge` joins them into the samples of a one-process run."""
    out = tmp_path / "synth.h5"
    for rank in range(2):
        result = _invoke("6", "-o", str(out), *BASE, env={"RANK": str(rank), "WORLD_SIZE": "2"})
        assert result.exit_code == 0, result.output
        assert f"rank {rank} of 2" in result.output and "--merge" in result.output
    shards = [shard_path(out, r, 2) for r in range(2)]
    for rank, shard in enumerate(shards):
        names = [p.decode() for p in _datasets(shard)["paths"]] + [e.path for e in read_report(shard)]
        assert sorted(names) == [f"synth/seed0/{i:09d}" for i in range(rank, 6, 2)]
    merged = CliRunner().invoke(cli, ["prepare", "--merge", *map(str, shards), "-o", str(out)])
    assert merged.exit_code == 0, merged.output
    mine, theirs = _by_name(out), _by_name(base)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        for key in theirs[name]:
            assert np.array_equal(mine[name][key], theirs[name][key]), (name, key)
    # shards of another seed are not merged into it
    other = tmp_path / "other.h5"
    assert _invoke("1", "-o", str(other), *BASE, "--seed", "3").exit_code == 0
    refused = CliRunner().invoke(cli, ["prepare", "--merge", str(base), str(other), "-o",
                                       str(tmp_path / "m.h5")])
    assert refused.exit_code == 1 and "synth_seed" in refused.output


def test_torchrun_ranks_write_shards(base, tmp_path):
    """Two ranks under torchrun write their shards; merged, they equal the one-process run."""
    out = tmp_path / "synth.h5"
    result = torchrun_mfface("synth", "2", "-o", str(out), *BASE, "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    shards = [shard_path(out, r, 2) for r in range(2)]
    merged = CliRunner().invoke(cli, ["prepare", "--merge", *map(str, shards), "-o", str(out)])
    assert merged.exit_code == 0, merged.output
    mine, theirs = _by_name(out), _by_name(base)
    for name in mine:
        for key in mine[name]:
            assert np.array_equal(mine[name][key], theirs[name][key]), (name, key)


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["n zero", "n negative", "output parent is a file", "output is a folder",
                                  "size too small", "no background images", "missing backgrounds",
                                  "unknown model", "bad rank"])
def test_bad_input_gives_one_line(case, tmp_path):
    out = tmp_path / "synth.h5"
    empty, blocker = not_photos(tmp_path)
    args, env, expected = {
        "n zero": (["0", "-o", str(out)], None, "N must be at least 1"),
        "n negative": (["-o", str(out), "--", "-3"], None, "N must be at least 1"),
        "output parent is a file": (["2", "-o", str(blocker / "synth.h5")], None, "cannot write"),
        "output is a folder": (["2", "-o", str(empty)], None, "is a folder"),
        "size too small": (["2", "-o", str(out), "--size", "8"], None, "--size"),
        "no background images": (["2", "-o", str(out), "--backgrounds", str(empty)], None, "holds no images"),
        "missing backgrounds": (["2", "-o", str(out), "--backgrounds", str(tmp_path / "nope")], None,
                                "does not exist"),
        "unknown model": (["2", "-o", str(out), "--model", "nosuchmodel"], None, "nosuchmodel"),
        "bad rank": (["2", "-o", str(out)], {"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
    }[case]
    result = _invoke(*args, env=env)
    assert result.exit_code == 1, result.output
    assert expected in result.output and result.output.startswith("Error:")
    assert result.output.strip().count("\n") == 0, result.output
    assert not out.exists()


def _with_attr(base: Path, tmp_path: Path, name: str, value) -> Path:
    out = tmp_path / "synth.h5"
    shutil.copyfile(base, out)
    with h5py.File(out, "r+") as f:
        f.attrs[name] = value
    return out


@pytest.mark.parametrize("case", ["other version", "other size", "other seed", "photo dataset"])
def test_existing_output_that_cannot_be_added_to(case, base, tmp_path):
    """Refused with one line before anything is rendered, and left exactly as it was."""
    args = list(BASE)
    if case == "other version":
        out, expected = _with_attr(base, tmp_path, "format_version", 99), "version 99"
    elif case == "other size":
        out, expected = _with_attr(base, tmp_path, "count", read_info(base)["count"]), "not 96 px"
        args[1] = "96"
    elif case == "other seed":
        out, expected = _with_attr(base, tmp_path, "count", read_info(base)["count"]), "synth_seed"
        args += ["--seed", "5"]
    else:
        out, expected = _with_attr(base, tmp_path, "source", "photos"), "holds photos samples"
    before = _sha(out)
    result = _invoke("8", "-o", str(out), *args)
    assert result.exit_code == 1, result.output
    assert expected in result.output and result.output.startswith("Error:")
    assert result.output.strip().count("\n") == 0, result.output
    assert _sha(out) == before


def test_help_lists_the_options():
    result = CliRunner().invoke(cli, ["synth", "--help"])
    assert result.exit_code == 0
    for option in ("--output", "--size", "--spp", "--seed", "--model", "--backgrounds", "--workers",
                   "--config", "--identity-scale", "--pose-max-yaw", "--camera-focal-min",
                   "--light-environments", "--truth-vertices"):
        assert option in result.output


# -- the generator's parts (no rendering) -------------------------------------------------------

def test_sample_generator_streams_are_independent_of_each_other():
    from mfface.synthetic import sample_generator

    a = torch.rand(4, generator=sample_generator(0, 5))
    assert torch.equal(a, torch.rand(4, generator=sample_generator(0, 5)))
    assert not torch.equal(a, torch.rand(4, generator=sample_generator(0, 6)))
    assert not torch.equal(a, torch.rand(4, generator=sample_generator(1, 5)))
    with pytest.raises(ValueError):
        sample_generator(-1, 0)


def test_colour_temperatures_and_skin_tones():
    from mfface.synthetic import kelvin_rgb, lab_to_linear_rgb, sample_generator, skin_tone
    from mfface.synthetic_config import AlbedoVariation

    torch.testing.assert_close(kelvin_rgb(6504.0), torch.ones(3, dtype=torch.float64))
    warm, cool = kelvin_rgb(2700.0), kelvin_rgb(12000.0)
    assert warm[0] > 1.5 * warm[2] and cool[2] > 1.2 * cool[0]
    assert abs(float(warm @ torch.tensor([0.2126, 0.7152, 0.0722], dtype=torch.float64)) - 1.0) < 1e-9
    torch.testing.assert_close(lab_to_linear_rgb(torch.tensor([100.0, 0.0, 0.0])),
                               torch.ones(3, dtype=torch.float64), atol=2e-3, rtol=0)
    tones = [skin_tone(sample_generator(0, i), AlbedoVariation()) for i in range(200)]
    itas = [ita for _, ita in tones]
    assert min(itas) < -30.0 and max(itas) > 55.0  # very dark to very light
    darkest = min(tones, key=lambda t: t[1])[0]
    lightest = max(tones, key=lambda t: t[1])[0]
    assert float(lightest.mean()) > 5 * float(darkest.mean())


def test_expressions_are_sparse_blend_weights(model):
    from mfface.synthetic import draw_expression, sample_generator
    from mfface.synthetic_config import ExpressionVariation

    draws = torch.cat([draw_expression(sample_generator(0, i), model, ExpressionVariation())
                       for i in range(200)])
    active = (draws > 0).sum(1)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    assert (active <= 8).all() and 0.05 < float((active == 0).float().mean()) < 0.3
    names = list(model.expression_names)
    left, right = names.index("eyeBlink_L"), names.index("eyeBlink_R")
    both = (draws[:, left] > 0) & (draws[:, right] > 0)
    assert both.any()  # partners set together
    assert ((draws[both, left] - draws[both, right]).abs() <= 0.15 + 1e-6).all()


@pytest.mark.parametrize("kind", ["overcast", "sun", "window", "studio", "indoor", "flash"])
def test_light_environments(kind):
    """Each environment gives SH light of the drawn exposure, nearly free of negative lobes."""
    from mfface.scenes.light_presets import exposure
    from mfface.sh import sh_to_envmap
    from mfface.synthetic import draw_light, sample_generator
    from mfface.synthetic_config import LightVariation

    config = LightVariation()
    for i in range(5):
        sh, name, level = draw_light(sample_generator(3, i), config, 9, kinds=[kind])
        assert name == kind and sh.shape == (1, 81, 3) and torch.isfinite(sh).all()
        assert config.exposure_min <= level <= config.exposure_max
        assert abs(float(exposure(sh[0].double())) - level) < 1e-3 * level
        luminance = sh_to_envmap(sh[0].double(), 64, 128, clamp=False) @ torch.tensor(
            [0.2126, 0.7152, 0.0722], dtype=torch.float64)
        assert float(luminance.min()) > -0.05 * float(luminance.max())


def test_photo_frame_puts_the_principal_point_where_box_and_size_say():
    from mfface.synthetic import _photo_frame, sample_generator

    for i in range(20):
        principal, (x0, y0, side), (w, h) = _photo_frame(sample_generator(0, i), 64, 1.5)
        assert side == 64 and x0 >= 0 and y0 >= 0 and w >= x0 + side and h >= y0 + side
        torch.testing.assert_close(principal, torch.tensor([w / 2.0 - x0, h / 2.0 - y0]))
    principal, box, size = _photo_frame(sample_generator(0, 0), 64, 0.0)
    assert box == (0, 0, 64) and size == (64, 64) and principal.tolist() == [32.0, 32.0]


def test_models_with_a_statistical_albedo(model, variant):
    """A model with an albedo model: its coefficients are drawn and stored as truth."""
    from mfface.learning.synth import SynthSettings, synth_truth_columns
    from mfface.morphable.model import AlbedoModel
    from mfface.synthetic import draw_albedo, sample_generator, synth_face
    from mfface.synthetic_config import AlbedoVariation

    v = model.n_vertices
    rng = np.random.default_rng(0)
    albedo = AlbedoModel(mean=np.full((v, 3), 0.4, np.float32), basis=rng.normal(0, 1, (3, v, 3)).astype(np.float32),
                         std=np.full(3, 0.02, np.float32))
    basel_like = dataclasses.replace(model, name="with-albedo", diffuse_albedo=albedo)
    drawn = draw_albedo(sample_generator(0, 0), basel_like, AlbedoVariation(texture_size=64))
    assert drawn.coefficients.shape == (1, 3) and drawn.texture.shape == (1, 64, 64, 3)
    assert abs(float(drawn.texture[0, 32, 32].mean()) - 0.4) < 0.2
    names = [c.name for c in synth_truth_columns(basel_like, SynthSettings(count=1))]
    assert "truth/albedo" in names and "truth/diffuse" in names
    face = synth_face(basel_like, 32, 0, 0, spp=1)
    assert face.state.albedo.shape == (1, 3) and face.image.shape == (32, 32, 3)
