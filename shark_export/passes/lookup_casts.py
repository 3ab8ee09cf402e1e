"""A lookup read only through Cast(to=float16) writes float16 itself.

A model that narrows its embeddings (`emb(ids).half()`, or a float16 dense part fed float32 lookups) exports
as lookup → Cast(to=FLOAT16). Our ops can write float16 directly (`output_dtype=10`): each value is the
float32 dequantized value rounded to nearest even, exactly what the Cast computes, so the Cast goes and
the output tensor is half the bytes. Runs after the lookups are grouped, so it sees the fused op too.
"""

from __future__ import annotations

import onnx_ir as ir

from ..domain import BAG_OP, DOMAIN, GATHER_OP, MULTI_OP
from ..lookup_spec import FLOAT, FLOAT16

_ONNX = ("", "ai.onnx")
_LOOKUP_OPS = (GATHER_OP, BAG_OP, MULTI_OP)


def _narrowing_casts(value: ir.Value) -> list[ir.Node] | None:
    """The Cast(to=float16) nodes that are `value`'s only readers, or None."""
    if value.is_graph_output():
        return None
    readers = [use.node for use in value.uses()]
    graph = value.graph
    if not readers or any(n.graph is not graph for n in readers):
        return None  # a reader inside a subgraph (If/Loop body) stays as it is
    if any(n.op_type != "Cast" or n.domain not in _ONNX or n.attributes.get_int("to", 0) != ir.DataType.FLOAT16
                          for n in readers):
        return None
    if sum(n.outputs[0].is_graph_output() for n in readers) > 1:
        return None  # two graph outputs cannot both become the one lookup output
    return readers


class LookupCastsPass(ir.passes.InPlacePass):
    """`folded`: names of the lookup nodes that now write float16."""

    def __init__(self):
        super().__init__()
        self.folded: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in list(graph):
            if node.domain != DOMAIN or node.op_type not in _LOOKUP_OPS or node.attributes.get_int("output_dtype", FLOAT) != FLOAT:
                continue
            out = node.outputs[0]
            casts = _narrowing_casts(out)
            if casts is None:
                continue
            node.attributes["output_dtype"] = ir.AttrInt64("output_dtype", int(ir.DataType.FLOAT16))
            out.type = ir.TensorType(ir.DataType.FLOAT16)
            for cast in casts:
                narrowed = cast.outputs[0]
                if narrowed.is_graph_output():
                    name = narrowed.name
                    narrowed.replace_all_uses_with(out, replace_graph_outputs=True)
                    out.name = name
                else:
                    narrowed.replace_all_uses_with(out)
                graph.remove(cast, safe=True)
            self.folded.append(node.name)
        return ir.passes.PassResult(model, modified=bool(self.folded))

    def ensures(self, model: ir.Model) -> None:
        """Every folded lookup writes float16 and no Cast(to=float16) reads it any more."""
        folded = set(self.folded)
        for node in model.graph:
            if node.name not in folded or node.domain != DOMAIN:
                continue
            if node.attributes.get_int("output_dtype", FLOAT) != FLOAT16 or _narrowing_casts(node.outputs[0]):
                raise ir.passes.PostconditionError(f"lookup {node.name!r} was folded but still writes float32 or "
                                                   "is read through a Cast")
