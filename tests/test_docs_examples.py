"""Every code example in README.md, docs/ and examples/*/README.md runs as written (issue 20).

Each document's ```python and ```bash blocks run in document order in one workspace (a temporary directory with
a copy of examples/ and links to tools/ and cmake/): python blocks share one namespace, bash blocks run with
`bash -euo pipefail` in a fresh shell. The one exception is the install of a fresh machine, which this suite
cannot run from inside itself: its lines are `<install> && <command>`, the install is what CI's `.ci/run` does
before the tests (checked below), and the command after `&&` runs here, unless it is this test suite itself.
Blocks without a language (diagrams) are not code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
             *sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").glob("*/README.md"))]
RUNNABLE = {"python", "bash"}
# Installs CI performs before the tests (.ci/run → tools/install_test_deps.sh installs the package too).
INSTALLS_DONE_BY_CI = ("pip install -c constraints.txt .", "tools/install_test_deps.sh")
THE_SUITE_ITSELF = "pytest"

pytestmark = pytest.mark.slow


def code_blocks(document: str) -> list[tuple[str, int, str]]:
    """(language, first line number, code) of every fenced block of the document, in order."""
    blocks, lines = [], (REPO / document).read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append((match.group(1), i + 2, "\n".join(lines[i + 1:end]) + "\n"))
        i = end + 1
    return blocks


def runnable_bash(code: str) -> str:
    """The block with each `<install done by CI> && <command>` line reduced to its command (or to nothing when
    the command is the test suite)."""
    out = []
    for line in code.splitlines():
        head, sep, tail = line.partition(" && ")
        if sep and head.strip() in INSTALLS_DONE_BY_CI:
            command = tail.split("#")[0].strip()
            out.append("" if command == THE_SUITE_ITSELF else command)
        else:
            out.append(line)
    return "\n".join(out) + "\n"


DRIVER = r'''
import json, subprocess, sys
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__docs__"}
for language, line, code in blocks:
    print(f"--- {sys.argv[2]}:{line} ({language})", flush=True)
    if language == "python":
        exec(compile(code, f"{sys.argv[2]}:{line}", "exec"), namespace)
    else:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code])
        if done.returncode:
            sys.exit(f"{sys.argv[2]}:{line}: the bash block exited {done.returncode}")
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("build*", "__pycache__"))
    for name in ("tools", "cmake"):
        (root / name).symlink_to(REPO / name)
    return root


def run_document(document: str, root: Path) -> str:
    blocks = [(lang, line, runnable_bash(code) if lang == "bash" else code)
              for lang, line, code in code_blocks(document) if lang in RUNNABLE]
    spec = root / f"{document.replace('/', '_')}.json"
    spec.write_text(json.dumps(blocks))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(spec), document], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{document}: a code example failed\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    return done.stdout


def test_every_fenced_block_is_runnable_or_a_diagram():
    for document in DOCUMENTS:
        for language, line, _ in code_blocks(document):
            assert language in RUNNABLE or language == "", f"{document}:{line}: a ```{language} block is neither run nor a diagram"


def test_ci_does_the_installs_the_readme_names():
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash tools/install_test_deps.sh" in ci and re.search(r"^pytest$", ci, re.M)
    script = (REPO / "tools" / "install_test_deps.sh").read_text()
    assert 'pip install -c constraints.txt ".[test,zoo,runtimes]"' in script  # the package, as `pip install -c constraints.txt .`
    first = next(code for lang, _, code in code_blocks("README.md") if lang == "bash")
    assert all(line.partition(" && ")[0].strip() in INSTALLS_DONE_BY_CI for line in first.splitlines() if line.strip())


def test_readme_examples_run_as_written(workspace):
    out = run_document("README.md", workspace)
    assert "faithfulness" in out and "PASSED" in out
    assert (workspace / "model.onnx").is_file() and (workspace / "pruned.onnx").is_file()
    assert (workspace / "examples" / "quickstart" / "model.ort.onnx").is_file()
    assert sorted(p.name for p in (workspace / "outputs").iterdir()) == ["output.npy"]
    # `shark-export demo`, the first command of the README, writes where it says (a temporary directory), not here
    written = re.search(r"^model file: (\S+\.onnx) ", out, re.M)
    assert written and Path(written.group(1)).is_file(), out[-3000:]
    assert not (workspace / "shark_export_demo").exists()


def test_ci_checks_the_newcomers_path():
    """.ci/run runs tools/check_newcomer.sh, which installs as the README's first command says and runs its
    command-line block as written (read from the README itself)."""
    assert re.search(r"^bash tools/check_newcomer.sh$", (REPO / ".ci" / "run").read_text(), re.M)
    script = (REPO / "tools" / "check_newcomer.sh").read_text()
    assert "### Command line" in script and "### Command line" in (REPO / "README.md").read_text()


OTHER_DOCUMENTS = [d for d in DOCUMENTS if d not in ("README.md", "examples/cpp/README.md")
                   and any(lang in RUNNABLE for lang, _, _ in code_blocks(d))]


@pytest.mark.parametrize("document", OTHER_DOCUMENTS)
def test_other_documents_examples_run_as_written(document, tmp_path_factory):
    root = tmp_path_factory.mktemp("doc")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("build*", "__pycache__"))
    run_document(document, root)


def test_cpp_readme_examples_run_as_written(workspace):
    if not (workspace / "model.onnx").is_file():
        run_document("README.md", workspace)  # its model.onnx is the one the C++ example serves
    shutil.rmtree(workspace / "outputs", ignore_errors=True)
    run_document("examples/cpp/README.md", workspace)
    assert sorted(p.name for p in (workspace / "outputs").iterdir()) == ["output.npy"]
