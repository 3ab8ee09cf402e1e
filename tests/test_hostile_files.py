"""Hostile model files and tables in the Python readers: a typed error naming the table, never a MemoryError
or a bare ValueError, and nothing allocated from a size the tensors do not back."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import shark_export  # noqa: F401  (registers the op schemas)
from shark_export import reference as ref
from shark_export.cli import main as cli_main
from shark_export.errors import FormatError, SharkExportError
from shark_export.format import QuantizedTable, Tier
from shark_export.quantize import quantize_table
from shark_export.inspect_model import inspect_model, read_tables


def _model_file(path, num_rows, dim=4, uniform=2, payload=None, meta=None, default=None, version=2, extra=None):
    payload = np.zeros(0, np.uint8) if payload is None else payload
    meta = np.zeros((0, 4), np.uint64) if meta is None else meta
    default = np.zeros(dim if 0 < dim < 100 else 3, np.float32) if default is None else default
    inits = [numpy_helper.from_array(payload, "t.payload"), numpy_helper.from_array(meta, "t.row_meta"),
             numpy_helper.from_array(default, "t.default_row")]
    attrs = {**dict(format_version=version, num_rows=num_rows, dim=dim, uniform_tier=uniform, output_dtype=1), **(extra or {})}
    node = helper.make_node("RowwiseDequantGather", ["t.payload", "t.row_meta", "t.default_row", "ids"], ["out"],
                            domain="shark_export", name="lookup/t", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("shark_export", 1)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("case,message", [
    (dict(num_rows=2**33, uniform=2), r"table 't': payload has 0 bytes, expected \d+ \(8589934592 rows"),
    (dict(num_rows=2**33, uniform=-1), r"table 't': row_meta has 0 blocks, expected ceil\(8589934592/64\)"),
    (dict(num_rows=2**41, uniform=5), r"table 't': num_rows 2199023255552 is outside 1\.\.2\^40"),
    (dict(num_rows=-5), r"table 't': num_rows -5 is outside"),
    (dict(num_rows=10, dim=0), r"table 't': dim 0 is outside"),
    (dict(num_rows=10, dim=2**31), r"table 't': dim 2147483648 is outside"),
    (dict(num_rows=10, version=7), r"table 't': format_version 7 is not supported"),
    (dict(num_rows=10, uniform=9), r"table 't': uniform_tier 9 is not a tier code"),
    (dict(num_rows=10, uniform=5, default=np.zeros(0, np.float32)), r"default_row is empty but 10 rows are dropped"),
    (dict(num_rows=10, extra=dict(output_dtype=1.5)), r"attribute 'output_dtype' must be an int"),
])
def test_inspect_rejects_hostile_tables_with_a_typed_error(tmp_path, case, message):
    path = _model_file(tmp_path / "m.onnx", **case)
    with pytest.raises(FormatError, match=message):
        inspect_model(path)
    assert cli_main(["inspect", str(path)]) != 0


def test_a_huge_all_dropped_table_is_described_without_allocating_it(tmp_path):
    path = _model_file(tmp_path / "m.onnx", num_rows=2**40, uniform=int(Tier.DROPPED))
    tables, _ = read_tables(path)
    assert tables["t"].tier_counts[Tier.DROPPED] == 2**40
    assert "1099511627776" in inspect_model(path)


def test_inspect_of_a_file_that_is_not_a_model(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(SharkExportError, match="junk.onnx"):
        inspect_model(bad)


def _with(table, **changes):
    fields = dict(name=table.name, num_rows=table.num_rows, dim=table.dim, payload=table.payload, row_meta=table.row_meta,
                  default_row=table.default_row, uniform_tier=table.uniform_tier, tier_counts=table.tier_counts,
                  format_version=table.format_version)
    fields.update(changes)
    return QuantizedTable(**fields)


@pytest.mark.parametrize("changes,message", [
    (dict(num_rows=2**40), r"payload has \d+ bytes, a uniform int8 table of 1099511627776 rows needs"),
    (dict(num_rows=-3), r"num_rows -3 is outside"),
    (dict(dim=10**6), r"dim 1000000 is outside"),
    (dict(format_version=0), r"format_version 0 is not supported"),
    (dict(row_meta=np.zeros((5, 4), np.uint64)), r"row_meta has shape \(5, 4\), expected \(0, 4\)"),
    (dict(default_row=np.zeros(9, np.float32)), r"default_row has shape \(9,\)"),
    (dict(payload=np.zeros(10, np.int8)), r"payload must be a uint8 array"),
])
def test_reference_checks_attributes_before_allocating(changes, message):
    table = quantize_table(np.ones((20, 5), np.float32), "int8", name="emb")
    bad = _with(table, **changes)
    for read in (ref.dequantize, lambda t: ref.gather(t, [0]), lambda t: ref.embedding_bag(t, np.zeros((3, 0), np.int64)),
                 lambda t: ref.dequantize_rows(t, [1])):
        with pytest.raises(FormatError, match=message):
            read(bad)


def test_reference_names_dropped_rows_without_a_default_row():
    table = quantize_table(np.ones((70, 3), np.float32), np.arange(70) % 6, name="m")
    bad = _with(table, default_row=np.zeros(0, np.float32))
    with pytest.raises(FormatError, match="table 'm': .*dropped row"):
        ref.gather(bad, [5])
