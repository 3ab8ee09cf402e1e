#!/usr/bin/env bash
# The op library on linux-aarch64: cross-build it with Debian's g++-aarch64-linux-gnu and run the x86 op
# tests' cases on it under qemu-user, with the libonnxruntime.so of ONNX Runtime's aarch64 wheel.
#
#   1. installs g++-aarch64-linux-gnu and qemu-user with apt-get when they are missing (needs root);
#   2. ONNX Runtime headers via tools/fetch_ort_headers.sh (or $SHARK_ORT_INCLUDE_DIR);
#   3. the aarch64 libonnxruntime.so of the onnxruntime version this Python has (pip download of the
#      manylinux aarch64 wheel, cached; $SHARK_AARCH64_ORT_VERSION overrides the version);
#   4. cross-builds libshark_export_ops.so (cmake/toolchain-aarch64-linux-gnu.cmake, portable loops, no
#      CUDA) and tools/aarch64/ort_runner.cc;
#   5. tools/aarch64/cases.py generate: the cases of tests/test_ops.py and the bad-index/offsets cases of
#      tests/test_ops_errors.py, with the reference results and the x86 library's results (generic loops);
#   6. runs them all in one ort_runner process under qemu-aarch64;
#   7. tools/aarch64/cases.py compare: PASS/FAIL per case; gathers bit-exact vs shark_export.reference, bags
#      within the x86 tests' bound, bad inputs fail with the op's message; every result bit-identical to x86.
# Exit status 0 only when every case passes. Needs the Python environment of the tests (pytest's: numpy,
# onnx, onnxruntime, torch, hypothesis) and shark_export importable with its x86 library (an installed
# package, or PYTHONPATH + SHARK_EXPORT_LIBRARY).
#
# Environment: SHARK_AARCH64_BUILD (build dir, default build-aarch64), SHARK_AARCH64_CACHE (downloads,
# default ${XDG_CACHE_HOME:-~/.cache}/shark-export/aarch64), SHARK_AARCH64_ORT_VERSION, SHARK_ORT_CACHE /
# SHARK_ORT_INCLUDE_DIR (headers, as for the x86 build), SHARK_AARCH64_VERBOSE=0 (print failures only).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$SECONDS
step() { echo "== check_aarch64 [$((SECONDS - start))s]: $*"; }
die() { echo "check_aarch64: $*" >&2; exit 1; }

triple=aarch64-linux-gnu
sysroot=/usr/$triple
build="${SHARK_AARCH64_BUILD:-build-aarch64}"
mkdir -p "$build"
build="$(cd "$build" && pwd)"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/shark-export"
cache="${SHARK_AARCH64_CACHE:-$cache_root/aarch64}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# ---- 1. cross toolchain and qemu-user ---------------------------------------------------------------
missing=()
command -v "$triple-g++" > /dev/null || missing+=("g++-$triple")
command -v qemu-aarch64 > /dev/null || missing+=(qemu-user)
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    die "missing ${missing[*]}; install them with: sudo apt-get install --no-install-recommends ${missing[*]}"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null || die "apt-get install ${missing[*]} failed"
fi
[ -e "$sysroot/lib/ld-linux-aarch64.so.1" ] || die "$sysroot/lib/ld-linux-aarch64.so.1 is missing (package libc6-arm64-cross)"

# ---- 2. ONNX Runtime headers ------------------------------------------------------------------------
if [ -n "${SHARK_ORT_INCLUDE_DIR:-}" ]; then
  inc="$SHARK_ORT_INCLUDE_DIR"
else
  step "ONNX Runtime headers (tools/fetch_ort_headers.sh)"
  inc=$(bash tools/fetch_ort_headers.sh "${SHARK_ORT_CACHE:-$cache_root/ort-headers}" | tail -n 1) \
    || die "tools/fetch_ort_headers.sh failed (set SHARK_ORT_INCLUDE_DIR to an ONNX Runtime include dir instead)"
fi
[ -f "$inc/onnxruntime_cxx_api.h" ] || die "no onnxruntime_cxx_api.h in $inc"

# ---- 3. the aarch64 libonnxruntime.so ----------------------------------------------------------------
version="${SHARK_AARCH64_ORT_VERSION:-$(python -c 'import onnxruntime; print(onnxruntime.__version__)')}" \
  || die "cannot read the installed onnxruntime version (set SHARK_AARCH64_ORT_VERSION)"
