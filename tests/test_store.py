"""Model file format and model store: round trips, damaged files, install/remove/default, download."""
from __future__ import annotations

import dataclasses
import http.server
import sys
import threading
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from conftest import data_file
from mfface.morphable.format import (ModelFormatError, ModelSourceError, load_model_file,
                                     read_header, save_model)
from mfface.morphable.model import AlbedoModel, ModelPart, MorphableModel
from mfface.morphable.builtin import BUILTIN_NAME, N_IDENTITY
from mfface.morphable.store import (BuiltinModelError, DownloadError, ModelNameError,
                                    ModelNotInstalledError, ModelStore, default_root, download,
                                    split_name)


def tiny_model(name: str = "tiny", albedo: bool = True, v: int = 5) -> MorphableModel:
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return MorphableModel(
        name=name, mean_shape=f32(v, 3), identity_basis=f32(3, v, 3), identity_std=np.ones(3, np.float32),
        expression_basis=f32(2, v, 3), expression_std=np.full(2, 0.5, np.float32),
        triangles=np.array([[0, 1, 2], [2, 3, 4]], np.int32), uvs=rng.random((v, 2)).astype(np.float32),
        expression_names=["a", "b"], landmarks={"ibug68": np.full(68, -1)},
        regions={"face": np.arange(v)}, symmetry=np.arange(v)[::-1].copy(),
        diffuse_albedo=AlbedoModel(f32(v, 3), f32(4, v, 3), np.ones(4, np.float32)) if albedo else None,
        provenance="test", license="MIT")


@pytest.mark.parametrize("albedo", [True, False])
def test_round_trip(tmp_path, albedo):
    model = tiny_model(albedo=albedo)
    path = save_model(model, tmp_path / "m.mfmodel")
    back = load_model_file(path)
    for key in ("mean_shape", "identity_basis", "expression_std", "triangles", "uvs", "symmetry"):
        np.testing.assert_array_equal(getattr(back, key), getattr(model, key))
    assert back.expression_names == ["a", "b"] and back.texture_size == (512, 512)
    np.testing.assert_array_equal(back.landmarks["ibug68"], model.landmarks["ibug68"])
    assert (back.diffuse_albedo is None) == (not albedo) and back.specular_albedo is None
    if albedo:
        np.testing.assert_array_equal(back.diffuse_albedo.basis, model.diffuse_albedo.basis)
    assert read_header(path)["n_vertices"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["m.mfmodel"]  # no temporary left behind
    assert back.landmark_reliability == {}


def test_landmark_reliability_round_trip_and_checks(tmp_path):
    model = tiny_model()
    weights = np.linspace(0, 2, 68).astype(np.float32)
    model = dataclasses.replace(model, landmark_reliability={"ibug68": weights})
    back = load_model_file(save_model(model, tmp_path / "m.mfmodel"))
    np.testing.assert_array_equal(back.landmark_reliability["ibug68"], weights)
    for bad in ({"ibug68": weights[:10]}, {"ibug68": -weights}, {"mediapipe478": np.ones(478)}):
        with pytest.raises(ValueError, match="landmark_reliability"):
            dataclasses.replace(model, landmark_reliability=bad).validate()


def tiny_part(model: MorphableModel, name: str = "eye_left", v: int = 4, gaze: bool = True) -> ModelPart:
    """A part of `model`'s component counts: a tetrahedron, with a gaze rotation when `gaze`."""
    rng = np.random.default_rng(2)
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    return ModelPart(name=name, material="eyeball" if gaze else "teeth", mean=f32(v, 3),
                     identity_basis=f32(model.n_identity, v, 3),
                     expression_basis=f32(model.n_expression, v, 3),
                     triangles=np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]], np.int32),
                     material_coord=rng.random(v).astype(np.float32),
                     gaze=f32(2, model.n_expression) if gaze else None,
                     pivot_mean=f32(3) if gaze else None,
                     pivot_identity=f32(model.n_identity, 3) if gaze else None)


