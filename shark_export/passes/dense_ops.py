"""Cheaper ONNX Runtime equivalents of dense arithmetic the torch exporter writes.

Measured with ORT's profiler on the example DeepFM (benchmarks/bench_latency.py, embedding model, batch
4096, 1 thread): the factorization-machine term `x.pow(2).sum(1)` over the stacked [B, 7, 64] embeddings
spent 0.60 ms in ORT's generic `Pow` kernel; `Mul(x, x)` computes the same in 0.25 ms.

- `Pow(x, 2)` → `Mul(x, x)` for float and float16 x: the same correctly rounded square (one IEEE
  multiplication), so the outputs are bit-identical.

Tried and left out: `ReduceSum(Mul(x, x), axes=[1])` → `ReduceSumSquare(x)` reads x once but ORT's
ReduceSumSquare over a middle axis is slower than Mul + ReduceSum (0.78 vs 0.61 ms in the same profile).
Also left out: the DeepFM's two Gemms on the flattened embeddings (MLP layer 1, N = 64, and the first-order
Linear, N = 1) as one Gemm (N = 65) + Split reads the input once, but MLAS is slower at N = 65 than at 64 + 1
(1.28 vs 0.94 + 0.26 ms).
"""

from __future__ import annotations

import onnx_ir as ir

_ONNX = ("", "ai.onnx")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _scalar(value: ir.Value | None) -> float | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    array = tensor.numpy()
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def _is_float_square(node: ir.Node) -> bool:
    if node.op_type != "Pow" or node.domain not in _ONNX or len(node.inputs) != 2:
        return False
    x = node.inputs[0]
    return x is not None and x.dtype in _FLOATS and _scalar(node.inputs[1]) == 2.0


class DenseOpsPass(ir.passes.InPlacePass):
    """The rewrite above; `rewritten` counts rewrites by kind."""

    SQUARE = "Pow(x, 2) -> Mul(x, x)"

    def __init__(self):
        super().__init__()
        self.rewritten: dict[str, int] = {self.SQUARE: 0}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        for node in [n for n in graph if _is_float_square(n)]:
            x = node.inputs[0]
            square = ir.node("Mul", [x, x], name=f"{node.name}/square")
            graph.insert_before(node, square)
            out, before = square.outputs[0], node.outputs[0]
            out.shape, out.type = before.shape, before.type
            name = before.name
            before.replace_all_uses_with(out, replace_graph_outputs=True)
            out.name = name
            graph.remove(node, safe=True)
            self.rewritten[self.SQUARE] += 1
        return ir.passes.PassResult(model, modified=any(self.rewritten.values()))

    def ensures(self, model: ir.Model) -> None:
        left = [n.name for n in model.graph if _is_float_square(n)]
        if left:
            raise ir.passes.PostconditionError(f"squares left as Pow: {left}")
