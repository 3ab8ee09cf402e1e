"""Portable models (ops="standard") on other ONNX runtimes than ORT (issue 23): the same numbers.

OpenVINO's uint8 BitShift RIGHT rounds instead of truncating (9 >> 4 gives 1), so int4/int2 codes unpacked in
uint8 came out wrong there; the lowering unpacks in uint32, which every runtime shifts right. Each case runs the
lowered lookup on OpenVINO and onnx's reference evaluator and compares with the numpy reference. CI installs
OpenVINO (the `runtimes` extra); elsewhere the OpenVINO cases skip saying so, unless SHARK_ZOO_REQUIRE=1.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from op_models import bag_model, gather_model
from test_standard_ops import R, _lower, _table

from shark_export import reference

KINDS = ["fp16", "int8", "int4", "int2", "dropped", "mixed", "mixed_quantized"]


def _openvino():
    try:
        import openvino
    except ImportError:
        if os.environ.get("SHARK_ZOO_REQUIRE") == "1":
            raise
        pytest.skip("openvino is not installed (pip install '.[runtimes]')")
    return openvino


def _run_openvino(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    ov = _openvino()
    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString(), b""), "CPU")
    return np.asarray(compiled(feeds)[compiled.outputs[0]])


def _run_reference(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ReferenceEvaluator(model).run(None, feeds)[0]


RUNTIMES = {"openvino": _run_openvino, "onnx.reference": _run_reference}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("group", [0, 4], ids=["v2", "v3"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [5, 16])
def test_gathers_match_the_reference(runtime, kind, dim, group):
    table = _table(kind, dim, group=group)
    indices = np.random.default_rng(1).integers(0, R, (4, 3)).astype(np.int64)
    got = RUNTIMES[runtime](_lower(gather_model(table, index_rank=2)), {"indices": indices})
    want = reference.gather(table, indices)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{runtime} {kind} D={dim}")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["int4", "int2", "mixed"])
@pytest.mark.parametrize("bag", [dict(offsets=True, mode=1, padding_idx=3), dict(index_rank=2, offsets=False, mode=0)],
                         ids=["1d-mean-padding", "2d-sum"])
def test_bags_match_the_reference(runtime, kind, bag):
    table = _table(kind, 13)
    rng = np.random.default_rng(2)
    if bag.get("index_rank") == 2:
        indices, offsets = rng.integers(0, R, (6, 4)).astype(np.int64), None
        feeds = {"indices": indices}
    else:
        indices = rng.integers(0, R, 20).astype(np.int64)
        offsets = np.array([0, 0, 3, 3, 10, 19], dtype=np.int64)
        feeds = {"indices": indices, "offsets": offsets}
    got = RUNTIMES[runtime](_lower(bag_model(table, **bag)), feeds)
    want = reference.embedding_bag(table, indices, offsets, None, mode=bag.get("mode", 0),
                                   padding_idx=bag.get("padding_idx", -1))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5, err_msg=f"{runtime} {kind} {bag}")
