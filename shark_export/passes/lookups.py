"""Find the staging lookup nodes of an exported model and name them as fields."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import ExportError
from ..export import FLOAT_BAG, FLOAT_GATHER, STAGING_DOMAIN
from ..fields import Field, Table


@dataclass(frozen=True)
class Lookup:
    """A staging lookup node and the field it serves."""

    field: str
    table: str
    node: ir.Node

    @property
    def is_bag(self) -> bool:
        return self.node.op_type == FLOAT_BAG


def is_staging_lookup(node: ir.Node) -> bool:
    return node.domain == STAGING_DOMAIN and node.op_type in (FLOAT_GATHER, FLOAT_BAG)


def _staging_nodes_in_subgraphs(graph: ir.Graph) -> list[ir.Node]:
    return [node for node in ir.traversal.RecursiveGraphIterator(graph) if is_staging_lookup(node) and node.graph is not graph]


def find_lookups(model: ir.Model, fields: dict[str, Field], tables: dict[str, Table], weights: dict[str, np.ndarray]) -> list[Lookup]:
    """Match staging nodes to fields: per table, graph order equals torch's call order.

    The exporter names a table's initializer by one of its parameter names (any alias of a tied weight);
    each initializer is verified against the module's weight (`weights`, by table name) by value, so a
    lookup is never served from the wrong table.
    """
    nested = _staging_nodes_in_subgraphs(model.graph)
    if nested:
        raise ExportError(f"lookup {nested[0].name!r} sits inside a control-flow subgraph, which is not supported")
    table_of_alias = {alias: t.name for t in tables.values() for alias in (t.name, *t.aliases)}
    nodes_by_table: dict[str, list[ir.Node]] = defaultdict(list)
    verified: set[str] = set()
    for node in model.graph:
        if not is_staging_lookup(node):
            continue
        if not node.outputs[0].uses() and not node.outputs[0].is_graph_output():
            continue  # a field pruned inside the model: its output is replaced by a constant, the lookup is dead
        weight = node.inputs[0]
        table = table_of_alias.get(getattr(weight, "name", None))
        if table is None or not weight.is_initializer():
            raise ExportError(
                f"lookup node {node.name!r} ({node.op_type}) reads {getattr(weight, 'name', None)!r}, which is not the "
                "weight of an nn.Embedding/nn.EmbeddingBag module; only module tables can be converted"
            )
        if weight.name not in verified:
            if weight.const_value is None or not np.array_equal(weight.const_value.numpy(), weights[table]):
                raise ExportError(f"initializer {weight.name!r} does not hold the weight of the module it is named after")
            verified.add(weight.name)
        nodes_by_table[table].append(node)
    fields_by_table: dict[str, list[Field]] = defaultdict(list)
    for f in fields.values():
        if not f.pruned:
            fields_by_table[f.table].append(f)
    lookups = []
    for table, nodes in nodes_by_table.items():
        expected = fields_by_table.get(table, [])
        if len(expected) != len(nodes):
            raise ExportError(
                f"table {table!r}: torch called it {len(expected)} times but the exported graph has {len(nodes)} lookups"
            )
        lookups.extend(Lookup(field=f.name, table=table, node=node) for f, node in zip(expected, nodes))
    return lookups
