"""Turn staging lookups into RowwiseDequantGather / RowwiseDequantEmbeddingBag on quantized storage, and serve
every other use of a table (a tied output projection, `weight` read directly) from the same stored copy."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import ExportError
from ..domain import BAG_OP, DOMAIN, GATHER_OP
from ..lookup_spec import FIELD_META, STORAGE_PARTS, storage_names
from .initializers import constant
from .lookups import Lookup, is_staging_lookup


class LookupRewrite:
    """The rewrite of one staging lookup, as a rule in three steps:

    - `pattern`: a staging lookup whose output is still read (a pruned field's lookup is dead and goes
      with the cleanup);
    - `check`: our op can serve it exactly: its table was stored, with the weight's shape, and it reads
      integer indices (`None`, or the reason it cannot);
    - `rewrite`: the op on the table's shared storage (`<table>.payload`, `.row_meta`, `.default_row`),
      named `lookup/<field>` so kernel errors name the field, plus a Cast back when the graph reads the
      lookup at another dtype than the op's output.
    """

    def __init__(self, tables: dict, output_dtype: int = 1):
        self.tables = tables
        self.output_dtype = output_dtype

    def pattern(self, lookup: Lookup) -> bool:
        return is_staging_lookup(lookup.node) and _is_live(lookup.node)

    def check(self, lookup: Lookup) -> str | None:
        table = self.tables.get(lookup.table)
        if table is None:
            return f"no quantized table for {lookup.table!r} (field {lookup.field!r})"
        weight = lookup.node.inputs[0]
        shape = tuple(weight.shape) if weight is not None and weight.shape is not None else None
        if shape is not None and all(isinstance(d, int) for d in shape) and shape != (table.num_rows, table.dim):
            return (f"field {lookup.field!r} reads {lookup.table!r} of shape {list(shape)}, but the stored table is "
                    f"[{table.num_rows}, {table.dim}]")
        indices = lookup.node.inputs[1]
        if indices is not None and indices.dtype is not None and indices.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            return f"field {lookup.field!r} is looked up with {indices.dtype.name} indices; the op reads int32 or int64"
        return None

    def rewrite(self, graph: ir.Graph, lookup: Lookup) -> None:
        node = lookup.node
        table = self.tables[lookup.table]
        attributes = {**table.op_attributes(), "output_dtype": self.output_dtype}
        if lookup.is_bag:
            op_type = BAG_OP
            for name in ("mode", "include_last_offset", "padding_idx"):
                attributes[name] = node.attributes.get_int(name, -1 if name == "padding_idx" else 0)
            inputs = [*storage(graph, lookup.table, table), *node.inputs[1:]]
            while inputs[-1] is None:  # (a 2-D bag has no offsets, maybe no weights either)
                inputs.pop()
        else:
            op_type = GATHER_OP
            inputs = [*storage(graph, lookup.table, table), node.inputs[1]]
        replacement = ir.node(op_type, inputs, attributes=attributes, domain=DOMAIN, name=f"lookup/{lookup.field}")
        replacement.meta[FIELD_META] = lookup.field
        _splice(graph, node, replacement, node.outputs[0], self.output_dtype)


def storage(graph: ir.Graph, name: str, table) -> list[ir.Value]:
    """The table's three storage initializers, shared by every op that reads the table."""
    return [constant(graph, tensor, getattr(table, part)) for tensor, part in zip(storage_names(name), STORAGE_PARTS)]


