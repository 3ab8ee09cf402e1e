"""Fuse the lookups that feed one concatenation into one RowwiseDequantMultiLookup.

A model's field embeddings usually meet in one `Concat` along axis 1 (`torch.cat(..., dim=1)`, or
`torch.stack(..., dim=1)`, which exports as an `Unsqueeze` per field and a `Concat`). Concatenating
along axis 1 puts, for every sample, field k's values right after field k-1's: exactly the output row of
RowwiseDequantMultiLookup, which writes each field's rows there directly. So a run of two or more
consecutive Concat inputs that are lookups (gathers or bags, any tables) becomes one node; the per-field
outputs, the `Unsqueeze`s and the copy the `Concat` made disappear, and every number stays the same (each
field's block is what its own op computes, bit for bit).

A lookup joins a run only when its output reaches the Concat through nothing but an optional `Cast` and an
optional `Unsqueeze` at axis 1, each read by nothing else; otherwise it stays a single op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..domain import BAG_OP, DOMAIN, GATHER_OP, MULTI_OP
from ..lookup_spec import (BAG_2D_FIELD, BAG_OFFSETS_FIELD, FIELD_META, FLOAT, GATHER_FIELD, FieldSpec,
                           MultiLookupSpec, attributes_of_ir)
from .initializers import constant


@dataclass
class _Member:
    """One Concat input that is a lookup's output."""

    lookup: ir.Node
    cast_to: int | None  # the Cast between the lookup and the Concat, if any
    chain: list[ir.Node] = field(default_factory=list)

    @property
    def field(self) -> str:
        return self.lookup.meta[FIELD_META]


def _single_use(value: ir.Value) -> bool:
    return len(value.uses()) == 1 and not value.is_graph_output()


def _normalized_axis(axis: int, rank: int | None) -> int | None:
    if axis >= 0:
        return axis
    return None if rank is None else axis + rank


