"""Self-supervised training of `FaceNet` through the Mitsuba renderer (DeepNextFace's method).

Each step: crops -> FaceNet -> FaceState -> the forward model (`mfface.forward`, the fit's own
renderer) -> the fit's own objectives (`mfface.objectives`) weighted by `[losses]` -> backward
through Dr.Jit into the network. Synthetic datasets with truth can add supervised terms
(identity and expression coefficients, model-space vertices, SH light, diffuse map): with
`photo_weight` 0 a whole network, light and albedo included, pre-trains without rendering. The
schedule has DeepNextFace's three phases (`mfface.learning.config.phase_of`).

Determinism and resuming: the split, the sample order of every epoch, every augmentation and every
render seed follow from `data.seed` and the step; a checkpoint keeps the weights, the optimiser and
scheduler state, the step and every RNG state, so a resumed run continues with the same losses as
an uninterrupted one (up to the float rounding of Dr.Jit's multi-threaded sample accumulation).

Distributed: under torchrun each rank takes every world-th sample of the epoch's order, renders its
share of the batch, and DDP averages the gradients; only rank 0 writes into RUN_DIR.

RUN_DIR layout: config.toml, metrics.jsonl (one JSON object per logged step, and per validation),
checkpoints/latest.pt (resume), weights.pt (final weights, for `mfface predict`), previews/step-N.png
(input | render | overlay | diffuse of a fixed validation batch), tensorboard/ (event files, when
the tensorboard package is installed).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfface.atomic import write_text
from mfface.config import ConfigError, config_to_dict, load_config, to_toml
from mfface.distributed import RankInfo
from mfface.fitting.landmark_stage import StepCallback
from mfface.forward import ForwardModel, RenderSettings
from mfface.interrupt import raise_if_requested
from mfface.learning import checkpoint as ckpt
from mfface.learning.config import RESUMABLE_CHANGES, TrainConfig, mix_ratios, phase_of
from mfface.learning.dataset import Augmentation, FaceDataset
from mfface.itemwise import itemwise_photometric
from mfface.learning.network import MEAN_SKIN, FaceNet, NetworkSpec, Prediction
from mfface.metrics import aligned_distances
from mfface.morphable.model import MorphableModel
from mfface.morphable.uv import texel_map
from mfface.objectives import (chromaticity, landmark_loss, landmark_weights, photometric_loss, sh_energy,
                               smoothness_loss, statistical_prior, symmetry_loss, weighted_terms)
from mfface.schedules import cosine_decay
from mfface.sh import shading_error
from mfface.textures import MirrorSampler

CHECKPOINT = Path("checkpoints") / "latest.pt"
WEIGHTS = "weights.pt"
SEED_MODULUS = 2**31
# The weight of each training term: the LossConfig field that holds it.
LOSS_WEIGHTS = {"photo": "photo_weight", "landmarks": "landmark_weight", "identity": "identity_prior",
                "expression": "expression_prior", "albedo": "albedo_prior", "light": "sh_energy",
                "albedo_symmetry": "albedo_symmetry", "albedo_smoothness": "albedo_smoothness",
                "albedo_consistency": "albedo_consistency", "parameters": "parameter_weight",
                "vertices": "vertex_weight", "light_truth": "light_weight", "diffuse_truth": "diffuse_weight"}


class TrainError(ValueError):
    """A training run that cannot start or continue as asked; the message says why."""


@dataclass
class Split:
    """Training and held-out sample indices of a FaceDataset, per file (index lists)."""
    train: list[np.ndarray]
    val: list[np.ndarray]


def split(dataset: FaceDataset, fraction: float, seed: int) -> Split:
    """Hold out `fraction` of each file (at least one sample of a file with two or more, none
    when `fraction` is 0), chosen by a seeded permutation."""
    train, val = [], []
    for k, count in enumerate(dataset._counts):
        start = int(dataset._starts[k])
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7919 + k)).numpy()
        held = 0 if fraction <= 0 or count < 2 else max(1, int(round(fraction * count)))
        val.append(np.sort(order[:held]) + start)
        train.append(np.sort(order[held:]) + start)
    if not sum(len(t) for t in train):
        raise TrainError("no training samples are left after holding out the validation split; "
                         "add data or lower --data-val-fraction.")
    return Split(train, val)


def epoch_order(parts: list[np.ndarray], ratios: list[float] | None, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: every training sample once, shuffled (ratios None), or as
    many samples as the files hold in all, drawn per file in proportion to `ratios` (with
    replacement) and shuffled. A function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if ratios is None:
        order = np.concatenate(parts)
    else:
        total = sum(len(p) for p in parts)
        weights = np.array(ratios, dtype=np.float64) / sum(ratios)
        counts = np.floor(weights * total).astype(int)
        chosen = [p[torch.randint(len(p), (n,), generator=g).numpy()] for p, n in zip(parts, counts)
                  if n > 0 and len(p) > 0]
        order = np.concatenate(chosen)
    return order[torch.randperm(len(order), generator=g).numpy()]


def collate(samples: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """Stack FaceDataset items into a batch on `device` (truth when every item has it)."""
    batch = {k: torch.stack([s[k] for s in samples]).to(device)
             for k in ("image", "landmarks", "mask", "valid", "principal")}
    batch["image"] = batch["image"].permute(0, 2, 3, 1)
    batch["flipped"] = torch.tensor([bool(s["flipped"]) for s in samples], device=device)
    batch["brightness"] = torch.tensor([float(s["brightness"]) for s in samples], device=device)
    if all("truth" in s for s in samples):
        batch["truth"] = {k: torch.stack([torch.as_tensor(s["truth"][k]) for s in samples]).to(device)
                          for k in samples[0]["truth"]}
    return batch


class EpochItems(torch.utils.data.Dataset):
    """FaceDataset items addressed by (epoch, index), so that a DataLoader worker draws the same
    augmentation for an item as the training process would (`FaceDataset.seed_augmentation`)."""

    def __init__(self, dataset: FaceDataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        self.dataset.seed_augmentation(self.seed, epoch)
        return self.dataset[index]


@dataclass
class StepResult:
    """The weighted terms of one step (floats), the prediction and its projected landmarks (B, M, 2) px."""
    terms: dict[str, float]
    prediction: Prediction
    landmarks: torch.Tensor


class Objective:
    """The training loss of a batch: render the prediction and apply the fit's objectives."""

    def __init__(self, net: FaceNet, forward: ForwardModel, config: TrainConfig, device: torch.device) -> None:
        model = forward.model
        self.net, self.forward, self.config = net, forward, config
        index = torch.as_tensor(model.landmarks["mediapipe478"], dtype=torch.long, device=device)
        self.valid = index >= 0
        self.index = index[self.valid]
        self.weights = landmark_weights("mediapipe478", 478, config.landmarks.contour_weight, device,
                                        model.landmark_reliability.get("mediapipe478"))[self.valid]
        self.mirror = (MirrorSampler(model.triangles, model.uvs, model.symmetry, device)
                       if model.symmetry is not None else None)
        self.generator = torch.Generator(device=device).manual_seed(config.data.seed)
        self.mean_chroma = chromaticity(torch.tensor(MEAN_SKIN, device=device))
        self.region = torch.as_tensor(model.regions.get("skin", np.arange(model.n_vertices)), device=device)
        self.skin_texels = skin_texels(model, net.spec.albedo_size, device)
        r = config.render
        self.settings = RenderSettings(size=0, spp=r.spp, integrator=r.integrator, max_depth=r.max_depth,
                                       envmap_height=r.envmap_height, sampler=r.sampler)

    def __call__(self, prediction: Prediction, batch: dict[str, Any], seed: int) -> tuple[torch.Tensor, StepResult]:
        cfg = self.config.losses
        state = self.net.state(prediction, batch["principal"])
        size = batch["image"].shape[1]
        vertices = self.forward.vertices(state)
        landmarks = self.forward.landmarks(state, vertices, self.index, size)
        mask = batch["mask"] * batch["valid"]
        target_lm = batch["landmarks"][:, self.valid]
        truth = batch.get("truth")

        def photo() -> torch.Tensor:
            # Only this term renders: with photo_weight 0 (geometry pre-training) a step costs the
            # network and the model's vertices, not Mitsuba. Item by item through one scene: a
            # batch's scenes alive together slow each other (mfface.itemwise).
            return itemwise_photometric(self.forward, state, replace(self.settings, size=size, seed=seed),
                                        vertices, batch["image"], mask)
        terms = weighted_terms(cfg, LOSS_WEIGHTS, {
            "photo": photo,
            "landmarks": lambda: landmark_loss(landmarks, target_lm, self.weights,
                                               self.config.landmarks.robust_scale),
            "identity": lambda: statistical_prior(state.identity),
            "expression": lambda: statistical_prior(state.expression),
            # The light's prior only beside the photometric term: alone it is the light's sole
            # gradient, and Adam would walk the light to black at the learning rate's pace.
            **({"light": lambda: sh_energy(state.sh)} if cfg.photo_weight else {}),
            **({"albedo": lambda: statistical_prior(state.albedo)} if state.albedo is not None else {}),
            **({"albedo_symmetry": lambda: symmetry_loss(state.diffuse, *self.mirror.sample(4096, self.generator))}
               if self.mirror is not None else {}),
            "albedo_smoothness": lambda: smoothness_loss(state.diffuse),
            "albedo_consistency": lambda: (chromaticity(state.diffuse) - self.mean_chroma).abs().mean(),
            **(self._supervised(state, truth, batch["flipped"], batch["brightness"]) if truth is not None else {}),
        })
        total = sum(terms.values())
        return total, StepResult({k: float(v.detach()) for k, v in terms.items()}, prediction,
                                 landmarks.detach())

    def _supervised(self, state, truth: dict[str, torch.Tensor], flipped: torch.Tensor,
                    brightness: torch.Tensor) -> dict[str, Callable]:
        """Supervised terms on synthetic truth, for items that were not flipped (a flipped face's
        identity is another person's, its light mirrored): coefficients and model-space vertices
        of identity and expression, which no 2D augmentation changes; the SH light as a white
        Lambertian surface sees it (`shading_error`: the bands the network lacks, and the parts of
        the truth a non-negative light of its bands cannot follow, cost what they cost), times the
        colour jitter's brightness (an exposure change is a brighter light); the diffuse map
        (contrast and saturation jitter are not undone: they stay a small noise on these two)."""
        keep = ~flipped
        if not bool(keep.any()):
            return {}
        terms: dict[str, Callable] = {}
        model = self.forward.model
        if "identity" in truth and "expression" in truth:
            k = min(state.identity.shape[1], truth["identity"].shape[1])

            def parameters() -> torch.Tensor:
                return ((state.identity[keep, :k] - truth["identity"][keep, :k]).pow(2).mean()
                        + (state.expression[keep] - truth["expression"][keep]).pow(2).mean())

            def vertices() -> torch.Tensor:
                predicted = model.vertices(state.identity[keep], state.expression[keep])[:, self.region]
                true = model.vertices(truth["identity"][keep].float(), truth["expression"][keep].float())[:, self.region]
                return (predicted - true).pow(2).sum(-1).mean()
            terms.update(parameters=parameters, vertices=vertices)
        if "sh" in truth:
            terms["light_truth"] = lambda: shading_error(
                state.sh[keep], truth["sh"][keep].float() * brightness[keep, None, None]).mean()
        if "diffuse" in truth:
            terms["diffuse_truth"] = lambda: diffuse_error(state.diffuse[keep], truth["diffuse"][keep],
                                                           self.skin_texels).mean()
        return terms


