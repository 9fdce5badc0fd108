"""`mfface synth`'s configuration: every range a synthetic face is drawn from, one dataclass per part
of the face and the scene (TOML sections and `--<section>-<field>` options, as `FitConfig`).

Kept apart from `mfface.synthetic`, which draws and renders the faces, so that the CLI builds its
options without importing torch (as `mfface.tracking.config` and `mfface.learning.config` do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mfface.config import _f

ENVIRONMENTS = ("overcast", "sun", "window", "studio", "indoor", "flash")
BACKGROUND_KINDS = ("gradient", "noise", "photo")


@dataclass
class IdentityVariation:
    """Identity, drawn from the model's prior."""
    scale: float = _f(1.0, "Identity coefficients ~ N(0, scale^2) on every component of the model "
                      "(std units: 1 is the model's prior).", 0.0, 5.0)


@dataclass
class ExpressionVariation:
    """Sparse expressions."""
    max_active: int = _f(4, "Expression components set per face: 1..max_active, uniform (unless the "
                         "face is neutral).", 0, 1000)
    neutral: float = _f(0.15, "Probability of a neutral face (every expression coefficient 0).",
                        0.0, 1.0)
    symmetric: float = _f(0.5, "Probability that an active blendshape named *_L or *_R also sets its "
                          "partner, to a weight within +-0.15 of its own.", 0.0, 1.0)
    scale: float = _f(1.0, "Blend-weight models (ICT): weights ~ U(0, scale), clipped to the model's "
                      "expression range [0, 1]; PCA expression models: N(0, scale^2).", 0.0, 5.0)


@dataclass
class PoseVariation:
    """Head pose relative to the camera, each angle uniform within +-its maximum, in degrees."""
    max_yaw: float = _f(60.0, "Largest yaw (turn to the side), degrees.", 0.0, 90.0)
    max_pitch: float = _f(25.0, "Largest pitch (nod), degrees.", 0.0, 90.0)
    max_roll: float = _f(25.0, "Largest roll (in-plane tilt), degrees.", 0.0, 90.0)


@dataclass
class CameraVariation:
    """Focal length, framing and principal point of the crop."""
    focal_min: float = _f(500.0, "Shortest focal length in px of a reference_size crop (log-uniform "
                          "between min and max; at --size S it is scaled by S / reference_size).",
                          1.0, 1e6)
    focal_max: float = _f(5000.0, "Longest focal length in px of a reference_size crop.", 1.0, 1e6)
    reference_size: int = _f(224, "Crop side in px that the focal range refers to.", 16, 8192)
    fill_min: float = _f(0.6, "Smallest larger side of the model landmarks' box, as a fraction of the "
                         "crop side (prepare's default margin 0.25 frames faces at 1/1.5 = 0.667).",
                         0.1, 1.0)
    fill_max: float = _f(0.72, "Largest landmark-box side, as a fraction of the crop side.", 0.1, 1.0)
    centre_jitter: float = _f(0.03, "The landmark box's centre lies up to this fraction of the side "
                              "from the crop's centre, in x and in y.", 0.0, 0.5)
    principal_offset: float = _f(0.0, "The photo's centre (the principal point) lies up to this "
                                 "fraction of the side from the crop's centre, in x and in y, as in "
                                 "a crop of a face away from a photo's centre (0: the crop is the "
                                 "photo, boxes = [0, 0, S]).", 0.0, 10.0)


@dataclass
class LightVariation:
    """SH light projected from procedural environments (see `draw_light`, docs/datasets.md)."""
    environments: str = _f(",".join(ENVIRONMENTS), "Comma-separated environment kinds drawn with equal "
                           "probability, of: " + ", ".join(ENVIRONMENTS) + ".")
    exposure_min: float = _f(0.5, "Smallest exposure: the mean radiance of a white Lambertian surface "
                             "facing the camera (log-uniform between min and max).", 1e-3, 100.0)
    exposure_max: float = _f(1.6, "Largest exposure.", 1e-3, 100.0)
    white_balance_min: float = _f(0.5, "Least white-balance correction: the camera's white point moves "
                                  "this fraction (in mired) from daylight to the main light's colour "
                                  "temperature (1: the main light renders white).", 0.0, 1.0)
    white_balance_max: float = _f(1.0, "Most white-balance correction.", 0.0, 1.0)
    tilt: float = _f(10.0, "The environment's up axis tilts by up to this many degrees about the "
                     "camera's x and z axes (a camera that is not level).", 0.0, 90.0)
    window: Literal["hann", "lanczos", "none"] = _f(
        "lanczos", "SH window applied after the projection, against ringing (mfface.sh.window_factors).")


