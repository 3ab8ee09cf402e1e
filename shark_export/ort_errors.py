"""ONNX Runtime's words about a shark_export node, turned into errors that name the input or attribute and the
rule. ORT checks some things before our kernels see the node (types of outputs, absent inputs); its messages
name neither `output_dtype` nor the field, so the session entry points read the node and say it."""

from __future__ import annotations

import re

import numpy as np

from .errors import FormatError, InputTypeError
from .domain import DOMAIN, MULTI_OP
from .lookup_spec import OUTPUT_DTYPE_NAMES, SINGLE_OP_INPUTS, MultiLookupSpec, attributes_of_proto

_TYPE_MISMATCH = re.compile(r"Type \(tensor\((\w+)\)\) of output arg \(([^)]*)\) of node \(([^)]*)\) does not match "
                            r"expected type \(tensor\((\w+)\)\)")
_ABSENT = re.compile(r"Node \(([^)]*)\) Op \((RowwiseDequant\w+)\).*Input(\d+) is absent, but not optional")


def _load(source):
    import onnx

    try:
        if isinstance(source, (bytes, bytearray)):
            return onnx.load_from_string(bytes(source))
        if hasattr(source, "graph"):
            return source
        return onnx.load(str(source), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model: ORT's own message stands
        return None


def _node(model, name: str):
    return next((n for n in model.graph.node if n.domain == DOMAIN and n.name == name), None)


def _int_attribute(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == onnx.AttributeProto.INT else list(a.ints)
    return default


def _absent_input(node) -> str:
    """Which input of `node` is empty, named by field and role."""
    empty = [k for k, name in enumerate(node.input) if not name]
    if not empty:
        return "an input is absent"
    position = empty[0]
    if node.op_type != MULTI_OP:
        role = SINGLE_OP_INPUTS[position] if position < len(SINGLE_OP_INPUTS) else f"#{position}"
        return f"its input {role!r} (input {position}) is absent (empty name), but required"
    try:
        spec = MultiLookupSpec.from_attributes(attributes_of_proto(node), f"node {node.name!r}")
    except FormatError:  # attributes ORT accepted but we cannot read: say what is known
        return f"input {position} is absent (empty name), but required"
    for first, field, name in spec.field_inputs():
        if position < first + len(field.input_roles):
            role = field.input_roles[position - first]
            return f"field {name!r}: its input {role!r} (node input {position}) is absent (empty name), but required"
    return f"input {position} is absent (empty name), but required"


def named_model_error(exc: BaseException, source) -> FormatError | None:
    """A FormatError naming the node, input or attribute ORT's `exc` is about, or None for anything else."""
    text = str(exc)
    mismatch, absent = _TYPE_MISMATCH.search(text), _ABSENT.search(text)
    if not (mismatch or absent):
        return None
    model = _load(source)
    if model is None:
        return None
    if mismatch:
        inferred, output, node_name, declared = mismatch.groups()
        node = _node(model, node_name)
        if node is None:
            return None
        dtype = _int_attribute(node, "output_dtype", 1)
        wanted = OUTPUT_DTYPE_NAMES.get(dtype, f"element type {dtype}")
        return FormatError(
            f"{node.op_type} node {node_name!r}: attribute output_dtype {dtype} ({wanted}) disagrees with its output "
            f"{output!r}, whose type elsewhere in the graph is {_name(inferred, declared, wanted)}: output_dtype must be "
            f"the output's element type (1 float32, 10 float16). ONNX Runtime said: {text}")
    node = _node(model, absent.group(1))
    if node is None:
        return None
    return FormatError(f"{node.op_type} node {node.name!r}: {_absent_input(node)}. ONNX Runtime said: {text}")


def _name(inferred: str, declared: str, wanted: str) -> str:
    # ORT names the two sides in either order: the one that is not output_dtype's is the graph's
    other = declared if _ort_name(inferred) == wanted else inferred
    return _ort_name(other)


def _ort_name(t: str) -> str:
    return {"float": "float32", "float16": "float16"}.get(t, t)


_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def numpy_dtype(ort_type: str):
    """The numpy dtype of an ORT type string (`tensor(int64)`), or None for one we do not feed."""
    return _ORT_TYPES.get(ort_type)


def wrong_input_dtype(inputs, feed) -> InputTypeError | None:
    """The first fed array whose dtype is not its graph input's, as an error naming both; None when all match."""
    if not isinstance(feed, dict):
        return None
    for graph_input in inputs:
        want = numpy_dtype(graph_input.type)
        value = feed.get(graph_input.name)
        got = getattr(value, "dtype", None)
        if want is None or got is None or np.dtype(got) == np.dtype(want):
            continue
        want = np.dtype(want)
        fix = f"feed it as {want.name} (.astype(np.{want.name}))"
        if want.kind in "iu" and np.dtype(got).kind == "f":
            fix = f"ids are integers: {fix}, after checking the values are whole numbers"
        return InputTypeError(f"input {graph_input.name!r} is {np.dtype(got).name} but the model takes {want.name}: "
                              f"{fix}; shark_export.run(path, *args) widens int32 ids itself")
    return None
