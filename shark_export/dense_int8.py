"""Opt-in int8 dense layers (`convert(dense="int8")`): ONNX Runtime's own dynamic quantization
(`onnxruntime.quantization.quantize_dynamic`) of a converted model's MatMul/Gemm with constant weights.

Our tables and lookup ops are left as they are. The quantizer works on a protobuf copy of the graph in which
the tables are graph inputs (it never reads them, and a multi-GB table would not fit a protobuf); they are
put back as the same initializers afterwards. Activations are quantized per call (uint8, by
DynamicQuantizeLinear), weights once (int8, per tensor), so the dense layers' error is not the tables'
error: the converter reports its impact separately (ConvertReport.dense_impact).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from .errors import ExportError
from .domain import DOMAIN

_QUANTIZED_OPS = ("MatMul", "Gemm")


def _table_values(graph: ir.Graph, portable: set[str] = frozenset()) -> list[ir.Value]:
    """The initializers our lookup ops read (payloads, row metadata, default rows), plus `portable`: the
    tensors of a portable model's tables (standard ops read them, so they are named by the caller)."""
    read = {v.name for node in graph if node.domain == DOMAIN for v in node.inputs if v is not None} | set(portable)
    return [v for name, v in graph.initializers.items() if name in read]


@contextlib.contextmanager
def _without_preprocessing_advice():
    """quantize_dynamic logs advice to run its shape pre-processing (meant for vision models) on the root
    logger at every call; our graphs are fully shaped already."""
    drop = lambda record: not record.getMessage().startswith("Please consider to run pre-processing")  # noqa: E731
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def quantize_dense(model: ir.Model, portable_tables: set[str] = frozenset()) -> tuple[ir.Model, int]:
    """(a new model whose constant-weight MatMul/Gemm run in int8, how many of them were quantized).
    `portable_tables`: initializer names of an `ops="standard"` model's tables, kept out of the quantizer too."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = model.graph
    tables = _table_values(graph, portable_tables)
    saved = {v.name: v.const_value for v in tables}
    for value in tables:  # detach the tables for the copy the quantizer sees
        graph.initializers.pop(value.name)
        value.const_value = None
        graph.inputs.append(value)
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for value in tables:
            graph.inputs.remove(value)
            value.const_value = saved[value.name]
            graph.register_initializer(value)
    # The exporter's value_info for weights would contradict the quantizer's transposed weights.
    weights = {t.name for t in proto.graph.initializer}
    kept = [vi for vi in proto.graph.value_info if vi.name not in weights]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    before = sum(n.op_type in _QUANTIZED_OPS for n in proto.graph.node)

    with tempfile.TemporaryDirectory(prefix="shark_dense_int8_") as tmp:
        out = Path(tmp) / "dense_int8.onnx"
        try:
            with _without_preprocessing_advice():
                quantize_dynamic(proto, out, op_types_to_quantize=list(_QUANTIZED_OPS), weight_type=QuantType.QInt8,
                                 extra_options={"MatMulConstBOnly": True})
        except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises anything; name the step
            raise ExportError(f"dense='int8': onnxruntime.quantization.quantize_dynamic failed: {exc}") from exc
        quantized = ir.serde.deserialize_model(onnx.load(str(out)))
    after = sum(n.op_type in _QUANTIZED_OPS for n in quantized.graph)

    qgraph = quantized.graph
    by_name = {v.name: v for v in qgraph.inputs}
    for name, tensor in saved.items():
        value = by_name.get(name)
        if value is None:
            raise ExportError(f"dense='int8': the quantized graph lost the table input {name!r}")
        qgraph.inputs.remove(value)
        value.const_value = tensor
        qgraph.register_initializer(value)
    quantized.metadata_props.update(model.metadata_props)
    return quantized, before - after
