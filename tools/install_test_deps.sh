#!/usr/bin/env bash
# Install the package and everything its test suite needs, including the public recommender libraries of
# the compatibility suite (tests/zoo). CI runs this; so does a developer before `pytest`.
set -euo pipefail
cd "$(dirname "$0")/.."

# constraints.txt: the torch the whole suite is tested with (pyproject.toml accepts a range).
python -m pip install -c constraints.txt ".[test,zoo,runtimes]"
# These libraries declare dependencies that would replace torch 2.13 (a multi-GB CUDA build), pull
# fbgemm-gpu (CUDA) or install text/image stacks the tests never touch: they go in without their
# dependencies; what they really import is in the `zoo` extra.
python -m pip install --no-deps -r tests/zoo/requirements-nodeps.txt

python - <<'PY'
import torch
import fbgemm_gpu  # noqa: F401  (loads its operators: fails when the build does not match torch)
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} is not constraints.txt's 2.13.0"
print(f"test dependencies installed (torch {torch.__version__})")
PY
