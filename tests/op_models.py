"""One-node ONNX models around a QuantizedTable, for the kernel tests (tests/test_ops*.py).

``gather_model`` / ``bag_model`` build ``RowwiseDequantGather`` / ``RowwiseDequantEmbeddingBag`` with
the table's three tensors as initializers (or, with ``table_inputs=True``, as graph inputs so that a
test can change them between runs), ``indices`` / ``offsets`` / ``per_sample_weights`` as graph
inputs, and the node attributes from ``table.op_attributes()`` plus the op's own. Keyword overrides
(``attrs``, ``payload=`` ...) let the error tests break exactly one thing. ``check=True`` runs
``onnx.checker.check_model(full_check=True)``, which only passes because ``import shark_export``
registered the op schemas.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import shark_export  # noqa: F401  (registers the op schemas with onnx)
from shark_export import ops
from shark_export.format import QuantizedTable

GATHER = "RowwiseDequantGather"
BAG = "RowwiseDequantEmbeddingBag"

_ELEM = {
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.uint64): TensorProto.UINT64,
    np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.int16): TensorProto.INT16,
    np.dtype(np.uint32): TensorProto.UINT32,
}
OUT_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}


def elem_type(dtype: Any) -> int:
    return _ELEM[np.dtype(dtype)]


def _dims(rank: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(rank)]


def _model(
    op: str,
    table: QuantizedTable,
    index_dtype: Any,
    index_rank: int,
    out_dtype: Any,
    extra_inputs: list[tuple[str, int, list[str] | None]],
    node_inputs_tail: list[str],
    attrs: Mapping[str, int],
    name: str,
    table_inputs: bool,
    check: bool,
    payload: np.ndarray | None,
    row_meta: np.ndarray | None,
    default_row: np.ndarray | None,
) -> onnx.ModelProto:
    tensors = {
        "payload": table.payload if payload is None else payload,
        "row_meta": table.row_meta if row_meta is None else row_meta,
        "default_row": table.default_row if default_row is None else default_row,
    }
    inputs, inits = [], []
    for tname, arr in tensors.items():
        if table_inputs:
            dims = [f"{tname}_{i}" for i in range(np.ndim(arr))]  # symbolic: any size at run time
            inputs.append(helper.make_tensor_value_info(tname, elem_type(arr.dtype), dims))
        else:
            inits.append(numpy_helper.from_array(np.asarray(arr), tname))
    inputs.append(helper.make_tensor_value_info("indices", elem_type(index_dtype), _dims(index_rank, "n")))
    for iname, etype, dims in extra_inputs:
        inputs.append(helper.make_tensor_value_info(iname, etype, dims))
    out_dt = np.dtype(out_dtype)
    all_attrs = dict(table.op_attributes())
    all_attrs["output_dtype"] = OUT_DTYPES.get(out_dt, TensorProto.FLOAT)
    all_attrs.update(attrs)
    node = helper.make_node(
        op, ["payload", "row_meta", "default_row", "indices", *node_inputs_tail], ["output"],
        domain=ops.DOMAIN, name=name, **all_attrs,
    )
    out_elem = OUT_DTYPES.get(out_dt, TensorProto.FLOAT)
    if op == GATHER:
        out_shape = [*_dims(index_rank, "n"), int(table.dim)]
    else:
        out_shape = ["n0" if index_rank == 2 and "offsets" not in node_inputs_tail else "n_bags", int(table.dim)]
    graph = helper.make_graph(
        [node], f"{op}_test", inputs, [helper.make_tensor_value_info("output", out_elem, out_shape)], inits
    )
    model = helper.make_model(
        graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)]
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def gather_model(
    table: QuantizedTable,
    *,
    index_dtype: Any = np.int64,
    index_rank: int = 1,
    out_dtype: Any = np.float32,
    attrs: Mapping[str, int] | None = None,
    name: str = "gather_node",
    table_inputs: bool = False,
    check: bool = True,
    payload: np.ndarray | None = None,
    row_meta: np.ndarray | None = None,
    default_row: np.ndarray | None = None,
) -> onnx.ModelProto:
    """``RowwiseDequantGather(payload, row_meta, default_row, indices) -> output``; ``indices`` is
    declared with rank ``index_rank`` and symbolic dims."""
    return _model(GATHER, table, index_dtype, index_rank, out_dtype, [], [], attrs or {}, name, table_inputs,
                  check, payload, row_meta, default_row)


def bag_model(
    table: QuantizedTable,
    *,
    index_dtype: Any = np.int64,
    index_rank: int = 1,
    offsets: bool = True,
    offsets_dtype: Any = None,
    weights: bool = False,
    weights_rank: int | None = None,
    mode: int = 0,
    include_last_offset: int = 0,
    padding_idx: int = -1,
    out_dtype: Any = np.float32,
    attrs: Mapping[str, int] | None = None,
    name: str = "bag_node",
    table_inputs: bool = False,
    check: bool = True,
    payload: np.ndarray | None = None,
    row_meta: np.ndarray | None = None,
    default_row: np.ndarray | None = None,
) -> onnx.ModelProto:
    """``RowwiseDequantEmbeddingBag(payload, row_meta, default_row, indices, [offsets],
    [per_sample_weights]) -> output [B, D]``. Graph inputs are named ``indices``, ``offsets``,
    ``per_sample_weights`` (declared with the rank of ``indices`` unless ``weights_rank`` says otherwise)."""
    extra, tail = [], []
    if offsets or weights:
        tail.append("offsets" if offsets else "")
        if offsets:
            extra.append(("offsets", elem_type(offsets_dtype or index_dtype), ["n_offsets"]))
    if weights:
        tail.append("per_sample_weights")
        if weights_rank is None or weights_rank == index_rank:
            extra.append(("per_sample_weights", TensorProto.FLOAT, _dims(index_rank, "n")))
        else:
            extra.append(("per_sample_weights", TensorProto.FLOAT, _dims(weights_rank, "w")))
    all_attrs = {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx}
    all_attrs.update(attrs or {})
    return _model(BAG, table, index_dtype, index_rank, out_dtype, extra, tail, all_attrs, name, table_inputs,
                  check, payload, row_meta, default_row)


def table_feeds(table: QuantizedTable, **override: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for a model built with ``table_inputs=True``."""
    feeds = {"payload": table.payload, "row_meta": table.row_meta, "default_row": table.default_row}
    feeds.update(override)
    return feeds