def _unsqueeze_axes(node: ir.Node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        tensor = ir.convenience.get_const_tensor(node.inputs[1])
        return None if tensor is None else [int(a) for a in tensor.numpy().reshape(-1)]
    attribute = node.attributes.get("axes")
    return None if attribute is None else [int(a) for a in attribute.value]


def _member(value: ir.Value) -> _Member | None:
    """`value` (a Concat input) as a lookup's output, or None."""
    chain: list[ir.Node] = []
    cast_to = None
    while True:
        node = value.producer()
        if node is None or not _single_use(value):
            return None
        if node.domain == DOMAIN and node.op_type in (GATHER_OP, BAG_OP) and FIELD_META in node.meta:
            return _Member(node, cast_to, chain)
        if node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "Unsqueeze" and not any(n.op_type == "Unsqueeze" for n in chain):
            rank = len(node.outputs[0].shape) if node.outputs[0].shape is not None else None
            axes = _unsqueeze_axes(node)
            if axes is None or len(axes) != 1 or _normalized_axis(axes[0], rank) != 1:
                return None
        elif node.op_type == "Cast" and cast_to is None:
            cast_to = node.attributes.get_int("to", 0)
        else:
            return None
        chain.append(node)
        value = node.inputs[0]


def _width(member: _Member) -> int | None:
    """Values per sample the member's lookup writes (None when not static)."""
    node = member.lookup
    dim = node.attributes.get_int("dim", 0)
    if node.op_type == BAG_OP:
        return dim
    shape = node.inputs[3].shape
    if shape is None or len(shape) < 1 or not all(isinstance(d, int) for d in list(shape)[1:]):
        return None
    return int(np.prod(list(shape)[1:], dtype=np.int64)) * dim


def _kind(node: ir.Node) -> int:
    if node.op_type == GATHER_OP:
        return GATHER_FIELD
    has_offsets = len(node.inputs) > 4 and node.inputs[4] is not None
    return BAG_OFFSETS_FIELD if has_offsets else BAG_2D_FIELD


class GroupLookupsPass(ir.passes.InPlacePass):
    """Runs of >= 2 lookups feeding one Concat (axis 1) → one RowwiseDequantMultiLookup each.

    `groups` lists, per fused node, the fields it serves, in order."""

    def __init__(self):
        super().__init__()
        self.groups: list[list[str]] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for concat in [n for n in graph if n.op_type == "Concat" and n.domain in ("", "ai.onnx")]:
            self._fuse_runs(graph, concat)
        return ir.passes.PassResult(model, modified=bool(self.groups))

    def ensures(self, model: ir.Model) -> None:
        fused = {f for group in self.groups for f in group}
        read = [n.name for n in model.graph if n.op_type in (GATHER_OP, BAG_OP) and n.meta.get(FIELD_META) in fused
                and any(o.uses() for o in n.outputs)]
        if read:
            raise ir.passes.PostconditionError(f"fused lookups {read} are still read")

    def _fuse_runs(self, graph: ir.Graph, concat: ir.Node) -> None:
        out = concat.outputs[0]
        rank = len(out.shape) if out.shape is not None else None
        if _normalized_axis(concat.attributes.get_int("axis", 0), rank) != 1 or rank is None:
            return
        members = [_member(v) if v is not None else None for v in concat.inputs]
        runs: list[tuple[int, int]] = []  # [start, stop) of concat inputs
        start = 0
        while start < len(members):
            stop = start
            while stop < len(members) and members[stop] is not None and self._joins(members[start], members[stop]):
                stop += 1
            if stop - start >= 2 and all(_width(m) is not None for m in members[start:stop]):
                runs.append((start, stop))
            start = max(stop, start + 1)
        if not runs:
            return
        new_inputs: list[ir.Value] = []
        last = 0
        for start, stop in runs:
            new_inputs.extend(concat.inputs[last:start])
            fused = self._fuse(graph, concat, members[start:stop])
            if fused is None:
                new_inputs.extend(concat.inputs[start:stop])
                runs = [r for r in runs if r != (start, stop)]
            else:
                new_inputs.append(fused)
            last = stop
        new_inputs.extend(concat.inputs[last:])
        if len(new_inputs) == len(concat.inputs):
            return
        if len(new_inputs) == 1:
            replacement = new_inputs[0]
        else:
            node = ir.node("Concat", new_inputs, attributes={"axis": 1}, name=f"{concat.name}/after_fusion")
            graph.insert_before(concat, node)
            replacement = node.outputs[0]
        replacement.shape, replacement.type = out.shape, out.type
        name = out.name
        out.replace_all_uses_with(replacement, replace_graph_outputs=True)
        replacement.name = name
        # What the fused nodes replaced is read by nothing now: the Concat, then each member's chain and lookup.
        graph.remove(concat, safe=True)
        for start, stop in runs:
            for m in members[start:stop]:
                for node in m.chain:  # walked from the Concat back to the lookup: each reads the next
                    graph.remove(node, safe=True)
                graph.remove(m.lookup, safe=True)

    @staticmethod
    def _joins(first: _Member, other: _Member) -> bool:
        return (other.cast_to == first.cast_to and
                other.lookup.attributes.get_int("output_dtype", FLOAT) == first.lookup.attributes.get_int("output_dtype", FLOAT))

    def _fuse(self, graph: ir.Graph, concat: ir.Node, members: list[_Member]) -> ir.Value | None:
        """The fused node (plus Cast / Reshape back to what the run's inputs concatenated give), or None."""
        out_shape = list(concat.outputs[0].shape)  # [B, X, *rest]: every input has the same B and rest
        batch, rest = out_shape[0], out_shape[2:]
        if rest and not all(isinstance(d, int) for d in rest):
            return None  # the reshape back needs the trailing dims
        inputs: list[ir.Value] = []
        specs = []
        for m in members:
            node = m.lookup
            kind = _kind(node)
            weights = node.inputs[5] if len(node.inputs) > 5 else None
            inputs.extend(node.inputs[:4])
            if kind == BAG_OFFSETS_FIELD:
                inputs.append(node.inputs[4])
            if weights is not None:
                inputs.append(weights)
            specs.append(FieldSpec.of_single_op(attributes_of_ir(node), kind, weights is not None))
        output_dtype = members[0].lookup.attributes.get_int("output_dtype", FLOAT)
        spec = MultiLookupSpec(tuple(specs), tuple(m.field for m in members), output_dtype)
        node = ir.node(MULTI_OP, inputs, attributes=spec.attributes(), domain=DOMAIN,
                       name=f"lookups/{concat.name}" + (f"/{len(self.groups)}" if self.groups else ""))
        width = sum(_width(m) for m in members)
        fused = node.outputs[0]
        fused.type = ir.TensorType(ir.DataType(output_dtype))
        fused.shape = ir.Shape([batch, width])
        new_nodes = [node]
        if members[0].cast_to is not None:
            cast = ir.node("Cast", [fused], attributes={"to": members[0].cast_to}, name=f"{node.name}/cast")
            new_nodes.append(cast)
            fused = cast.outputs[0]
            fused.type = ir.TensorType(ir.DataType(members[0].cast_to))
            fused.shape = ir.Shape([batch, width])
        if rest:  # [B, W] → [B, sum of the inputs' axis-1 sizes, *rest]
            per_row = int(np.prod(rest, dtype=np.int64))
            target = constant(graph, f"{node.name}/shape", np.array([0, width // per_row, *rest], dtype=np.int64))
            reshape = ir.node("Reshape", [fused, target], name=f"{node.name}/reshape")
            new_nodes.append(reshape)
            fused = reshape.outputs[0]
            fused.type = concat.outputs[0].type
            fused.shape = ir.Shape([batch, width // per_row, *rest])
        graph.insert_before(concat, new_nodes)
        self.groups.append(list(spec.names))
        return fused