@pytest.mark.parametrize("compact", [False, True])
def test_round_trip_with_parts(tmp_path, compact):
    """Parts are stored (float16 bases when compact) and evaluate the same after loading; the
    fingerprint ignores them."""
    import torch

    model = tiny_model()
    model.parts = [tiny_part(model), tiny_part(model, "teeth", v=5, gaze=False)]
    path = save_model(model, tmp_path / "m.mfmodel", compact=compact)
    back = load_model_file(path)
    assert [p.name for p in back.parts] == ["eye_left", "teeth"] and back.parts[1].gaze is None
    header = read_header(path)
    assert header["version"] == 2 and [p["n_vertices"] for p in header["parts"]] == [4, 5]
    for mine, theirs in zip(model.parts, back.parts):
        np.testing.assert_array_equal(theirs.triangles, mine.triangles)
        np.testing.assert_array_equal(theirs.material_coord, mine.material_coord)
        tol = 2e-3 if compact else 0.0
        np.testing.assert_allclose(theirs.identity_basis, mine.identity_basis, atol=tol)
    identity, expression = torch.randn(2, 3), 0.3 * torch.randn(2, 2)
    torch.testing.assert_close(back.part_vertices(identity, expression),
                               model.part_vertices(identity, expression), atol=2e-2 if compact else 1e-5,
                               rtol=0)
    assert back.part_vertices(identity, expression).shape == (2, 9, 3)
    assert back.fingerprint() == dataclasses.replace(back, parts=[]).fingerprint()
    if not compact:
        assert back.fingerprint() == tiny_model().fingerprint()
    bad = tiny_part(model)
    bad.gaze = None
    model.parts = [bad]
    with pytest.raises(ValueError, match="gaze, pivot_mean and pivot_identity go together"):
        save_model(model, tmp_path / "bad.mfmodel")