ortdir="$cache/onnxruntime-$version"
if [ ! -f "$ortdir/libonnxruntime.so.$version" ]; then
  step "downloading the onnxruntime $version aarch64 wheel"
  rm -rf "$ortdir.partial" && mkdir -p "$ortdir.partial/wheel"
  python -m pip download -q "onnxruntime==$version" --no-deps --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
    -d "$ortdir.partial/wheel" || die "pip could not download an aarch64 wheel of onnxruntime==$version"
  python - "$ortdir.partial" "$version" <<'PY' || die "no libonnxruntime.so in the downloaded wheel"
import glob, sys, zipfile
dest, version = sys.argv[1:3]
(wheel,) = glob.glob(f"{dest}/wheel/*.whl")
with zipfile.ZipFile(wheel) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{version}"
    with z.open(name) as src, open(f"{dest}/libonnxruntime.so.{version}", "wb") as out:
        out.write(src.read())
PY
  rm -rf "$ortdir.partial/wheel"
  ln -sfn "libonnxruntime.so.$version" "$ortdir.partial/libonnxruntime.so.1"  # its SONAME
  rm -rf "$ortdir" && mv "$ortdir.partial" "$ortdir"
fi

# ---- 4. cross-build ---------------------------------------------------------------------------------
step "cross-building libshark_export_ops.so for aarch64 in $build"
generator=()
if [ ! -f "$build/CMakeCache.txt" ] && command -v ninja > /dev/null; then generator=(-G Ninja); fi
cmake -S "$repo" -B "$build" "${generator[@]}" -DCMAKE_TOOLCHAIN_FILE="$repo/cmake/toolchain-$triple.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DSHARK_WITH_CUDA=OFF -DSHARK_ORT_INCLUDE_DIR="$inc" > "$build/configure.log" \
  || { cat "$build/configure.log"; die "cmake configure failed"; }
cmake --build "$build" -j "$(nproc)" --target shark_export_ops || die "cross-build of libshark_export_ops.so failed"
lib="$build/libshark_export_ops.so"
"$triple-readelf" -h "$lib" | grep -q "AArch64" || die "$lib is not an AArch64 ELF file"
"$triple-g++" -std=c++17 -O2 -Wall -Wextra -I"$inc" tools/aarch64/ort_runner.cc -o "$build/ort_runner" \
  -L"$ortdir" -l:libonnxruntime.so.1 -Wl,-rpath,"$ortdir" || die "building tools/aarch64/ort_runner.cc failed"

# qemu-user 7.2 (Debian 12) shows the guest the host's x86 /proc/cpuinfo; ONNX Runtime's cpuinfo finds no ARM
# core there and crashes (SIGSEGV) while libonnxruntime.so loads. qemu looks every path the guest opens up
# in its -L prefix first, so the prefix is the cross sysroot plus a proc/cpuinfo that lists one Neoverse-N1
# core per host CPU (the ISA features ORT uses come from the emulated CPU's AT_HWCAP, not from this file).
qroot="$build/qemu-root"
rm -rf "$qroot" && mkdir -p "$qroot/proc"
for entry in "$sysroot"/*; do ln -s "$entry" "$qroot/"; done
for cpu in /sys/devices/system/cpu/cpu[0-9]*; do
  printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' \
    "${cpu##*/cpu}"
done > "$qroot/proc/cpuinfo"

# ---- 5. cases -----------------------------------------------------------------------------------------
work="$build/check"
rm -rf "$work" && mkdir -p "$work/results"
step "generating the cases (tools/aarch64/cases.py)"
python tools/aarch64/cases.py generate "$work/cases" || die "generating the cases failed"

# ---- 6. run under qemu ---------------------------------------------------------------------------------
step "running them under qemu-aarch64"
set +e
qemu-aarch64 -L "$qroot" "$build/ort_runner" "$lib" "$work/cases/manifest.txt" "$work/results"
runner_rc=$?
set -e
[ "$runner_rc" -eq 0 ] || echo "check_aarch64: ort_runner under qemu exited with status $runner_rc" >&2

# ---- 7. compare ------------------------------------------------------------------------------------------
step "comparing"
quiet=()
[ "${SHARK_AARCH64_VERBOSE:-1}" = 0 ] && quiet=(--quiet)
set +e
python tools/aarch64/cases.py compare "${quiet[@]}" "$work/cases" "$work/results"
compare_rc=$?
set -e
step "done"
if [ "$runner_rc" -ne 0 ] || [ "$compare_rc" -ne 0 ]; then
  die "FAILED (runner status $runner_rc, compare status $compare_rc); cases and results in $work"
fi
echo "check_aarch64: all cases pass on linux-aarch64 (qemu-user) in $((SECONDS - start))s"
