"""Lower every RowwiseDequant* op to standard ai.onnx ops on portable table storage (`convert(ops="standard")`).

Each table is transcoded to `shark_export.standard_tables.StandardTable` (per-tier sub-tables, a row -> slot
map for anything but a uniform table; the stored bytes rearranged, never re-quantized) and every op reading
it becomes a subgraph of opset-18 ai.onnx ops (docs/PORTABLE.md):

- rows: indices flattened to int64 [N] (negative ones moved to R, so that ORT's Gather rejects them as it
  rejects indices >= R), then a `Term`: Gather codes/values, Cast to float (int4/int2: planar fields split off
  in float arithmetic, Concat, Slice to D), Gather the float16 [scale, bias] pairs, Cast, Slice. A gather's
  rows are values·scale + bias: `q·scale` is exact in float32 (8-bit code × 11-bit significand), so Mul then
  Add rounds once, as the kernels' fma and the reference's float64 do: the rows are bit-identical. A mixed
  table reads its slot map; each sub-table decodes only its own entries (NonZero) and one Gather puts the
  concatenated blocks back in entry order.
- gather: rows reshaped to [*indices.shape, D].
- bags fold the per-sample weight (0 for padding entries) into the term's scale and bias, on [N, 1].
- bag, 2-D indices [B, L]: one batched MatMul [B, 1, L] (scales) × [B, L, D] (values) plus the ReduceSum of
  the biases over L; mean divides by the count of non-padding entries (at least 1).
- bag, 1-D indices with offsets: bag id of every entry = CumSum of ScatterElements(add) of ones at the
  offsets, minus 1; ScatterND(add) sums the entries into [B(+1), D] (the extra bag of include_last_offset,
  entries past the last offset, is sliced off). Sums are float32 in entry order (the reference sums in float64).
- multi-lookup: each field lowered alone, reshaped to [B, -1], one Concat.
- output_dtype float16: a Cast at the end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from ..format import QuantizedTable, Tier
from ..domain import BAG_OP, DOMAIN, GATHER_OP, MULTI_OP
from ..lookup_spec import (BAG_2D_FIELD, BAG_OFFSETS_FIELD, FLOAT, FLOAT16, GATHER_FIELD, FieldSpec, MultiLookupSpec,
                           SINGLE_OP_INPUTS, attributes_of_ir, table_of_storage)
from ..standard_tables import METADATA_KEY, Part, StandardTable
from .initializers import constant

MIN_ONNX_OPSET = 18  # ScatterND/ScatterElements reduction="add" need 16; torch's exporter writes 18
_FLOAT, _INT64 = ir.DataType.FLOAT, ir.DataType.INT64


class Builder:
    """Nodes of one lowered op, named `<op name>/<k>`, inserted before it."""

    def __init__(self, graph: ir.Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, inputs: list, outputs: int | None = None, name: str | None = None, **attributes):
        node = ir.node(op_type, inputs, attributes=attributes, num_outputs=outputs,
                       name=f"{self.prefix}/{len(self.nodes)}_{name or op_type}")
        self.nodes.append(node)
        return node.outputs[0] if outputs is None else list(node.outputs)

    def i64(self, *values: int) -> ir.Value:
        """An int64 [len(values)] constant (shared by every lowered op of the graph)."""
        array = np.array(values, dtype=np.int64)
        return constant(self.graph, "standard_ops/i64_" + "_".join(str(v) for v in values).replace("-", "m"), array)

    def scalar(self, value, dtype) -> ir.Value:
        array = np.array(value, dtype=dtype)
        return constant(self.graph, f"standard_ops/{np.dtype(dtype).name}_{value}".replace("-", "m").replace(".", "p"), array)


@dataclass(frozen=True)
class Term:
    """The rows of N entries as `values` float32 [N, D] (codes as floats, or float rows) times `scale` [N, 1] plus `bias` [N, 1]; a missing scale is 1, a missing bias 0. Kept apart until the
    end so that a bag folds its weights (and 0 for padding) into scale and bias, on [N, 1]."""

    values: ir.Value
    scale: ir.Value | None = None
    bias: ir.Value | None = None


def _unpack(b: Builder, codes: ir.Value, bits: int, dim: int) -> ir.Value:
    """float32 [N, D]: planar uint8 [N, P] codes (element j·P + k in field j of byte k, standard_tables) read as
    floats. In float arithmetic: field j = Floor(c / 2^(bits·j)) less the fields above it, all exact in float32
    (c ≤ 255). No BitShift (OpenVINO rounds a uint8 right shift; onnx2torch has none) and, planar, no
    element-wise interleave: the fields are Concat'ed whole."""
    per = 8 // bits
    rest = b.op("Cast", [codes], to=_FLOAT)
    fields = []
    for j in range(per - 1, 0, -1):  # the top field first
        top = b.op("Floor", [b.op("Mul", [rest, b.scalar(1.0 / (1 << (bits * j)), np.float32)])])
        rest = b.op("Sub", [rest, b.op("Mul", [top, b.scalar(float(1 << (bits * j)), np.float32)])])
        fields.insert(0, top)
    q = b.op("Concat", [rest, *fields], axis=1)
    if per * -(-dim // per) != dim:
        q = b.op("Slice", [q, b.i64(0), b.i64(dim), b.i64(1)])
    return q


def _decode(b: Builder, table: StandardTable, part: Part, rows: ir.Value, table_rows: ir.Value) -> Term:
    """The rows `rows` (int64 [N], in range) of one sub-table (not the dropped one); `table_rows` are the same
    rows' indices in the table (their scale group, format v3)."""
    def tensor(key):
        return constant(b.graph, table.tensor_name(part, key), part.arrays[key])

    if part.tier is Tier.FP32:
        return Term(b.op("Gather", [tensor("values"), rows], axis=0))
    if part.tier is Tier.FP16:
        return Term(b.op("Cast", [b.op("Gather", [tensor("values"), rows], axis=0)], to=_FLOAT))
    q = b.op("Gather", [tensor("codes"), rows], axis=0)
    if part.tier is Tier.INT8:
        q = b.op("Cast", [q], to=_FLOAT)
    else:
        q = _unpack(b, q, part.tier.bits, table.dim)
    if table.scale_group_rows:
        groups = b.op("Div", [table_rows, b.scalar(table.scale_group_rows, np.int64)])
        pairs = b.op("Cast", [b.op("Gather", [tensor("group_scale_bias"), groups], axis=0)], to=_FLOAT)
    else:
        pairs = b.op("Cast", [b.op("Gather", [tensor("scale_bias"), rows], axis=0)], to=_FLOAT)
    # two Slices, not a Split: onnx2torch has no Split-18
    scale = b.op("Slice", [pairs, b.i64(0), b.i64(1), b.i64(1)])
    bias = b.op("Slice", [pairs, b.i64(1), b.i64(2), b.i64(1)])
    return Term(q, scale, bias)


def _term(b: Builder, table: StandardTable, flat: ir.Value, weight: ir.Value | None = None) -> Term:
    """The rows `flat` (int64 [N]; an index outside 0..R-1 fails the first Gather), each entry weighted by
    `weight` (float32 [N], None: 1). A table with a slot map gives its merged rows."""
    if table.slots is None:
        column = None if weight is None else b.op("Unsqueeze", [weight, b.i64(1)])
        return _weighted(b, _decode(b, table, table.parts[0], flat, flat), column)
    return Term(_mixed_rows(b, table, flat, weight))


def _mixed_rows(b: Builder, table: StandardTable, flat: ir.Value, weight: ir.Value | None) -> ir.Value:
    """float32 [N, D]: the (weighted) rows `flat` of a table with a slot map. Each sub-table decodes only the
    entries whose row it holds (NonZero of the entry's sub-table, read from the slot map: row r is row
    `bases[r // S, p] + rank` of sub-table p); the decoded blocks are concatenated in sub-table order and one
    Gather puts every entry back in place (its position: the entries of the sub-tables before it plus its rank
    among its own sub-table's, a CumSum). Every row is decoded once, as in a uniform table: no select."""
    slot_map, S = table.slots, table.slots.block
    arrays = slot_map.tensors(table.name)
    code = b.op("Cast", [b.op("Gather", [constant(b.graph, f"{table.name}.slot_codes", arrays[f"{table.name}.slot_codes"]), flat],
                               axis=0)], to=_FLOAT)  # p·S + rank ≤ 255: every step below is exact in float32
    part_of = b.op("Floor", [b.op("Mul", [code, b.scalar(1.0 / S, np.float32)])])
    rank = b.op("Cast", [b.op("Sub", [code, b.op("Mul", [part_of, b.scalar(float(S), np.float32)])])], to=_INT64)
    block = b.op("Div", [flat, b.scalar(S, np.int64)])
    bases = constant(b.graph, f"{table.name}.slot_bases", arrays[f"{table.name}.slot_bases"])
    pieces, place, before = [], None, None
    for p, part in enumerate(table.parts):
        member = b.op("Equal", [part_of, b.scalar(float(p), np.float32)])
        # the entries of sub-table p (all of them, in order, for a table of one sub-table: dropped rows only)
        at = b.op("Reshape", [b.op("NonZero", [member]), b.i64(-1)]) if len(table.parts) > 1 else None

        def of(values):  # values [N, ...] at the sub-table's entries
            return values if at is None else b.op("Gather", [values, at], axis=0)

        # (int32 counts: tract cannot CumSum int64, which it reads as a dimension; CumSum's attributes are written
        # out because onnx2torch defaults `reverse` to 1)
        if len(table.parts) > 1:
            ones = b.op("Cast", [member], to=ir.DataType.INT32)
            mine = b.op("Sub", [b.op("CumSum", [ones, b.scalar(0, np.int64)], exclusive=0, reverse=0), b.scalar(1, np.int32)])
            if before is not None:
                mine = b.op("Add", [mine, before])
            mine = b.op("Mul", [mine, ones])
            place = mine if place is None else b.op("Add", [place, mine])
            count = b.op("ReduceSum", [ones, b.i64(0)], keepdims=1)
            before = count if before is None else b.op("Add", [before, count])
        column = None if weight is None else b.op("Unsqueeze", [of(weight), b.i64(1)])
        if part.tier is Tier.DROPPED:
            row = constant(b.graph, table.tensor_name(part, "default_row"), part.arrays["default_row"])
            if column is None:  # ones [n, 1] (not an Expand to NonZero's length: tract cannot size that)
                column = b.op("Unsqueeze", [b.op("Cast", [of(member)], to=_FLOAT), b.i64(1)])
            rows = b.op("Mul", [column, row])
        else:
            local = b.op("Gather", [b.op("Gather", [bases, of(block)], axis=0), b.scalar(p, np.int64)], axis=1)
            local = b.op("Add", [b.op("Cast", [local], to=_INT64), of(rank)])
            term = _decode(b, table, part, local, of(flat))
            rows = _rows(b, _weighted(b, term, column))
        pieces.append(rows)
    if len(pieces) == 1:  # (every entry in the one sub-table, in order)
        return pieces[0]
    return b.op("Gather", [b.op("Concat", pieces, axis=0), b.op("Cast", [place], to=_INT64)], axis=0)


def _weighted(b: Builder, term: Term, weight: ir.Value | None) -> Term:
    """The term times a per-entry weight [N, 1] (None: 1), folded into its scale and bias."""
    if weight is None:
        return term
    scale = weight if term.scale is None else b.op("Mul", [term.scale, weight])
    bias = None if term.bias is None else b.op("Mul", [term.bias, weight])
    return Term(term.values, scale, bias)


def _rows(b: Builder, term: Term) -> ir.Value:
    """float32 [N, D]: values·scale + bias (the product is exact, the Add rounds once: the kernels' fma bits)."""
    rows = term.values if term.scale is None else b.op("Mul", [term.values, term.scale])
    return rows if term.bias is None else b.op("Add", [rows, term.bias])


def flatten_ids(b: Builder, indices: ir.Value) -> ir.Value:
    """int64 [N]: the ids of any rank and integer type, flattened."""
    return b.op("Reshape", [b.op("Cast", [indices], to=_INT64), b.i64(-1)])


def negatives_past_end(b: Builder, flat: ir.Value, num_rows: int | ir.Value) -> ir.Value:
    """`flat` with every negative id replaced by R (`num_rows`, an int or an int64 value): ONNX Gather would wrap
    a negative id to a row from the end; moved past it, it fails the Gather where the runtime checks (torch and
    our ops reject it)."""
    rows = b.scalar(num_rows, np.int64) if isinstance(num_rows, int) else num_rows
    return b.op("Where", [b.op("Less", [flat, b.scalar(0, np.int64)]), rows, flat])


def _gather(b: Builder, table: StandardTable, indices: ir.Value) -> ir.Value:
    rows = _rows(b, _term(b, table, negatives_past_end(b, flatten_ids(b, indices), table.num_rows)))
    shape = b.op("Concat", [b.op("Shape", [indices]), b.i64(table.dim)], axis=0)
    return b.op("Reshape", [rows, shape])


def _bag(b: Builder, table: StandardTable, indices: ir.Value, offsets: ir.Value | None, weights: ir.Value | None,
         mode: int, include_last_offset: int, padding_idx: int) -> ir.Value:
    return bag_from_term(b, lambda flat, weight: _term(b, table, negatives_past_end(b, flat, table.num_rows), weight),
                         b.i64(table.dim), indices, offsets, weights, mode, include_last_offset, padding_idx)


def bag_from_rows(b: Builder, rows_of, dim: ir.Value, indices: ir.Value, offsets: ir.Value | None,
                  weights: ir.Value | None, mode: int, include_last_offset: int, padding_idx: int) -> ir.Value:
    """torch.nn.functional.embedding_bag in ai.onnx ops over the rows `rows_of(flat ids)` gives (float32 [N, D],
    one per entry of `indices`, from their int64 [N] flattening); `dim`: D as an int64 [1] value. Empty bags
    give zeros."""
    def term_of(flat, weight):
        column = None if weight is None else b.op("Unsqueeze", [weight, b.i64(1)])
        return _weighted(b, Term(rows_of(flat)), column)

    return bag_from_term(b, term_of, dim, indices, offsets, weights, mode, include_last_offset, padding_idx)


def bag_from_term(b: Builder, term_of, dim: ir.Value, indices: ir.Value, offsets: ir.Value | None,
                   weights: ir.Value | None, mode: int, include_last_offset: int, padding_idx: int) -> ir.Value:
    """embedding_bag over the rows `term_of(flat ids, weight)` gives (flat ids int64 [N], flattened once here;
    weight float32 [N] or None: per-sample weights, 0 for padding entries, which the term folds into its scale
    and bias, not its rows)."""
    flat_ids = flatten_ids(b, indices)
    keep = None if padding_idx < 0 else b.op("Cast", [b.op("Not", [b.op("Equal", [flat_ids, b.scalar(padding_idx, np.int64)])])], to=_FLOAT)
    weight = None if weights is None else b.op("Reshape", [weights, b.i64(-1)])
    if keep is not None:
        weight = keep if weight is None else b.op("Mul", [weight, keep])
    term = term_of(flat_ids, weight)
    if offsets is None:
        total, count = _matrix_sums(b, term, indices, dim, keep)
    else:
        total, count = _offset_sums(b, term, flat_ids, offsets, dim, keep, mode)
    if mode:
        total = b.op("Div", [total, b.op("Max", [count, b.scalar(1.0, np.float32)])])
    if offsets is not None and include_last_offset:  # K = B + 1: the last "bag" holds the entries past offsets[B]
        total = b.op("Slice", [total, b.i64(0), b.op("Sub", [b.op("Shape", [total], start=0, end=1), b.i64(1)]), b.i64(0)])
    return total


def _matrix_sums(b: Builder, term: Term, indices: ir.Value, dim: ir.Value, keep: ir.Value | None):
    """([B, D] sums, [B, 1] counts) of 2-D [B, L] bags: the scaled rows summed over L by one batched MatMul
    ([B, 1, L] scales × [B, L, D] values), the biases by a ReduceSum over L."""
    shape = b.op("Shape", [indices])
    values = b.op("Reshape", [term.values, b.op("Concat", [shape, dim], axis=0)])  # [B, L, D]
    if term.scale is None:
        total = b.op("ReduceSum", [values, b.i64(1)], keepdims=0)
    else:
        batch = b.op("Slice", [shape, b.i64(0), b.i64(1), b.i64(0)])
        scales = b.op("Reshape", [term.scale, b.op("Concat", [batch, b.i64(1, -1)], axis=0)])  # [B, 1, L]
        total = b.op("Reshape", [b.op("MatMul", [scales, values]), b.op("Concat", [batch, dim], axis=0)])
    if term.bias is not None:
        total = b.op("Add", [total, b.op("ReduceSum", [b.op("Reshape", [term.bias, shape]), b.i64(1)], keepdims=1)])
    if keep is None:
        count = b.op("Cast", [b.op("Slice", [shape, b.i64(1), b.i64(2), b.i64(0)])], to=_FLOAT)
    else:
        count = b.op("ReduceSum", [b.op("Reshape", [keep, shape]), b.i64(1)], keepdims=1)
    return total, count


def _offset_sums(b: Builder, term: Term, flat_ids: ir.Value, offsets: ir.Value, dim: ir.Value,
                 keep: ir.Value | None, mode: int):
    """([K, D] sums, [K, 1] counts) of 1-D bags with offsets (K = len(offsets)): the bag id of every entry is
    CumSum of ScatterElements(add) of ones at the offsets, minus 1; ScatterND(add) sums the entries' rows.
    Offsets are checked (a run with bad offsets fails where the runtime checks indices) and clamped, so that no
    runtime writes out of bounds whatever they are."""
    offsets = b.op("Cast", [offsets], to=_INT64)
    n = b.op("Shape", [flat_ids])
    offsets = _checked_offsets(b, offsets, n)
    # clamped into 0..n as well, for runtimes whose Gather does not fail on the guard's index (Where, not Min/Max
    # or Clip: tract cannot size a ScatterElements after those)
    offsets = b.op("Where", [b.op("Greater", [offsets, n]), n, offsets])
    offsets = b.op("Where", [b.op("Less", [offsets, b.scalar(0, np.int64)]), b.scalar(0, np.int64), offsets])
    marks = b.op("ConstantOfShape", [b.op("Add", [n, b.i64(1)])], value=ir.tensor(np.array([0], dtype=np.int64)))
    marks = b.op("ScatterElements", [marks, offsets, b.op("ConstantOfShape", [b.op("Shape", [offsets])],
                                                         value=ir.tensor(np.array([1], dtype=np.int64)))],
                 axis=0, reduction="add")
    starts = b.op("Slice", [marks, b.i64(0), n, b.i64(0)])
    k = b.op("Shape", [offsets])
    bag_of = b.op("CumSum", [starts, b.scalar(0, np.int64)], exclusive=0, reverse=0)  # 1-based: offsets[0] == 0 marks entry 0
    bag_of = b.op("Unsqueeze", [b.op("Clip", [b.op("Sub", [bag_of, b.scalar(1, np.int64)]), b.scalar(0, np.int64)]), b.i64(1)])
    rows = _rows(b, term)
    zeros = b.op("ConstantOfShape", [b.op("Concat", [k, dim], axis=0)], value=ir.tensor(np.array([0.0], dtype=np.float32)))
    total = b.op("ScatterND", [zeros, bag_of, rows], reduction="add")
    count = None
    if mode:
        ones = keep if keep is not None else b.op("ConstantOfShape", [n], value=ir.tensor(np.array([1.0], dtype=np.float32)))
        zero_counts = b.op("ConstantOfShape", [k], value=ir.tensor(np.array([0.0], dtype=np.float32)))
        count = b.op("Unsqueeze", [b.op("ScatterND", [zero_counts, bag_of, ones], reduction="add"), b.i64(1)])
    return total, count


def _checked_offsets(b: Builder, offsets: ir.Value, n: ir.Value) -> ir.Value:
    """`offsets` plus 0, through a Gather that fails the run unless offsets[0] == 0, the offsets do not decrease
    and none exceeds len(indices) = `n` (standard ONNX has no assert: an out-of-range Gather index is the error,
    and the node's name says what was wrong). Without it such offsets would give wrong sums silently. The guard
    only compares and takes a maximum of 0/1 flags: no arithmetic in it can overflow, whatever the offsets."""
    k = b.op("Shape", [offsets])

    def any_of(flags: ir.Value) -> ir.Value:  # 1 when any flag is set, 0 for none (empty offsets included)
        # (a count of at most len(offsets), compared with 0: ReduceSum-13, which onnx2torch reads, not ReduceMax-18)
        count = b.op("ReduceSum", [b.op("Cast", [flags], to=_INT64), b.i64(0)], keepdims=0)
        return b.op("Cast", [b.op("Greater", [count, b.scalar(0, np.int64)])], to=_INT64)

    first_not_zero = b.op("Not", [b.op("Equal", [b.op("Slice", [offsets, b.i64(0), b.i64(1), b.i64(0)]),
                                                 b.scalar(0, np.int64)])])
    later = b.op("Slice", [offsets, b.i64(1), k, b.i64(0)])
    earlier = b.op("Slice", [offsets, b.i64(0), b.op("Sub", [k, b.i64(1)]), b.i64(0)])  # (k ≥ 0: Sub is safe)
    decreasing = b.op("Less", [later, earlier])
    past_end = b.op("Greater", [offsets, n])
    # index 0 when the offsets are valid, 1 (past the one-element table) when any rule is broken
    index = b.op("Max", [b.op("Max", [any_of(first_not_zero), any_of(decreasing)]), any_of(past_end)])
    zero = b.op("Gather", [b.i64(0), index], axis=0,
                name="Gather checking the bag offsets: offsets[0] must be 0, offsets must not decrease and none may "
                     "exceed len(indices)")
    return b.op("Add", [offsets, zero])


def replace_with_lowered(graph: ir.Graph, node: ir.Node, nodes: list[ir.Node], out: ir.Value) -> None:
    """`nodes` (computing `out`) take `node`'s place: its output's name, type, shape and uses."""
    old = node.outputs[0]
    out.shape, out.type = old.shape, old.type
    graph.insert_before(node, nodes)
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    name = old.name
    graph.remove(node, safe=True)
    out.name = name


def _attribute(node: ir.Node, name: str, default: int) -> int:
    return node.attributes.get_int(name, default)


class StandardOpsPass(ir.passes.InPlacePass):
    """Every shark_export op → ai.onnx ops on portable storage.

    `tables`: table name → the QuantizedTable the ops read (`None`: rebuilt from each op's storage inputs,
    so a converted file can be lowered too). After the call, `tables_out` maps table name → StandardTable
    and `lowered` lists (node name, op, table) of every lookup lowered; the model's metadata records both."""

    def __init__(self, tables: dict[str, QuantizedTable] | None = None):
        super().__init__()
        self.tables = tables
        self.tables_out: dict[str, StandardTable] = {}
        self.lowered: list[tuple[str, str, str]] = []
        self._storage: list[ir.Value] = []

    def requires(self, model: ir.Model) -> None:
        opset = model.graph.opset_imports.get("", 0)
        if any(n.domain == DOMAIN for n in model.graph) and opset < MIN_ONNX_OPSET:
            raise ir.passes.PreconditionError(f"ai.onnx opset {opset} < {MIN_ONNX_OPSET}: the portable lookups need the scatter reductions of opset 16 and are written at 18")

    def ensures(self, model: ir.Model) -> None:
        left = sorted({n.name for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain == DOMAIN})
        if left:  # (dead staging nodes go with the cleanup that follows)
            raise ir.passes.PostconditionError(f"shark_export ops left: {left}")

    def _table(self, node: ir.Node, first: int, spec: FieldSpec) -> StandardTable:
        payload = node.inputs[first]
        name = table_of_storage(payload.name)
        self._storage.extend(v for v in node.inputs[first:first + 3] if v is not None)
        if name not in self.tables_out:
            if self.tables is not None and name in self.tables:
                stored = self.tables[name]
            else:
                arrays = [node.inputs[first + i].const_value.numpy() for i in range(3)]
                stored = QuantizedTable.from_stored(name, spec.table_attributes(), *arrays)
            self.tables_out[name] = StandardTable.from_quantized(stored)
        return self.tables_out[name]

    def _field(self, b: Builder, node: ir.Node, first: int, spec: FieldSpec,
               roles: tuple[str, ...] | list[str]) -> tuple[ir.Value, StandardTable]:
        """The lowering of the field whose inputs (`roles`) start at node input `first`, and the table it reads."""
        table = self._table(node, first, spec)
        inputs = dict(zip(roles, node.inputs[first:first + len(roles)]))
        if spec.kind == GATHER_FIELD:
            return _gather(b, table, inputs["indices"]), table
        return _bag(b, table, inputs["indices"], inputs.get("offsets"), inputs.get("per_sample_weights"), spec.mode,
                    spec.include_last_offset, spec.padding_idx), table

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in [n for n in graph if n.domain == DOMAIN]:
            b = Builder(graph, node.name or node.op_type)
            if node.op_type in (GATHER_OP, BAG_OP):
                out, table = self._field(b, node, 0, _single_field(node), SINGLE_OP_INPUTS)
                self.lowered.append((node.name, node.op_type.removeprefix("RowwiseDequant"), table.name))
            elif node.op_type == MULTI_OP:
                out = self._lower_multi(b, node)
            else:
                raise ir.passes.PreconditionError(f"unknown shark_export op {node.op_type} ({node.name})")
            if node.attributes.get_int("output_dtype", FLOAT) == FLOAT16:
                out = b.op("Cast", [out], to=ir.DataType.FLOAT16)
            replace_with_lowered(graph, node, b.nodes, out)
        for value in self._storage:  # the stored-format tensors nothing reads any more
            if value.is_initializer() and not value.uses() and not value.is_graph_output():
                graph.initializers.pop(value.name, None)
        if not any(n.domain == DOMAIN for n in ir.traversal.RecursiveGraphIterator(graph)):
            graph.opset_imports.pop(DOMAIN, None)
        # the exporter's Constant nodes become initializers (the same values): onnx2torch reads Unsqueeze axes,
        # Reshape shapes and Slice bounds from initializers only
        LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        if self.tables_out:
            model.metadata_props[METADATA_KEY] = json.dumps({
                "tables": {n: t.metadata() for n, t in sorted(self.tables_out.items())},
                "lookups": [list(entry) for entry in self.lowered],
            })
        return ir.passes.PassResult(model, modified=bool(self.lowered))

    def _lower_multi(self, b: Builder, node: ir.Node) -> ir.Value:
        spec = MultiLookupSpec.from_attributes(attributes_of_ir(node), f"node {node.name!r}")
        blocks = []
        for first, field, name in spec.field_inputs():
            out, table = self._field(b, node, first, field, field.input_roles)
            blocks.append(b.op("Reshape", [out, b.i64(0, -1)]))
            self.lowered.append((f"{node.name}[{name}]", "MultiLookup", table.name))
        return blocks[0] if len(blocks) == 1 else b.op("Concat", blocks, axis=1)


def _single_field(node: ir.Node) -> FieldSpec:
    """A RowwiseDequantGather / EmbeddingBag node's field: its kind from the inputs it has."""
    present = [i < len(node.inputs) and node.inputs[i] is not None for i in (4, 5)]
    kind = GATHER_FIELD if node.op_type == GATHER_OP else (BAG_OFFSETS_FIELD if present[0] else BAG_2D_FIELD)
    return FieldSpec.of_single_op(attributes_of_ir(node), kind, node.op_type == BAG_OP and present[1])