MULTI = "RowwiseDequantMultiLookup"


def multi_model(
    fields: list[dict],
    *,
    out_dtype: Any = np.float32,
    attrs: Mapping[str, Any] | None = None,
    name: str = "multi_node",
    check: bool = True,
    extra_inputs: int = 0,
) -> onnx.ModelProto:
    """``RowwiseDequantMultiLookup`` over ``fields``: dicts with ``table`` (a QuantizedTable; fields that
    pass the same object share its initializers), ``kind`` (0 gather, 1 bag over 2-D indices, 2 bag with
    offsets), ``index_rank`` (gather; default 1), ``index_dtype``, ``weights`` (bool), ``mode``,
    ``include_last_offset``, ``padding_idx``, ``index_dims`` (declared dims). Field k's graph inputs are ``indices{k}``, ``offsets{k}``,
    ``weights{k}``. ``attrs`` overrides node attributes; ``extra_inputs`` appends that many unused inputs
    (to break the input count)."""
    inputs, inits, node_inputs = [], [], []
    stored: dict[int, str] = {}
    lists: dict[str, list] = {key: [] for key in ("kinds", "format_versions", "num_rows", "dims", "uniform_tiers",
                                                    "modes", "include_last_offsets", "padding_idxs", "has_weights",
                                                    "scale_group_rows")}
    for k, f in enumerate(fields):
        table = f["table"]
        prefix = stored.get(id(table))
        if prefix is None:
            prefix = stored[id(table)] = f"table{len(stored)}"
            for tname, arr in (("payload", table.payload), ("row_meta", table.row_meta), ("default_row", table.default_row)):
                inits.append(numpy_helper.from_array(np.asarray(arr), f"{prefix}.{tname}"))
        node_inputs += [f"{prefix}.payload", f"{prefix}.row_meta", f"{prefix}.default_row", f"indices{k}"]
        kind = f.get("kind", 0)
        idx_elem = elem_type(f.get("index_dtype", np.int64))
        rank = f.get("index_rank", 1) if kind == 0 else (2 if kind == 1 else 1)
        dims = ([f"b{k}" if kind != 2 else f"n{k}"] + [f"l{k}_{a}" for a in range(1, rank)]) if rank else []
        dims = f.get("index_dims", dims)
        inputs.append(helper.make_tensor_value_info(f"indices{k}", idx_elem, dims))
        if kind == 2:
            node_inputs.append(f"offsets{k}")
            inputs.append(helper.make_tensor_value_info(f"offsets{k}", idx_elem, [f"o{k}"]))
        if f.get("weights", False):
            node_inputs.append(f"weights{k}")
            inputs.append(helper.make_tensor_value_info(f"weights{k}", TensorProto.FLOAT, dims))
        attributes = table.op_attributes()
        lists["kinds"].append(kind)
        lists["format_versions"].append(attributes["format_version"])
        lists["num_rows"].append(attributes["num_rows"])
        lists["dims"].append(attributes["dim"])
        lists["uniform_tiers"].append(attributes["uniform_tier"])
        lists["modes"].append(f.get("mode", 0))
        lists["include_last_offsets"].append(f.get("include_last_offset", 0))
        lists["padding_idxs"].append(f.get("padding_idx", -1))
        lists["has_weights"].append(int(f.get("weights", False)))
        lists["scale_group_rows"].append(attributes.get("scale_group_rows", 0))  # v3 tables only
    for j in range(extra_inputs):
        node_inputs.append(f"extra{j}")
        inputs.append(helper.make_tensor_value_info(f"extra{j}", TensorProto.INT64, ["e"]))
    out_elem = OUT_DTYPES[np.dtype(out_dtype)]
    all_attrs: dict[str, Any] = dict(lists)
    all_attrs["output_dtype"] = out_elem
    all_attrs["field_names"] = "\n".join(f.get("name", f"f{k}") for k, f in enumerate(fields))
    all_attrs.update(attrs or {})
    node = helper.make_node(MULTI, node_inputs, ["output"], domain=ops.DOMAIN, name=name, **all_attrs)
    graph = helper.make_graph([node], "multi_test", inputs,
                              [helper.make_tensor_value_info("output", out_elem, ["batch", "width"])], inits)
    model = helper.make_model(
        graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)]
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model
