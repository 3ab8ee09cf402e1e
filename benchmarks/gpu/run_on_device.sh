#!/usr/bin/env bash
# GPU verification of the CUDA kernels (issue 5) in one prepared script, for a machine with an NVIDIA GPU,
# nvcc, cmake and python3 with torch (CUDA) + numpy (+ onnx/pytest for the pytest step); no network and
# no ONNX Runtime headers needed (only the test library is built: -DSHARK_BUILD_LIBRARY=OFF).
#
#   bash benchmarks/gpu/run_on_device.sh            (from the repository root)
#
# Steps (each one's status is summarized at the end; the exit status is 1 if any failed), most telling first
# so that a run cut short still returns the important part (everything is logged as it goes):
#   build      libshark_export_testlib.so + shark_cuda_selftest for this GPU's architecture (~1-2 min)
#   selftest   shark_cuda_selftest: the CUDA launchers vs their host emulation, bit for bit, every
#              tier/dim/op, bad indices and offsets (seconds)
#   bench      benchmarks/gpu/verify_and_bench.py: verification vs shark_export.reference, then
#              R=10M x D=64 timings vs torch (~2-3 min)
#   sanitizer  shark_cuda_selftest --quick under compute-sanitizer memcheck: no out-of-bounds access (~1-2 min)
#   pytest     pytest tests/test_cuda.py -m cuda (ctypes launcher tests; the ORT CUDA EP tests skip when
#              onnxruntime has no CUDA EP) (~1 min)
# SHARK_GPU_STEPS=build,selftest,... runs a subset (build is needed by the others unless $SHARK_GPU_BUILD
# already holds a build). Results go to $OUT (default ./gpu_out): gpu_log.txt (everything),
# gpu_results.json, selftest.txt, cmake_configure.txt.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu_out}"
BUILD="${SHARK_GPU_BUILD:-/tmp/shark_build_gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/gpu_log.txt") 2>&1

declare -a SUMMARY=()
status=0
step() {  # step NAME TIMEOUT_S CMD...
  local name="$1" limit="$2"
  shift 2
  echo
  echo "=== $name ($(date +%T), limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  SUMMARY+=("$(printf '%-34s rc=%-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
  [ "$rc" -eq 0 ] || status=1
  return $rc
}

echo "=== environment"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
nvcc --version | tail -n 2 || true
cmake --version | head -n 1 || true
"$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)" || true
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>/dev/null || echo "onnxruntime: not importable"

cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')"
ARCHS="${SHARK_CUDA_ARCHS:-${cap:-90}-real}"
echo "CUDA architectures for this build: $ARCHS (the wheel builds 80-real;90-real;90-virtual)"

STEPS=",${SHARK_GPU_STEPS:-build,selftest,bench,sanitizer,pytest},"
want() { [[ "$STEPS" == *",$1,"* ]]; }
export SHARK_TESTLIB="$BUILD/libshark_export_testlib.so"

if want build; then
  step "build (cmake)" 420 bash -c "cmake -S . -B '$BUILD' -DSHARK_BUILD_LIBRARY=OFF -DSHARK_BUILD_TESTS=ON \
      -DSHARK_WITH_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES='$ARCHS' > '$OUT/cmake_configure.txt' 2>&1 \
      || { cat '$OUT/cmake_configure.txt'; exit 1; }; cmake --build '$BUILD' -j \"\$(nproc)\"" || {
    echo "build failed: nothing else can run"; STEPS=","; }
fi
if want selftest; then
  step "selftest" 180 bash -c "'$BUILD/shark_cuda_selftest' > '$OUT/selftest.txt' 2>&1; rc=\$?; grep -v '^PASSED' '$OUT/selftest.txt' | head -n 60; tail -n 1 '$OUT/selftest.txt'; exit \$rc"
fi
if want bench; then
  step "verify_and_bench.py" 480 "$PY" benchmarks/gpu/verify_and_bench.py --testlib "$SHARK_TESTLIB" \
    --json "$OUT/gpu_results.json"
fi
if want sanitizer; then
  if command -v compute-sanitizer > /dev/null; then
    step "compute-sanitizer memcheck" 300 compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$BUILD/shark_cuda_selftest" --quick
  else
    SUMMARY+=("compute-sanitizer memcheck         skipped: compute-sanitizer not on PATH")
  fi
fi
if want pytest; then
  step "pytest -m cuda tests/test_cuda.py" 300 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -rs
fi

echo
echo "=== summary"
for s in "${SUMMARY[@]}"; do echo "$s"; done
echo "overall: $([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
