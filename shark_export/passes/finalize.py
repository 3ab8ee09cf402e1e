"""Set the IR version and opset imports that ONNX Runtime reads; check that no staging node is left."""

from __future__ import annotations

import onnx_ir as ir

from ..export import STAGING_DOMAIN
from ..domain import DOMAIN
from ..domain import DOMAIN_VERSION as OPSET_VERSION

IR_VERSION = 10  # ORT 1.31 reads IR ≤ 13; onnx 1.23 would write 14 by default
MAX_ONNX_OPSET = 26


class FinalizeVersionsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = (model.ir_version, dict(model.graph.opset_imports))
        model.ir_version = IR_VERSION
        model.graph.opset_imports.pop(STAGING_DOMAIN, None)
        if any(node.domain == DOMAIN for node in model.graph):
            model.graph.opset_imports[DOMAIN] = OPSET_VERSION
        return ir.passes.PassResult(model, modified=before != (model.ir_version, dict(model.graph.opset_imports)))

    def ensures(self, model: ir.Model) -> None:
        left = [node.name for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.domain == STAGING_DOMAIN]
        if left:
            raise ir.passes.PostconditionError(f"staging lookups left in the graph: {left}")
        onnx_opset = model.graph.opset_imports.get("", 0)
        if onnx_opset > MAX_ONNX_OPSET:
            raise ir.passes.PostconditionError(f"ai.onnx opset {onnx_opset} > {MAX_ONNX_OPSET}, which ORT cannot read")