def check_truth_model(dataset: FaceDataset, model: MorphableModel) -> None:
    """Raise TrainError when a synthetic dataset file's truth was rendered with another face model
    (its `truth` group's `model_fingerprint`): its coefficients would be compared with the wrong basis."""
    for path, truth in zip(dataset.files, dataset.truth_models):
        fingerprint, name = truth.get("model_fingerprint"), truth.get("model")
        if fingerprint is not None and fingerprint != model.fingerprint():
            raise TrainError(f"{path}'s truth was rendered with the face model {name!r}, not {model.name!r}; "
                             f"train with --model {name} or make the dataset with this model.")


def skin_texels(model: MorphableModel, size: int, device: torch.device) -> torch.Tensor:
    """(size, size) bool: the texels of a square UV map covered by the skin region's triangles
    (every triangle for a model without a skin region); row 0 at the top, as the maps."""
    triangles = model.triangles
    if "skin" in model.regions:
        inside = np.zeros(model.n_vertices, dtype=bool)
        inside[model.regions["skin"]] = True
        triangles = triangles[inside[triangles].all(axis=1)]
    return torch.from_numpy(texel_map(model.uvs, triangles, size, dilate=0).mask).to(device)


def diffuse_error(predicted: torch.Tensor, true: torch.Tensor, texels: torch.Tensor) -> torch.Tensor:
    """Per item, the mean absolute error (linear RGB) over `texels` (H, W) bool between predicted
    maps (B, H, W, 3) and true textures (B, H', W', 3) area-averaged to (H, W) first."""
    target = torch.nn.functional.adaptive_avg_pool2d(true.float().permute(0, 3, 1, 2), predicted.shape[1:3])
    return (predicted - target.permute(0, 2, 3, 1)).abs()[:, texels].mean(dim=(1, 2))


