#!/usr/bin/env bash
# One-command set-up of mfface on a fresh machine (Debian/Ubuntu, Python 3.10-3.12).
#   1. the system libLLVM that Dr.Jit's LLVM (CPU) backend needs, when no usable one is present;
#   2. a virtual environment in .venv inside the repository;
#   3. the project itself (editable) with its test extras, at the versions pinned in constraints.txt;
#   4. the Khronos glTF validator (npm) for the GLB tests, when npm is present.
# Safe to run again: every step checks what is already there.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

usable_llvm() {
    # Dr.Jit 1.5 kernels need LLVM >= 18 (LLVM 15 aborts with "Cannot select fminimum").
    if [ -n "${DRJIT_LIBLLVM_PATH:-}" ] && [ -f "$DRJIT_LIBLLVM_PATH" ]; then return 0; fi
    local lib
    for lib in /usr/lib/*/libLLVM.so.{18,19,2[0-9]}* /usr/lib/*/libLLVM-{18,19,2[0-9]}.so \
               /usr/lib/llvm-{18,19,2[0-9]}/lib/libLLVM*.so*; do
        [ -e "$lib" ] && return 0   # an unmatched pattern stays literal and fails this test
    done
    return 1
}

if ! usable_llvm; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        echo "setup: installing libllvm19 for Dr.Jit's LLVM backend"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libllvm19 >/dev/null
    else
        echo "setup: no libLLVM >= 18 found; install LLVM 18 or newer and set DRJIT_LIBLLVM_PATH to its libLLVM.so" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
# torch first and pinned, so that nothing later pulls another build of it.
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
# The Khronos glTF validator checks the GLB in tests/test_export.py; it is an npm package, installed
# into .venv/node when Node.js and npm are present (the test skips, saying why, when they are not).
GLTF_VALIDATOR=gltf-validator@2.0.0-dev.3.10
if command -v npm >/dev/null 2>&1 && [ ! -f .venv/node/node_modules/gltf-validator/package.json ]; then
    echo "setup: installing the Khronos glTF validator ($GLTF_VALIDATOR) into .venv/node"
    npm install --silent --no-audit --no-fund --prefix .venv/node "$GLTF_VALIDATOR" >/dev/null \
        || echo "setup: warning: npm could not install $GLTF_VALIDATOR; the GLB validator test will fail" >&2
fi
.venv/bin/python -c "import mfface.backend as b; print('setup: ok,', b.select_variant())"
