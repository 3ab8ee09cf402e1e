"""Compatibility suite: models built with the public CTR libraries, converted with fp32 / int8 / mixed.

Each case is checked for faithfulness, size and ΔAUC (tests/zoo/harness.py has the bounds). A library that
is not installed skips its cases with the reason, unless SHARK_ZOO_REQUIRE=1 (CI), where it fails.
"""

from __future__ import annotations

import pytest
from harness import LIBRARY_MODULES, PRESETS, build, load_library, required, run

pytestmark = pytest.mark.slow


def _params():
    params = []
    for module in LIBRARY_MODULES:
        lib, why = load_library(module)
        if lib is None:
            params.append(pytest.param(module, None, None, id=f"{module}-missing"))
            continue
        for case in lib.CASES:
            for preset in PRESETS:
                params.append(pytest.param(module, case, preset, id=f"{case}-{preset}"))
    return params


@pytest.mark.parametrize("module,case,preset", _params())
def test_zoo_case(module, case, preset, tmp_path):
    if case is None:
        why = load_library(module)[1]
        if required():
            pytest.fail(f"SHARK_ZOO_REQUIRE=1 but the library does not import: {why}")
        pytest.skip(f"library not installed: {why}")
    outcome = run(build(module, case), preset, tmp_path)
    assert outcome.converted, outcome.error
    detail = f"{case} {preset}:\n{outcome.report_text}"
    assert outcome.faithful, f"faithfulness failed (max abs {outcome.max_abs:.3g})\n{detail}"
    assert outcome.size_ok, f"tables at {outcome.ratio:.4f} of fp32, limit {outcome.size_limit_ratio:.4f}\n{detail}"
    assert outcome.auc_ok, f"held-out ΔAUC {outcome.auc_deltas}\n{detail}"
