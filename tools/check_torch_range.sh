#!/usr/bin/env bash
# The other ends of torch's tested range (pyproject.toml: torch>=2.12,<2.15). For each version in
# SHARK_TORCH_VERSIONS (default: 2.12.1 and 2.14.1, the oldest and newest releases the range allows; the
# whole suite runs on constraints.txt's 2.13.0), in a scratch virtual environment: that torch, the
# package's other requirements and its test extra, then the fast tier (`pytest -m "not slow"`) on this
# source tree with the op library the current environment installed (`pip install .`). CI runs it after
# the suite. Each version downloads torch with its CUDA libraries (about 4 GB) and takes ~3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
versions="${SHARK_TORCH_VERSIONS:-2.12.1 2.14.1}"

# The installed library (imported from outside the source tree, which holds none).
library=$(cd / && python -c "import shark_export; print(shark_export.library_path())")
requirements=$(python - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = [r for r in project["dependencies"] + project["optional-dependencies"]["test"]
        if not r.replace(" ", "").startswith("torch")]
print("\n".join(reqs))
PY
)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for version in $versions; do
  echo "== torch $version: fast tier"
  python -m venv "$scratch/venv"
  printf '%s\n' "$requirements" > "$scratch/requirements.txt"
  "$scratch/venv/bin/python" -m pip install -q "torch==$version" -r "$scratch/requirements.txt"
  "$scratch/venv/bin/python" - "$version" <<'PY'
import sys
import torch
assert torch.__version__.split("+")[0] == sys.argv[1], f"asked for torch {sys.argv[1]}, got {torch.__version__}"
PY
  # the other runtimes' extra is not installed here (a torch check): their cases skip, saying so
  (cd "$repo" && env -u SHARK_ZOO_REQUIRE PYTHONPATH="$repo" SHARK_EXPORT_LIBRARY="$library" \
     "$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not slow")
  rm -rf "$scratch/venv"
done
echo "torch range checked: $versions"
