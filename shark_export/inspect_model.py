"""Describe a converted model from its stored tensors: tables, lookups, tiers, bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import FormatError, SharkExportError
from .format import READABLE_VERSIONS, QuantizedTable, Tier
from .schemas import DOMAIN


def table_from_node_inputs(name: str, attributes: dict[str, int], payload, row_meta, default_row) -> QuantizedTable:
    """Rebuild (and validate) a QuantizedTable from an op node's storage tensors and attributes."""
    version = attributes.get("format_version")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"table {name!r}: format_version {version} is not supported")
    uniform = int(attributes["uniform_tier"])
    probe = QuantizedTable(name, int(attributes["num_rows"]), int(attributes["dim"]), payload, row_meta, default_row, uniform, {}, version)
    codes = probe.tiers()
    counts = {t: int(c) for t, c in zip(Tier, np.bincount(codes, minlength=len(Tier))[: len(Tier)])}
    return QuantizedTable(probe.name, probe.num_rows, probe.dim, payload, row_meta, default_row, uniform, counts, version).validate()


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
        payload_name = node.input[0]
        table_name = payload_name.removesuffix(".payload")
        lookups.append((node.name, node.op_type, table_name))
        if table_name in tables:
            continue
        arrays = []
        for input_name in node.input[:3]:
            if input_name not in initializers:
                raise FormatError(f"node {node.name!r}: storage input {input_name!r} is not an initializer")
            arrays.append(numpy_helper.to_array(initializers[input_name]))
        attributes = {a.name: a.i for a in node.attribute}
        tables[table_name] = table_from_node_inputs(table_name, attributes, *arrays)
    return tables, lookups


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
