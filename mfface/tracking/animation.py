"""animation.json and animation.csv: per-frame time, head pose and expression curves.

Per frame: `frame` (grid index in the source, 0 = its first frame), `time_s` (= frame / fps),
`status` (tracked, lost: no face or a bad fit, interpolated from the frames around it;
unreadable: no image, interpolated too), head rotation as yaw, pitch, roll in degrees
(mfface.camera's convention: intrinsic Y-X'-Z'' about the model's axes after the frontal pose;
positive yaw turns the nose to the subject's left = image right, positive pitch nods down,
positive roll tilts the head counter-clockwise in the image) and as a quaternion (x, y, z, w) of
R_head, translation in mm in the camera frame (OpenCV: +x right, +y down, +z forward; the head's
model origin), the landmark RMS in px of the video (tracked frames), and the expression curves.

Curves: for a blendshape model (ICT) the model's expression names and blend weights in [0, 1]
(ICT's names are ARKit's, with `_L`/`_R` for the face's left/right side: `eyeBlink_L` is ARKit's
`eyeBlinkLeft`); with curve_names = 'arkit' Apple's 52 names instead (`ARKIT_NAMES`: ICT's split
`browInnerUp_L/_R` and `cheekPuff_L/_R` averaged, `tongueOut` 0 because the model has no tongue,
ICT's `cheekRaiser_L/_R` left out). For a PCA expression model (Basel) the coefficients in
standard deviations.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

import numpy as np

from mfface.atomic import write_text
from mfface.tracking.gltf_animation import head_quaternions

TRACK_FORMAT = "mfface-track"
# Apple ARKit's 52 blendshape locations (ARFaceAnchor.BlendShapeLocation raw values), in the order
# of Live Link Face's CSV.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
    "noseSneerRight", "tongueOut",
)


def arkit_sources(model_names: list[str]) -> dict[str, list[int]]:
    """{ARKit name: indices of the model's shapes averaged into it ([] = not in the model)}.

    A model name X_L / X_R is ARKit's XLeft / XRight; ARKit names without a side (browInnerUp,
    cheekPuff) take the mean of the model's two sides when it splits them. Raises ValueError
    when the model has none of ARKit's shapes (a PCA expression model)."""
    lookup = {name: i for i, name in enumerate(model_names)}
    sources: dict[str, list[int]] = {}
    for name in ARKIT_NAMES:
        candidates = [name]
        for side, suffix in (("Left", "_L"), ("Right", "_R")):
            if name.endswith(side):
                candidates.append(name[:-len(side)] + suffix)
        if name in ("browInnerUp", "cheekPuff"):
            candidates += [name + "_L", name + "_R"]
        found = [lookup[c] for c in candidates if c in lookup]
        sources[name] = found[:1] if name in lookup else found
    if not any(sources.values()):
        raise ValueError("the model's expressions are not ARKit blendshapes; use curve_names = 'model'.")
    return sources


@dataclass
class Curves:
    """Named expression curves: `names` (C,), `values` (T, C), `kind` 'blend weights' or
    'coefficients', `naming` 'model' or 'arkit', `untracked` names always 0 (not in the model)."""
    names: list[str]
    values: np.ndarray
    kind: str
    naming: str
    untracked: list[str]


def expression_curves(expression: np.ndarray, model_names: list[str], blendshapes: bool,
                      naming: str = "model") -> Curves:
    """The curves written for expression (T, K): the model's, or ARKit's 52 (see the module doc)."""
    kind = "blend weights" if blendshapes else "coefficients"
    if naming == "model":
        return Curves(list(model_names), np.asarray(expression, dtype=np.float64), kind, naming, [])
    if not blendshapes:
        raise ValueError("curve_names = 'arkit' needs a blendshape model (ICT); this model's expressions "
                         "are PCA coefficients.")
    sources = arkit_sources(model_names)
    values = np.stack([expression[:, idx].mean(1) if idx else np.zeros(len(expression))
                       for idx in sources.values()], axis=1)
    return Curves(list(ARKIT_NAMES), values, kind, naming, [n for n, idx in sources.items() if not idx])


def frame_rows(times: np.ndarray, status: list[str], euler: np.ndarray, translation: np.ndarray,
               rms_px: np.ndarray, curves: Curves, first_frame: int = 0) -> list[dict]:
    """One JSON-ready dict per frame (see the module docstring)."""
    quaternions = head_quaternions(euler)
    rows = []
    for t in range(len(times)):
        yaw, pitch, roll = (math.degrees(a) for a in euler[t])
        rows.append({
            "frame": first_frame + t, "time_s": round(float(times[t]), 6), "status": status[t],
            "rotation_deg": {"yaw": round(yaw, 4), "pitch": round(pitch, 4), "roll": round(roll, 4)},
            "rotation_quaternion_xyzw": [round(float(q), 7) for q in quaternions[t]],
            "translation_mm": [round(float(v), 4) for v in translation[t]],
            "landmark_rms_px": None if not np.isfinite(rms_px[t]) else round(float(rms_px[t]), 4),
            "curves": {n: round(float(v), 5) for n, v in zip(curves.names, curves.values[t])},
        })
    return rows


def write_animation_json(path, header: dict, rows: list[dict]) -> None:
    """animation.json: `header` (format, source, model, camera, conventions, summary) + frames."""
    document = {"format": TRACK_FORMAT, "version": 1, **header, "frames": rows}
    write_text(path, json.dumps(document, indent=1, allow_nan=False))


CSV_POSE = ("yaw_deg", "pitch_deg", "roll_deg", "tx_mm", "ty_mm", "tz_mm")


def write_animation_csv(path, rows: list[dict], curves: Curves) -> None:
    """animation.csv: frame, time_s, status, yaw/pitch/roll (deg), tx/ty/tz (mm), then one column
    per curve, one row per frame."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["frame", "time_s", "status", *CSV_POSE, *curves.names])
    for row in rows:
        r = row["rotation_deg"]
        writer.writerow([row["frame"], f"{row['time_s']:.6f}", row["status"],
                         *(f"{r[k]:.4f}" for k in ("yaw", "pitch", "roll")),
                         *(f"{v:.4f}" for v in row["translation_mm"]),
                         *(f"{row['curves'][n]:.5f}" for n in curves.names)])
    write_text(path, out.getvalue())
