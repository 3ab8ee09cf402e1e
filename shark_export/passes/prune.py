"""Replace pruned fields' lookups with their mean embedding (a constant), broadcast to the lookup's shape.

The broadcast shape is read, where possible, from graph inputs that stay alive (an input whose dimension
carries the same symbol as the lookup's batch dimension), so a pruned field's index input is no longer
read and the cleanup removes it. When no live input carries the symbol, the shape is read from the lookup's
own indices, which then stay a graph input.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..errors import UnknownFieldError
from .initializers import constant
from .lookups import Lookup


def _live_inputs(graph: ir.Graph, dead_nodes: set[ir.Node]) -> list[ir.Value]:
    """Graph inputs still read once `dead_nodes` stop being read (backward reachability from outputs)."""
    live: set[ir.Value] = set()
    stack = [v for v in graph.outputs]
    seen_nodes: set[ir.Node] = set()
    while stack:
        value = stack.pop()
        if value in live:
            continue
        live.add(value)
        node = value.producer()
        if node is None or node in dead_nodes or node in seen_nodes:
            continue
        seen_nodes.add(node)
        stack.extend(v for v in node.inputs if v is not None)
        for attr in node.attributes.values():  # values captured by subgraphs keep their producers alive
            if attr.type == ir.AttributeType.GRAPH:
                for inner in ir.traversal.RecursiveGraphIterator(attr.as_graph()):
                    stack.extend(v for v in inner.inputs if v is not None and v.graph is graph)
    return [v for v in graph.inputs if v in live]


def _symbol_sources(inputs: list[ir.Value]) -> dict[str, tuple[ir.Value, int]]:
    sources: dict[str, tuple[ir.Value, int]] = {}
    for value in inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                sources.setdefault(dim.value, (value, axis))
    return sources


class PruneFieldsPass(ir.passes.InPlacePass):
    """Each pruned lookup's output becomes Expand(mean, output shape); the lookup itself is left dead."""

    def __init__(self, lookups: list[Lookup], means: dict[str, np.ndarray]):
        super().__init__()
        known = {lookup.field for lookup in lookups}
        unknown = sorted(set(means) - known)
        if unknown:
            raise UnknownFieldError(f"cannot prune unknown field(s) {unknown}; the model's fields are: {sorted(known)}")
        self.lookups = [lookup for lookup in lookups if lookup.field in means]
        self.means = means

    def requires(self, model: ir.Model) -> None:
        stray = [lookup.field for lookup in self.lookups if lookup.node.graph is not model.graph]
        if stray:
            raise ir.passes.PreconditionError(f"lookups of pruned fields {stray} are not in the graph")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        sources = _symbol_sources(_live_inputs(graph, {lookup.node for lookup in self.lookups}))
        for lookup in self.lookups:
            self._replace(graph, lookup, sources)
        return ir.passes.PassResult(model, modified=bool(self.lookups))

    def ensures(self, model: ir.Model) -> None:
        read = [lookup.field for lookup in self.lookups
                if lookup.node.outputs[0].uses() or lookup.node.outputs[0].is_graph_output()]
        if read:
            raise ir.passes.PostconditionError(f"pruned fields {read} are still read from their tables")

    def _replace(self, graph: ir.Graph, lookup: Lookup, sources: dict[str, tuple[ir.Value, int]]) -> None:
        node = lookup.node
        mean = np.asarray(self.means[lookup.field], dtype=np.float32)
        prefix = f"pruned/{lookup.field}"
        new_nodes: list[ir.Node] = []

        def add(op_type: str, inputs, **attributes) -> ir.Value:
            created = ir.node(op_type, inputs, attributes=attributes, name=f"{prefix}/{op_type}_{len(new_nodes)}")
            new_nodes.append(created)
            return created.outputs[0]

        old_output = node.outputs[0]
        leading_dims = list(old_output.shape or ())[:-1] if old_output.shape is not None else None
        pieces = []
        if leading_dims is not None:
            for dim in leading_dims:
                if isinstance(dim, int):
                    pieces.append(constant(graph, f"{prefix}/dim{len(pieces)}", np.array([dim], dtype=np.int64)))
                elif isinstance(dim, ir.SymbolicDim) and dim.value in sources:
                    source, axis = sources[dim.value]
                    pieces.append(add("Shape", [source], start=axis, end=axis + 1))
                else:
                    pieces = None
                    break
        if pieces is None or leading_dims is None:
            pieces = [self._leading_shape_from_indices(graph, lookup, prefix, add)]
        pieces.append(constant(graph, f"{prefix}/dim", np.array([mean.shape[0]], dtype=np.int64)))
        shape = add("Concat", pieces, axis=0)
        broadcast = add("Expand", [constant(graph, f"{prefix}/mean", mean), shape])
        graph.insert_before(node, new_nodes)
        broadcast.shape, broadcast.type = old_output.shape, old_output.type
        old_output.replace_all_uses_with(broadcast, replace_graph_outputs=True)

    @staticmethod
    def _leading_shape_from_indices(graph: ir.Graph, lookup: Lookup, prefix: str, add) -> ir.Value:
        node = lookup.node
        indices = node.inputs[1]
        offsets = node.inputs[2] if len(node.inputs) > 2 else None
        if not lookup.is_bag:
            return add("Shape", [indices])  # output [*indices.shape, D]
        if offsets is None:
            return add("Shape", [indices], start=0, end=1)  # 2-D bags: [B, L] → B
        leading = add("Shape", [offsets], start=0, end=1)
        if node.attributes.get_int("include_last_offset", 0):
            one = constant(graph, f"{prefix}/one", np.array([1], dtype=np.int64))
            leading = add("Sub", [leading, one])
        return leading
