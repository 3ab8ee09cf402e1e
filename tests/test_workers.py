"""Tables quantized by several processes under torch.distributed (issue 22.3): the same bytes as one process.

`convert(..., workers=N)` starts N-1 worker processes; under torchrun every rank runs the CLI and rank 0
writes. Each test compares every file of the output with a one-process conversion of the same checkpoint.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import shark_export
from shark_export.errors import FormatError
from shark_export.parallel_store import RowsJob, WorkerError, WorkerGroup, split_rows
from shark_export.quant_config import QuantConfig
from shark_export.quantize import plan_layout

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from checkpoint_models import WideRanker  # noqa: E402
from worker_sources import DyingSource  # noqa: E402  (a module the worker imports too)


def _batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 6000, (512,), generator=g), torch.randint(0, 9000, (512, 5), generator=g),
             torch.randint(0, 700, (512,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = WideRanker().eval()
    root = tmp_path_factory.mktemp("wide")
    dcp.save(model.state_dict(), checkpoint_id=str(root / "dcp"))
    return root / "dcp", _batches(3)


def _convert(directory: Path, checkpoint: Path, cal, quant, workers) -> shark_export.ConvertReport:
    directory.mkdir()
    with torch.device("meta"):
        meta = WideRanker().eval()
    return shark_export.convert(meta, cal[0], directory / "m.onnx", quant=quant, calibration=cal, weights=checkpoint,
                                workers=workers, shard_bytes=1 << 18)


def _same_files(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all(filecmp.cmp(a / n, b / n, shallow=False) for n in names), names
    return names


@pytest.mark.parametrize("quant", [
    "int8",
    "mixed",
    QuantConfig(target_ratio=0.08),                       # int2 and dropped rows: the padding row must stay zero
    QuantConfig("int4", clip="l2", scale_group="none"),  # the narrow table split too
])
def test_two_and_three_workers_write_the_bytes_one_writes(checkpoint, tmp_path, quant):
    source, cal = checkpoint
    one = _convert(tmp_path / "one", source, cal, quant, 1)
    assert one.faithfulness
    for workers in (2, 3) if quant == "int8" else (2,):  # 3: shares of uneven size
        many = _convert(tmp_path / f"w{workers}", source, cal, quant, workers)
        assert many.faithfulness
        assert any("quantized by" in note for note in many.notes)
        names = _same_files(tmp_path / "one", tmp_path / f"w{workers}")
        assert len(names) >= 3  # the model file and data files of at most 256 KiB each
    assert not [p for p in tmp_path.rglob(".*")]  # no stage directory left


def test_a_bad_row_in_a_workers_share_names_it_and_writes_nothing(tmp_path):
    torch.manual_seed(0)
    model = WideRanker().eval()
    with torch.no_grad():
        model.hist.weight[8500, 7] = float("nan")  # in the last worker's rows
    dcp.save(model.state_dict(), checkpoint_id=str(tmp_path / "dcp"))
    cal = [(u, h.clamp(max=8000), c) for u, h, c in _batches(2)]  # the torch check never reads the NaN row
    with pytest.raises(FormatError, match=r"table 'hist.weight': row 8500 has a non-finite value nan at column 7"):
        _convert(tmp_path / "out", tmp_path / "dcp", cal, "int8", 3)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path):
    """A worker killed mid-table (what the OOM killer does): rank 0 raises WorkerError with its exit status."""
    rows = 100_000
    source = DyingSource(rows, 8, die_after=80_000)
    _, layout = plan_layout(source, 2, name="t")  # int8
    split = split_rows(rows, 2, layout.chunk_rows())
    assert split[0][1] < 80_000 < split[1][1]  # only worker 1 reads the rows that end it
    segment = tmp_path / "seg.bin"
    with open(segment, "wb") as f:
        f.truncate(layout.nbytes)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(TESTS) + (os.pathsep + env_path if env_path else "")  # the worker imports this module
    try:
        group = WorkerGroup.spawn(2)
    finally:
        os.environ["PYTHONPATH"] = env_path
    with pytest.raises(WorkerError, match=r"worker 1 exited with (9|-9)"):
        try:
            group.quantize([RowsJob(source, layout, 0, rows, str(segment), "none")])
        finally:
            group.close(None)


FACTORY = "from checkpoint_models import build_wide as build\n"


def test_torchrun_ranks_convert_together_from_the_cli(checkpoint, tmp_path):
    """`torchrun --nproc-per-node 2 -m shark_export.cli convert ...` and `convert --workers 2`: what one process
    writes, byte for byte."""
    source, cal = checkpoint
    (tmp_path / "wide_factory.py").write_text(FACTORY)
    torch.save(cal[0], tmp_path / "example.pt")
    torch.save(cal, tmp_path / "cal.pt")
    common = ["--model", "wide_factory:build", "--checkpoint", str(source), "--inputs", "example.pt",
              "--calibration", "cal.pt", "--quant", "mixed", "--shard-size", "256K", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for d in ("one", "two", "spawned"):
        (tmp_path / d).mkdir()
    done = subprocess.run([sys.executable, "-m", "shark_export.cli", "convert", *common, "--out", "one/m.onnx"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "shark_export.cli", "convert", *common, "--out", "two/m.onnx"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("quantized by 2 workers") == 1  # rank 0 prints the report, rank 1 nothing
    _same_files(tmp_path / "one", tmp_path / "two")
    done = subprocess.run([sys.executable, "-m", "shark_export.cli", "convert", *common, "--out", "spawned/m.onnx",
                           "--workers", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "quantized by 2 workers" in done.stdout
    _same_files(tmp_path / "one", tmp_path / "spawned")


def test_workers_must_be_a_count_or_distributed(checkpoint, tmp_path):
    source, cal = checkpoint
    for bad in (0, -1, 1.5, True, "four"):
        with pytest.raises(ValueError, match="workers="):
            _convert(tmp_path / f"bad{bad}", source, cal, "int8", bad)
    with pytest.raises(WorkerError, match="initialize it first"):
        _convert(tmp_path / "dist", source, cal, "int8", "distributed")


def test_a_worker_that_cannot_start_is_named_at_once(tmp_path, monkeypatch):
    """A worker that dies on import (here: a broken package shadows ours on its path) is an error at once, not a
    wait for the rendezvous's timeout."""
    broken = tmp_path / "broken" / "shark_export"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    group = WorkerGroup.spawn(2)
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"did not start; worker 1 exited with 1"):
        try:
            group.run([[], []])
        finally:
            group.close(None)
    assert time.monotonic() - start < 60


def test_a_conversion_failing_before_the_workers_join_ends_them_at_once(checkpoint, tmp_path):
    from shark_export.checkpoint_reader import CheckpointError

    _, cal = checkpoint
    state = WideRanker().state_dict()
    del state["hist.weight"]
    dcp.save(state, checkpoint_id=str(tmp_path / "dcp"))
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="hist.weight"):
        _convert(tmp_path / "out", tmp_path / "dcp", cal, "int8", 2)
    assert time.monotonic() - start < 30
    assert list((tmp_path / "out").iterdir()) == []


def test_workers_without_a_checkpoint_convert_in_one_process(tmp_path):
    torch.manual_seed(0)
    model = WideRanker().eval()
    cal = _batches(2)
    report = shark_export.convert(model, cal[0], tmp_path / "m.onnx", calibration=cal, workers=2)
    assert report.faithfulness and any("only tables read from a checkpoint" in n for n in report.notes)


def test_split_rows_covers_every_row_once():
    for rows, parts, align in [(1, 3, 64), (64, 2, 64), (100_001, 3, 64), (5, 4, 4096), (1 << 20, 7, 4096)]:
        ranges = split_rows(rows, parts, align)
        assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(r0 % align == 0 for r0, _ in ranges)
