"""`mfface train` / `predict` / `fit --init`: training lowers the loss, resumes exactly, runs under DDP,
and predictions are written as the fit writes them (64 px crops, 1 spp, a few steps)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import data_file, free_port
from mfface.cli.main import cli

TINY_NET = ["--data-batch", "2", "--render-spp", "1", "--network-albedo-size", "16", "--network-latent", "32",
            "--render-envmap-height", "8", "--logging-log-every", "1"]
SMALL_FIT = ["--render-final-spp", "2", "--render-texture-size", "32", "--stage2-spp", "1", "--stage3-spp", "1",
             "--stage2-albedo-resolution", "16"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def dataset(installed_ict, tmp_path_factory) -> Path:
    """The shared photos prepared at 64 px (real faces, no truth)."""
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted(data_file("images/people/obama_a.jpg").parent.glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    shutil.copy(data_file("images/astronaut.png"), folder / "astronaut.png")
    out = tmp_path_factory.mktemp("data") / "faces64.h5"
    result = invoke("prepare", folder, "-o", out, "--size", "64", "--workers", "1")
    assert result.exit_code == 0, result.output
    return out


def _trainer(dataset: Path, run_dir: Path, model: str = "ict", **overrides):
    from mfface.backend import select_variant
    from mfface.config import apply_overrides
    from mfface.learning.config import TrainConfig
    from mfface.learning.train import Trainer
    from mfface.morphable.store import ModelStore

    select_variant("cpu")
    settings = {"data.batch": 2, "render.spp": 1, "network.albedo_size": 16, "network.latent": 32,
                "render.envmap_height": 8, "data.val_fraction": 0.2, "logging.log_every": 1,
                "logging.checkpoint_every": 1000, "logging.preview_every": 1000, "data.augment": True,
                **overrides}
    config = apply_overrides(TrainConfig(), settings)
    return Trainer(ModelStore().load(model), config, [dataset], run_dir, torch.device("cpu"))


def _losses(run_dir: Path) -> list[dict]:
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "validation" not in row]


def test_training_lowers_the_loss(dataset, tmp_path):
    trainer = _trainer(dataset, tmp_path / "run", **{"schedule.encoder_steps": 12, "schedule.decoder_steps": 0,
                                                     "schedule.joint_steps": 0, "schedule.encoder_lr": 2e-3,
                                                     "data.augment": False, "data.val_fraction": 0.0,
                                                     "data.batch": 7})
    summary = trainer.run()
    rows = _losses(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0]["landmarks"], np.mean([r["landmarks"] for r in rows[-3:]])
    print(f"landmark loss {first:.1f} -> {last:.1f}")
    assert last < 0.7 * first
    assert (tmp_path / "run" / "weights.pt").is_file() and summary.step == 12


def test_a_resumed_run_gives_the_same_losses(dataset, tmp_path):
    schedule = {"schedule.encoder_steps": 3, "schedule.decoder_steps": 2, "schedule.joint_steps": 1}
    whole = _trainer(dataset, tmp_path / "whole", **schedule)
    whole.run()
    first = _trainer(dataset, tmp_path / "split", **schedule)
    first.run(stop_after=4)            # stops inside the decoder phase
    first.save_checkpoint()
    again = _trainer(dataset, tmp_path / "split", **schedule)
    assert again.resumed_from == 4 and again.phase == "decoders"
    again.run()
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for key in ("total", "photo", "landmarks"):
            assert rb[key] == pytest.approx(ra[key], rel=2e-3, abs=1e-4), (ra["step"], key)
    wa = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)["model_state"]
    wb = torch.load(tmp_path / "split" / "weights.pt", weights_only=True)["model_state"]
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) < 1e-3


def test_data_workers_load_the_same_batches(dataset, tmp_path):
    """`data.workers` loads ahead of the step in spawned DataLoader workers: same items, same
    augmentations, so the same losses as loading in the training process."""
    schedule = {"schedule.encoder_steps": 3, "schedule.decoder_steps": 0, "schedule.joint_steps": 0}
    _trainer(dataset, tmp_path / "here", **schedule).run()
    _trainer(dataset, tmp_path / "workers", **schedule, **{"data.workers": 1}).run()
    here, workers = _losses(tmp_path / "here"), _losses(tmp_path / "workers")
    assert [r["step"] for r in workers] == [1, 2, 3]
    for a, b in zip(here, workers):
        for key in ("total", "photo", "landmarks"):
            assert b[key] == pytest.approx(a[key], rel=2e-3, abs=1e-4), (a["step"], key)


def test_geometry_pretraining_renders_nothing(dataset, tmp_path, monkeypatch):
    """With photo_weight 0 a step never calls the renderer nor pulls the light (whose prior alone
    would darken it), and the landmark loss still falls."""
    from mfface.forward import ForwardModel

    def no_render(*args, **kwargs):
        raise AssertionError("rendered with photo_weight 0")
    trainer = _trainer(dataset, tmp_path / "run", **{"schedule.encoder_steps": 12, "schedule.decoder_steps": 0,
                                                     "schedule.joint_steps": 0, "schedule.encoder_lr": 2e-3,
                                                     "data.augment": False, "data.val_fraction": 0.0,
                                                     "data.batch": 7, "losses.photo_weight": 0.0})
    monkeypatch.setattr(ForwardModel, "render", no_render)
    losses = [trainer.train_step(step).terms for step in range(12)]
    assert all("photo" not in terms and "light" not in terms for terms in losses)
    assert np.mean([t["landmarks"] for t in losses[-3:]]) < 0.7 * losses[0]["landmarks"]


def test_train_cli_writes_a_run_and_resumes(dataset, tmp_path):
    run = tmp_path / "run"
    steps = ["--schedule-encoder-steps", "2", "--schedule-decoder-steps", "1", "--schedule-joint-steps", "1",
             "--logging-preview-every", "2", "--logging-checkpoint-every", "2"]
    result = invoke("train", dataset, "-o", run, "--model", "ict", *TINY_NET, *steps)
    assert result.exit_code == 0, result.output
    for name in ("config.toml", "metrics.jsonl", "checkpoints/latest.pt", "weights.pt", "previews/step-0000004.png"):
        assert (run / name).is_file(), name
    preview = np.asarray(Image.open(run / "previews" / "step-0000004.png"))
    assert preview.std() > 5
    validation = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines() if "validation" in r]
    assert validation and validation[-1]["validation"]["landmark_px"] > 0
    longer = invoke("train", dataset, "-o", run, "--model", "ict", *TINY_NET, *steps[:-4],
                    "--schedule-joint-steps", "2")
    assert longer.exit_code == 0, longer.output
    assert "resuming" in longer.output and _losses(run)[-1]["step"] == 5
    other = one_error_line(invoke("train", dataset, "-o", run, "--model", "ict", *TINY_NET, *steps,
                                  "--network-sh-bands", "4"))
    assert "network.sh_bands" in other and "other settings" in other


def test_train_bad_inputs(dataset, tmp_path):
    assert "does not exist" in one_error_line(invoke("train", tmp_path / "none.h5", "-o", tmp_path / "r", *TINY_NET))
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert "junk.h5" in one_error_line(invoke("train", tmp_path / "junk.h5", "-o", tmp_path / "r", *TINY_NET))
    assert "fewer than one batch" in one_error_line(
        invoke("train", dataset, "-o", tmp_path / "r", "--model", "ict", *TINY_NET, "--data-batch", "64"))
    assert "data.mix gives 2 ratio" in one_error_line(
        invoke("train", dataset, "-o", tmp_path / "r", "--model", "ict", *TINY_NET, "--data-mix", "1,2"))
    (tmp_path / "weights.pth").write_bytes(b"garbage")
    assert "not a readable state_dict" in one_error_line(
        invoke("train", dataset, "-o", tmp_path / "r2", "--model", "ict", *TINY_NET,
               "--backbone-weights", tmp_path / "weights.pth"))


DDP_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import torch, torch.distributed as dist
from mfface.backend import select_variant
select_variant("cpu")
from mfface.config import apply_overrides
from mfface.distributed import init_process_group, rank_info
from mfface.learning.config import TrainConfig
from mfface.learning.train import Trainer
from mfface.morphable.store import ModelStore
info = rank_info()
init_process_group(info, False)
config = apply_overrides(TrainConfig(), {"data.batch": 4, "render.spp": 1, "network.albedo_size": 16,
    "network.latent": 32, "render.envmap_height": 8, "schedule.encoder_steps": 2, "schedule.decoder_steps": 1,
    "schedule.joint_steps": 0, "data.val_fraction": 0.2})
trainer = Trainer(ModelStore().load("ict"), config, [Path(sys.argv[1])], Path(sys.argv[2]), torch.device("cpu"), info)
trainer.run()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.net.parameters())).hexdigest()
digests = [None] * info.world
dist.all_gather_object(digests, digest)
if info.rank == 0:
    Path(sys.argv[3]).write_text(json.dumps({"digests": digests, "step": trainer.step}))
dist.destroy_process_group()
"""


