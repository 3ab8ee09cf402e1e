"""Smoke test of benchmarks/bench_latency.py at toy size (tables 1/2000 of their real size): every section
runs end to end on the benchmark's own code path (which checks each contender against torch before timing)
and writes its JSON, its tables and its three plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_latency.py"


@pytest.mark.slow
def test_every_section_runs_and_reports(tmp_path):
    out = tmp_path / "lat.json"
    plots = tmp_path / "plots"
    args = [sys.executable, str(_SCRIPT), "--scale", "0.0005", "--models", "embedding", "--batches", "1", "16",
            "--threads", "1", "--rounds", "3", "--callers", "1", "2", "--throughput-batch", "16", "--throughput-seconds", "0.05",
            "--throughput-rounds", "1", "--sweep-rows", "10000", "100000", "--profile-runs", "2", "--tmp", str(tmp_path),
            "--json", str(out), "--plots", str(plots)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [(r["batch"], r["threads"]) for r in data["rows"]] == [(1, 1), (16, 1)]
    for r in data["rows"] + data["sweep"]:
        assert set(r["timings"]) == {"fp32", "int8", "mixed"}
        for t in r["timings"].values():
            assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p99_ms"]
        assert r["max_abs_vs_torch"]["fp32"] <= 1e-4 and r["max_abs_vs_torch"]["int8"] <= 0.05
    # small batches get more rounds so that their p99 rests on more calls
    assert data["rows"][0]["timings"]["fp32"]["n"] == 3 * 10
    assert [r["callers"] for r in data["throughput"]] == [1, 2]
    assert all(v["samples_per_s"] > 0 for r in data["throughput"] for v in r["throughput"].values())
    assert [r["table_rows"] for r in data["sweep"]] == [10000, 100000]
    assert data["sweep"][1]["rows"] > data["sweep"][0]["rows"]
    for name in ("latency_vs_batch.png", "throughput_vs_callers.png", "speedup_vs_table_rows.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rows per big table |" in res.stdout and "| model | batch | callers |" in res.stdout
