"""Describe a converted model from its stored tensors: tables, lookups, tiers, bytes."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from .errors import FormatError, SharkExportError
from .format import QuantizedTable
from .schemas import DOMAIN


def table_from_node_inputs(name: str, attributes: dict[str, int], payload, row_meta, default_row) -> QuantizedTable:
    """Rebuild (and validate) a QuantizedTable from an op node's storage tensors and attributes."""
    return QuantizedTable.from_stored(name, attributes, payload, row_meta, default_row)


def read_tables(path) -> tuple[dict[str, QuantizedTable], list[tuple[str, str, str]]]:
    """(tables by storage prefix, lookups as (node name, op type, table)) of a converted model."""
    file = Path(path)
    if not file.is_file():
        raise SharkExportError(f"ONNX model {str(file)!r} does not exist")
    try:
        model = onnx.load(str(file))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise SharkExportError(f"cannot read {str(file)!r} as an ONNX model: {exc}") from exc
    initializers = {i.name: i for i in model.graph.initializer}
    tables: dict[str, QuantizedTable] = {}
    lookups = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        try:
            _read_node(node, initializers, tables, lookups)
        except FormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed node of a corrupt file: named, typed
            raise FormatError(f"{file.name}: node {node.name!r} ({node.op_type}) is malformed: {type(exc).__name__}: {exc}") from exc
    return tables, lookups


def _read_node(node, initializers: dict, tables: dict[str, QuantizedTable], lookups: list) -> None:
    if len(node.input) < 4 or not all(isinstance(name, str) for name in node.input):
        raise FormatError(f"node {node.name!r}: expected payload, row_meta, default_row and indices inputs")
    table_name = node.input[0].removesuffix(".payload")
    lookups.append((node.name, node.op_type, table_name))
    if table_name in tables:
        return
    arrays = []
    for input_name in node.input[:3]:
        if input_name not in initializers:
            raise FormatError(f"node {node.name!r}: storage input {input_name!r} is not an initializer")
        arrays.append(numpy_helper.to_array(initializers[input_name]))
    attributes = {}
    for attribute in node.attribute:
        if attribute.type != onnx.AttributeProto.INT:
            raise FormatError(f"node {node.name!r}: attribute {attribute.name!r} must be an int")
        attributes[attribute.name] = attribute.i
    tables[table_name] = table_from_node_inputs(table_name, attributes, *arrays)


def inspect_model(path) -> str:
    tables, lookups = read_tables(path)
    if not tables:
        return f"{path}: no shark_export lookups"
    header = f"{'table':<32} {'rows':>10} {'dim':>5} {'tiers':<40} {'payload':>11} {'scales':>9} {'meta':>9} {'total':>11} {'of fp32':>8}"
    lines = [f"{path}", header, "-" * len(header)]
    total = fp32 = 0
    for name, table in tables.items():
        b = table.byte_report()
        tiers = " ".join(f"{t}:{c}" for t, c in table.tier_counts.items() if c)
        lines.append(f"{name:<32} {table.num_rows:>10} {table.dim:>5} {tiers:<40} {b.payload:>11} {b.scales:>9} {b.metadata:>9} {b.total:>11} {b.ratio:>8.2%}")
        total += b.total
        fp32 += b.fp32
    lines.append("-" * len(header))
    lines.append(f"{'total':<32} {'':>10} {'':>5} {'':<40} {'':>11} {'':>9} {'':>9} {total:>11} {total / fp32:>8.2%}")
    lines.append("lookups: " + ", ".join(f"{node} ({op.removeprefix('RowwiseDequant')} on {table})" for node, op, table in lookups))
    return "\n".join(lines)
