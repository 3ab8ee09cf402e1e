"""Seeded fuzzing of the model-file reader and both kernels; run as a child process by tests/test_fuzz.py.

    python tests/fuzz_driver.py --seed 7 --cases 300 [--target kernels|reader]

Each case starts from a valid random table (v1 or v2, uniform or mixed, any D) and breaks one or more things:
payload bytes, its length, row_meta planes and offsets, the attributes, default_row, the indices (out of
range, negative, wrong dtype, odd shapes), the offsets (decreasing, past the end, negative), the
per-sample weights. A case must end in a result of the right shape or a clean error (an ORT error from
the kernels, a shark_export error from the readers). The summary goes to stdout as one JSON line; a
crash (signal), a hang or a sanitizer report makes the process end badly, which the parent counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(__file__))

import shark_export  # noqa: E402
from shark_export.errors import SharkExportError  # noqa: E402
from shark_export.format import Tier  # noqa: E402
from shark_export.quantize import quantize_table  # noqa: E402
from shark_export.inspect_model import read_tables  # noqa: E402

_INDEX_TYPES = {np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
                np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int16): TensorProto.INT16}


def _table(rng):
    R = int(rng.choice([1, 2, 63, 64, 65, 130, 300]))
    D = int(rng.choice([1, 2, 3, 5, 8, 13, 16, 64, 67]))
    w = (rng.standard_normal((R, D)) * rng.choice([0.01, 1, 50])).astype(np.float32)
    version = int(rng.choice([1, 2, 3]))
    if rng.random() < 0.5:
        tiers = Tier(int(rng.integers(0, 6)))
    else:
        tiers = rng.integers(0, 6, R)
    group = int(rng.choice([1, 2, 64, 256, 2**40])) if version == 3 else 0  # v3: rows per scale group
    return quantize_table(w, tiers, name="t", format_version=version, scale_group_rows=group)


def _mutate_table(rng, t):
    payload, meta, dflt = t.payload.copy(), t.row_meta.copy(), t.default_row.copy()
    attrs = dict(t.op_attributes(), output_dtype=int(rng.choice([1, 10])))
    for _ in range(int(rng.integers(0, 3))):
        kind = rng.integers(0, 10)
        if kind == 0 and payload.size:
            payload[rng.integers(0, payload.size, size=int(rng.integers(1, 8)))] ^= rng.integers(1, 256, dtype=np.uint8)
        elif kind == 1:
            cut = int(rng.integers(-9, 9))
            payload = payload[: max(0, payload.size + cut)] if cut < 0 else np.concatenate([payload, np.zeros(cut, np.uint8)])
        elif kind == 2 and meta.size:
            b, k = int(rng.integers(0, meta.shape[0])), int(rng.integers(0, 4))
            meta[b, k] ^= np.uint64(1) << np.uint64(int(rng.integers(0, 64)))
        elif kind == 3 and meta.size:
            meta[int(rng.integers(0, meta.shape[0])), 0] = np.uint64(int(rng.choice([0, 1, 4, 2**63, payload.size + 1])))
        elif kind == 4:
            key = str(rng.choice(["num_rows", "dim", "uniform_tier", "format_version"]))
            attrs[key] = int(attrs[key] + rng.choice([-2**40, -65, -1, 1, 2, 64, 2**33]))
        elif kind == 5:
            attrs["uniform_tier"] = int(rng.integers(-3, 9))
        elif kind == 6:
            dflt = rng.standard_normal(int(rng.choice([0, 1, t.dim + 1]))).astype(np.float32)
        elif kind == 7:
            meta = meta.reshape(-1)[: max(0, meta.size - 4)].reshape(-1, 4) if meta.size else np.zeros((1, 4), np.uint64)
        elif kind == 8:
            attrs["output_dtype"] = int(rng.choice([0, 7, 11]))
        elif kind == 9:  # scale groups on a table of any version: absent, not a power of two, huge, negative
            attrs["scale_group_rows"] = int(rng.choice([0, 1, 3, 64, 2**40, 2**41, -64]))
    return payload, meta, dflt, attrs


def _indices(rng, R, shape):
    n = int(np.prod(shape))
    idx = rng.integers(0, R, size=n)
    if rng.random() < 0.3 and n:
        idx[rng.integers(0, n)] = int(rng.choice([-1, R, R + 1000, -2**40, 2**40]))
    dtype = rng.choice([np.int32, np.int64, np.int64, np.int64] + ([np.float32, np.int16] if rng.random() < 0.05 else []))
    return idx.reshape(shape).astype(dtype)


def _model(op, payload, meta, dflt, attrs, feeds, extra_attrs):
    inputs = [helper.make_tensor_value_info(name, _INDEX_TYPES.get(arr.dtype, TensorProto.FLOAT), list(arr.shape))
              for name, arr in feeds.items()]
    node_inputs = ["payload", "row_meta", "default_row", "indices"]
    if op.endswith("Bag"):
        node_inputs += ["offsets" if "offsets" in feeds else "", "weights" if "weights" in feeds else ""]
        while node_inputs[-1] == "":
            node_inputs.pop()
    node = helper.make_node(op, node_inputs, ["out"], domain="shark_export", name="fuzz", **attrs, **extra_attrs)
    inits = [numpy_helper.from_array(payload, "payload"), numpy_helper.from_array(meta, "row_meta"),
             numpy_helper.from_array(dflt, "default_row")]
    out_type = TensorProto.FLOAT16 if attrs.get("output_dtype") == 10 else TensorProto.FLOAT
    graph = helper.make_graph([node], "fuzz", inputs, [helper.make_tensor_value_info("out", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("shark_export", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def kernel_case(rng, ort_error):
    t = _table(rng)
    payload, meta, dflt, attrs = _mutate_table(rng, t) if rng.random() < 0.7 else (t.payload, t.row_meta, t.default_row, dict(t.op_attributes(), output_dtype=1))
    R = max(1, t.num_rows)
    if rng.random() < 0.5:
        op = "RowwiseDequantGather"
        shapes = [(7,), (3, 4), (0,), (2, 0, 3), (1,), ()]
        shape = shapes[int(rng.integers(0, len(shapes)))]
        feeds = {"indices": _indices(rng, R, shape)}
        extra = {}
    else:
        op = "RowwiseDequantEmbeddingBag"
        extra = dict(mode=int(rng.choice([0, 1, 0, 2])), include_last_offset=int(rng.integers(0, 2)),
                     padding_idx=int(rng.choice([-1, -1, 0, R - 1, R + 5])))
        if rng.random() < 0.4:
            feeds = {"indices": _indices(rng, R, (int(rng.integers(0, 6)), int(rng.integers(0, 5))))}
        else:
            n = int(rng.integers(0, 20))
            feeds = {"indices": _indices(rng, R, (n,))}
            B = int(rng.integers(0, 6))
            offs = np.sort(rng.integers(0, n + 1, size=B))
            if B:
                offs[0] = 0
            if rng.random() < 0.3 and B:
                offs[rng.integers(0, B)] = int(rng.choice([-3, n + 2, 2**40]))
            feeds["offsets"] = offs.astype(feeds["indices"].dtype if feeds["indices"].dtype in (np.int32, np.int64) else np.int64)
        if rng.random() < 0.3:
            shape = feeds["indices"].shape if rng.random() < 0.8 else (feeds["indices"].size + 1,)
            feeds["weights"] = rng.standard_normal(shape).astype(np.float32)
            if "offsets" not in feeds and feeds["indices"].ndim == 1:
                feeds["offsets"] = np.zeros(1, np.int64)
    try:
        sess = shark_export.session(_model(op, payload, meta, dflt, attrs, feeds, extra))
        out = sess.run(None, feeds)[0]
    except (*ort_error, SharkExportError):  # ORT's error from the kernel, or shark_export's naming of ORT's check
        return "clean error"
    expected_rows = None
    if op == "RowwiseDequantGather":
        expected_shape = (*feeds["indices"].shape, attrs["dim"])
        if out.shape != expected_shape:
            raise AssertionError(f"gather output {out.shape}, expected {expected_shape}")
    else:
        expected_rows = feeds["indices"].shape[0] if feeds["indices"].ndim == 2 else None
        if expected_rows is not None and out.shape != (expected_rows, attrs["dim"]):
            raise AssertionError(f"bag output {out.shape}")
    return "ran"


def reader_case(rng, tmpdir):
    t = _table(rng)
    payload, meta, dflt, attrs = _mutate_table(rng, t)
    data = bytearray(_model("RowwiseDequantGather", payload, meta, dflt, attrs, {"indices": np.zeros(3, np.int64)}, {}))
    if rng.random() < 0.5 and data:
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            data[pos] = int(rng.integers(0, 256))
    if rng.random() < 0.2:
        data = data[: int(rng.integers(0, len(data) + 1))]
    path = os.path.join(tmpdir, "fuzz.onnx")
    with open(path, "wb") as f:
        f.write(bytes(data))
    try:
        read_tables(path)
    except SharkExportError:
        return "clean error"
    return "ran"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--target", choices=["kernels", "reader"], default="kernels")
    args = parser.parse_args()
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # the expected errors are counted here, not logged

    ort_error = (onnxruntime.capi.onnxruntime_pybind11_state.Fail, onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
                 onnxruntime.capi.onnxruntime_pybind11_state.RuntimeException,
                 onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph, onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented)
    counts: dict[str, int] = {}
    bad = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for k in range(args.cases):
            rng = np.random.default_rng([args.seed, k])
            try:
                outcome = kernel_case(rng, ort_error) if args.target == "kernels" else reader_case(rng, tmpdir)
            except Exception as exc:  # noqa: BLE001 - an untyped error is a finding
                outcome = "unexpected"
                bad.append({"case": k, "error": f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:300]}",
                            "trace": traceback.format_exc(limit=3)[-800:]})
            counts[outcome] = counts.get(outcome, 0) + 1
    print(json.dumps({"seed": args.seed, "target": args.target, "counts": counts, "unexpected": bad}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
