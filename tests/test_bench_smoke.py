"""Smoke test of benchmarks/bench_lookup.py at toy size: the benchmark's own code path builds every
contender, checks each one's output against the numpy reference (so it can never time wrong things)
and produces a report. Also checks that its output checks do catch a wrong result."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lookup.py"
_TOY = ["--rows", "2000", "--dim", "64", "--batch", "20", "--fields", "10", "--bag", "20", "--threads", "1,2",
        "--repeats", "1", "--inner", "1", "--warmup", "0", "--check-bags", "0", "--quiet"]


@pytest.fixture(scope="module")
def bench_module():
    spec = importlib.util.spec_from_file_location("bench_lookup", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_lookup"] = mod  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_lookup", None)


def test_run_checks_every_contender(bench_module, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    result = bench_module.run(bench_module.parse_args(_TOY + ["--json", str(out_json)]))
    res = result["results"]
    assert sorted(res) == sorted(bench_module.ALL_KEYS)
    for key, entry in res.items():
        assert set(entry["threads"]) == {"1", "2"}, key
        for th, r in entry["threads"].items():
            assert r["check"] is not None and r["samples"] == 1, (key, th)
            assert r["median_ms"] > 0 and r["min_ms"] > 0, (key, th)
    assert {(r["name"], r["threads"]) for r in result["ratios"]} == {
        (name, th) for name, *_ in bench_module.TARGETS for th in (1, 2)
    }
    text = capsys.readouterr().out
    assert "FAILED" not in text and text.count("PASSED") == 2 * len(bench_module.ALL_KEYS)
    assert json.loads(out_json.read_text())["results"].keys() == res.keys()
    sizes = {b["table"].split(" (")[0]: b["bytes"] for b in result["table_bytes"]}
    assert sizes["shark int8"] == 2000 * 68 and sizes["torch byte-rowwise prepack"] == 2000 * 72


def test_checks_catch_a_wrong_output(bench_module):
    bench = bench_module.Bench(bench_module.parse_args(_TOY), log=lambda s: None)
    try:
        assert bench.verify() == []
        for c in bench.contenders:
            if c.threads != 1:
                continue
            good = np.array(c.output(c.call()), copy=True)
            assert c.check(good).ok, c.key
            bad = good.copy()
            bad[len(bad) // 2, 3] += np.float32(1e-3) * (1 + abs(bad[len(bad) // 2, 3]))
            assert not c.check(bad).ok, f"{c.key}: a perturbed element passed the check"
            assert not c.check(good[::-1]).ok, f"{c.key}: reordered rows passed the check"
            assert not c.check(good[:-1]).ok, f"{c.key}: a short output passed the check"
    finally:
        bench.close()


def test_a_contender_that_writes_nothing_fails(bench_module):
    """ORT contenders share one output buffer: a run that leaves it untouched must not pass on the
    previous contender's (correct) result."""
    bench = bench_module.Bench(bench_module.parse_args(_TOY + ["--only", "lookup.shark_int8"]), log=lambda s: None)
    try:
        assert [c.threads for c in bench.contenders] == [1, 2]
        bench.contenders[1].call = lambda: None  # the 2-thread pair "runs" without writing its output
        failed = bench.verify()
        assert [(c.key, c.threads) for c in failed] == [("lookup.shark_int8", 2)]
    finally:
        bench.close()
