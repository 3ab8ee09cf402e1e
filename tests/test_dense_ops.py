"""DenseOpsPass: squares rewritten into cheaper ORT ops, same values as numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from shark_export.passes import DenseOpsPass


def _model(nodes, inputs, outputs, initializers=(), opset=18) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def _run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _fm_model(opset=18, dtype=TensorProto.FLOAT, exponent=2.0, extra_use=False):
    """The exporter's FM sum of squares: x², summed over the field axis (1)."""
    x = helper.make_tensor_value_info("x", dtype, ["B", 4, 8])
    outputs = [helper.make_tensor_value_info("y", dtype, ["B", 8])]
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"], name="pow")]
    if opset >= 13:  # ReduceSum's axes became an input at 13
        nodes.append(helper.make_node("ReduceSum", ["sq", "axes"], ["y"], name="sum", keepdims=0))
        inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    else:
        nodes.append(helper.make_node("ReduceSum", ["sq"], ["y"], name="sum", axes=[1], keepdims=0))
        inits = []
    inits.append(helper.make_tensor("two", dtype, [], [exponent]))
    if extra_use:
        outputs.append(helper.make_tensor_value_info("sq_out", dtype, ["B", 4, 8]))
        nodes.append(helper.make_node("Identity", ["sq"], ["sq_out"], name="keep"))
    return _model(nodes, [x], outputs, inits, opset)


def _types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


@pytest.mark.parametrize("dtype, np_dtype", [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)])
def test_square_becomes_a_multiplication_with_bit_identical_values(dtype, np_dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 8)).astype(np_dtype)
    model = _fm_model(dtype=dtype)
    before = _run(model, {"x": x})[0]
    result = DenseOpsPass()(model)
    assert result.modified
    assert _types(result.model) == ["Mul", "ReduceSum"]
    after = _run(result.model, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
    np.testing.assert_allclose(after.astype(np.float64), (x.astype(np.float64) ** 2).sum(axis=1),
                               rtol=2e-3 if np_dtype == np.float16 else 1e-6)
    assert result.model.graph.outputs[0].name == "y"


def test_square_read_by_several_nodes_is_computed_once():
    x = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8) / 7
    pass_ = DenseOpsPass()
    result = pass_(_fm_model(extra_use=True))
    assert sorted(_types(result.model)) == ["Identity", "Mul", "ReduceSum"]
    y, sq = _run(result.model, {"x": x})
    np.testing.assert_array_equal(sq, x * x)  # IEEE multiplication: bit-identical to numpy's square
    np.testing.assert_allclose(y, (x * x).sum(axis=1), rtol=1e-6)
    assert pass_.rewritten == {DenseOpsPass.SQUARE: 1}


def test_older_opsets_are_rewritten_too():
    x = np.linspace(-3, 3, 2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)
    result = DenseOpsPass()(_fm_model(opset=11))
    assert _types(result.model) == ["Mul", "ReduceSum"]
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], (x * x).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("exponent", [3.0, 0.5])
def test_other_powers_are_left_alone(exponent):
    pass_ = DenseOpsPass()
    result = pass_(_fm_model(exponent=exponent))
    assert not result.modified
    assert _types(result.model) == ["Pow", "ReduceSum"]
    assert not any(pass_.rewritten.values())


def test_square_that_is_a_graph_output_keeps_its_name():
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    model = _model([helper.make_node("Pow", ["x", "two"], ["y"])], [x_info], [y_info],
                   [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    result = DenseOpsPass()(model)
    assert _types(result.model) == ["Mul"] and result.model.graph.outputs[0].name == "y"
    x = np.array([-1.5, 0.0, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(_run(result.model, {"x": x})[0], x * x)


def test_nodes_without_inputs_and_other_ops_pass_through():
    """A Constant (no inputs) and a Pow with a computed exponent: nothing to rewrite, nothing breaks."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, 2.0, 2.0])),
             helper.make_node("Pow", ["x", "c"], ["y"])]
    result = DenseOpsPass()(_model(nodes, [x_info], [y_info]))
    assert not result.modified and _types(result.model) == ["Constant", "Pow"]
    x = np.array([3.0, 2.0, -1.5], dtype=np.float32)
    np.testing.assert_allclose(_run(result.model, {"x": x})[0], x ** np.array([1.0, 2.0, 2.0], np.float32), rtol=1e-6)
