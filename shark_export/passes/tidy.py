"""The rewrites that follow the export, each one we can vouch for (the onnxscript optimizer is not run).

- node metadata and doc strings go (they hold stack traces with local paths, and vary between runs);
- common subexpressions are merged (onnx-ir's structural CSE: equal op, attributes and input values);
- staging lookups with the same table, inputs and settings are merged into one, recorded in `merged`
  (removed node → the node that now serves its field);
- nodes nothing reads are removed.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    ClearMetadataAndDocStringPass,
    CommonSubexpressionEliminationPass,
    RemoveUnusedNodesPass,
)

from .lookups import is_staging_lookup

_GUARD = "_shark_export_guard"


def _attribute_key(node: ir.Node) -> tuple:
    items = []
    for name, attr in sorted(node.attributes.items()):
        value = attr.value
        items.append((name, tuple(value) if isinstance(value, (list, tuple)) else value))
    return tuple(items)


class TidyExportPass(ir.passes.InPlacePass):
    def __init__(self):
        super().__init__()
        self.merged: dict[ir.Node, ir.Node] = {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = ClearMetadataAndDocStringPass()(model).modified
        # Lookups are merged by the rule below, which records the merge; CSE must not do it unrecorded.
        staging = [node for node in graph if is_staging_lookup(node)]
        for k, node in enumerate(staging):
            node.attributes[_GUARD] = ir.AttrInt64(_GUARD, k)
        modified |= CommonSubexpressionEliminationPass()(model).modified
        for node in staging:
            node.attributes.pop(_GUARD, None)
        survivors: dict[tuple, ir.Node] = {}
        for node in staging:
            key = (node.op_type, tuple(id(v) for v in node.inputs), _attribute_key(node))
            first = survivors.setdefault(key, node)
            if first is node or node.outputs[0].is_graph_output():
                continue  # (two graph outputs cannot become one value)
            node.outputs[0].replace_all_uses_with(first.outputs[0], replace_graph_outputs=True)
            self.merged[node] = first
            modified = True
        modified |= RemoveUnusedNodesPass()(model).modified
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        keys = [(n.op_type, tuple(id(v) for v in n.inputs), _attribute_key(n)) for n in model.graph
                if is_staging_lookup(n) and not n.outputs[0].is_graph_output()]
        if len(keys) != len(set(keys)):
            raise ir.passes.PostconditionError("two lookups with the same table, inputs and settings are left")
