"""Seeded fuzzing (tests/fuzz_driver.py) of both kernels and of the model-file reader, each batch of cases in
a child process so that a crash or a hang is counted, not fatal. Under tools/sanitize.sh the same test runs
against the AddressSanitizer + UBSan build of the op library, where a sanitizer report ends the child."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

DRIVER = os.path.join(os.path.dirname(__file__), "fuzz_driver.py")
CASES = int(os.environ.get("SHARK_FUZZ_CASES", "500"))

pytestmark = pytest.mark.slow  # the slow tier: the fast one is `pytest -m "not slow"`


def _run(target: str, seed: int) -> dict:
    try:
        proc = subprocess.run([sys.executable, DRIVER, "--seed", str(seed), "--cases", str(CASES), "--target", target],
                              capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fuzz {target} seed {seed}: hung (no result in 600 s)")
    assert proc.returncode == 0, (
        f"fuzz {target} seed {seed}: the child ended with {proc.returncode} (a crash or a sanitizer report):\n"
        f"{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("target,seed", [("kernels", s) for s in range(6)] + [("reader", s) for s in range(2)])
def test_fuzz_cases_end_in_a_result_or_a_clean_error(target, seed):
    result = _run(target, seed)
    assert result["unexpected"] == [], json.dumps(result["unexpected"][:3], indent=1)
    counts = result["counts"]
    assert sum(counts.values()) == CASES
    # both outcomes happen: the cases reach the kernels, not only the validation
    assert counts.get("ran", 0) > CASES // 10 and counts.get("clean error", 0) > CASES // 10, counts
