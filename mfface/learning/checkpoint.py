"""Network checkpoints and weights: plain tensors and plain types, read with `weights_only=True`.

Two kinds of file, both `torch.save` of a dict of tensors, numbers, strings, lists and dicts (no
pickled objects, so loading cannot run code):
- a training checkpoint (`RUN_DIR/checkpoints/latest.pt`): the weights plus the optimiser, the
  scheduler, the step and every RNG state, for an exact resume;
- weights (`RUN_DIR/weights.pt`, what `mfface predict --weights` reads): the weights only.
Both carry `format`, `version`, the network spec, the parameter layout, the training config (TOML)
and the face model's name and fingerprint (`MorphableModel.fingerprint`), so weights trained for
another model, or another parameter layout, are refused before they are used. Written atomically.
"""
from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfface.atomic import atomic_path
from mfface.learning.network import FaceNet, NetworkSpec
from mfface.morphable.model import MorphableModel

FORMAT = "mfface-network"
VERSION = 1


class WeightsError(ValueError):
    """Weights or a checkpoint that cannot be used; the message says why and what to do."""


def header(net: FaceNet, model: MorphableModel, config_toml: str) -> dict[str, Any]:
    """What every file records about the network, the model and the run."""
    return {"format": FORMAT, "version": VERSION, "spec": dataclasses.asdict(net.spec),
            "layout": dataclasses.asdict(net.layout), "model": model.name,
            "model_fingerprint": model.fingerprint(), "config": config_toml}


def rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG states as tensors and plain lists (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(state), gauss]}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))


def save(path: str | os.PathLike, content: dict[str, Any]) -> None:
    """Write `content` atomically with torch.save."""
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file `save` wrote; WeightsError for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; give the weights.pt (or checkpoints/latest.pt) "
                           f"of an `mfface train` run.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001 - on a foreign file torch's legacy reader fails in any way (IndexError on text)
        raise WeightsError(f"{path} is damaged or not mfface network weights ({str(e).splitlines()[0]}); "
                           f"use another file or train again.") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise WeightsError(f"{path} is not an mfface network file (format {FORMAT!r}).")
    if content.get("version") != VERSION:
        raise WeightsError(f"{path} is version {content.get('version')} of the network format; this "
                           f"mfface reads version {VERSION}.")
    return content


def check_model(content: dict[str, Any], model: MorphableModel, source: str) -> None:
    """Refuse weights trained for another face model (or another version of it)."""
    if content.get("model_fingerprint") != model.fingerprint():
        raise WeightsError(f"{source} was trained for face model {content.get('model')!r} (fingerprint "
                           f"{content.get('model_fingerprint')}), not for {model.name!r} "
                           f"({model.fingerprint()}); use --model {content.get('model')} or weights "
                           f"trained for this model.")


def network_from(content: dict[str, Any], model: MorphableModel, source: str) -> FaceNet:
    """The FaceNet a file describes, with its weights, checked against `model`."""
    check_model(content, model, source)
    try:
        net = FaceNet(model, NetworkSpec(**content["spec"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source} describes a network this mfface cannot build ({e}).") from None
    if dataclasses.asdict(net.layout) != content.get("layout"):
        raise WeightsError(f"{source} predicts another parameter layout ({content.get('layout')}) than "
                           f"this model gives ({dataclasses.asdict(net.layout)}); train again for it.")
    try:
        net.load_state_dict(content["model_state"])
    except (RuntimeError, KeyError) as e:
        raise WeightsError(f"{source} holds weights of the wrong shapes for its own network "
                           f"({str(e).splitlines()[0]}); the file is damaged.") from None
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{source}: {name} holds NaN or infinite values (a run that diverged).")
    return net
