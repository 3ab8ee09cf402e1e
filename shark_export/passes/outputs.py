"""Name the graph outputs after what torch returned (the pytree path of each tensor: "output", "ctr", "0_1")."""

from __future__ import annotations

import onnx_ir as ir

from ..errors import SharkExportError


class NameOutputsPass(ir.passes.InPlacePass):
    """Graph output k gets `names[k]`; an output that is a graph input or an initializer, or whose name is
    taken by one, goes through an Identity so that every output has its own value and name."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = list(names)

    def requires(self, model: ir.Model) -> None:
        if len(model.graph.outputs) != len(self.names):
            raise ir.passes.PreconditionError(
                f"exported graph has {len(model.graph.outputs)} outputs, torch returned {len(self.names)} tensors"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        taken = {v.name for v in graph.inputs} | set(graph.initializers)
        modified = False
        for k, (value, name) in enumerate(zip(list(graph.outputs), self.names)):
            if value.is_graph_input() or value.is_initializer() or name in taken:
                identity = ir.node("Identity", [value], name=f"output/{name}")
                graph.append(identity)
                graph.outputs[k] = value = identity.outputs[0]
                value.type, value.shape = value.type or identity.inputs[0].type, identity.inputs[0].shape
                modified = True
            if value.name != name:
                value.name = name
                modified = True
        return ir.passes.PassResult(model, modified=modified)

    def ensures(self, model: ir.Model) -> None:
        got = [v.name for v in model.graph.outputs]
        if got != self.names:
            raise ir.passes.PostconditionError(f"graph outputs are {got}, expected {self.names}")


def check_output_count(model: ir.Model, names: list[str]) -> None:
    """The typed error for an export whose outputs do not line up with torch's (before any pass runs)."""
    if len(model.graph.outputs) != len(names):
        raise SharkExportError(f"exported graph has {len(model.graph.outputs)} outputs, torch returned {len(names)} tensors")
