"""Backend selection and the message when no usable libLLVM exists."""
from __future__ import annotations

from pathlib import Path

import pytest

from mfface import backend


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


def test_llvm_major_parses_common_names() -> None:
    assert backend.llvm_major("libLLVM.so.19.1") == 19
    assert backend.llvm_major("libLLVM-15.so.1") == 15
    assert backend.llvm_major("libLLVM-14.0.6.so.1") == 14
    assert backend.llvm_major("libLLVM.20.dylib") == 20
    assert backend.llvm_major("/usr/lib/llvm-18/lib/libLLVM.so") == 18
    assert backend.llvm_major("libfoo.so") is None


def test_newest_usable_llvm_is_chosen(tmp_path: Path) -> None:
    _touch(tmp_path / "libLLVM-15.so.1")
    newest = _touch(tmp_path / "libLLVM.so.19.1")
    _touch(tmp_path / "llvm-18" / "lib" / "libLLVM.so.18.1")
    assert backend.llvm_candidates((str(tmp_path),))[0] == newest.resolve()
    assert backend.find_libllvm((str(tmp_path),), env={}) == newest.resolve()


def test_only_old_llvm_gives_install_message(tmp_path: Path) -> None:
    _touch(tmp_path / "libLLVM-15.so.1")
    with pytest.raises(backend.BackendError, match=r"found: LLVM 15.*apt-get install libllvm19"):
        backend.find_libllvm((str(tmp_path),), env={})


def test_no_llvm_gives_install_message(tmp_path: Path) -> None:
    with pytest.raises(backend.BackendError, match=r"No libLLVM >= 18 found \(found: none\)"):
        backend.find_libllvm((str(tmp_path),), env={})


def test_env_variable_is_respected_and_checked(tmp_path: Path) -> None:
    lib = _touch(tmp_path / "custom" / "libLLVM.so.19.1")
    assert backend.find_libllvm((), env={"DRJIT_LIBLLVM_PATH": str(lib)}) == lib
    with pytest.raises(backend.BackendError, match="does not exist"):
        backend.find_libllvm((), env={"DRJIT_LIBLLVM_PATH": str(tmp_path / "missing.so")})
    old = _touch(tmp_path / "libLLVM-15.so.1")
    with pytest.raises(backend.BackendError, match="LLVM 15, too old"):
        backend.find_libllvm((), env={"DRJIT_LIBLLVM_PATH": str(old)})


def test_variant_is_selected(variant: str) -> None:
    import mitsuba as mi
    import torch

    assert variant in ("llvm_ad_rgb", "cuda_ad_rgb")
    assert mi.variant() == variant
    expected = "cuda" if variant.startswith("cuda") else "cpu"
    assert backend.torch_device().type == expected


def test_unknown_device_is_rejected() -> None:
    with pytest.raises(backend.BackendError, match="Unknown device"):
        backend.select_variant("tpu")


@pytest.mark.parametrize("device, cuda, expected", [
    (None, True, "cuda_ad_rgb"),       # a GPU machine without libLLVM renders on the GPU
    (None, False, "No libLLVM"),       # nothing to render with: the install message
    ("cpu", True, "No libLLVM"),       # the CPU was asked for: it needs libLLVM
])
def test_missing_llvm_only_matters_without_cuda(monkeypatch: pytest.MonkeyPatch, device: str | None,
                                                cuda: bool, expected: str) -> None:
    import mitsuba as mi

    def no_llvm() -> Path:
        raise backend.BackendError("No libLLVM >= 18 found (found: none); install it.")

    chosen = []
    monkeypatch.setattr(backend, "find_libllvm", no_llvm)
    monkeypatch.setattr(backend, "_cuda_works", lambda: cuda)
    monkeypatch.setattr(mi, "set_variant", chosen.append)
    monkeypatch.setenv("DRJIT_LIBLLVM_PATH", "unchanged")
    select = backend.select_variant.__wrapped__  # past the cache: this call's own decision
    if expected.startswith("No"):
        with pytest.raises(backend.BackendError, match=expected):
            select(device)
        assert chosen == []
    else:
        assert select(device) == expected and chosen == [expected]
