"""A conversion killed with SIGKILL at any point (issue 21.5): the output path holds the old model or the new
one, each verifying; the next conversion into the directory (and `inspect`) removes what the killed one left
(its stage directory, an unreferenced data file) and touches nothing else."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shark_export.cli import main
from shark_export.integrity import verify_model
from shark_export.model_file import clean_leftovers, data_files_of, stage_prefix

pytestmark = pytest.mark.slow

CHILD = r'''
import sys, importlib
import torch
sys.path.insert(0, sys.argv[3])
from models import TupleInputs, built
import shark_export
model_file = importlib.import_module("shark_export.model_file")
model_file.EXTERNAL_DATA_BYTES = 1000  # tables go to an external data file: two renames to interrupt
seed = int(sys.argv[2])
model = built(TupleInputs, seed=seed)
print("ready", flush=True)
shark_export.convert(model, TupleInputs.batch(4), sys.argv[1], quant="int8" if seed % 2 else "int4",
                     calibration=[TupleInputs.batch(16, seed=s) for s in range(2)])
print("done", flush=True)
'''


def _convert_in_child(path: Path, seed: int, kill_after: float | str | None) -> bool:
    """Run a conversion in a child; SIGKILL it `kill_after` seconds after its imports, or ("staging") the moment
    its stage directory appears. True when it finished."""
    tests = str(Path(__file__).resolve().parent)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(seed), tests], stdout=subprocess.PIPE, text=True,
                             cwd=path.parent)  # outside the source tree: the installed, built package is imported
    assert child.stdout.readline().strip() == "ready"
    if kill_after is None:
        assert child.wait(timeout=300) == 0
        return True
    if kill_after == "staging":
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir()):
                break
            time.sleep(0.0005)
    else:
        time.sleep(kill_after)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    return child.returncode == 0


def _ours(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_kill_9_at_random_points_leaves_a_good_model_and_nothing_after_the_next_run(tmp_path):
    rng = random.Random(21)
    out = tmp_path / "m.onnx"
    bystanders = {"notes.txt": "mine", ".hidden_dir_of_mine": None, "0123456789abcdef01234567.onnx.data.bak": "keep"}
    for name, text in bystanders.items():
        if text is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(text)
    start = time.perf_counter()
    assert _convert_in_child(out, 0, None)
    full = time.perf_counter() - start  # a whole conversion, imports included: the kill points spread over it
    kept = verify_model(out)
    leftovers_seen = 0
    for trial in range(1, 7):
        finished = _convert_in_child(out, trial, "staging" if trial % 2 else rng.uniform(0.0, full))
        assert out.is_file()
        digests = verify_model(out)  # the old model or the new one, whole
        kept = digests
        names = _ours(tmp_path)
        leftovers_seen += any(n.startswith(".m.onnx.") for n in names) or len(
            [n for n in names if n.endswith(".onnx.data") and len(n) == 34]) > len(data_files_of(out))
        if trial % 3 == 0:  # inspect cleans too
            assert main(["inspect", str(out)]) == 0
        else:
            assert _convert_in_child(out, 100 + trial, None)
            kept = verify_model(out)
        names = _ours(tmp_path)
        stages = [n for n in names if n.startswith(".m.onnx.")]
        data = {n for n in names if n.endswith(".onnx.data")}
        assert stages == [], f"trial {trial}: stage directories left: {stages}"
        assert data == data_files_of(out), f"trial {trial}: data files {data}, the model names {data_files_of(out)}"
        assert all((tmp_path / n).exists() for n in bystanders), f"trial {trial}: a file that is not ours was touched"
        assert finished in (True, False) and kept
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert leftovers_seen >= 1  # the kills during staging left something for the cleanup to find


def test_cleanup_leaves_live_stages_and_their_data_alone(tmp_path):
    """A stage whose owner runs (this process) is live: neither it nor an unreferenced data file is removed; a
    stage of a dead owner goes; names that are not ours stay."""
    live = Path(tempfile.mkdtemp(dir=tmp_path, prefix=stage_prefix(tmp_path / "m.onnx")))
    orphan = tmp_path / ("ab" * 12 + ".onnx.data")
    orphan.write_bytes(b"x")
    foreign = [tmp_path / ".m.onnx.abcd1234", tmp_path / ".m.onnx.1-2-abcdefgh.txt", tmp_path / ("AB" * 12 + ".onnx.data")]
    foreign[0].mkdir()
    foreign[1].write_text("a file, not a stage")
    foreign[2].write_text("upper-case hex: not a name we write")
    assert clean_leftovers(tmp_path) == [] and live.is_dir() and orphan.is_file()
    dead = tmp_path / ".m.onnx.999999999-1-dead0000"
    dead.mkdir()
    (dead / "m.onnx").write_text("half written")
    assert clean_leftovers(tmp_path) == [dead.name] and orphan.is_file()  # the live stage still protects it
    shutil.rmtree(live)
    assert clean_leftovers(tmp_path) == [orphan.name]
    assert all(p.exists() for p in foreign)
