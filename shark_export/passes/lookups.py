"""Find the staging lookup nodes of an exported model and name each by the field it serves.

A staging node is tied to its field by where it came from (the module call torch.export recorded for
it), never by counting: the exporter may merge identical lookups or drop unused ones. A lookup that no
embedding module made (`F.embedding(ids, module.weight)`, `weight.index_select(0, ids)`) is a
*functional* field named `<table>@<k>`. Every table initializer is verified against the model's weight
by value, and every other use of it (a tied output projection, `weight` read directly) is recorded as a
dense use, which the replace pass serves from the one stored copy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..errors import ExportError
from ..export import FLOAT_BAG, FLOAT_GATHER, STAGING_DOMAIN, ExportedLookup
from ..fields import Field, Table, fields_by_call
from .standard_ops import MIN_ONNX_OPSET, Builder, bag_from_rows, negatives_past_end, replace_with_lowered


@dataclass(frozen=True)
class Lookup:
    """A staging lookup node and the field it serves."""

    field: str
    table: str
    node: ir.Node

    @property
    def is_bag(self) -> bool:
        return self.node.op_type == FLOAT_BAG


@dataclass
class LookupMap:
    """What `find_lookups` found: the lookups, the fields and tables seen only in the graph, dense uses."""

    lookups: list[Lookup]
    functional_fields: dict[str, Field] = field(default_factory=dict)
    functional_tables: dict[str, Table] = field(default_factory=dict)
    dense_uses: dict[str, list[tuple[ir.Node, int]]] = field(default_factory=dict)  # table → (node, input index)

    def fields_of(self, table: str) -> list[str]:
        return [lookup.field for lookup in self.lookups if lookup.table == table]


def is_staging_lookup(node: ir.Node) -> bool:
    return node.domain == STAGING_DOMAIN and node.op_type in (FLOAT_GATHER, FLOAT_BAG)


def _staging_nodes_in_subgraphs(graph: ir.Graph) -> list[ir.Node]:
    return [node for node in ir.traversal.RecursiveGraphIterator(graph) if is_staging_lookup(node) and node.graph is not graph]


def _is_dead(node: ir.Node) -> bool:
    return not node.outputs[0].uses() and not node.outputs[0].is_graph_output()


def _origin_text(origins: list[ExportedLookup | None]) -> str:
    paths = [o.module_path for o in origins if o is not None and o.module_path]
    return f" (module {paths[0]!r})" if paths else ""


def _substitute(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """`new` computes what `old` did: it takes old's place, output name and uses; old goes."""
    graph.insert_before(old, new)
    out = new.outputs[0]
    out.shape, out.type = old.outputs[0].shape, old.outputs[0].type
    old.outputs[0].replace_all_uses_with(out, replace_graph_outputs=True)
    out.name = old.outputs[0].name
    graph.remove(old, safe=True)


_COMPARE_ELEMENTS = 1 << 20  # per chunk of rows compared: bounded temporaries, whatever the table size


