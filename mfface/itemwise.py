"""The photometric loss of a batch, rendered one item at a time through one Mitsuba scene.

A batch rendered at once holds one scene per item until its backward pass (each item has its own
light and camera, and PRB's backward re-renders the item's own scene), and every live Mitsuba scene
slows every render: Dr.Jit traces each virtual call over all registered instances. Measured at
128 px, 4 spp, forward + backward per item on 2 CPU cores: 176 ms alone, 533 ms in a batch of 8
(bench/RESULTS.md, "Live scenes slow each other"). Here each item is rendered and differentiated
before the next one updates the same scene, so a training step keeps one scene whatever its batch.

The value and the gradient are the batched `photometric_loss`'s: with E_b = sum(w_b |I_b - T_b|)
and W_b = sum(w_b) per item (`objectives.masked_l1_sums`; w = coverage x skin, no gradient),

    L = sum_b E_b / (3 max(sum_b W_b, 1)),

so each E_b is differentiated as soon as I_b exists, into detached copies of the renderer's inputs,
and the summed gradients, scaled by the denominator, reach the real inputs through a surrogate
whose value is 0: sum_k <x_k, g_k> - sum_k <x_k, g_k>.detach().
"""
from __future__ import annotations

from dataclasses import replace

import torch

from mfface.forward import ForwardModel, RenderSettings
from mfface.objectives import masked_l1_sums
from mfface.state import FaceState

RENDERED = ("diffuse", "specular", "roughness", "sh")


def itemwise_photometric(forward: ForwardModel, state: FaceState, settings: RenderSettings,
                         vertices: torch.Tensor, target: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """`photometric_loss(forward.render(state, settings, vertices), target, skin)`, equal in value
    and gradient (item b with seed settings.seed + b, as a batched render), rendered item by item.

    vertices (B, V, 3) camera-space mm (`forward.vertices(state)`); target (B, S, S, 3) linear;
    skin (B, S, S). Gradients reach vertices and the state's maps and light; the renderer's
    backward runs inside this call, so the returned loss is differentiated once, by the caller."""
    inputs = {"vertices": vertices, **{name: getattr(state, name) for name in RENDERED}}
    leaves = {name: t.detach().requires_grad_(t.requires_grad) for name, t in inputs.items()}
    local = replace(state, **{name: leaves[name] for name in RENDERED})
    error = torch.zeros((), device=vertices.device)
    weight = torch.zeros((), device=vertices.device)
    for b in range(state.batch):
        image, coverage = forward.render(local.item(b), replace(settings, seed=settings.seed + b),
                                         leaves["vertices"][b:b + 1])
        item_error, item_weight = masked_l1_sums(image, target[b:b + 1], coverage * skin[b:b + 1])
        if item_error.requires_grad:
            item_error.backward()
        error, weight = error + item_error.detach(), weight + item_weight.detach()
    scale = 1.0 / (3.0 * weight.clamp_min(1.0))
    linear = sum(((t * leaves[name].grad).sum() for name, t in inputs.items() if leaves[name].grad is not None),
                 torch.zeros((), device=vertices.device))
    return scale * (error + linear - linear.detach())
