"""Seeded tampering with converted model files; run as a child process by tests/test_hostile_integrity.py.

    python tests/probe_driver.py MODEL.onnx FEEDS.npz --seed 3 --cases 200

Each case applies one or more edits an attacker (or a broken copy) could make to a converted file: an
initializer duplicated before or after the original with other bytes, a table tensor shadowed by a graph input
or a node output, a lookup attribute changed (padding_idx, mode, modes, include_last_offset(s), output_dtype,
dims, …), storage inputs rewired, bytes of a table flipped, the checksum metadata edited or removed. Then
`verify_model` must refuse the file with a shark_export error, or the file must compute exactly what the
untouched file computes. A case that verifies and computes something else is a silent wrong result. One JSON
line of counts goes to stdout; a crash ends the process badly, which the parent counts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(__file__))

import shark_export  # noqa: E402
from shark_export.errors import SharkExportError  # noqa: E402
from shark_export.integrity import verify_model  # noqa: E402


def _ours(model):
    return [n for n in model.graph.node if n.domain == shark_export.DOMAIN]


def _tables(model):
    return [i for i in model.graph.initializer if i.name.endswith((".payload", ".row_meta", ".default_row"))]


def _mutate(model, rng) -> str:
    kind = str(rng.choice(["dup_before", "dup_after", "input_shadow", "output_shadow", "attribute", "rewire",
                           "flip", "metadata"]))
    tables = _tables(model)
    if kind in ("dup_before", "dup_after") and tables:
        original = tables[int(rng.integers(len(tables)))]
        data = numpy_helper.to_array(original).copy()
        if data.size:
            flat = data.reshape(-1).view(np.uint8)
            flat[int(rng.integers(flat.size))] ^= np.uint8(1 << int(rng.integers(8)))
        copy_ = numpy_helper.from_array(data, original.name)
        at = 0 if kind == "dup_before" else len(model.graph.initializer)
        model.graph.initializer.insert(at, copy_)
    elif kind == "input_shadow" and tables:
        t = tables[int(rng.integers(len(tables)))]
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    elif kind == "output_shadow" and tables:
        t = tables[int(rng.integers(len(tables)))]
        model.graph.node.insert(0, helper.make_node("Identity", [t.name], [t.name], name="shadow"))
    elif kind == "attribute" and _ours(model):
        node = _ours(model)[int(rng.integers(len(_ours(model))))]
        a = node.attribute[int(rng.integers(len(node.attribute)))]
        if a.type == onnx.AttributeProto.INT:
            a.i = int(rng.choice([a.i + 1, a.i - 1, 0, 1, -1, 10, 2**40]))
        elif a.type == onnx.AttributeProto.INTS and len(a.ints):
            k = int(rng.integers(len(a.ints)))
            a.ints[k] = int(rng.choice([a.ints[k] + 1, a.ints[k] - 1, 0, 1, -1]))
        elif a.type == onnx.AttributeProto.STRING:
            a.s = a.s[::-1] + b"x"
    elif kind == "rewire" and _ours(model):
        node = _ours(model)[int(rng.integers(len(_ours(model))))]
        names = [i.name for i in tables] + list(node.input)
        node.input[int(rng.integers(len(node.input)))] = str(rng.choice(names))
    elif kind == "flip" and tables:
        t = tables[int(rng.integers(len(tables)))]
        data = numpy_helper.to_array(t).copy()
        if data.size:
            flat = data.reshape(-1).view(np.uint8)
            flat[int(rng.integers(flat.size))] ^= np.uint8(1 << int(rng.integers(8)))
            t.CopyFrom(numpy_helper.from_array(data, t.name))
    elif kind == "metadata" and len(model.metadata_props):
        prop = model.metadata_props[int(rng.integers(len(model.metadata_props)))]
        prop.value = "" if rng.random() < 0.5 else prop.value.replace("a", "b", 1)
    return kind


def _outputs(path, feeds):
    return shark_export.session(str(path)).run(None, feeds)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("feeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    base = onnx.load(args.model)
    with np.load(args.feeds) as f:
        feeds = {k: f[k] for k in f.files}
    want = _outputs(args.model, feeds)
    counts = {"cases": 0, "refused": 0, "same_result": 0, "silent_wrong": 0, "untyped_error": 0}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.cases):
            model = copy.deepcopy(base)
            kinds = [_mutate(model, rng) for _ in range(int(rng.integers(1, 3)))]
            path = os.path.join(tmp, f"case{case}.onnx")
            onnx.save(model, path)
            counts["cases"] += 1
            try:
                verify_model(path)
            except SharkExportError:
                counts["refused"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - counted: verify must fail with our types only
                counts["untyped_error"] += 1
                failures.append(f"case {case} {kinds}: verify raised {type(exc).__name__}: {exc}")
                continue
            try:
                got = _outputs(path, feeds)
            except Exception:  # noqa: BLE001 - a verified file that ORT refuses computes nothing wrong
                counts["refused"] += 1
                continue
            same = len(got) == len(want) and all(a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))
                                                  for a, b in zip(got, want))
            if same:
                counts["same_result"] += 1
            else:
                counts["silent_wrong"] += 1
                failures.append(f"case {case} {kinds}: verified, but the outputs changed")
    print(json.dumps({**counts, "failures": failures[:10]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