def test_two_cpu_ranks_keep_identical_weights(dataset, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(dataset),
               str(tmp_path / "run"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["step"] == 3 and len(found["digests"]) == 2 and found["digests"][0] == found["digests"][1]
    assert (tmp_path / "run" / "weights.pt").is_file()   # written by rank 0 only


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Synthetic faces of the built-in model at 64 px, with truth (light, diffuse texture)."""
    out = tmp_path_factory.mktemp("synth") / "synth64.h5"
    result = invoke("synth", "8", "-o", out, "--size", "64", "--spp", "32", "--model", "ict-lite",
                    "--workers", "1")
    assert result.exit_code == 0, result.output
    return out


def test_appearance_pretraining_learns_light_and_maps_without_rendering(synthetic, tmp_path, monkeypatch):
    """With photo_weight 0 the supervised light and diffuse terms train the head's light (encoder
    phase, decoders frozen) and the diffuse decoder (decoder phase) from synthetic truth, and
    nothing is rendered. One batch throughout, so that a few steps show the fall."""
    from mfface.forward import ForwardModel

    def no_render(*args, **kwargs):
        raise AssertionError("rendered with photo_weight 0")
    monkeypatch.setattr(ForwardModel, "render", no_render)
    common = {"schedule.joint_steps": 0, "schedule.encoder_lr": 3e-3, "schedule.decoder_lr": 3e-3,
              "data.augment": False, "data.val_fraction": 0.0, "data.batch": 2, "losses.photo_weight": 0.0,
              "losses.light_weight": 10.0, "losses.diffuse_weight": 10.0}
    encoder = _trainer(synthetic, tmp_path / "encoder", model="ict-lite",
                       **{**common, "schedule.encoder_steps": 25, "schedule.decoder_steps": 0})
    batch = encoder._batch(0)
    losses = [encoder.train_step(step, batch).terms for step in range(25)]
    light = [t["light_truth"] for t in losses]
    assert np.mean(light[-3:]) < 0.85 * np.mean(light[:3]), light
    assert len({t["diffuse_truth"] for t in losses}) == 1          # the decoders are frozen
    decoders = _trainer(synthetic, tmp_path / "decoders", model="ict-lite",
                        **{**common, "schedule.encoder_steps": 0, "schedule.decoder_steps": 10})
    diffuse = [decoders.train_step(step, batch).terms["diffuse_truth"] for step in range(10)]
    print(f"light {light[0]:.3f} -> {light[-1]:.3f}, diffuse {diffuse[0]:.3f} -> {diffuse[-1]:.3f}")
    assert np.mean(diffuse[-3:]) < 0.8 * diffuse[0], diffuse


def test_light_truth_follows_the_brightness_jitter(synthetic, tmp_path):
    """An exposure change b of the crop is the truth's light times b: a prediction equal to that
    costs nothing, one equal to the stored light does; flipped items are left out."""
    from mfface.learning.dataset import Augmentation, FaceDataset

    plain = FaceDataset([synthetic])[0]
    brighter = FaceDataset([synthetic], Augmentation(brightness=(1.5, 1.5)))[0]
    assert brighter["brightness"] == 1.5 and plain["brightness"] == 1.0
    assert torch.allclose(brighter["image"], (1.5 * plain["image"]).clamp(0, 1))
    objective = _trainer(synthetic, tmp_path / "run", model="ict-lite").objective
    truth = {"sh": plain["truth"]["sh"][None, :9]}
    state = type("State", (), {"sh": 1.5 * truth["sh"]})()
    light = objective._supervised(state, truth, torch.tensor([False]), torch.tensor([1.5]))["light_truth"]
    assert float(light()) == pytest.approx(0.0, abs=1e-12)
    light = objective._supervised(state, truth, torch.tensor([False]), torch.tensor([1.0]))["light_truth"]
    assert float(light()) > 0.0
    assert objective._supervised(state, truth, torch.tensor([True]), torch.tensor([1.5])) == {}


def test_truth_of_another_face_model_is_refused(installed_ict, synthetic, tmp_path):
    from mfface.learning.train import TrainError

    with pytest.raises(TrainError, match="rendered with the face model 'ict-lite', not 'ict'"):
        _trainer(synthetic, tmp_path / "run", model="ict")


def test_diffuse_error_averages_the_texture_down_and_counts_only_the_given_texels():
    from mfface.learning.train import diffuse_error

    true = torch.zeros(1, 4, 4, 3)
    true[0, :2, :2] = 1.0            # the top-left 2x2 block of the 4x4 texture is white
    predicted = torch.full((1, 2, 2, 3), 0.25)
    texels = torch.tensor([[True, True], [False, False]])
    # Area-averaged to 2x2 the truth is [[1, 0], [0, 0]]: errors 0.75 and 0.25 on the top row.
    assert diffuse_error(predicted, true, texels).tolist() == pytest.approx([0.5])


@pytest.fixture(scope="module")
def weights(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained")
    trainer = _trainer(dataset, run, **{"schedule.encoder_steps": 4, "schedule.decoder_steps": 1,
                                        "schedule.joint_steps": 1, "schedule.encoder_lr": 1e-3})
    trainer.run()
    return run / "weights.pt"


def test_predict_writes_the_fit_result_folder_and_refine_improves_it(weights, tmp_path):
    photo = data_file("images/people/obama_a.jpg")
    plain = invoke("predict", photo, "-o", tmp_path / "p", "--weights", weights, "--model", "ict", *SMALL_FIT)
    assert plain.exit_code == 0, plain.output
    folder = tmp_path / "p" / "obama_a"
    for name in ("mesh.obj", "mesh.glb", "envmap.exr", "render.png", "overview.png", "params.json",
                 "checkpoints/stage1.npz"):
        assert (folder / name).is_file(), name
    params = json.loads((folder / "params.json").read_text())
    assert params["fit"]["method"] == "predict" and params["light"]["sh_bands"] == 3
    refined = invoke("predict", photo, "-o", tmp_path / "r", "--weights", weights, "--model", "ict",
                     "--refine", "12", *SMALL_FIT)
    assert refined.exit_code == 0, refined.output
    better = json.loads((tmp_path / "r" / "obama_a" / "params.json").read_text())
    assert better["fit"]["method"] == "predict + refine 12"
    print(f"L1 in mask: predict {params['fit']['photometric_l1_in_mask']:.4f}, "
          f"+ refine {better['fit']['photometric_l1_in_mask']:.4f}")
    assert better["fit"]["photometric_l1_in_mask"] < params["fit"]["photometric_l1_in_mask"]
    replay = invoke("replay", folder, "--frames", "2", "--spp", "1", "--size", "24")
    assert replay.exit_code == 0, replay.output


def test_fit_init_starts_from_the_network(weights, tmp_path):
    result = invoke("fit", data_file("images/astronaut.png"), "-o", tmp_path, "--model", "ict", "--init",
                    weights, "--stage2-iterations", "3", "--stage3-iterations", "1", *SMALL_FIT,
                    "--input-max-resolution", "48")
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "astronaut" / "params.json").read_text())
    assert params["fit"]["stage1_landmark_rms_px"] >= 0 and "stage2" in params["fit"]["final_losses"]


def test_refinement_takes_the_geometry_from_the_landmarks_and_the_ambient_light_and_maps_from_the_network(weights):
    from mfface.config import FitConfig, apply_overrides
    from mfface.textures import resize_texture
    from mfface.fitting.pipeline import Reconstructor
    from mfface.landmarks import LandmarkDetector
    from mfface.learning.predict import Predictor
    from mfface.morphable.store import ModelStore

    model = ModelStore().load("ict")
    config = apply_overrides(FitConfig(), {"input.max_resolution": 48})
    predictor = Predictor(weights, model, config)
    with LandmarkDetector() as detector:
        image = predictor.prepare(data_file("images/astronaut.png"), detector)
    network = predictor.predict([image])
    reconstructor = Reconstructor(model, config)
    plain = reconstructor.fit([image], skip_stages=(2, 3)).stages[1]
    started = reconstructor.fit([image], skip_stages=(2, 3), appearance=network).stages[1]
    for name in ("euler", "translation", "identity", "expression", "focal"):
        assert torch.allclose(getattr(started, name), getattr(plain, name)), name
    assert not torch.allclose(started.euler, network.euler, atol=1e-3)
    size = (config.stage2.albedo_resolution,) * 2
    for name in ("diffuse", "specular", "roughness"):
        assert torch.equal(getattr(started, name), resize_texture(getattr(network, name), size)), name
    assert started.sh.shape[1] == config.light.sh_bands ** 2 and torch.equal(started.sh[:, :1], network.sh[:, :1])
    assert not started.sh[:, 1:].any() and network.sh[:, 1:].abs().sum() > 0


def test_refine_config_raises_the_rates_of_a_short_stage_2_and_ends_on_the_diffuse_solve():
    """A refinement N times shorter than the fit's stage 2 moves light, albedo and pose faster by
    RATE_MARGIN * (iterations / N), never slower; the geometry is free from the start, its rates
    ramped up; stage 3 is the solve alone."""
    from mfface.config import FitConfig
    from mfface.learning.predict import RATE_MARGIN, REFINE_WARMUP, refine_config

    config = FitConfig()
    short = refine_config(config, 20)
    rate = RATE_MARGIN * config.stage2.iterations / 20
    assert short.stage2.iterations == 20 and short.stage2.geometry_start == 0
    assert short.stage2.geometry_warmup == REFINE_WARMUP > config.stage2.geometry_warmup
    for name in ("sh_lr", "albedo_lr", "pose_lr"):
        assert getattr(short.stage2, name) == pytest.approx(getattr(config.stage2, name) * rate), name
    assert short.stage2.geometry_lr == config.stage2.geometry_lr
    assert short.stage3.iterations == 0 and short.stage3.solve_passes == config.stage3.solve_passes
    long = refine_config(config, 10 * config.stage2.iterations)
    assert long.stage2.sh_lr == config.stage2.sh_lr
    with pytest.raises(ValueError, match="-1"):
        refine_config(config, -1)


def test_predict_bad_inputs(weights, tmp_path):
    photo = data_file("images/astronaut.png")
    assert "does not exist" in one_error_line(
        invoke("predict", photo, "-o", tmp_path / "o", "--weights", tmp_path / "none.pt"))
    (tmp_path / "bad.pt").write_bytes(weights.read_bytes()[:5000])
    assert "damaged" in one_error_line(invoke("predict", photo, "-o", tmp_path / "o", "--weights", tmp_path / "bad.pt",
                                              "--model", "ict"))
    assert "trained for face model 'ict'" in one_error_line(
        invoke("predict", photo, "-o", tmp_path / "o", "--weights", weights, "--model", "ict-lite"))
    assert "--refine -1" in one_error_line(invoke("predict", photo, "-o", tmp_path / "o", "--weights", weights,
                                                  "--refine", "-1"))
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(photo, photos / "face.png")
    Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(photos / "wall.png")
    batch = invoke("predict", photos, "-o", tmp_path / "o", "--weights", weights, "--model", "ict", *SMALL_FIT)
    assert batch.exit_code == 1 and "1 of 2 photos could not be processed" in batch.output
    assert (tmp_path / "o" / "face" / "params.json").is_file() and not (tmp_path / "o" / "wall").exists()
    assert not (tmp_path / "o").joinpath("wall").exists()


def test_fine_tuning_starts_from_earlier_weights_and_checks_the_crop(weights, dataset, tmp_path):
    from mfface.learning.train import TrainError

    tuned = _trainer(dataset, tmp_path / "tune", **{"schedule.encoder_steps": 1, "schedule.decoder_steps": 0,
                                                    "schedule.joint_steps": 0})
    tuned._load_init(weights)
    stored = torch.load(weights, weights_only=True)["model_state"]
    assert torch.equal(tuned.net.state_dict()["head.weight"], stored["head.weight"])
    shifted = dict(torch.load(weights, weights_only=True))
    shifted["spec"] = dict(shifted["spec"], crop=128)
    torch.save(shifted, tmp_path / "other_crop.pt")
    with pytest.raises(TrainError, match="trained on 128 px crops but the datasets hold 64 px"):
        tuned._load_init(tmp_path / "other_crop.pt")
