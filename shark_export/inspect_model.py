"""Describe a converted model from its stored tensors: tables, lookups, tiers, bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from .errors import AmbiguousModelError, FormatError, SharkExportError
from .format import QuantizedTable
from .domain import DOMAIN, MULTI_OP
from .lookup_spec import MultiLookupSpec, attributes_of_proto, table_of_storage


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
    _check_unambiguous(file, model)
    initializers = {i.name: i for i in model.graph.initializer}
    tables: dict[str, QuantizedTable] = {}
    lookups = []
    portable, portable_lookups = _portable_tables(file, model, initializers)
    if portable:  # ops="standard": the stored-format tables the portable tensors hold (same checksums)
        return {name: table.to_quantized() for name, table in portable.items()}, portable_lookups
    storage_of: dict[str, list[str]] = {}  # table → the storage inputs its first reader names
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        try:
            _read_node(node, initializers, tables, lookups, storage_of)
        except FormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed node of a corrupt file: named, typed
            raise FormatError(f"{file.name}: node {node.name!r} ({node.op_type}) is malformed: {type(exc).__name__}: {exc}") from exc
    return tables, lookups


def _subgraphs(node):
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _nested_nodes(graph):
    for node in graph.node:
        for sub in _subgraphs(node):
            yield from sub.node
            yield from _nested_nodes(sub)


def _check_unambiguous(file: Path, model) -> None:
    """What verify and inspect read must be what ONNX Runtime reads: one initializer per name, none shadowed by a
    graph input or a node output, no lookup inside a subgraph (neither checks those)."""
    names = [i.name for i in model.graph.initializer] + [i.values.name for i in model.graph.sparse_initializer]
    seen, twice = set(), set()
    for name in names:
        (twice if name in seen else seen).add(name)
    if twice:
        raise AmbiguousModelError(f"{file.name}: initializer(s) {sorted(twice)} appear more than once: which copy ONNX "
                                  "Runtime reads is not what a check can vouch for")
    inputs = {i.name for i in model.graph.input} & seen
    if inputs:
        raise AmbiguousModelError(f"{file.name}: graph input(s) {sorted(inputs)} have the name of an initializer: a feed "
                                  "would replace the stored tensor")
    produced = {o for n in model.graph.node for o in n.output} & seen
    if produced:
        raise AmbiguousModelError(f"{file.name}: node output(s) {sorted(produced)} have the name of an initializer")
    nested = [n.name for n in _nested_nodes(model.graph) if n.domain == DOMAIN]
    if nested:
        raise AmbiguousModelError(f"{file.name}: shark_export node(s) {nested} inside a subgraph: the converter never "
                                  "writes them there, and their tables would not be checked")


def _portable_tables(file: Path, model, initializers: dict):
    """(StandardTables, lookups) of a portable model (`convert(ops="standard")`); empty for any other."""
    from . import standard_tables

    metadata = {p.key: p.value for p in model.metadata_props}
    if standard_tables.METADATA_KEY not in metadata:
        return {}, []
    try:
        return standard_tables.read_tables(metadata, {n: numpy_helper.to_array(t) for n, t in initializers.items()})
    except FormatError as exc:
        raise FormatError(f"{file.name}: {exc}") from exc


def _int_attributes(node) -> dict[str, Any]:
    """The node's int and int-list attributes (a string attribute names fields only)."""
    attributes = attributes_of_proto(node)
    for name, value in attributes.items():
        if isinstance(value, str) and name != "field_names":
            raise FormatError(f"node {node.name!r}: attribute {name!r} must be an int")
    return {name: value for name, value in attributes.items() if name != "field_names"}


def _read_node(node, initializers: dict, tables: dict[str, QuantizedTable], lookups: list, storage_of: dict) -> None:
    if not all(isinstance(name, str) for name in node.input):
        raise FormatError(f"node {node.name!r}: input names must be strings")
    attributes = _int_attributes(node)
    if node.op_type != MULTI_OP:
        if len(node.input) < 4 or any(isinstance(v, list) for v in attributes.values()):
            raise FormatError(f"node {node.name!r}: expected payload, row_meta, default_row and indices inputs and int attributes")
        _read_table(node, node.input[:3], attributes, initializers, tables, storage_of)
        lookups.append((node.name, node.op_type, table_of_storage(node.input[0])))
        return
    spec = MultiLookupSpec.from_attributes(attributes_of_proto(node), f"node {node.name!r}")
    for k, (first, field, name) in enumerate(spec.field_inputs()):
        storage = node.input[first:first + 3]
        if len(storage) < 3:
            raise FormatError(f"node {node.name!r}: field {k} has no storage inputs (the node has {len(node.input)} inputs)")
        _read_table(node, storage, field.table_attributes(), initializers, tables, storage_of)
        lookups.append((f"{node.name}[{name}]", node.op_type, table_of_storage(storage[0])))


