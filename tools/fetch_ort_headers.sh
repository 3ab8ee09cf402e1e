#!/usr/bin/env bash
# Fetch ONNX Runtime C/C++ headers into a cache dir (no pip wheel ships them), from one of:
#  1. an official ONNX Runtime release archive (onnxruntime-<os>-<arch>-<version>.tgz), given as a local
#     path or a URL in SHARK_ORT_ARCHIVE, checked against SHARK_ORT_ARCHIVE_SHA256 (required): works on
#     any Linux or macOS machine with tar;
#  2. otherwise Debian 13 "trixie"'s libonnxruntime-dev: we reuse the Debian archive this machine is already
#     configured with (read from its apt sources), switch the suite to trixie in a private apt state
#     directory, download the .deb and extract it.
# Nothing is installed system-wide.
#
# Usage: fetch_ort_headers.sh CACHE_DIR      prints the include dir on stdout (last line)
set -euo pipefail
cache="${1:?usage: fetch_ort_headers.sh CACHE_DIR}"
pkg="${SHARK_ORT_DEB_PACKAGE:-libonnxruntime-dev}"
suite="${SHARK_ORT_DEB_SUITE:-trixie}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

if [ -n "${SHARK_ORT_ARCHIVE:-}" ]; then
  want="${SHARK_ORT_ARCHIVE_SHA256:-}"
  if [ -z "$want" ]; then
    echo "fetch_ort_headers: SHARK_ORT_ARCHIVE needs SHARK_ORT_ARCHIVE_SHA256 (the archive's sha256)" >&2
    exit 1
  fi
  dest="$cache/release-$want"
  found=$(find "$dest" -name onnxruntime_c_api.h -print -quit 2> /dev/null || true)
  if [ -n "$found" ]; then dirname "$found"; exit 0; fi
  tgz="$cache/release-$want.tgz"
  python3 - "$SHARK_ORT_ARCHIVE" "$tgz" "$want" <<'PY'
import hashlib, shutil, sys, urllib.request
src, dst, want = sys.argv[1:4]
if "://" in src:
    with urllib.request.urlopen(src, timeout=300) as r, open(dst, "wb") as f:
        shutil.copyfileobj(r, f)
else:
    shutil.copyfile(src, dst)
got = hashlib.sha256(open(dst, "rb").read()).hexdigest()
if got != want.lower():
    sys.exit(f"fetch_ort_headers: {src} has sha256 {got}, expected {want}")
PY
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  tar -xzf "$tgz" -C "$dest.partial"
  found=$(find "$dest.partial" -name onnxruntime_c_api.h -print -quit)
  if [ -z "$found" ]; then
    echo "fetch_ort_headers: $SHARK_ORT_ARCHIVE has no onnxruntime_c_api.h" >&2
    exit 1
  fi
  mv "$dest.partial" "$dest"
  rm -f "$tgz"
  dirname "$(find "$dest" -name onnxruntime_c_api.h -print -quit)"
  exit 0
fi

inc="$cache/root/usr/include/onnxruntime"
if [ -f "$inc/onnxruntime_c_api.h" ]; then echo "$inc"; exit 0; fi

# The machine's configured Debian archive: first URI of a deb822 or one-line source naming "debian".
archive=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  archive=$(awk '/^URIs:/{for(i=2;i<=NF;i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
  [ -n "$archive" ] && break
done
if [ -z "$archive" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    archive=$(awk '$1=="deb" {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):.*\/debian\/?$/) {print $i; exit}}' "$f")
    [ -n "$archive" ] && break
  done
fi
if [ -z "$archive" ]; then
  echo "fetch_ort_headers: no Debian archive configured in /etc/apt; pass -DSHARK_ORT_INCLUDE_DIR=<onnxruntime release>/include instead" >&2
  exit 1
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
state="$cache/apt"
mkdir -p "$state/lists/partial" "$state/archives/partial" "$state/etc/preferences.d" "$state/etc/trusted.gpg.d"
echo "deb [signed-by=$keyring] $archive $suite main" > "$state/etc/sources.list"
: > "$state/status"
opts=(-o "Dir::Etc::SourceList=$state/etc/sources.list" -o "Dir::Etc::SourceParts=-"
      -o "Dir::Etc::Preferences=$state/etc/preferences" -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d"
      -o "Dir::State=$state" -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
      -o "Dir::Cache=$state" -o "Dir::Cache::Archives=$state/archives" -o "APT::Architecture=$(dpkg --print-architecture)"
      -o "Debug::NoLocking=1")
# As root, apt would drop to the _apt user, which cannot write into the user's cache dir (and warns
# "Download is performed unsandboxed"): stay root, nothing here is installed.
if [ "$(id -u)" = 0 ]; then opts+=(-o "APT::Sandbox::User=root"); fi
apt-get "${opts[@]}" -qq update >&2
(cd "$cache" && apt-get "${opts[@]}" -qq download "$pkg" >&2)
deb=$(ls "$cache"/${pkg}_*.deb | head -n1)
dpkg -x "$deb" "$cache/root"
if [ ! -f "$inc/onnxruntime_c_api.h" ]; then
  echo "fetch_ort_headers: $deb has no onnxruntime_c_api.h under usr/include/onnxruntime" >&2
  exit 1
fi
echo "$inc"