@dataclass
class TrainSummary:
    """What a run did: steps done now and in all, seconds, images/s, last losses, validation."""
    steps_run: int = 0
    step: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    last: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


class Trainer:
    """One `mfface train` run in RUN_DIR (see the module doc); `run()` trains to the schedule's end."""

    def __init__(self, model: MorphableModel, config: TrainConfig, datasets: list[Path], run_dir: Path,
                 device: torch.device, info: RankInfo = RankInfo(), config_file_text: str | None = None,
                 backbone_weights: Path | None = None, init_weights: Path | None = None) -> None:
        self.model, self.config, self.run_dir, self.device, self.info = model, config, Path(run_dir), device, info
        if config.data.batch % info.world:
            raise TrainError(f"data.batch {config.data.batch} is not divisible by the {info.world} ranks; "
                             f"use a multiple of {info.world}.")
        self.per_rank = config.data.batch // info.world
        self.dataset = FaceDataset(datasets, Augmentation.training() if config.data.augment else None)
        check_truth_model(self.dataset, model)
        self.plain = FaceDataset(datasets, None)
        self.split = split(self.dataset, config.data.val_fraction, config.data.seed)
        self.ratios = mix_ratios(config, len(datasets))
        per_epoch = len(epoch_order(self.split.train, self.ratios, config.data.seed, 0)) // info.world
        self.batches_per_epoch = per_epoch // self.per_rank
        if self.batches_per_epoch < 1:
            raise TrainError(f"the training split has {per_epoch * info.world} samples, fewer than one batch "
                             f"of {config.data.batch}; lower --data-batch or add data.")
        spec = NetworkSpec(backbone=config.network.backbone, latent=config.network.latent,
                           sh_bands=config.network.sh_bands, albedo_size=config.network.albedo_size,
                           specular=config.network.specular, roughness=config.network.roughness,
                           crop=self.dataset.size, focal_ratio=config.network.focal_ratio)
        torch.manual_seed(config.data.seed)
        self.net = FaceNet(model, spec).to(device)
        self.forward = ForwardModel(model, device)
        self.objective = Objective(self.net, self.forward, config, device)
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.phase: str | None = None
        self.ddp: torch.nn.Module | None = None
        self.resumed_from: int | None = None
        self._writer = None
        self.config_text = config_file_text or to_toml(config)
        if (self.run_dir / CHECKPOINT).is_file():
            self._resume()
        elif init_weights is not None:
            self._load_init(init_weights)
        elif backbone_weights is not None:
            self._load_backbone(backbone_weights)

    # -- set-up ---------------------------------------------------------------------------------------
    def _load_backbone(self, path: Path) -> None:
        from mfface.learning.network import load_backbone

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise TrainError(f"{path} is not a readable state_dict ({str(e).splitlines()[0]}).") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TrainError(f"{path} is not a torchvision ResNet state_dict (name -> tensor).")
        try:
            load_backbone(self.net.encoder, state)
        except ValueError as e:
            raise TrainError(f"{path}: {e}") from None

    def _load_init(self, path: Path) -> None:
        """Start from a trained network (fine-tuning a pre-trained run): same model and shapes."""
        content = ckpt.load(path)
        ckpt.check_model(content, self.model, str(path))
        self._check_crop(content, path)
        try:
            self.net.load_state_dict(content["model_state"])
        except RuntimeError as e:
            raise TrainError(f"{path} is a network of other shapes than this run's [network] settings "
                             f"({str(e).splitlines()[0]}); use its settings ({content.get('spec')}).") from None

    def _check_crop(self, content: dict, path: Path) -> None:
        crop = content.get("spec", {}).get("crop")
        if crop != self.dataset.size:
            raise TrainError(f"{path} was trained on {crop} px crops but the datasets hold "
                             f"{self.dataset.size} px crops; use datasets of the same --size.")

    def _resume(self) -> None:
        path = self.run_dir / CHECKPOINT
        content = ckpt.load(path)
        self._check_same_run(content["config"])
        ckpt.check_model(content, self.model, str(path))
        self._check_crop(content, path)
        try:
            self.net.load_state_dict(content["model_state"])
        except RuntimeError as e:
            raise TrainError(f"{path} holds another network than this config builds ({str(e).splitlines()[0]}).") from None
        self.step = self.resumed_from = int(content["step"])
        if self.step < self.config.total_steps:
            self._enter_phase(phase_of(self.config, self.step))
            if content.get("phase") == self.phase:
                self.optimizer.load_state_dict(content["optimizer"])
                self.scheduler.load_state_dict(content["scheduler"])
        self.objective.generator.set_state(content["objective_rng"])
        ckpt.set_rng_state(content["rng"])

    def _check_same_run(self, saved_toml: str) -> None:
        """Refuse to resume a run whose settings differ beyond RESUMABLE_CHANGES, naming the keys."""
        import tempfile

        from mfface.learning.config import TrainConfig as Root

        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(saved_toml)
        try:
            saved = load_config(f.name, Root)
        except ConfigError as e:
            raise TrainError(f"{self.run_dir} holds a run whose config cannot be read ({e}).") from None
        finally:
            Path(f.name).unlink(missing_ok=True)
        old, new = config_to_dict(saved), config_to_dict(self.config)
        differ = [f"{s}.{k}" for s in new for k in new[s]
                  if old[s][k] != new[s][k] and f"{s}.{k}" not in RESUMABLE_CHANGES]
        if differ:
            raise TrainError(f"{self.run_dir} holds a run with other settings ({', '.join(differ)}); "
                             f"resume it with its own settings (--config {self.run_dir / 'config.toml'}) "
                             f"or train into another folder.")

    def _enter_phase(self, phase: str) -> None:
        """Freeze and unfreeze for `phase`, with a fresh Adam and cosine schedule over its steps."""
        s = self.config.schedule
        groups = self.net.parameter_groups()
        scale = s.joint_lr_scale if phase == "joint" else 1.0
        trainable = {"encoder": ("encoder",), "decoders": ("decoders",), "joint": ("encoder", "decoders")}[phase]
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in trainable)
        lrs = {"encoder": s.encoder_lr * scale, "decoders": s.decoder_lr * scale}
        self.optimizer = torch.optim.Adam([{"params": groups[n], "lr": lrs[n]} for n in trainable],
                                          weight_decay=s.weight_decay)
        length = {"encoder": s.encoder_steps, "decoders": s.decoder_steps, "joint": s.joint_steps}[phase]
        self.scheduler = cosine_decay(self.optimizer, length, floor=0.1)
        self.phase = phase
        self.ddp = self.net
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=None, broadcast_buffers=False)

    # -- the loop -------------------------------------------------------------------------------
    def _batch_keys(self, step: int) -> list[tuple[int, int]]:
        """(epoch, sample index) of each item of this rank's share of the batch of global `step`."""
        epoch, position = divmod(step, self.batches_per_epoch)
        order = epoch_order(self.split.train, self.ratios, self.config.data.seed, epoch)
        mine = order[self.info.rank::self.info.world]
        return [(epoch, int(i)) for i in mine[position * self.per_rank:(position + 1) * self.per_rank]]

    def _batch(self, step: int) -> dict[str, Any]:
        """This rank's share of the batch of global `step`, loaded here."""
        items = EpochItems(self.dataset, self.config.data.seed)
        return collate([items[key] for key in self._batch_keys(step)], self.device)

    def _batches(self, end: int) -> Iterator[dict[str, Any]]:
        """This rank's batches of the steps from the current one to `end`: loaded in this process,
        or ahead of the training step by `data.workers` DataLoader workers (spawned; the same
        items and augmentations either way)."""
        workers = self.config.data.workers
        if workers == 0:
            return (self._batch(step) for step in range(self.step, end))
        loader = torch.utils.data.DataLoader(
            EpochItems(self.dataset, self.config.data.seed), num_workers=workers, collate_fn=list,
            batch_sampler=map(self._batch_keys, range(self.step, end)), multiprocessing_context="spawn")
        return (collate(samples, self.device) for samples in loader)

    def _seed(self, step: int) -> int:
        """Render seed of this rank's items at `step` (item b uses seed + b)."""
        return (self.config.data.seed * 1_000_003 + (step * self.info.world + self.info.rank) * self.per_rank) % SEED_MODULUS

    def train_step(self, step: int, batch: dict[str, Any] | None = None) -> StepResult:
        """One optimisation step of global `step` on `batch` (None: load the step's batch here)."""
        if phase_of(self.config, step) != self.phase:
            self._enter_phase(phase_of(self.config, step))
        self.net.train()
        if self.phase == "decoders":
            self.net.encoder.eval()   # frozen: keep its batch-norm statistics
        batch = self._batch(step) if batch is None else batch
        prediction = self.ddp(batch["image"].permute(0, 3, 1, 2))
        total, result = self.objective(prediction, batch, self._seed(step))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.config.schedule.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.schedule.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        result.terms["total"] = float(total.detach())
        if not math.isfinite(result.terms["total"]):
            raise TrainError(f"training diverged at step {step + 1} (loss {result.terms['total']}); lower "
                             f"the learning rates or raise the priors, and resume from the last checkpoint.")
        return result

    def run(self, on_step: StepCallback | None = None, stop_after: int | None = None) -> TrainSummary:
        """Train from the current step to the schedule's end (or `stop_after` more steps)."""
        total = self.config.total_steps
        end = total if stop_after is None else min(total, self.step + stop_after)
        summary = TrainSummary(resumed_from=self.resumed_from)
        log = self.config.logging
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.toml", self.config_text)
        started, images = time.perf_counter(), 0
        batches = self._batches(end)
        while self.step < end:
            raise_if_requested()
            result = self.train_step(self.step, next(batches))
            self.step += 1
            images += self.config.data.batch
            summary.last = result.terms
            rate = images / max(time.perf_counter() - started, 1e-9)
            if on_step is not None:
                on_step(self.step, total, {**result.terms, "images_per_s": rate})
            if self.info.is_main and (self.step % log.log_every == 0 or self.step == end):
                self._log({"step": self.step, "phase": self.phase, "images_per_s": rate,
                           "lr": [g["lr"] for g in self.optimizer.param_groups], **result.terms})
            due_val = (self.step % log.validate_every == 0) if log.validate_every else (self.step % self.batches_per_epoch == 0)
            if due_val or self.step == end:
                summary.validation = self.validate()
                if self.info.is_main:
                    self._log({"step": self.step, "validation": summary.validation})
            if self.info.is_main and (self.step % log.preview_every == 0 or self.step == end):
                self.preview()
            if self.info.is_main and (self.step % log.checkpoint_every == 0 or self.step == end):
                self.save_checkpoint()
        if self.info.is_main and self.step >= total:
            self.save_weights()
        summary.steps_run, summary.step = images // self.config.data.batch, self.step
        summary.seconds = time.perf_counter() - started
        summary.images_per_s = images / max(summary.seconds, 1e-9)
        return summary

    # -- validation, previews, files --------------------------------------------------------------
    def _val_batches(self) -> list[np.ndarray]:
        order = np.concatenate(self.split.val) if self.split.val else np.array([], dtype=int)
        chunks = [order[i:i + self.per_rank] for i in range(0, len(order), self.per_rank)]
        limit = self.config.data.val_batches
        return chunks[:limit] if limit else chunks

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Held-out metrics (no augmentation): landmark error px (mean distance), photometric L1,
        and, with synthetic truth, the vertex error in mm after similarity alignment (median over
        the model's skin region, as the fit benchmark) and the diffuse map's error (`diffuse_error`,
        linear RGB); {} without a held-out split."""
        self.net.eval()
        rows: dict[str, list[float]] = {"landmark_px": [], "photo_l1": [], "vertex_mm": [], "diffuse_l1": []}
        for chosen in self._val_batches():
            batch = collate([self.plain[int(i)] for i in chosen], self.device)
            prediction = self.net(batch["image"].permute(0, 3, 1, 2))
            state = self.net.state(prediction, batch["principal"])
            settings = replace(self.objective.settings, size=batch["image"].shape[1], seed=12345)
            out = self.forward(state, settings, self.objective.index)
            target = batch["landmarks"][:, self.objective.valid]
            rows["landmark_px"] += (out.landmarks - target).norm(dim=-1).mean(-1).tolist()
            rows["photo_l1"].append(float(photometric_loss(out.image, out.coverage, batch["image"], batch["mask"])))
            truth = batch.get("truth")
            if truth is not None and "identity" in truth:
                fitted = self.model.vertices(state.identity, state.expression)[:, self.objective.region]
                true = self.model.vertices(truth["identity"].float(), truth["expression"].float())[:, self.objective.region]
                rows["vertex_mm"] += [float(np.median(aligned_distances(f.cpu().numpy(), t.cpu().numpy(), scale=True)))
                                      for f, t in zip(fitted, true)]
            if truth is not None and "diffuse" in truth:
                rows["diffuse_l1"] += diffuse_error(prediction.diffuse, truth["diffuse"],
                                                    self.objective.skin_texels).tolist()
        return {k: float(np.mean(v)) for k, v in rows.items() if v}

    @torch.no_grad()
    def preview(self) -> Path | None:
        """previews/step-N.png: input | render | overlay | diffuse, one row per validation item
        (up to 4; the first training items when there is no held-out split)."""
        from mfface.figures import labelled_strip, overlay, to_display
        from mfface.images import write_png
        from mfface.textures import resize_texture

        batches = self._val_batches()
        chosen = batches[0][:4] if batches else np.concatenate(self.split.train)[:4]
        batch = collate([self.plain[int(i)] for i in chosen], self.device)
        self.net.eval()
        prediction = self.net(batch["image"].permute(0, 3, 1, 2))
        size = batch["image"].shape[1]
        out = self.forward(self.net.state(prediction, batch["principal"]),
                           replace(self.objective.settings, size=size, spp=max(self.config.render.spp, 16),
                                   seed=54321))
        diffuse = resize_texture(prediction.diffuse, (size, size))
        rows = []
        for b in range(len(chosen)):
            photo, render = batch["image"][b].cpu().numpy(), out.image[b].cpu().numpy()
            rows.append(labelled_strip([("input", to_display(photo)), ("render", to_display(render)),
                                        ("overlay", to_display(overlay(photo, render, out.coverage[b].cpu().numpy()))),
                                        ("diffuse", to_display(diffuse[b].cpu().numpy()))], size))
        path = self.run_dir / "previews" / f"step-{self.step:07d}.png"
        write_png(path, np.concatenate(rows, axis=0), gamma=None)
        return path

    def _log(self, row: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl, and scalars to TensorBoard when installed."""
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in (row.get("validation") or row).items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(("val/" if "validation" in row else "train/") + key, value, row["step"])
            writer.flush()

    def _tensorboard(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer or None

    def _content(self) -> dict[str, Any]:
        return {**ckpt.header(self.net, self.model, self.config_text),
                "model_state": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def save_checkpoint(self) -> Path:
        """checkpoints/latest.pt: everything a resume needs."""
        path = self.run_dir / CHECKPOINT
        content = {**self._content(), "step": self.step, "phase": self.phase,
                   "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "rng": ckpt.rng_state(), "objective_rng": self.objective.generator.get_state()}
        ckpt.save(path, content)
        return path

    def save_weights(self) -> Path:
        """weights.pt: the trained network for `mfface predict` (no optimiser state)."""
        path = self.run_dir / WEIGHTS
        ckpt.save(path, {**self._content(), "step": self.step})
        return path

