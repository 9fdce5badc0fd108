#!/usr/bin/env bash
# The GPU checks of one lent device session (see bench/RESULTS.md, "GPU"), run by the device tool
# from the repository root with `carry: [.gpu]`. .gpu/ (git-ignored) holds what that machine lacks:
#   site.tar.xz  mitsuba 3.9.1 + drjit 1.5.0 + trimesh cp312 wheels unpacked, the spectral/mono
#                variants removed (the machine's python3 is 3.12 with its own torch and numpy):
#                  pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                    --platform manylinux_2_28_x86_64 -d whl mitsuba==3.9.1 drjit==1.5.0 trimesh==5.2.0
#                  (cd site && for w in ../whl/*.whl; do unzip -q $w; done; rm -rf share mitsuba/include \
#                    mitsuba/{cuda,llvm}_ad_{mono,spectral}* mitsuba/scalar_spectral*)
#                  tar -cJf .gpu/site.tar.xz -C site .     (34 MB; the wheels are 68 MB, over the limit)
#   data/        the throughput datasets made here by `bench/train.py --data-dir .gpu/data` (the GPU
#                machine has no MediaPipe, which `mfface synth` runs on its renders);
#   example_face_landmarks.npy  MediaPipe's 478 landmarks of mfface/data/example_face.jpg, made here
#                (`LandmarkDetector().detect`), for a whole `mfface fit --device cuda` there.
# Results go to $OUT: the environment, the render and throughput benches' logs, the selected tests'
# log, a fit's log and overview, a profile of the training step (PROFILE_S=0 skips it).
set -u
mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
# The package as pyproject.toml maps it (one namespace over the top-level folders), without pip:
# links inside this copy's mfface/ (pytest puts the repository root first on sys.path).
for d in scenes morphable cli; do ln -sfn "../$d" "mfface/$d"; done
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  ls /usr/local/nvidia/lib64 2>/dev/null | grep -i -E "optix|rtcore|libcuda\.so"
  python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
  python3 -c "import mfface.backend as b; print(b.select_variant(), b.describe())"; } 2>&1 | tee "$OUT/env.log"
timeout 120 python3 bench/render.py --iters 10 2>&1 | tail -4 | tee "$OUT/render.log"
timeout "${BENCH_S:-240}" python3 bench/train.py --part throughput --device cuda --model ict-lite \
    --steps 8 --setting 224x4 --setting 224x8 --setting 128x4 --setting 224x0 --data-dir .gpu/data \
    2>&1 | tee "$OUT/throughput.log"
timeout "${TESTS_S:-200}" python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 150 \
    tests/test_backend.py tests/test_bridge.py tests/test_bsdf.py tests/test_render_analytic.py \
    tests/test_forward.py tests/test_itemwise.py tests/test_sh.py tests/test_light_solve.py \
    tests/test_texel_solve.py tests/test_objectives.py tests/test_network.py tests/test_train.py \
    tests/test_relight.py tests/test_camera.py tests/test_uncertainty.py tests/test_fit_parts.py \
    tests/test_direct.py \
    >"$OUT/tests.log" 2>&1

# A whole fit on the GPU, from the landmark file (no MediaPipe needed), when the file was carried.
if [ -f .gpu/example_face_landmarks.npy ]; then
    repo=$PWD
    (cd /tmp && timeout "${FIT_S:-150}" python3 -c "from mfface.cli.main import cli; cli()" fit \
        "$repo/mfface/data/example_face.jpg" --landmarks "$repo/.gpu/example_face_landmarks.npy" \
        -o /tmp/gpufit --model ict-lite --device cuda) 2>&1 | tail -15 | tee "$OUT/fit.log"
    cp /tmp/gpufit/example_face/overview.png "$OUT/" 2>/dev/null
fi
# Where the host time of a training step goes (tracing against kernels), 224 px / 4 spp.
[ "${PROFILE_S:-90}" -gt 0 ] && timeout "${PROFILE_S:-90}" python3 bench/train.py --part throughput --device cuda --model ict-lite \
    --steps 4 --setting 224x4 --data-dir .gpu/data --profile >"$OUT/profile.log" 2>&1
tail -25 "$OUT/tests.log"
