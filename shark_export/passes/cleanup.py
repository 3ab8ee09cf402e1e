"""Remove what nothing reads any more: nodes, initializers, graph inputs, opset imports."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass


class RemoveDeadPass(ir.passes.InPlacePass):
    """Dead-code elimination that, unlike onnx-ir's, also drops graph inputs nobody reads.

    `removed_inputs` lists the names of dropped graph inputs (a pruned field's index tensor, say).
    """

    def __init__(self):
        super().__init__()
        self.removed_inputs: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = RemoveUnusedNodesPass()(model).modified
        graph = model.graph
        for value in list(graph.inputs):
            if not value.uses() and not value.is_graph_output():
                graph.inputs.remove(value)
                self.removed_inputs.append(value.name)
                modified = True
        modified |= RemoveUnusedNodesPass()(model).modified  # initializers that only dead inputs fed
        modified |= RemoveUnusedOpsetsPass()(model).modified
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        unread = [v.name for v in model.graph.inputs if not v.uses() and not v.is_graph_output()]
        if unread:
            raise ir.passes.PostconditionError(f"graph inputs {unread} are read by nothing")
