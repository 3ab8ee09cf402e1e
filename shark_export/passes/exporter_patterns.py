"""Rewrite exporter patterns that other ONNX runtimes misread into the exact equivalents every runtime reads.

torch's exporter writes a few shapes of graph that ORT runs right but other runtimes do not (issue 23: tract
fails to load them). Each rewrite here computes the very same values, so ORT's outputs stay bit-identical:

- **No-op Slice**: `x[:, i]` exports as a Slice over axis 0 from 0 to INT64_MAX (both computed through Cast
  and Reshape of Constants), then a Gather. tract sizes that slice one row short and refuses the graph. A Slice
  whose starts, ends, axes and steps are constants and that keeps every element becomes its input.
- **Matrix bags**: `nn.EmbeddingBag` on 2-D ids `[B, L]` exports as the flattened ids plus offsets
  `Range(0, B·L, L)`, whose length tract cannot infer. The staging bag gets the 2-D ids and no offsets
  instead (the ops' and torch's 2-D bag: each row of ids is one bag, the same sums in the same order).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..export import FLOAT_BAG, STAGING_DOMAIN

_FAR = 1 << 62  # a Slice end at or past this keeps the rest of the axis, whatever its length


def evaluate(value: ir.Value | None, shape_of=None, memo: dict | None = None) -> np.ndarray | None:
    """The value's array when the graph fixes it: initializers and Constant nodes through Identity, Cast (to an
    integer), Reshape, Squeeze, Unsqueeze, Concat, Gather and Mul (how the exporter writes slice bounds, shapes
    and offsets); None otherwise. `shape_of(value)` gives a Shape node's input shape as ints (None: unknown),
    so that values computed from shapes can be evaluated at a chosen batch size."""
    if value is None:
        return None
    memo = {} if memo is None else memo
    if value not in memo:
        memo[value] = _evaluate_node(value, shape_of, memo)
    return memo[value]


def _evaluate_node(value: ir.Value, shape_of, memo: dict) -> np.ndarray | None:
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Constant":
        for name, attr in node.attributes.items():
            if name == "value":
                return attr.value.numpy()
            if name in ("value_int", "value_ints"):
                return np.array(attr.value, dtype=np.int64)
            if name in ("value_float", "value_floats"):
                return np.array(attr.value, dtype=np.float32)
        return None
    if node.op_type == "Shape":
        dims = None if shape_of is None else shape_of(node.inputs[0])
        if dims is None:
            return None
        return np.array(dims, dtype=np.int64)[node.attributes.get_int("start", 0):node.attributes.get_int("end", len(dims))]
    inputs = [evaluate(v, shape_of, memo) for v in node.inputs]
    if not inputs or any(v is None for v in inputs):
        return None
    first = inputs[0]
    op, axis = node.op_type, node.attributes.get_int("axis", 0)
    if op == "Identity":
        return first
    if op == "Cast" and first.dtype.kind in "iu":
        to = ir.DataType(node.attributes.get_int("to", 0))
        return first.astype(to.numpy()) if to in (ir.DataType.INT64, ir.DataType.INT32) else None  # (wraps as numpy)
    if op == "Reshape" and 0 not in inputs[1]:
        try:
            return first.reshape(inputs[1])
        except ValueError:
            return None
    if op == "Squeeze":
        return np.squeeze(first) if len(inputs) == 1 else np.squeeze(first, tuple(int(a) for a in inputs[1]))
    if op == "Unsqueeze" and len(inputs) > 1:
        return np.expand_dims(first, tuple(int(a) for a in inputs[1]))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in inputs], axis=axis)
    if op == "Gather":
        return np.take(first, inputs[1], axis=axis)
    if op == "Mul" and first.dtype.kind in "iu":
        return first * inputs[1]
    return None


def _is_noop_slice(node: ir.Node) -> bool:
    data = node.inputs[0]
    if data is None or data.shape is None or len(node.inputs) < 3:
        return False
    bounds = [evaluate(v) for v in node.inputs[1:5]] + [None] * (5 - len(node.inputs))
    starts, ends, axes, steps = bounds
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) or (
            len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
        return False
    rank = len(data.shape)
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    for start, end, axis, step in zip(starts.reshape(-1), ends.reshape(-1), axes.reshape(-1), steps.reshape(-1)):
        if not -rank <= int(axis) < rank or int(step) != 1 or int(start) != 0:
            return False
        dim = data.shape[int(axis) % rank]
        if not (int(end) >= _FAR or (isinstance(dim, int) and int(end) >= dim)):
            return False
    return True


def _batched_shape(source: ir.Value, batch: int):
    """shape_of for `evaluate`: the shape of `source`, or of a value batched like it (the same symbolic first
    dimension: torch shares one symbol for the batch), with that dimension set to `batch`, the others as typed."""
    def shape_of(value: ir.Value | None):
        if value is None or value.shape is None or len(value.shape) == 0:
            return None
        if value is not source and (isinstance(value.shape[0], int) or value.shape[0] != source.shape[0]):
            return None
        dims = [batch, *value.shape[1:]]
        return dims if all(isinstance(d, int) for d in dims) else None

    return shape_of


def _matrix_of_flat(indices: ir.Value | None) -> ir.Value | None:
    """`x` when `indices` is Reshape(x, [-1]) of a rank-2 `x` whose second dimension is a known L ≥ 1."""
    node = indices.producer() if indices is not None else None
    if node is None or node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
        return None
    x, shape = node.inputs[0], evaluate(node.inputs[1])
    if shape is None or shape.reshape(-1).tolist() != [-1] or x is None or x.shape is None or len(x.shape) != 2:
        return None
    return x if isinstance(x.shape[1], int) and x.shape[1] >= 1 else None


def _offsets_are_rows(offsets: ir.Value | None, x: ir.Value) -> bool:
    """Whether `offsets` is Range(0, B·L, L) for every batch size B of `x` ([B, L]): checked by evaluating it
    at two batch sizes (the Range's inputs depend on nothing but constants and x's shape)."""
    node = offsets.producer() if offsets is not None else None
    if node is None or node.op_type != "Range" or node.domain not in ("", "ai.onnx"):
        return False
    L = int(x.shape[1])
    for batch in (3, 7):
        memo: dict = {}
        start, limit, delta = (evaluate(v, _batched_shape(x, batch), memo) for v in node.inputs)
        if any(v is None or v.size != 1 for v in (start, limit, delta)):
            return False
        if (int(start.reshape(())), int(limit.reshape(())), int(delta.reshape(()))) != (0, batch * L, L):
            return False
    return True


def _matrix_weights(weights: ir.Value | None, x: ir.Value) -> tuple[bool, ir.Value | None]:
    """(usable, weights of shape [B, L]) for a 2-D bag over `x`: none, or the flattened weights' 2-D source."""
    if weights is None:
        return True, None
    source = _matrix_of_flat(weights)
    return (source is not None and source.shape[1] == x.shape[1]), source