def _rewrite_header(path: Path, change) -> None:
    """Rewrite the JSON header of a model file in place with `change(header)`."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path) as archive, archive.open("header.npy") as member:
        header = json.loads(np.lib.format.read_array(member).tobytes().decode())
    change(header)
    raw = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            if name == "header.npy":
                with archive.open(name, "w") as member:
                    np.lib.format.write_array(member, raw)
            else:
                archive.writestr(name, data)


def test_version_1_files_are_read_as_models_without_parts(tmp_path):
    """A file written before parts existed (format version 1: no "parts" in the header) loads,
    with no parts; a newer version than this mfface knows is refused with the fix."""
    path = save_model(tiny_model(), tmp_path / "old.mfmodel")

    def version_1(header):
        header["version"] = 1
        del header["parts"]
    _rewrite_header(path, version_1)
    old = load_model_file(path)
    assert old.parts == [] and old.n_part_vertices == 0
    assert old.part_vertices().shape == (1, 0, 3)
    np.testing.assert_array_equal(old.mean_shape, tiny_model().mean_shape)
    _rewrite_header(path, lambda header: header.update(version=3))
    with pytest.raises(ModelFormatError, match="format version 3, this mfface reads versions 1, 2"):
        load_model_file(path)


def test_damaged_model_files(tmp_path):
    path = save_model(tiny_model(), tmp_path / "m.mfmodel")
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], b"not a model", data[:100]):
        bad = tmp_path / "bad.mfmodel"
        bad.write_bytes(broken)
        with pytest.raises(ModelFormatError, match="not a readable mfface model"):
            load_model_file(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ModelFormatError, match="not a readable mfface model"):
        load_model_file(tmp_path / "other.npz")


def test_store_default_list_remove_load(tmp_path):
    store = ModelStore(tmp_path)
    assert [(i.name, i.builtin, i.is_default) for i in store.list()] == [(BUILTIN_NAME, True, True)]
    assert store.default_name() == BUILTIN_NAME and not store.default_is_set()
    assert store.load().name == BUILTIN_NAME  # nothing installed: the built-in model
    save_model(tiny_model("ict"), store.path("ict"))
    save_model(tiny_model("ict-narrow"), store.path("ict-narrow"))
    store.set_default("ict-narrow")
    assert [i.name for i in store.list()] == [BUILTIN_NAME, "ict", "ict-narrow"]
    assert store.load().name == "ict-narrow" and store.info("ict-narrow").is_default
    (tmp_path / "broken.mfmodel").write_bytes(b"junk")
    assert [i.name for i in store.list() if i.error] == ["broken"]
    store.remove("ict-narrow")
    assert store.default_name() == BUILTIN_NAME and not store.default_is_set()
    assert store.load().name == BUILTIN_NAME  # the default was removed: back to the built-in one
    with pytest.raises(ModelNotInstalledError, match="mfface models install ict --region narrow"):
        store.info("ict-narrow")
    with pytest.raises(ModelNotInstalledError, match="install it with `mfface models install ict`"):
        store.set_default("frobnicate")


BAD_NAMES = ["../x", "../../evil/x", "/etc/passwd", "a/b", "a\\b", "..", ".", "", "ICT", "x.mfmodel",
             "ict-", "-ict", "a-b-c", "ict\n", "~user"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_entry_point_checks_the_name_the_same_way(tmp_path, name):
    """path, info, remove, set_default, load and install refuse a name that is not a plain store
    name with one message; nothing outside (or inside) the store is touched."""
    store = ModelStore(tmp_path / "store")
    outside = tmp_path / "x.mfmodel"
    outside.write_bytes(b"keep")
    messages = set()
    for call in (store.path, store.info, store.remove, store.set_default, store.load, store.install,
                 split_name):
        with pytest.raises(ModelNameError) as caught:
            call(name)
        messages.add(str(caught.value))
    assert len(messages) == 1 and "invalid model name" in messages.pop()
    assert outside.read_bytes() == b"keep" and not (tmp_path / "store").exists()
    assert issubclass(ModelNameError, ValueError) and issubclass(ModelNameError, ModelNotInstalledError)


def test_builtin_model_rules(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(BuiltinModelError, match="needs no install.*mfface models install ict"):
        store.install(BUILTIN_NAME)
    with pytest.raises(BuiltinModelError, match="cannot be removed"):
        store.remove(BUILTIN_NAME)
    info = store.info(BUILTIN_NAME)
    assert info.builtin and info.is_default and info.header["n_identity"] == N_IDENTITY
    # an installed model, then the built-in one chosen explicitly: it stays the default
    save_model(tiny_model("ict"), store.path("ict"))
    store.set_default("ict")
    assert store.load().name == "ict"
    store.set_default(BUILTIN_NAME)
    assert store.default_is_set() and store.load().name == BUILTIN_NAME
    assert [i.name for i in store.list() if i.is_default] == [BUILTIN_NAME]
    # a store file with the built-in model's name is refused, not loaded instead of it
    store.path(BUILTIN_NAME).write_bytes(store.path("ict").read_bytes())
    for call in (store.load, store.info, store.set_default):
        with pytest.raises(BuiltinModelError, match="has the name of the model built into mfface"):
            call(BUILTIN_NAME)
    assert [i.error is not None for i in store.list() if i.name == BUILTIN_NAME] == [False, True]
    assert store.load("ict").name == "ict"


def test_unusable_default_marker_is_named(tmp_path):
    """Only the marker is wrong: the message says so and lists what is installed."""
    store = ModelStore(tmp_path)
    save_model(tiny_model("ict-narrow"), store.path("ict-narrow"))
    for text, says in (("ict\n", "names 'ict', which is not installed"), ("", "is empty"),
                       ("../../etc/passwd", "not a model name")):
        (tmp_path / "default").write_text(text)
        assert store.default_name() is None and not store.default_is_set()
        with pytest.raises(ModelNotInstalledError) as caught:
            store.load()
        message = str(caught.value)
        assert says in message and str(tmp_path / "default") in message
        assert "installed: ict-narrow; built in: ict-lite" in message
        assert "mfface models default NAME" in message and "no face model is installed" not in message
    assert store.load("ict-narrow").name == "ict-narrow"  # a named model still loads


def test_install_becomes_default_unless_one_is_set(tmp_path, monkeypatch):
    def fake_import(source: Path, **options) -> MorphableModel:
        return tiny_model("whatever", v=70)

    monkeypatch.setitem(sys.modules, "mfface.morphable.basel2009",
                        types.SimpleNamespace(import_bfm2009=fake_import))
    store = ModelStore(tmp_path / "store")
    assert store.install("bfm2009", source=tmp_path).is_default  # only the built-in one before
    store.set_default(BUILTIN_NAME)
    monkeypatch.setitem(sys.modules, "mfface.morphable.basel2017",
                        types.SimpleNamespace(import_bfm2017=fake_import))
    assert not store.install("bfm2017", source=tmp_path).is_default
    assert store.default_name() == BUILTIN_NAME


def test_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MFFACE_HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / "models"
    monkeypatch.delenv("MFFACE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "mfface" / "models"


def test_names():
    assert split_name("ict") == ("ict", None, "ict")
    assert split_name("ict", "face") == ("ict", "face", "ict")
    assert split_name("ict", "narrow") == ("ict", "narrow", "ict-narrow")
    assert split_name("ict-head") == ("ict", "head", "ict-head")
    for name, region, match in (("flame", None, "unknown model"), ("ict", "ears", "no region"),
                                ("ict-head", "narrow", "already names"), ("../x", None, "invalid")):
        with pytest.raises(ValueError, match=match):
            split_name(name, region)


def test_registration_models_need_a_source(tmp_path):
    with pytest.raises(ModelSourceError, match="University of Basel.*AlbedoMM"):
        ModelStore(tmp_path).install("bfm2017")
    with pytest.raises(ModelSourceError, match="does not exist"):
        ModelStore(tmp_path).install("bfm2009", source=tmp_path / "nothing")


def test_basel_install_dispatch_and_landmark_fallback(tmp_path, monkeypatch):
    """bfm2017 goes through basel2017.import_bfm2017(source, **options), imported lazily."""
    calls = []

    def fake_import(source: Path, **options) -> MorphableModel:
        calls.append((source, options))
        model = tiny_model("whatever", v=70)
        model.landmarks = {"ibug68": np.arange(68)}
        return model

    monkeypatch.setitem(sys.modules, "mfface.morphable.basel2017",
                        types.SimpleNamespace(import_bfm2017=fake_import))
    monkeypatch.delenv("MFFACE_MEDIAPIPE_MESH", raising=False)
    store = ModelStore(tmp_path / "store")
    info = store.install("bfm2017", source=tmp_path)
    assert calls == [(tmp_path, {})] and info.name == "bfm2017" and info.is_default
    model = store.load()
    assert (model.landmarks["mediapipe478"] >= 0).sum() == 63
    assert "only where they coincide with iBUG-68" in model.provenance


def test_failed_install_leaves_nothing(tmp_path):
    broken = tmp_path / "ICT-FaceKit.tar.xz"
    broken.write_bytes(data_file("ICT-FaceKit.tar.xz").read_bytes()[:2_000_000])
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelSourceError, match="damaged or incomplete"):
        store.install("ict", source=broken)
    assert list((tmp_path / "store").iterdir()) == []


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/short":  # announces more bytes than it sends: a cut connection
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving a folder: (base URL, folder)."""
    folder = tmp_path_factory.mktemp("served")
    (folder / "hello.bin").write_bytes(b"hello world")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()


