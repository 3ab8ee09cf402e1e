"""Portable models (ops="standard") on other ONNX runtimes than ORT (issue 23): the same numbers, and no crash
on bad input.

- Lookups alone (one-node models lowered) on OpenVINO, tract and onnx's reference evaluator against the numpy
  reference (OpenVINO's uint8 BitShift rounds, so codes are unpacked in float arithmetic, no shifts).
- Four small recommenders (tests/portable_models.py) at every preset, each portable file on every runtime
  against the custom-op file on ORT: exporter patterns tract misread are normalized (ExporterPatternsPass).
- Bad ids and offsets fed to each runtime in a child process (tests/runtime_child.py): ORT and the reference
  evaluator fail naming the node, OpenVINO runs (its Gather gives zeros for an index out of range; offsets are
  clamped after the check), tract stops with a bounds-checked panic (SIGABRT; an INT64_MIN id it runs). None
  may crash otherwise.

CI installs OpenVINO and tract (the `runtimes` extra); elsewhere their cases skip saying so, unless
SHARK_ZOO_REQUIRE=1.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import portable_models
import pytest
from onnx.reference import ReferenceEvaluator
from op_models import bag_model, gather_model
from runtime_child import MODULES, RUNNERS
from test_standard_ops import R, _lower, _table

from shark_export import ops, reference
from shark_export.export import ExampleInputs
from shark_export.model_io import OnnxModelRunner

KINDS = ["fp16", "int8", "int4", "int2", "dropped", "mixed", "mixed_quantized"]


def _require(runtime: str) -> None:
    """Skip (saying why) when the runtime's wheel is not installed, unless SHARK_ZOO_REQUIRE=1."""
    if importlib.util.find_spec(MODULES[runtime]) is None:  # (found, not imported: onnx2torch needs a stand-in)
        if os.environ.get("SHARK_ZOO_REQUIRE") == "1":
            raise ImportError(f"{MODULES[runtime]} is not installed and SHARK_ZOO_REQUIRE=1")
        pytest.skip(f"{MODULES[runtime]} is not installed (tools/install_test_deps.sh installs it: the runtimes "
                    "extra, onnx2torch from tests/zoo/requirements-nodeps.txt)")


def _run_proto(runtime: str, model: onnx.ModelProto, feeds: dict, tmp_path: Path) -> np.ndarray:
    _require(runtime)
    if runtime == "onnx.reference":
        return ReferenceEvaluator(model).run(None, feeds)[0]
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return np.asarray(RUNNERS[runtime](str(path), feeds)[0])