class ExporterPatternsPass(ir.passes.InPlacePass):
    """The rewrites in the module docstring; `rewritten` counts them by kind."""

    def __init__(self):
        super().__init__()
        self.rewritten = {"noop_slice": 0, "matrix_bag": 0}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in list(graph):
            if node.op_type == "Slice" and node.domain in ("", "ai.onnx") and _is_noop_slice(node):
                out, data = node.outputs[0], node.inputs[0]
                if out.is_graph_output():
                    continue  # (a graph output keeps its own value)
                out.replace_all_uses_with(data)
                self.rewritten["noop_slice"] += 1
            elif node.domain == STAGING_DOMAIN and node.op_type == FLOAT_BAG and self._matrix_bag(node):
                self.rewritten["matrix_bag"] += 1
        return ir.passes.PassResult(model, modified=any(self.rewritten.values()))

    @staticmethod
    def _matrix_bag(node: ir.Node) -> bool:
        inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
        x = _matrix_of_flat(inputs[1])
        if x is None or node.attributes.get_int("include_last_offset", 0) or not _offsets_are_rows(inputs[2], x):
            return False
        usable, weights = _matrix_weights(inputs[3], x)
        if not usable:
            return False
        node.replace_input_with(1, x)
        node.replace_input_with(2, None)
        if weights is not None:
            node.replace_input_with(3, weights)
        return True
