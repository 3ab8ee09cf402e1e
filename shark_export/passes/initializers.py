"""Adding constant tensors to a graph (shared by the passes)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """The initializer `name` holding `array`; an existing one of that name is reused (tables read twice)."""
    if name in graph.initializers:
        return graph.initializers[name]
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value