class ReplaceLookupsPass(ir.passes.InPlacePass):
    """Applies `LookupRewrite` to every lookup, and serves the tables' dense uses.

    `tables` maps table (initializer) name → QuantizedTable; `output_dtype` is 1 (float) or 10 (float16).
    `dense_uses` (table → [(node, input index)]) are the table's reads that are not lookups: they read one
    `RowwiseDequantGather` of every row (`Range(0, R)`), the table as stored, so the file holds one copy.
    """

    def __init__(self, lookups: list[Lookup], tables: dict, output_dtype: int = 1, dense_uses: dict | None = None):
        super().__init__()
        self.lookups = lookups
        self.tables = tables
        self.rule = LookupRewrite(tables, output_dtype)
        self.dense_uses = dense_uses or {}

    def requires(self, model: ir.Model) -> None:
        missing = sorted({lookup.table for lookup in self.lookups if _is_live(lookup.node)} - set(self.tables))
        missing += sorted(set(self.dense_uses) - set(self.tables))
        if missing:
            raise ir.passes.PreconditionError(f"no stored table for {missing}")

    def ensures(self, model: ir.Model) -> None:
        left = [lookup.field for lookup in self.lookups if _is_live(lookup.node)]
        if left:
            raise ir.passes.PostconditionError(f"lookups of fields {left} still read float tables")
        initializers = model.graph.initializers
        dense = [name for name in self.dense_uses if name in initializers
                 and any(not is_staging_lookup(user) for user, _ in initializers[name].uses())]
        if dense:
            raise ir.passes.PostconditionError(f"tables {dense} are still read as float weights")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        matched = [lookup for lookup in self.lookups if self.rule.pattern(lookup)]
        for lookup in matched:  # every check before any rewrite: a refused lookup leaves the model as it was
            reason = self.rule.check(lookup)
            if reason is not None:
                raise ExportError(reason)
        for lookup in matched:
            self.rule.rewrite(graph, lookup)
        for name, uses in self.dense_uses.items():
            if name not in self.tables:
                raise ExportError(f"table {name!r} is read densely but was not stored")
            self._dense_view(graph, name, uses)
        return ir.passes.PassResult(model, modified=bool(matched or self.dense_uses))

    def _dense_view(self, graph: ir.Graph, name: str, uses: list[tuple[ir.Node, int]]) -> None:
        table = self.tables[name]
        weight = graph.initializers.get(name)
        users = {user for user, _ in uses}
        first_user = next(node for node in graph if node in users)
        rows = ir.node(
            "Range",
            [constant(graph, f"{name}.view/start", np.array(0, np.int64)),
             constant(graph, f"{name}.view/limit", np.array(table.num_rows, np.int64)),
             constant(graph, f"{name}.view/delta", np.array(1, np.int64))],
            name=f"{name}.view/rows",
        )
        view = ir.node(GATHER_OP, [*storage(graph, name, table), rows.outputs[0]],
                       attributes={**table.op_attributes(), "output_dtype": 1}, domain=DOMAIN, name=f"{name}.view")
        out = view.outputs[0]
        out.type = ir.TensorType(ir.DataType.FLOAT)
        out.shape = ir.Shape([table.num_rows, table.dim])
        out.name = f"{name}.dequantized"
        graph.insert_before(first_user, [rows, view])
        for user, index in uses:
            user.replace_input_with(index, out)
        if weight is not None and not weight.uses() and not weight.is_graph_output():
            graph.initializers.pop(name, None)


def _splice(graph: ir.Graph, before: ir.Node, replacement: ir.Node, old: ir.Value, output_dtype: int) -> None:
    """Insert `replacement` (plus a Cast back to `old`'s dtype when needed) and move `old`'s uses to it."""
    new_nodes = [replacement]
    out = replacement.outputs[0]
    out.type = ir.TensorType(ir.DataType(output_dtype))
    out.shape = old.shape
    if old.dtype is not None and out.dtype != old.dtype:
        # The rest of the graph reads the lookup at its exported dtype.
        cast = ir.node("Cast", [out], attributes={"to": old.dtype}, name=f"{replacement.name}/cast")
        new_nodes.append(cast)
        out = cast.outputs[0]
        out.shape, out.type = old.shape, old.type
    graph.insert_before(before, new_nodes)
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    out.name = old.name


def _is_live(node: ir.Node) -> bool:
    return bool(node.outputs[0].uses()) or node.outputs[0].is_graph_output()