def same_values(a, b) -> bool:
    """Whether two arrays hold the same values: the same memory at once, else compared in chunks of rows (never a
    temporary the size of the table)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides:
        return True
    if a.ndim == 0:
        return bool(np.array_equal(a, b))
    step = max(1, _COMPARE_ELEMENTS // max(1, int(np.prod(a.shape[1:]))))
    return all(np.array_equal(a[i:i + step], b[i:i + step]) for i in range(0, a.shape[0], step))


def lower_computed_weight_gathers(model: ir.Model, parameter_names: set[str], origins: dict) -> None:
    """Staging lookups on a weight computed in the graph (not a parameter) have no table to store: gathers become
    plain ONNX Gathers, bags (segment pooling, `F.embedding_bag(ids, activations, offsets)`) ai.onnx ops with
    torch's embedding_bag semantics (the portable lowering's, over the computed rows)."""
    graph = model.graph
    for node in list(graph):
        if not is_staging_lookup(node) or _is_dead(node):
            continue
        weight = node.inputs[0]
        if weight is not None and weight.is_initializer() and weight.name in parameter_names:
            continue
        if node.op_type == FLOAT_BAG:
            _lower_computed_bag(graph, node, origins)
            continue
        _substitute(graph, node, ir.node("Gather", [weight, node.inputs[1]], attributes={"axis": 0}, name=f"{node.name}/gather"))


def _lower_computed_bag(graph: ir.Graph, node: ir.Node, origins: dict) -> None:
    weight = node.inputs[0]
    if weight.type is not None and weight.dtype not in (None, ir.DataType.FLOAT):
        raise ExportError(
            f"an embedding bag (nn.EmbeddingBag or F.embedding_bag){_origin_text(origins.get(node, []))} pools a tensor "
            f"computed in forward ({weight.name!r}) of type {weight.dtype}: only float32 can be pooled in the graph"
        )
    if graph.opset_imports.get("", 0) < MIN_ONNX_OPSET:
        raise ExportError(f"pooling a computed tensor ({weight.name!r}) needs ai.onnx opset {MIN_ONNX_OPSET}, the graph has "
                          f"{graph.opset_imports.get('', 0)}")
    b = Builder(graph, f"{node.name}/pooled")

    def rows_of(flat: ir.Value) -> ir.Value:
        return b.op("Gather", [weight, negatives_past_end(b, flat, b.op("Shape", [weight], start=0, end=1))], axis=0)

    inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
    attrs = node.attributes
    out = bag_from_rows(b, rows_of, b.op("Shape", [weight], start=1, end=2), inputs[1], inputs[2], inputs[3],
                        attrs.get_int("mode", 0), attrs.get_int("include_last_offset", 0), attrs.get_int("padding_idx", -1))
    replace_with_lowered(graph, node, b.nodes, out)


def raise_table_gathers(model: ir.Model, table_aliases: set[str]) -> None:
    """A plain `Gather(axis=0)` reading a table initializer (`weight.index_select(0, ids)`) is a row lookup:
    it becomes a staging gather, served by our op like any other lookup."""
    graph = model.graph
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
            continue
        data, indices = node.inputs[0], node.inputs[1]
        if data is None or not data.is_initializer() or data.name not in table_aliases:
            continue
        if indices is None:
            continue  # (Gather indices are int32 or int64 by the ONNX spec)
        _substitute(graph, node, ir.node(FLOAT_GATHER, [data, indices], domain=STAGING_DOMAIN, name=f"{node.name}/lookup"))


def find_lookups(
    model: ir.Model,
    fields: dict[str, Field],
    tables: dict[str, Table],
    weights: dict[str, np.ndarray],
    origins: dict[ir.Node, list[ExportedLookup | None]] | None = None,
    parameters: dict[str, np.ndarray] | None = None,
) -> LookupMap:
    """Tie every live staging node to its field and table.

    `origins`: staging node → the exported lookups it stands for (several once identical lookups merged).
    `parameters`: float parameters by name that are not module tables; a staging node reading one of them
    (`F.embedding(ids, self.some_parameter)`) makes it a functional table.
    """
    origins = origins or {}
    parameters = parameters or {}
    nested = _staging_nodes_in_subgraphs(model.graph)
    if nested:
        raise ExportError(f"lookup {nested[0].name!r} sits inside a control-flow subgraph, which is not supported")
    table_of_alias = {alias: t.name for t in tables.values() for alias in (t.name, *t.aliases)}
    by_call = fields_by_call(fields)
    found = LookupMap([])
    functional_count: dict[str, int] = defaultdict(int)
    verified: set[str] = set()
    for node in model.graph:
        if not is_staging_lookup(node) or _is_dead(node):
            continue  # dead: a field pruned inside the model (its output is a constant) or an unused call
        weight = node.inputs[0]
        name = getattr(weight, "name", None)
        table = table_of_alias.get(name)
        if table is None and name in parameters and weight.is_initializer():
            array = parameters[name]
            if array.ndim != 2 or array.dtype != np.float32:
                raise ExportError(f"lookup {node.name!r} reads parameter {name!r} of shape {array.shape} and dtype {array.dtype}; a table must be 2-D float32")
            table = name
            found.functional_tables[name] = Table(name, (), int(array.shape[0]), int(array.shape[1]), (name,))
            weights = {**weights, name: array}
        if table is None or not weight.is_initializer():
            raise ExportError(
                f"lookup node {node.name!r} ({node.op_type}){_origin_text(origins.get(node, []))} reads {name!r}, which is "
                "not a parameter of the model; only stored tables can be converted"
            )
        if weight.name not in verified:
            if weight.const_value is None or not same_values(weight.const_value.numpy(), weights[table]):
                raise ExportError(f"initializer {weight.name!r} does not hold the weight of the module it is named after")
            verified.add(weight.name)
        field_ = None
        for origin in origins.get(node, []):
            if origin is not None and origin.module_path is not None:
                candidate = by_call.get((origin.module_path, origin.call_index))
                if candidate is not None and candidate.table == table:
                    field_ = candidate
                    break
        if field_ is None:
            k = functional_count[table]
            functional_count[table] += 1
            field_ = Field(name=f"{table}@{k}", module_path="", call_index=k, table=table)
            found.functional_fields[field_.name] = field_
        found.lookups.append(Lookup(field=field_.name, table=table, node=node))
    for value in model.graph.initializers.values():
        table = table_of_alias.get(value.name) or (value.name if value.name in found.functional_tables else None)
        if table is None:
            continue
        dense = [(user, index) for user, index in value.uses() if not (is_staging_lookup(user) and index == 0)]
        if dense:
            found.dense_uses[table] = dense
    return found
