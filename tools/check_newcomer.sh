#!/usr/bin/env bash
# A new user's first hour, as README.md tells it, in a fresh virtual environment (nothing of this machine's
# Python packages visible) on a fresh copy of the source tree:
#   1. the install of the README's first command (`pip install -c constraints.txt .`, the default CPU build),
#      timed: the README promises a quick CPU install;
#   2. the README's command-line block, exactly as written, in a copy of examples/, then the converted model
#      run with `shark_export.run` on the torch model's own inputs;
#   3. the install of the README's second command (`tools/install_test_deps.sh`) into the same environment, timed.
# CI runs it after the suite. Downloads come from pip's cache when the suite's install filled it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
unset SHARK_WITH_CUDA SHARK_EXPORT_LIBRARY PYTHONPATH  # a newcomer sets none of these

# The tree a `git clone` gives (tracked files, plus new ones not yet committed when run from a working copy).
mkdir "$scratch/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$scratch/src"

python -m venv "$scratch/venv"
export PATH="$scratch/venv/bin:$PATH"
python -m pip install -q --upgrade pip

install_line=$(python - "$repo/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()[0]
print(first.split(" && ")[0])
PY
)
[ "$install_line" = "pip install -c constraints.txt ." ] || { echo "README's first command installs with '$install_line'" >&2; exit 1; }
echo "== 1. $install_line (fresh venv, CPU build)"
start=$(date +%s)
(cd "$scratch/src" && python -m pip install -q -c constraints.txt .)
first_install=$(( $(date +%s) - start ))
echo "first install: ${first_install} s"
(cd / && python - <<'PY'
import onnxruntime, torch
import shark_export
assert "+cpu" in torch.__version__ or not torch.version.cuda, f"a CPU machine got torch {torch.__version__}"
print(f"installed: shark_export {shark_export.__file__}, onnxruntime {onnxruntime.__version__}, torch {torch.__version__}")
PY
)
mkdir "$scratch/demo"
(cd "$scratch/demo" && shark-export demo --out demo_out | tail -4)  # the rest of the README's first command

echo "== 2. the README's command line, as written"
python - "$repo/README.md" > "$scratch/cli_block.sh" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text[text.index("### Command line"):]
print(re.search(r"```bash\n(.*?)```", section, re.S).group(1))
PY
mkdir "$scratch/work"
cp -r "$repo/examples" "$scratch/work/examples"
(cd "$scratch/work" && bash -euo pipefail "$scratch/cli_block.sh")
(cd "$scratch/work/examples/quickstart" && python - <<'PY'
import numpy as np, torch
import shark_export
from mymodel import build

model = build()
model.load_state_dict(torch.load("model.pt"))
batch = torch.load("test.pt")[0]
got = shark_export.run("model.onnx", *batch)[0]
with torch.no_grad():
    want = model.eval()(*batch).numpy()
print(f"model.onnx run on test.pt's first batch: max |onnx - torch| = {np.abs(got - want).max():.4f}")
assert np.abs(got - want).max() < 0.1
PY
)

echo "== 3. tools/install_test_deps.sh (the README's second command's install)"
start=$(date +%s)
(cd "$scratch/src" && bash tools/install_test_deps.sh > "$scratch/test_deps.log" 2>&1) \
  || { tail -30 "$scratch/test_deps.log"; exit 1; }
second_install=$(( $(date +%s) - start ))
echo "second install (the test extras, the package built once more): ${second_install} s"
echo "newcomer check passed: first install ${first_install} s, second ${second_install} s"
