"""Turn staging lookups into RowwiseDequantGather / RowwiseDequantEmbeddingBag on quantized storage."""

from __future__ import annotations

import onnx_ir as ir

from ..errors import ExportError
from ..schemas import BAG_OP, DOMAIN, GATHER_OP
from .initializers import constant
from .lookups import Lookup


class ReplaceLookupsPass(ir.passes.InPlacePass):
    """`tables` maps table (initializer) name → QuantizedTable; `output_dtype` is 1 (float) or 10 (float16).

    The storage initializers are named `<table>.payload`, `<table>.row_meta`, `<table>.default_row`, shared by
    every lookup of the table. Nodes are named after their field, so kernel errors name the field.
    """

    def __init__(self, lookups: list[Lookup], tables: dict, output_dtype: int = 1):
        super().__init__()
        self.lookups = lookups
        self.tables = tables
        self.output_dtype = output_dtype

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for lookup in self.lookups:
            node = lookup.node
            if not node.outputs[0].uses() and not node.outputs[0].is_graph_output():
                continue  # a pruned field: its lookup is dead and goes with the cleanup
            table = self.tables.get(lookup.table)
            if table is None:
                raise ExportError(f"no quantized table for {lookup.table!r} (field {lookup.field!r})")
            storage = [
                constant(graph, f"{lookup.table}.payload", table.payload),
                constant(graph, f"{lookup.table}.row_meta", table.row_meta),
                constant(graph, f"{lookup.table}.default_row", table.default_row),
            ]
            attributes = {**table.op_attributes(), "output_dtype": self.output_dtype}
            if lookup.is_bag:
                op_type = BAG_OP
                for name in ("mode", "include_last_offset", "padding_idx"):
                    attributes[name] = node.attributes.get_int(name, -1 if name == "padding_idx" else 0)
                inputs = [*storage, *node.inputs[1:]]
            else:
                op_type = GATHER_OP
                inputs = [*storage, node.inputs[1]]
            replacement = ir.node(op_type, inputs, attributes=attributes, domain=DOMAIN, name=f"lookup/{lookup.field}")
            new_nodes = [replacement]
            out = replacement.outputs[0]
            out.type = ir.TensorType(ir.DataType(self.output_dtype))
            old = node.outputs[0]
            out.shape = old.shape
            if old.dtype is not None and out.dtype != old.dtype:
                # The rest of the graph reads the lookup at its exported dtype.
                cast = ir.node("Cast", [out], attributes={"to": old.dtype}, name=f"lookup/{lookup.field}/cast")
                new_nodes.append(cast)
                out = cast.outputs[0]
                out.shape, out.type = old.shape, old.type
            graph.insert_before(node, new_nodes)
            old.replace_all_uses_with(out, replace_graph_outputs=True)
            out.name = old.name
        return ir.passes.PassResult(model, modified=True)