RUNTIMES = ["openvino", "tract", "onnx.reference"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("group", [0, 4], ids=["v2", "v3"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [5, 16])
def test_gathers_match_the_reference(runtime, kind, dim, group, tmp_path):
    table = _table(kind, dim, group=group)
    indices = np.random.default_rng(1).integers(0, R, (4, 3)).astype(np.int64)
    got = _run_proto(runtime, _lower(gather_model(table, index_rank=2)), {"indices": indices}, tmp_path)
    want = reference.gather(table, indices)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{runtime} {kind} D={dim}")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["int4", "int2", "mixed"])
@pytest.mark.parametrize("bag", [dict(offsets=True, mode=1, padding_idx=3), dict(index_rank=2, offsets=False, mode=0)],
                         ids=["1d-mean-padding", "2d-sum"])
def test_bags_match_the_reference(runtime, kind, bag, tmp_path):
    table = _table(kind, 13)
    rng = np.random.default_rng(2)
    if bag.get("index_rank") == 2:
        indices, offsets = rng.integers(0, R, (6, 4)).astype(np.int64), None
        feeds = {"indices": indices}
    else:
        indices = rng.integers(0, R, 20).astype(np.int64)
        offsets = np.array([0, 0, 3, 3, 10, 19], dtype=np.int64)
        feeds = {"indices": indices, "offsets": offsets}
    got = _run_proto(runtime, _lower(bag_model(table, **bag)), feeds, tmp_path)
    want = reference.embedding_bag(table, indices, offsets, None, mode=bag.get("mode", 0),
                                   padding_idx=bag.get("padding_idx", -1))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5, err_msg=f"{runtime} {kind} {bag}")


# --- whole models, every preset, every runtime -------------------------------------------------------------

_CONVERTED: dict = {}


def _converted(name: str, preset: str, tmp_path_factory) -> dict:
    """The model's custom-op and portable files (converted once per test session)."""
    key = (name, preset)
    if key not in _CONVERTED:
        _CONVERTED[key] = portable_models.convert_pair(name, preset, tmp_path_factory.mktemp(f"{name}_{preset}"))
    return _CONVERTED[key]


def _feeds(paths: dict, name: str, n: int, seed: int) -> dict:
    return OnnxModelRunner(paths["custom"]).feeds(ExampleInputs.of(portable_models.batch(name, n, seed=seed)))


_FAST = {("offset_bags", "mixed"), ("matrix_bags", "budget8"), ("two_tower", "int4")}
MODEL_CASES = [pytest.param(name, preset, marks=() if (name, preset) in _FAST else pytest.mark.slow, id=f"{name}-{preset}")
               for name in portable_models.MODELS for preset in portable_models.PRESETS]


@pytest.mark.parametrize("runtime", ["onnxruntime", *RUNTIMES])
@pytest.mark.parametrize("name,preset", MODEL_CASES)
def test_models_match_the_custom_op_model_on_every_runtime(name, preset, runtime, tmp_path_factory):
    """Max abs error ≤ 1e-5 (plus 1e-6 relative: the dense layers of a deep model sum in each runtime's own
    order; the lookups are exact, as the op tests above show) against the custom-op file on ORT."""
    _require(runtime)
    paths = _converted(name, preset, tmp_path_factory)
    feeds = _feeds(paths, name, 64, seed=7)
    want = ops.session(str(paths["custom"])).run(None, feeds)
    got = RUNNERS[runtime](str(paths["standard"]), feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-5, err_msg=f"{runtime} {name} {preset}")


# --- bad input: each runtime in a child process ---------------------------------------------------------------

def _bad_inputs():
    """(case id, model, input key, change) of ids and offsets a runtime must not crash on."""
    def at(position, value):
        def change(a):
            a[position] = value
        return change

    return [
        ("id-R", "matrix_bags", "history", at((1, 1), 20000)),
        ("id-negative", "matrix_bags", "history", at((1, 1), -1)),
        ("id-int64-min", "matrix_bags", "history", at((1, 1), np.iinfo(np.int64).min)),
        ("offsets0-not-0", "offset_bags", "offsets", at(0, 1)),
        ("offsets-decreasing", "offset_bags", "offsets", at(5, 0)),
        ("offsets-past-end", "offset_bags", "offsets", at(-1, 10 ** 6)),
        ("offsets-int64-min", "offset_bags", "offsets", at(-1, np.iinfo(np.int64).min)),
        ("bag-id-R", "offset_bags", "ids", at(2, 20000)),
    ]


BAD = {case[0]: case for case in _bad_inputs()}


def _child(runtime: str, model: Path, inputs: Path, cwd: Path, outputs: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(__file__).with_name("runtime_child.py")
    return subprocess.run([sys.executable, str(script), runtime, str(model), str(inputs), *([str(outputs)] if outputs else [])],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize("runtime", ["onnxruntime", *RUNTIMES])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_ids_and_offsets_never_crash_a_runtime(case, runtime, tmp_path, tmp_path_factory):
    _require(runtime)
    _, name, key, change = BAD[case]
    paths = _converted(name, "mixed", tmp_path_factory)
    feeds = _feeds(paths, name, 16, seed=3)
    feeds = {k: v.copy() for k, v in feeds.items()}
    input_name = next(k for k in feeds if k.endswith(key) or k == key)
    change(feeds[input_name])
    np.savez(tmp_path / "bad.npz", **feeds)
    result = _child(runtime, paths["standard"], tmp_path / "bad.npz", tmp_path)
    said = (result.stdout.strip().splitlines() or [""])[-1]
    # never a memory fault, whatever the runtime
    assert result.returncode not in (-signal.SIGSEGV, -signal.SIGBUS), (runtime, case, result.stderr[-2000:])
    if runtime == "onnxruntime":  # the named errors: the node that failed names the field and what was checked
        assert said.startswith("ERROR") and "lookup/" in said, said
        if case.startswith("offsets"):
            assert "checking the bag offsets" in said, said
    elif runtime == "onnx.reference":
        assert said.startswith("ERROR IndexError"), said
    elif runtime == "openvino":  # an id out of range reads zeros there; offsets are clamped after the check
        assert said.startswith("RAN") and said.endswith(" finite"), said
    else:  # tract checks every index (safe Rust) and panics: the process aborts, nothing is read out of bounds
        checked = re.search(r"panicked at [^\n]*\n(index out of bounds|range end index \d+ out of range)", result.stderr)
        assert (result.returncode == -signal.SIGABRT and checked) or (result.returncode == 0 and said.startswith("RAN")
                                                                     and said.endswith(" finite")), (said, result.stderr[-2000:])


# --- onnx2torch: portable files back to torch --------------------------------------------------------------

@pytest.mark.parametrize("name,preset", [pytest.param("matrix_bags", "mixed", id="matrix_bags-mixed"),
                                         pytest.param("deepfm", "int4", id="deepfm-int4", marks=pytest.mark.slow)])
def test_onnx2torch_converts_gathers_and_matrix_bags(name, preset, tmp_path, tmp_path_factory):
    """Gathers and 2-D bags lower to ops onnx2torch converts (no BitShift, Split-18, ReduceMax-18, Constant
    value_ints): the torch module it builds gives the custom-op model's outputs."""
    _require("onnx2torch")
    paths = _converted(name, preset, tmp_path_factory)
    feeds = _feeds(paths, name, 64, seed=7)
    np.savez(tmp_path / "in.npz", **feeds)
    result = _child("onnx2torch", paths["standard"], tmp_path / "in.npz", tmp_path, tmp_path / "out.npz")
    assert result.stdout.startswith("RAN"), (result.stdout, result.stderr[-2000:])
    got = np.load(tmp_path / "out.npz")
    want = ops.session(str(paths["custom"])).run(None, feeds)
    for k, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{k}"], w, rtol=1e-6, atol=1e-5)


def test_onnx2torch_lacks_the_scatter_reductions_of_offset_bags(tmp_path, tmp_path_factory):
    """What docs/PORTABLE.md says onnx2torch lacks: 1-D bags with offsets need ScatterElements / ScatterND with
    reduction="add" at opset 18, which it has no converter for."""
    _require("onnx2torch")
    paths = _converted("offset_bags", "mixed", tmp_path_factory)
    np.savez(tmp_path / "in.npz", **_feeds(paths, "offset_bags", 8, seed=1))
    said = _child("onnx2torch", paths["standard"], tmp_path / "in.npz", tmp_path).stdout
    assert said.startswith("ERROR") and "ScatterElements" in said and "version=18" in said, said
