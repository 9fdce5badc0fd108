"""Landmark detection (MediaPipe) and landmark files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import data_file
from mfface.landmarks import (MEDIAPIPE_TO_IBUG68, MIN_FACE_PX, LandmarkCheckError, LandmarkDetector,
                              LandmarkFileError, NoFaceError, check_landmarks, detection_windows,
                              landmark_handedness, mediapipe_to_ibug68, read_landmarks, square_crop,
                              write_landmarks_json)


@pytest.fixture(scope="module")
def detector():
    with LandmarkDetector() as d:
        yield d


def _rgb(relative: str) -> np.ndarray:
    return np.asarray(Image.open(data_file(relative)).convert("RGB"))


def test_astronaut_eyes_and_nose_where_expected(detector):
    img = _rgb("images/astronaut.png")
    lm = detector.detect(img)
    assert lm.shape == (478, 2)
    right_iris, left_iris, nose_tip = lm[468], lm[473], lm[1]  # subject's right iris is image-left
    # Positions read off the 512x512 image by eye: irises near (203, 101) and (247, 103), nose (223, 130).
    assert np.allclose(right_iris, (203, 101), atol=6)
    assert np.allclose(left_iris, (247, 103), atol=6)
    assert np.allclose(nose_tip, (223, 130), atol=6)
    assert right_iris[1] < nose_tip[1] and left_iris[1] < nose_tip[1]


def test_linear_float_input_matches_uint8(detector):
    img = _rgb("images/astronaut.png")
    linear = (img.astype(np.float32) / 255.0) ** 2.2
    diff = detector.detect(linear) - detector.detect(img)
    assert np.abs(diff).max() < 2.0


def test_largest_of_two_faces(detector):
    # A 256-px face crop next to a 160-px copy of itself, the small one first.
    crop = _rgb("images/astronaut.png")[0:256, 96:352]
    small = np.asarray(Image.fromarray(crop).resize((160, 160), Image.BILINEAR))
    canvas = np.zeros((256, 416, 3), np.uint8)
    canvas[48:208, :160] = small
    canvas[:, 160:] = crop
    big = detector.detect(crop)
    lm = detector.detect(canvas)
    assert np.abs(lm - (big + (160, 0))).mean() < 2.0
    only_small = canvas.copy()
    only_small[:, 160:] = 0
    assert detector.detect(only_small)[:, 0].max() < 160


def test_blank_image_raises_no_face(detector):
    with pytest.raises(NoFaceError, match=f"No face was found in blank.png.*about {MIN_FACE_PX} px wide"):
        detector.detect(np.full((128, 128, 3), 127, np.uint8), name="blank.png")
    assert issubclass(NoFaceError, ValueError)


def test_detect_many_reuses_one_mesh(detector):
    img = _rgb("images/takeo.ppm")
    out = detector.detect_many([img, img[:, ::-1]])
    assert len(out) == 2 and all(o.shape == (478, 2) for o in out)


def test_takeo_pts_parses():
    pts, scheme = read_landmarks(data_file("images/takeo.pts"))
    assert scheme == "ibug68" and pts.shape == (68, 2)
    raw = np.loadtxt(data_file("images/takeo.pts"), skiprows=3, max_rows=68)
    np.testing.assert_allclose(pts, raw - 0.5)


def test_mediapipe_agrees_with_hand_placed_ibug(detector):
    """MediaPipe on takeo, mapped to iBUG-68, vs. the hand-placed points (150x225 px, IOD ~41 px).
    Measured: mean 2.3 px over all 68, jaw contour ~3.9 px, the inner 51 ~1.8 px."""
    truth, _ = read_landmarks(data_file("images/takeo.pts"))
    mapped = mediapipe_to_ibug68(detector.detect(_rgb("images/takeo.ppm")))
    err = np.linalg.norm(mapped - truth, axis=1)
    assert err.mean() < 3.5
    assert err[17:].mean() < 2.5
    assert np.median(err) < 3.0


def test_mapping_table_shape():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    assert all(0 <= i < 468 for idx in MEDIAPIPE_TO_IBUG68 for i in idx)
    with pytest.raises(ValueError):
        mediapipe_to_ibug68(np.zeros((68, 2)))


def test_formats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pts478 = rng.uniform(0, 200, (478, 2))
    write_landmarks_json(tmp_path / "a.json", pts478)
    got, scheme = read_landmarks(tmp_path / "a.json")
    assert scheme == "mediapipe478"
    np.testing.assert_allclose(got, pts478, atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind

    pts68 = rng.uniform(0, 200, (68, 2))
    np.savetxt(tmp_path / "b.txt", pts68)
    np.save(tmp_path / "c.npy", pts68)
    (tmp_path / "d.pts").write_text("\n".join(f"{x} {y}" for x, y in pts68))
    for name, expected in [("b.txt", pts68), ("c.npy", pts68), ("d.pts", pts68 - 0.5)]:
        got, scheme = read_landmarks(tmp_path / name)
        assert scheme == "ibug68"
        np.testing.assert_allclose(got, expected)
    got, scheme = read_landmarks(_write(tmp_path / "e.txt", np.zeros((468, 2))))
    assert scheme == "mediapipe478" and got.shape == (468, 2)


def _write(path, points):
    np.savetxt(path, points)
    return path


@pytest.mark.parametrize("name, content, message", [
    ("a.pts", "version: 1\nn_points: 68\n{\n1 2\n}\n", "declares n_points: 68 but lists 1"),
    ("b.txt", "1 2\n3 4\n", "2 landmarks match no known scheme"),
    ("c.json", json.dumps({"pts": []}), "must be a JSON object with a 'points' list"),
    ("d.json", "{not json", "cannot be parsed"),
    ("e.json", json.dumps({"scheme": "ibug68", "points": [[0, 0]] * 478}), "says scheme 'ibug68'"),
    ("f.txt", "1 2 3\n" * 68, "must be N x 2"),
    ("g.csv", "1 2\n", "unknown suffix"),
    ("h.txt", "a b\n" * 68, "does not hold numbers"),
])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(LandmarkFileError, match=message):
        read_landmarks(path)


def test_missing_file(tmp_path):
    with pytest.raises(LandmarkFileError, match="does not exist"):
        read_landmarks(tmp_path / "nope.pts")


def test_detection_writes_nothing_to_stderr():
    """MediaPipe's native INFO/WARNING lines must not reach the user's terminal (fresh process:
    some lines are printed only when its first graph loads)."""
    import subprocess
    import sys

    code = ("import time; import numpy as np; from PIL import Image\n"
            "from mfface.landmarks import LandmarkDetector\n"
            f"img = np.asarray(Image.open({str(data_file('images/astronaut.png'))!r}).convert('RGB'))\n"
            "with LandmarkDetector() as d:\n"
            "    time.sleep(0.5)  # MediaPipe's threads log after its constructor returns\n"
            "    print(d.detect(img).shape)\n"
            "import sys; print('after', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(478, 2)"
    assert done.stderr == "after\n"  # our own stderr still works afterwards


# --- Faces small in the frame: full-frame face detector first, face mesh on a crop --------------

def _noise_canvas(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Textured noise (smooth 16-px blobs), a background with edges everywhere, like a scene."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR)).copy()


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> np.ndarray:
    canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
    return canvas


def test_small_face_in_a_large_frame_is_found(detector):
    """The astronaut's ~90 px face in a 1600 px wide scene: the face mesh alone (its detector
    sees a 128 px letterbox) finds nothing; the full-frame detector finds it (in tiles)."""
    img = _rgb("images/astronaut.png")
    canvas = _paste(_noise_canvas(1200, 1600), img, 544, 229)
    with pytest.raises(NoFaceError):
        detector.detect_whole_image(canvas)
    lm = detector.detect(canvas)
    expected = detector.detect(img) + (544, 229)
    assert np.linalg.norm(lm - expected, axis=1).mean() < 1.5


def test_landmarks_map_back_to_image_pixels(detector):
    """The same face at a known offset in a larger image gives the same landmarks, shifted
    (the crop around the face is placed and resampled differently; measured ~0.3 px)."""
    img = _rgb("images/astronaut.png")
    ref = detector.detect(img)
    canvas = _paste(_noise_canvas(640, 900, seed=3), img, 301, 67)
    err = np.linalg.norm(detector.detect(canvas) - (ref + (301, 67)), axis=1)
    assert err.mean() < 1.0 and np.median(err) < 1.0


def test_two_small_faces_side_by_side_largest_chosen(detector):
    """Two scaled copies of the astronaut photo (faces ~27 and ~33 px wide), the larger on the
    right: the face mesh alone finds neither; both are detected and the larger is fitted."""
    img = Image.fromarray(_rgb("images/astronaut.png"))
    small, large = (np.asarray(img.resize((s, s), Image.BILINEAR)) for s in (150, 183))
    canvas = _paste(_paste(np.zeros((183, 333, 3), np.uint8), small, 0, 0), large, 150, 0)
    with pytest.raises(NoFaceError):
        detector.detect_whole_image(canvas)
    faces = detector.find_faces(canvas)
    assert len(faces) == 2 and faces[0].centre[0] > 150 > faces[1].centre[0]
    lm = detector.detect(canvas)
    assert lm[:, 0].min() > 150
    expected = detector.detect(_rgb("images/astronaut.png")) * (183 / 512) + (150, 0)
    assert np.linalg.norm(lm - expected, axis=1).mean() < 1.5


def test_detection_windows_cover_the_image_with_overlap():
    levels = detection_windows(4000, 3000)
    assert levels[0] == [(0, 0, 4000, 3000)]
    assert [lv[0][2] for lv in levels[1:]] == [2048, 1024, 512]
    assert [len(lv) for lv in levels] == [1, 6, 20, 88]
    for level in levels[1:]:
        side = level[0][2]
        xs = sorted({x for x, _, _, _ in level})
        assert xs[0] == 0 and xs[-1] + side == 4000 and max(np.diff(xs)) <= 3 * side // 4
    assert detection_windows(600, 400) == [[(0, 0, 600, 400)]]  # small photos: the whole frame only
    assert detection_windows(400, 900)[1][0] == (0, 0, 400, 512)  # tiles no wider than the image


def test_square_crop_pixel_convention():
    """Crop pixel (u, v) (pixel corners) is image point (x0 + u * side / out, y0 + v * side / out);
    the part outside the image is black."""
    xs = np.arange(200, dtype=np.float64)
    ramp = np.stack([np.broadcast_to(xs, (100, 200))] * 3, axis=-1).astype(np.uint8)  # value = x
    crop = square_crop(Image.fromarray(ramp), x0=-20.0, y0=10.0, side=80.0, out=160)
    assert crop.shape == (160, 160, 3)
    assert (crop[:, :39] == 0).all()  # image x < 0
    u = np.arange(60, 150)
    centres = -20.0 + (u + 0.5) * 80.0 / 160  # image x of crop pixel centres, samples of x - 0.5
    np.testing.assert_allclose(crop[50, u, 0], np.round(centres - 0.5), atol=1.0)


# --- Sanity checks of landmarks ------------------------------------------------------------------

def _takeo_pts() -> np.ndarray:
    return read_landmarks(data_file("images/takeo.pts"))[0]


TAKEO_SIZE = (225, 150)  # (height, width)


def test_good_landmarks_pass(detector):
    pts = _takeo_pts()
    np.testing.assert_array_equal(check_landmarks(pts, "ibug68", TAKEO_SIZE, "takeo.pts"), pts)
    img = _rgb("images/astronaut.png")
    lm = detector.detect(img)
    check_landmarks(lm, "mediapipe478", img.shape[:2], "astronaut.png")
    check_landmarks(lm[:468], None, img.shape[:2])
    # a mirrored photo has correctly handed landmarks of its own; an upside-down one too
    check_landmarks(detector.detect(img[:, ::-1]), "mediapipe478", img.shape[:2])
    upside_down = np.array(TAKEO_SIZE[::-1]) - pts
    check_landmarks(upside_down, "ibug68", TAKEO_SIZE)


@pytest.mark.parametrize("case, message", [
    ("normalised", r"span only 0\.\d x 0\.\d px, too small for a face .*not normalised 0-1 values"),
    ("all equal", r"span only 0\.0 x 0\.0 px"),
    ("collinear", "lie on one line"),
    ("outside", r"of 68 landmarks \(\d+%\) lie outside the 150x225 image"),
    ("mirrored", "mirrored left/right"),
    ("count", "67 landmarks match no known scheme"),
    ("scheme", "are 'ibug68', not 'mediapipe478'"),
    ("nan", "not finite"),
])
def test_bad_landmarks_refused(case, message):
    pts = _takeo_pts()
    scheme = "ibug68"
    if case == "normalised":
        pts = pts / (150, 225)
    elif case == "all equal":
        pts = np.full_like(pts, 40.0)
    elif case == "collinear":
        t = np.linspace(0, 1, 68)
        pts = np.stack([20 + 100 * t, 30 + 150 * t], axis=1)
    elif case == "outside":
        pts = pts + (80, 0)  # about half the face beyond the right edge
    elif case == "mirrored":
        pts = np.stack([150 - pts[:, 0], pts[:, 1]], axis=1)  # x' = W - x, indices unchanged
    elif case == "count":
        pts = pts[:67]
    elif case == "scheme":
        scheme = "mediapipe478"
    elif case == "nan":
        pts = pts.copy()
        pts[3, 1] = np.nan
    with pytest.raises(LandmarkCheckError, match=f"^takeo.pts: .*{message}"):
        check_landmarks(pts, scheme, TAKEO_SIZE, "takeo.pts")


def test_mirrored_mediapipe_landmarks_refused(detector):
    img = _rgb("images/astronaut.png")
    lm = detector.detect(img)
    mirrored = np.stack([512 - lm[:, 0], lm[:, 1]], axis=1)
    assert landmark_handedness(lm, "mediapipe478") > 0.9
    assert landmark_handedness(mirrored, "mediapipe478") < -0.9
    with pytest.raises(LandmarkCheckError, match="mirrored left/right"):
        check_landmarks(mirrored, "mediapipe478", (512, 512), "astronaut.json")


def test_a_few_points_outside_are_allowed():
    """A face cut by the frame keeps its landmarks beyond the edge: up to a quarter may be."""
    pts = _takeo_pts() - (50, 0)  # the jaw's image-left end leaves the image
    assert (pts[:, 0] < 0).sum() == 7
    check_landmarks(pts, "ibug68", TAKEO_SIZE)


def test_check_errors_are_landmark_file_errors():
    assert issubclass(LandmarkCheckError, LandmarkFileError) and issubclass(LandmarkCheckError, ValueError)


def test_mirror_average_is_mirror_equivariant():
    # The flip test averages the face mesh on the image and on its mirror, so detecting on the
    # mirror image must give exactly the mirror of the detection (up to float rounding), which
    # the plain face mesh does not (its own jitter: about 0.75 px per point).
    from mfface.mirror import mirror_landmarks

    img = _rgb("images/astronaut.png")
    flipped = np.ascontiguousarray(img[:, ::-1])
    with LandmarkDetector(mirror_average=True) as mirrored:
        both = mirrored.detect_whole_image(img), mirrored.detect_whole_image(flipped)
    with LandmarkDetector(mirror_average=False) as plain:
        single = plain.detect_whole_image(img), plain.detect_whole_image(flipped)
    width = img.shape[1]
    assert np.abs(mirror_landmarks(both[1], width) - both[0]).max() < 1e-3
    plain_gap = np.abs(mirror_landmarks(single[1], width) - single[0]).max()
    assert plain_gap > 0.1
    # the average stays on the face: within MediaPipe's own left/right disagreement of either pass
    assert np.linalg.norm(both[0] - single[0], axis=1).max() <= plain_gap


def test_mirror_partner_is_the_same_face_only():
    from mfface.landmarks import MIRROR_MATCH, _averaged_with_partner

    rng = np.random.default_rng(0)
    face = rng.uniform(0.3, 0.6, (478, 2))  # box side about 0.3
    near = face + 0.01
    other = face + (0.35, 0.0)  # a neighbour's face beside it
    assert np.allclose(_averaged_with_partner(face, [other, near]), face + 0.005)
    assert np.array_equal(_averaged_with_partner(face, [other]), face)
    assert np.array_equal(_averaged_with_partner(face, []), face)
    assert MIRROR_MATCH * 0.3 < 0.35


def test_detector_from_config_follows_mirror_average():
    import dataclasses

    from mfface.config import FitConfig

    img = _rgb("images/astronaut.png")
    plain_input = dataclasses.replace(FitConfig().input, mirror_average=False)
    with LandmarkDetector.from_config(FitConfig().input) as default, \
            LandmarkDetector.from_config(plain_input) as plain, LandmarkDetector(mirror_average=False) as reference:
        assert default.max_num_faces == FitConfig().input.max_faces
        np.testing.assert_array_equal(plain.detect(img), reference.detect(img))
        assert np.abs(default.detect(img) - reference.detect(img)).max() > 0.05
