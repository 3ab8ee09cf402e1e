"""Smoke test of benchmarks/bench_portable.py's lookup section at toy size: every lookup kind of every table is
lowered, checked against the numpy reference (the benchmark asserts it before timing) and timed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_portable.py"


def test_lookup_section_checks_and_times_every_kind():
    spec = importlib.util.spec_from_file_location("bench_portable", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(_PATH.parent))
    try:
        spec.loader.exec_module(module)
        rows = module.lookups(batch=8, rounds=1, num_rows=3000)
    finally:
        sys.path.remove(str(_PATH.parent))
    assert {(r["table"], r["kind"]) for r in rows} == {(t, k) for t in ("int8", "int4", "mixed")
                                                       for k in ("gather", "bag 1-D sum", "bag 2-D mean")}
    assert all(r["custom_ms"] > 0 and r["portable_ms"] > 0 and r["portable_nodes"] > 3 for r in rows)