@dataclass
class AlbedoVariation:
    """Diffuse albedo: skin tone, its variation and painted facial features."""
    texture_size: int = _f(128, "Side of the face's textures in texels (the diffuse one is stored as "
                           "truth).", 16, 2048)
    lightness_min: float = _f(25.0, "Darkest skin base colour, CIE L* (ITA about -60 deg: very dark).",
                              0.0, 100.0)
    lightness_max: float = _f(72.0, "Lightest skin base colour, CIE L* (ITA about +60 deg: very "
                              "light).", 0.0, 100.0)
    features: float = _f(1.0, "Strength of the lips, brows and lash lines painted into the texture "
                         "(0: plain skin).", 0.0, 2.0)
    scale: float = _f(1.0, "Models with a statistical albedo: its coefficients ~ N(0, scale^2) (used "
                      "instead of the painted skin).", 0.0, 5.0)


@dataclass
class MaterialVariation:
    """Specular albedo (Schlick F0) and roughness, each uniform over the face."""
    specular_min: float = _f(0.02, "Smallest specular F0.", 0.0, 1.0)
    specular_max: float = _f(0.06, "Largest specular F0.", 0.0, 1.0)
    roughness_min: float = _f(0.25, "Smallest roughness.", 0.01, 1.0)
    roughness_max: float = _f(0.55, "Largest roughness.", 0.01, 1.0)


@dataclass
class BackgroundVariation:
    """What lies behind the face."""
    photo: float = _f(0.5, "Probability of a crop of a --backgrounds photo (when they are given); "
                      "otherwise a procedural background.", 0.0, 1.0)
    noise: float = _f(0.5, "Of the procedural backgrounds, the fraction of textured noise (the rest "
                      "are gradients).", 0.0, 1.0)


@dataclass
class FaceDetailVariation:
    """What the mesh lacks: the model has openings where the eyes and the mouth's inside are."""
    openings: bool = _f(True, "Paint eyes (sclera, iris, pupil) and the mouth's inside (teeth, dark "
                        "interior) into the mesh's eye and mouth openings instead of background.")
    gaze: float = _f(0.12, "Largest sideways gaze: the irises move up to this fraction of the eye's "
                     "width (up/down: a third of it).", 0.0, 0.5)


@dataclass
class SynthConfig:
    """Every range `mfface synth` draws from, one section per part of the face and the scene
    (TOML sections and `--<section>-<field>` options, as FitConfig)."""
    identity: IdentityVariation = field(default_factory=IdentityVariation)
    expression: ExpressionVariation = field(default_factory=ExpressionVariation)
    pose: PoseVariation = field(default_factory=PoseVariation)
    camera: CameraVariation = field(default_factory=CameraVariation)
    light: LightVariation = field(default_factory=LightVariation)
    albedo: AlbedoVariation = field(default_factory=AlbedoVariation)
    material: MaterialVariation = field(default_factory=MaterialVariation)
    background: BackgroundVariation = field(default_factory=BackgroundVariation)
    face: FaceDetailVariation = field(default_factory=FaceDetailVariation)

    def check(self) -> None:
        """Raise ValueError for a range whose minimum exceeds its maximum, or unknown kinds."""
        pairs = [("camera.focal", self.camera.focal_min, self.camera.focal_max),
                 ("camera.fill", self.camera.fill_min, self.camera.fill_max),
                 ("light.exposure", self.light.exposure_min, self.light.exposure_max),
                 ("light.white_balance", self.light.white_balance_min, self.light.white_balance_max),
                 ("albedo.lightness", self.albedo.lightness_min, self.albedo.lightness_max),
                 ("material.specular", self.material.specular_min, self.material.specular_max),
                 ("material.roughness", self.material.roughness_min, self.material.roughness_max)]
        for name, low, high in pairs:
            if low > high:
                raise ValueError(f"{name}_min ({low}) is larger than {name}_max ({high}).")
        self.environment_kinds()

    def environment_kinds(self) -> tuple[str, ...]:
        """The environment kinds to draw from (`light.environments`), checked."""
        kinds = tuple(k.strip() for k in self.light.environments.split(",") if k.strip())
        unknown = [k for k in kinds if k not in ENVIRONMENTS]
        if unknown or not kinds:
            raise ValueError(f"light.environments must list some of {', '.join(ENVIRONMENTS)}, "
                             f"separated by commas; got {self.light.environments!r}.")
        return kinds
