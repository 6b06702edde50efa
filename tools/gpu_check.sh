#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one run on a machine that has one: build the extension for
# the GPU, run every test marked `cuda`, train MNIST for an epoch on cuda(), and time the
# WORKLOADS.md workloads on the GPU against PyTorch. Logs go to $OUT (default /tmp/gpu_check).
#
#     OUT=/tmp/gpu bash tools/gpu_check.sh [--no-build] [--no-bench]
#
# Wheels in .whl/ (packages the machine lacks, e.g. scipy-openblas32) are installed into /tmp/site
# first; NEEDLE_DATA_DIR (or .devdata/ if present) holds mnist/ for the training run. On a lent
# device machine (Python 3.12, no package index), prepared here beforehand (both git-ignored
# through .git/info/exclude, carried with the run):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#         -d .whl scipy-openblas32
#     mkdir -p .devdata && cp -r ../shared/data/mnist .devdata/
# The whole script took about 4 minutes on an H200 (build 30-50 s, tests 30-40 s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
build=1; bench=1
for a in "$@"; do
    case $a in --no-build) build=0 ;; --no-bench) bench=0 ;; *) echo "unknown option $a"; exit 2 ;; esac
done
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
[ -d .devdata ] && export NEEDLE_DATA_DIR=${NEEDLE_DATA_DIR:-$PWD/.devdata}
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
if [ "$build" = 1 ]; then
    t=$SECONDS
    NEEDLE_CUDA_ARCHS=$arch python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
        || { tail -30 "$OUT/build.log"; exit 1; }
    echo "build: $((SECONDS - t)) s"
fi
python3 -c "import needle as ndl; assert ndl.cuda().enabled(), 'cuda() not enabled'; print('cuda() enabled')" || exit 1
t=$SECONDS
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -m cuda -p no:cacheprovider -n 8 \
    tests/cuda tests/codegen/test_cuda_gpu.py tests/backend_ndarray tests/test_autograd.py \
    >"$OUT/cuda_tests.log" 2>&1
echo "cuda tests: rc $? in $((SECONDS - t)) s"; tail -40 "$OUT/cuda_tests.log"
t=$SECONDS
timeout "${TRAIN_TIMEOUT:-90}" python3 -m needle.cli.train mnist --device cuda --epochs 1 \
    --checkpoint /tmp/mnist_cuda.ckpt >"$OUT/train.log" 2>&1
echo "mnist on cuda: rc $? in $((SECONDS - t)) s"; tail -4 "$OUT/train.log"
if [ "$bench" = 1 ]; then
    # where the compiled steps' time goes: one row per kernel launch (CUDA events), H200 peaks
    NEEDLE_PROFILE=1 NEEDLE_PEAK_GFLOPS=${PEAK_GFLOPS:-67000} NEEDLE_PEAK_GBS=${PEAK_GBS:-4800} \
        timeout "${PROFILE_TIMEOUT:-120}" python3 benchmarks/bench_workloads.py --device cuda \
        --only "${PROFILE_ONLY:-T2,T4}" --repeats 3 --modes native >/dev/null 2>"$OUT/profile.txt"
    echo "profile: rc $?"; grep -A 12 "needle profile" "$OUT/profile.txt" | cut -c1-160
    timeout "${BENCH_TIMEOUT:-240}" python3 benchmarks/bench_workloads.py --device cuda \
        --only "${BENCH_ONLY:-M1,M2,M3,M4,M5,T1,T2,T3,T4}" --repeats 10 2>"$OUT/bench.err" | tee "$OUT/bench.md"
    echo "bench: rc $?"; grep -i "fail\|error" "$OUT/bench.err" | head -5
fi
exit 0
