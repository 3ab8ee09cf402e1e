"""The op library built with AddressSanitizer + UndefinedBehaviorSanitizer runs the kernel, error and fuzz
tests in ONNX Runtime from the wheel (tools/sanitize.sh); any sanitizer report fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _missing() -> str | None:
    for tool in ("cmake", os.environ.get("CXX", "g++")):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    runtime = subprocess.run([os.environ.get("CXX", "g++"), "-print-file-name=libasan.so"], capture_output=True, text=True)
    if not os.path.isfile(runtime.stdout.strip()):
        return "the compiler has no AddressSanitizer runtime (libasan.so)"
    return None


def test_kernels_under_address_and_undefined_behavior_sanitizers(tmp_path):
    why = _missing()
    if why:
        pytest.skip(f"sanitizer build not possible here: {why}")
    log = tmp_path / "sanitizer"
    env = dict(os.environ, SHARK_SANITIZER_LOG=str(log))
    proc = subprocess.run(["bash", os.path.join(REPO, "tools", "sanitize.sh"), str(tmp_path / "build")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    reports = "".join(p.read_text() for p in tmp_path.glob("sanitizer*"))
    assert proc.returncode == 0 and not reports, (
        f"sanitizer run failed ({proc.returncode}):\n{reports[-6000:]}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    )
    assert " passed" in proc.stdout and " failed" not in proc.stdout