def _read_table(node, storage: list[str], attributes: dict, initializers: dict, tables: dict[str, QuantizedTable],
                storage_of: dict[str, list[str]]) -> None:
    table_name = table_of_storage(storage[0])
    if table_name in tables:
        # every reader of a table reads the same three tensors (the digest covers what the first one reads)
        first = storage_of[table_name]
        if list(storage) != first:
            raise AmbiguousModelError(f"node {node.name!r}: reads table {table_name!r} from {list(storage)}, another node "
                                      f"from {first}: one table has one set of tensors")
        keys = ("format_version", "num_rows", "dim", "uniform_tier", "scale_group_rows")
        known = {k: int(tables[table_name].op_attributes().get(k, 0)) for k in keys}
        given = {k: attributes.get(k, 0) for k in keys}
        if given != known:
            raise AmbiguousModelError(f"node {node.name!r}: table {table_name!r} read with attributes {given}, another "
                                      f"node reads it with {known}: one table has one layout")
        return
    arrays = []
    for input_name in storage:
        if input_name not in initializers:
            raise FormatError(f"node {node.name!r}: storage input {input_name!r} is not an initializer")
        arrays.append(numpy_helper.to_array(initializers[input_name]))
    tables[table_name] = table_from_node_inputs(table_name, attributes, *arrays)
    storage_of[table_name] = list(storage)


def io_text(graph) -> str:
    """The graph's inputs and outputs, one per line with dtype and shape: the names a serving call feeds and
    reads (a dict argument `batch` of forward becomes inputs `batch_<key>`; a pruned field's input is gone)."""
    def describe(value) -> str:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
        dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor.shape.dim]
        return f"  {value.name:<30} {dtype:<8} [{', '.join(dims)}]"

    initializers = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return "\n".join(["inputs:", *map(describe, inputs), "outputs:", *map(describe, graph.output)])


def inspect_model(path) -> str:
    from . import standard_tables

    try:
        head = onnx.load(str(path), load_external_data=False)
        portable_model = any(p.key == standard_tables.METADATA_KEY for p in head.metadata_props)
    except Exception:  # noqa: BLE001 - read_tables below names the problem
        head, portable_model = None, False
    if portable_model:
        model = onnx.load(str(path))
        portable, lookups = _portable_tables(Path(path), model, {i.name: i for i in model.graph.initializer})
        return standard_tables.inspect_text(path, portable, lookups) + "\n" + io_text(head.graph)
    tables, lookups = read_tables(path)
    if not tables:
        return f"{path}: no shark_export lookups" + ("\n" + io_text(head.graph) if head is not None else "")
    header = f"{'table':<32} {'rows':>10} {'dim':>5} {'tiers':<40} {'payload':>11} {'scales':>9} {'meta':>9} {'total':>11} {'of fp32':>8}"
    lines = [f"{path}", header, "-" * len(header)]
    total = fp32 = 0
    for name, table in tables.items():
        b = table.byte_report()
        tiers = " ".join(f"{t}:{c}" for t, c in table.tier_counts.items() if c)
        if table.scale_group_rows:  # format v3: scales shared per group of rows
            tiers += f" groups:{table.scale_group_rows}"
        lines.append(f"{name:<32} {table.num_rows:>10} {table.dim:>5} {tiers:<40} {b.payload:>11} {b.scales:>9} {b.metadata:>9} {b.total:>11} {b.ratio:>8.2%}")
        total += b.total
        fp32 += b.fp32
    lines.append("-" * len(header))
    lines.append(f"{'total':<32} {'':>10} {'':>5} {'':<40} {'':>11} {'':>9} {'':>9} {total:>11} {total / fp32:>8.2%}")
    lines.append("lookups: " + ", ".join(f"{node} ({op.removeprefix('RowwiseDequant')} on {table})" for node, op, table in lookups))
    lines.append(io_text(head.graph))
    return "\n".join(lines)
