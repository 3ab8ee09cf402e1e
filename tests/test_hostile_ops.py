"""Hostile shapes and attributes on the ops (issue 21.3, 21.6): every one is an error naming the input or
attribute and the rule; none reaches undefined behaviour (tools/sanitize.sh runs this file under ASan + UBSan)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from op_models import gather_model, multi_model

import shark_export
from shark_export.quantize import quantize_table

rng = np.random.default_rng(5)
T12 = quantize_table(rng.standard_normal((40, 12)).astype(np.float32), "int8", name="t12")
T4 = quantize_table(rng.standard_normal((30, 4)).astype(np.float32), "int4", name="t4")


def _error(model, feeds) -> str:
    with pytest.raises(Exception) as info:
        shark_export.session(model).run(None, feeds)
    return str(info.value)


@pytest.mark.parametrize("columns,field", [(384307168202282325, "a"), ((1 << 61) // 12, "b")])
def test_an_output_row_too_wide_is_named_before_any_pointer_arithmetic(columns, field):
    """Two gather fields, D = 12, indices [0, L] (B = 0: the shape needs no data). L = 384307168202282325 is the
    probe's case (under the old per-field limit, W * 4 bytes past 2^64 for the two: UB before the fix); at
    L = 2^61 / 12 each field alone fits and the second one makes the row too wide."""
    fields = [dict(table=T12, kind=0, index_rank=2, name="a"), dict(table=T12, kind=0, index_rank=2, name="b")]
    idx = np.zeros((0, columns), np.int64)
    msg = _error(multi_model(fields), {"indices0": idx, "indices1": idx})
    assert f"field '{field}': adds" in msg and "wider than 2^61 elements" in msg, msg


def test_one_field_wider_than_2_61_is_named():
    model = multi_model([dict(table=T12, kind=0, index_rank=3, name="deep")])
    idx = np.zeros((0, 1 << 30, 1 << 29), np.int64)
    msg = _error(model, {"indices0": idx})
    assert "field 'deep'" in msg and ("wider than 2^61" in msg or "too wide to allocate" in msg), msg


def test_empty_batch_with_fields_still_gives_its_shape():
    fields = [dict(table=T12, kind=0, index_rank=2, name="a"), dict(table=T4, kind=1, name="bag")]
    (out,) = shark_export.session(multi_model(fields)).run(
        None, {"indices0": np.zeros((0, 3), np.int64), "indices1": np.zeros((0, 5), np.int64)})
    assert out.shape == (0, 3 * 12 + 4)


@pytest.mark.parametrize("key,value", [("modes", 1), ("padding_idxs", -1), ("dims", 12), ("kinds", 0)])
def test_a_list_attribute_given_as_one_int_is_named(key, value):
    model = multi_model([dict(table=T12, kind=0)], attrs={key: value}, check=False)
    with pytest.raises(Exception, match=rf"attribute '{key}' must be a list of ints, one per field, got the single int {value}"):
        shark_export.session(model)


def test_an_int_attribute_given_as_a_list_is_named():
    model = gather_model(T12)
    node = model.graph.node[0]
    for a in list(node.attribute):
        if a.name == "output_dtype":
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute("output_dtype", [1, 1]))
    with pytest.raises(Exception, match=r"attribute 'output_dtype' must be a single int, got a list of 2 ints"):
        shark_export.session(model)


def test_output_dtype_against_a_float_output_names_output_dtype():
    model = multi_model([dict(table=T12, kind=0, name="user")], attrs={"output_dtype": 10}, check=False)
    with pytest.raises(shark_export.errors.FormatError, match=r"output_dtype 10 .*float16.*output 'output'.*float32"):
        shark_export.session(model)


def test_an_absent_indices_input_names_the_field():
    model = multi_model([dict(table=T12, kind=0, name="user"), dict(table=T4, kind=0, name="item")], check=False)
    node = model.graph.node[0]
    node.input[7] = ""  # field 'item': its indices
    with pytest.raises(shark_export.errors.FormatError, match=r"field 'item'.*input 'indices' .* is absent"):
        shark_export.session(model)