def test_download_checks_sha256_and_length(tmp_path, loopback):
    url, _ = loopback
    good = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
    assert download(f"{url}/hello.bin", tmp_path / "a", sha256=good, progress=True) == good
    assert (tmp_path / "a").read_bytes() == b"hello world"
    with pytest.raises(DownloadError, match="expected 00"):
        download(f"{url}/hello.bin", tmp_path / "b", sha256="00" * 32)
    with pytest.raises(DownloadError, match="stopped after 10 of 1000 bytes"):
        download(f"{url}/short", tmp_path / "c")
    with pytest.raises(DownloadError, match="could not download .*missing.bin .HTTP error 404"):
        download(f"{url}/missing.bin", tmp_path / "d")
    with pytest.raises(DownloadError, match="could not save the download of .*hello.bin"):
        download(f"{url}/hello.bin", tmp_path / "no_such_folder" / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_install_from_url_with_wrong_checksum_leaves_nothing(tmp_path, loopback):
    url, _ = loopback
    store = ModelStore(tmp_path / "store")
    with pytest.raises(DownloadError, match="was discarded"):
        store.install("ict", source=f"{url}/hello.bin", sha256="00" * 32)
    assert list((tmp_path / "store").iterdir()) == []


def test_basel_models_take_no_region() -> None:
    from mfface.morphable.store import split_name

    with pytest.raises(ValueError, match="no selectable regions"):
        split_name("bfm2017", "narrow")


def test_failed_download_names_the_url_not_the_temporary_file(tmp_path, loopback):
    """A download that is not an ICT archive: the importer's message names the address."""
    url, _ = loopback
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelSourceError) as caught:
        store.install("ict", source=f"{url}/hello.bin")
    message = str(caught.value)
    assert f"the file downloaded from {url}/hello.bin is damaged" in message
    assert ".install-" not in message and str(tmp_path) not in message
    assert list((tmp_path / "store").iterdir()) == []


def test_unsupported_address_scheme(tmp_path):
    with pytest.raises(ModelSourceError, match="mfface downloads http://, https:// and file://"):
        ModelStore(tmp_path / "store").install("ict", source="ftp://example.com/ICT-FaceKit.zip")


def test_badly_named_store_file_is_listed_as_unusable(tmp_path):
    store = ModelStore(tmp_path)
    save_model(tiny_model("x"), tmp_path / "My Model.mfmodel")
    listed = {i.name: i for i in store.list()}
    assert "cannot be used; rename it" in listed["My Model"].error
    with pytest.raises(ModelNameError):
        store.load("My Model")
