"""Export a trained FaceNet to TorchScript, so that it runs without mfface, Mitsuba or Python code.

The exported module takes linear RGB crops (B, 3, S, S) in [0, 1] (S = the network's input size)
and returns (vector, diffuse, specular): the `ParameterLayout` vector (B, P) and the UV maps
(B, T, T, 3). `layout.json` beside it (in the same folder, `<name>.json`) names the vector's fields
and slices, the reference crop size and the face model, so a user in another program (C++ through
libtorch, or plain torch) can read the parameters. Saved atomically.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from mfface.atomic import atomic_path, write_text
from mfface.learning.network import FaceNet


class _Exported(torch.nn.Module):
    """FaceNet's forward pass as plain tensors (TorchScript does not carry dataclasses)."""

    def __init__(self, net: FaceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prediction = self.net(images)
        return prediction.vector, prediction.diffuse, prediction.specular


def export_torchscript(net: FaceNet, path: str | Path, model_name: str) -> Path:
    """Trace `net` (in eval mode) to TorchScript at `path`; writes `path` with suffix .json beside
    it describing the outputs. Returns the JSON's path."""
    path = Path(path)
    net = net.eval()
    example = torch.rand(1, 3, net.spec.crop, net.spec.crop)
    with torch.no_grad():
        traced = torch.jit.trace(_Exported(net), example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    description = {"format": "mfface-network-torchscript", "input": f"linear RGB (B, 3, {net.spec.crop}, "
                   f"{net.spec.crop}) in [0, 1]", "outputs": ["vector", "diffuse", "specular"],
                   "layout": {name: [s.start, s.stop] for name, s in net.layout.slices().items()},
                   "spec": dataclasses.asdict(net.spec), "model": model_name,
                   "rotation": "6D: the first two columns of R_head; model->camera R = diag(1,-1,-1) @ R_head",
                   "translation": "camera space mm, lateral part measured from the ray through the crop "
                                  "centre (see mfface.learning.network.FaceNet.state)"}
    meta = path.with_suffix(".json")
    write_text(meta, json.dumps(description, indent=1))
    return meta
