#!/usr/bin/env bash
# Build the op library with AddressSanitizer + UndefinedBehaviorSanitizer and run the kernel, error and fuzz
# tests against it, in ONNX Runtime from the wheel. Any sanitizer report aborts the process: the run fails.
#
#   tools/sanitize.sh [build-dir]        (default: build-sanitize; about 2-4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${1:-build-sanitize}"

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARK_WITH_CUDA=OFF -DSHARK_SANITIZE=address,undefined > "$BUILD.log" 2>&1 \
  || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc 2> /dev/null || echo 2)" --target shark_export_ops >> "$BUILD.log" 2>&1 \
  || { tail -50 "$BUILD.log"; exit 1; }

ASAN_RT="$(${CXX:-g++} -print-file-name=libasan.so)"
if [ ! -f "$ASAN_RT" ]; then
  echo "sanitize.sh: no libasan.so next to ${CXX:-g++}" >&2
  exit 1
fi
export SHARK_EXPORT_LIBRARY="$(cd "$BUILD" && pwd)/libshark_export_ops.so"
# Python itself is not instrumented: the runtime must be loaded first; its leaks are not ours.
# allocator_may_return_null: a too-big allocation fails as the tests expect, instead of aborting.
# libstdc++ too, so that ASan's __cxa_throw interceptor finds the real one (ORT throws on a failed allocation).
export LD_PRELOAD="$ASAN_RT $(${CXX:-g++} -print-file-name=libstdc++.so.6)"
# SHARK_SANITIZER_LOG=/path/prefix writes the reports to files (pytest captures the child's stderr).
LOG="${SHARK_SANITIZER_LOG:+:log_path=$SHARK_SANITIZER_LOG}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1$LOG"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1$LOG"
export SHARK_FUZZ_CASES="${SHARK_FUZZ_CASES:-300}"
exec python -m pytest -q -p no:cacheprovider -x tests/test_ops.py tests/test_ops_errors.py tests/test_fuzz.py \
  tests/test_multi_lookup.py tests/test_hostile_ops.py \
  -k "not hypothesis" "${@:2}"
