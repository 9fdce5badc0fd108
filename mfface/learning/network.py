"""The face network: a ResNet encoder, parameter heads and albedo decoders, in plain torch.

DeepNextFace's design (DESIGN.md): an ImageNet-style ResNet turns a face crop into a latent code;
fully connected heads regress the morphable model's identity and expression, the head pose, the
focal length and the SH light; two small convolutional decoders predict corrections to a mean
skin albedo as UV maps (diffuse, and optionally specular). Nothing here knows Mitsuba: the
prediction becomes a `FaceState` (`FaceNet.state`), which the forward model renders.

Conventions
- Input: linear RGB crops (B, 3, S, S) in [0, 1] (what `FaceDataset` returns). They are
  gamma-encoded (1/2.2) and normalised with ImageNet's mean and std inside `forward`, so weights
  pretrained on display-referred ImageNet photos see what they were trained on.
- The encoder's modules are named exactly as torchvision's ResNet (`conv1`, `bn1`, `layer1`..
  `layer4`, `fc`), so `load_backbone` reads a torchvision state_dict (`fc` included when its shape
  matches the latent size, 1000 by default, as DeepNextFace's 1000-d latent).
- Albedo: for a model with a statistical albedo (Basel + AlbedoMM) the head predicts its
  coefficients and the diffuse decoder a correction to the baked statistical albedo; for a model
  without one (ICT) the decoder corrects a constant mean skin tone (`MEAN_SKIN`).
- Parameters follow `mfface.state.ParameterLayout`. The head predicts `raw` and the vector is
  `reference + scale * raw`: `reference` is the mean face, frontal, at a typical distance and focal,
  under ambient light; `scale` puts every raw output at order one (mm and log-focal values differ by
  orders of magnitude). The distance is `reference * exp(0.2 raw)`, never behind the camera, and
  the lateral translation is in units of it. The head's last layer and the decoders' last convolutions start at zero,
  so the first prediction is exactly the reference (the advice of DECA's and Deep3DFaceRecon's
  authors). Blend weights of blendshape models are kept in their range by a straight-through
  clamp (the forward pass clamps, the gradient passes unchanged, like the fit's projected steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mfface.morphable.model import MorphableModel
from mfface.sh import initial_coefficients, nonnegative
from mfface.state import FaceState, ParameterLayout
from mfface.textures import StatisticalAlbedo

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GAMMA = 2.2
# Linear diffuse albedo the decoders correct: a mid skin tone (between mfface.synthetic's dark and
# light tones), and the Schlick F0 of skin for the specular map.
MEAN_SKIN = (0.42, 0.29, 0.22)
MEAN_SPECULAR = 0.04
# Bounds of the predicted camera relative to the reference: log distance (0.5x to 4x), log focal
# (0.25x to 4x), lateral offset (in units of the distance).
DEPTH_RANGE = (math.log(0.5), math.log(4.0))
FOCAL_RANGE = (math.log(0.25), math.log(4.0))
LATERAL_RANGE = 0.5
# The predicted light is kept at least LIGHT_FLOOR times its mean everywhere, checked on a
# LIGHT_GRID x 2 LIGHT_GRID lat-long grid (exact enough for the network's few bands).
LIGHT_FLOOR, LIGHT_GRID = 0.02, 32
BACKBONES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
             "resnet50": ("bottleneck", (3, 4, 6, 3))}


# -- the ResNet encoder (torchvision's layout and names) -------------------------------------------

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions with a residual connection (ResNet-50, v1.5)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18/34/50 from the image to a `latent`-dimensional code (torchvision's modules; `fc`
    maps the pooled features to the latent code, DeepNextFace's 1000-d latent by default)."""

    def __init__(self, backbone: str = "resnet18", latent: int = 1000) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
        kind, blocks = BACKBONES[backbone]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.backbone = backbone
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, blocks[0], 1)
        self.layer2 = self._layer(block, 128, blocks[1], 2)
        self.layer3 = self._layer(block, 256, blocks[2], 2)
        self.layer4 = self._layer(block, 512, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, latent)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, block: type, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def load_backbone(encoder: ResNetEncoder, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision ResNet state_dict into `encoder`; returns the names left out.

    Every backbone tensor must be present with its shape (a state_dict of another depth is
    refused); `fc` is taken only when its shape matches this encoder's latent size."""
    own = encoder.state_dict()
    skipped = [k for k in ("fc.weight", "fc.bias") if k in state_dict and state_dict[k].shape != own[k].shape]
    wanted = {k: v for k, v in state_dict.items() if k not in skipped}
    missing = [k for k in own if k not in wanted and not k.startswith("fc.")]
    wrong = [k for k in own if k in wanted and wanted[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(f"these weights are not a torchvision {encoder.backbone} "
                         f"({len(missing)} tensors missing, {len(wrong)} of another shape, e.g. "
                         f"{(missing + wrong)[0]}).")
    unexpected = [k for k in wanted if k not in own]
    encoder.load_state_dict({k: v for k, v in wanted.items() if k in own}, strict=False)
    return skipped + unexpected


# -- heads and decoders --------------------------------------------------------------------------

class AlbedoDecoder(nn.Module):
    """Latent code -> a UV map correction (B, size, size, channels): a linear layer to an 8x8x256
    grid, then upsample-and-convolve blocks to `size` and a final 3x3 convolution (log2(size/8) + 2
    convolutions: 7 at 256 px, as DeepNextFace's decoders). The last convolution starts at zero."""

    def __init__(self, latent: int, size: int = 128, channels: int = 3, width: int = 256) -> None:
        super().__init__()
        steps = int(round(math.log2(size / 8)))
        if 8 * 2 ** steps != size or steps < 1:
            raise ValueError(f"decoder size {size} must be 8 times a power of two (16, 32, ..., 256).")
        self.size, self.width = size, width
        self.fc = nn.Linear(latent, width * 64)
        blocks, c = [], width
        for i in range(steps):
            out = max(width // 2 ** (i + 1), 32)
            blocks += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(c, out, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                       nn.Conv2d(out, out, 3, 1, 1) if i == steps - 1 else nn.Identity(),
                       nn.LeakyReLU(0.2, inplace=True) if i == steps - 1 else nn.Identity()]
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(c, channels, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc(latent), 0.2).reshape(-1, self.width, 8, 8)
        return self.out(self.blocks(x)).permute(0, 2, 3, 1)


def soft_bound(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """x near 0 (slope 1 at 0), saturating smoothly at `low` < 0 < `high` (tanh on each side)."""
    return torch.where(x >= 0, high * torch.tanh(x / high), low * torch.tanh(x / low))


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """clamp(x, low, high) in the forward pass, identity in the backward pass."""
    return x + (x.clamp(low, high) - x).detach()


@dataclass
class Prediction:
    """One forward pass: `vector` (B, layout.size) in `ParameterLayout` order; `diffuse` and
    `specular` (B, T, T, 3) linear UV maps (row 0 at the top); `latent` (B, L)."""
    vector: torch.Tensor
    diffuse: torch.Tensor
    specular: torch.Tensor
    latent: torch.Tensor


@dataclass(frozen=True)
class NetworkSpec:
    """What fixes a network's shapes: backbone, latent size, SH bands, decoder size, whether the
    specular map is predicted, the constant roughness, and the crop size and focal prior the
    reference pose was made for (focal = focal_ratio * crop px)."""
    backbone: str = "resnet18"
    latent: int = 1000
    sh_bands: int = 3
    albedo_size: int = 128
    specular: bool = False
    roughness: float = 0.4
    crop: int = 224
    focal_ratio: float = 2.5
    fill: float = 0.6


class FaceNet(nn.Module):
    """Encoder + parameter head + albedo decoders for one morphable model."""

    def __init__(self, model: MorphableModel, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layout = ParameterLayout.for_model(model, spec.sh_bands)
        self.expression_range = model.expression_range
        self.encoder = ResNetEncoder(spec.backbone, spec.latent)
        self.head = nn.Linear(spec.latent, self.layout.size)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.diffuse_decoder = AlbedoDecoder(spec.latent, spec.albedo_size, 3)
        self.specular_decoder = AlbedoDecoder(spec.latent, spec.albedo_size, 3) if spec.specular else None
        # A model with a statistical albedo: the head predicts its coefficients, the decoder the
        # correction to that albedo (DeepNextFace's delta maps); otherwise to the mean skin tone.
        self.statistical = (StatisticalAlbedo(model, spec.albedo_size) if model.diffuse_albedo is not None
                            else None)
        reference, scale = reference_vector(model, self.layout, spec)
        self.register_buffer("reference", reference)
        self.register_buffer("scale", scale)
        self.register_buffer("mean_skin", torch.tensor(MEAN_SKIN))
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1))

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Linear RGB (B, 3, S, S) -> gamma-encoded, ImageNet-normalised network input."""
        return (images.clamp(0.0, 1.0) ** (1.0 / GAMMA) - self.image_mean) / self.image_std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent code (B, L) of linear RGB crops (B, 3, S, S)."""
        return self.encoder(self.normalise(images))

    def decode(self, latent: torch.Tensor) -> Prediction:
        """Parameters and maps from a latent code (B, L)."""
        vector = self._vector(self.head(latent))
        if self.expression_range is not None:
            part = self.layout.slices()["expression"]
            vector = torch.cat([vector[:, :part.start],
                                straight_through_clamp(vector[:, part], *self.expression_range),
                                vector[:, part.stop:]], dim=1)
        base = (self.mean_skin if self.statistical is None else
                self.statistical.texture(vector[:, self.layout.slices()["albedo"]]))
        diffuse = straight_through_clamp(base + self.diffuse_decoder(latent), 0.0, 1.0)
        specular = (MEAN_SPECULAR + self.specular_decoder(latent) if self.specular_decoder is not None
                    else torch.full_like(diffuse, MEAN_SPECULAR))
        return Prediction(vector, diffuse, straight_through_clamp(specular, 0.0, 1.0), latent)

    def forward(self, images: torch.Tensor) -> Prediction:
        return self.decode(self.encode(images))

    def _vector(self, raw: torch.Tensor) -> torch.Tensor:
        """The layout vector of raw head outputs (B, P): reference + scale * raw, except the camera:
        the depth is reference * exp(d) and the focal reference * exp(f) with d and f softly bounded
        (`soft_bound`: DEPTH_RANGE, FOCAL_RANGE), so that no prediction puts the camera inside or
        behind the head (where projections blow up and pass no gradient back), and the lateral
        translation is in units of the depth (an angle, whatever the distance), bounded too."""
        vector = self.reference + self.scale * raw
        part = self.layout.slices()
        t, f = part["translation"], part["log_focal"]
        z = t.stop - 1
        depth = self.reference[z] * torch.exp(soft_bound(self.scale[z] * raw[:, z:z + 1], *DEPTH_RANGE))
        lateral = self.reference[t.start:z] + soft_bound(self.scale[t.start:z] * raw[:, t.start:z],
                                                         -LATERAL_RANGE, LATERAL_RANGE) * depth
        log_focal = self.reference[f] + soft_bound(self.scale[f] * raw[:, f], *FOCAL_RANGE)
        return torch.cat([vector[:, :t.start], lateral, depth, log_focal, vector[:, f.stop:]], dim=1)

    def state(self, prediction: Prediction, principal: torch.Tensor | None = None) -> FaceState:
        """The FaceState of a prediction for crops of `spec.crop` px whose principal point is
        `principal` (B, 2) px (None = the crop's centre).

        The head predicts the lateral translation from the ray through the crop's centre, where
        the face is (the crops are made around it), not from the optical axis, which may lie far
        outside the crop: t_xy = t_xy(predicted) + (crop centre - principal) * t_z / focal."""
        roughness = torch.full_like(prediction.diffuse[..., :1], self.spec.roughness)
        state = self.layout.to_state(prediction.vector, prediction.diffuse, prediction.specular,
                                     roughness, principal)
        state.sh = nonnegative(state.sh, LIGHT_FLOOR, LIGHT_GRID)   # as the fit's light: never clamped
        if principal is not None:
            centre = torch.full_like(principal, self.spec.crop / 2.0)
            shift = (centre - principal) * state.translation[:, 2:] / state.focal[:, None]
            state.translation = torch.cat([state.translation[:, :2] + shift, state.translation[:, 2:]], 1)
        return state

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{'encoder': encoder + head, 'decoders': the albedo decoders} for the training phases."""
        decoders = [self.diffuse_decoder] + ([self.specular_decoder] if self.specular_decoder else [])
        return {"encoder": [*self.encoder.parameters(), *self.head.parameters()],
                "decoders": [p for d in decoders for p in d.parameters()]}


def reference_vector(model: MorphableModel, layout: ParameterLayout,
                     spec: NetworkSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference, scale), each (layout.size,): the mean face, frontal, filling `spec.fill` of a
    `spec.crop` px crop at focal `spec.focal_ratio * crop`, under white ambient light of radiance
    1; and the scale of each raw head output (1 std for shape, 1 for the 6D rotation, 10% of the
    distance for lateral translation, 0.2 for the log of the distance, 0.3 for log focal and SH)."""
    focal = spec.focal_ratio * spec.crop
    index = model.landmarks.get("mediapipe478")
    points = model.mean_shape[index[index >= 0]] if index is not None else model.mean_shape
    width = float(points[:, 0].max() - points[:, 0].min())
    depth = focal * width / (spec.fill * spec.crop)
    part = layout.slices()
    reference = torch.zeros(layout.size)
    reference[part["rotation"]] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    reference[part["translation"]] = torch.tensor([0.0, 0.0, depth])
    reference[part["log_focal"]] = math.log(focal)
    reference[part["sh"]] = initial_coefficients(spec.sh_bands, 1.0).reshape(-1)
    scale = torch.ones(layout.size)
    scale[part["translation"]] = torch.tensor([0.1, 0.1, 0.2])   # of the depth; the depth's is a log
    scale[part["log_focal"]] = 0.3
    scale[part["sh"]] = 0.3
    return reference, scale
