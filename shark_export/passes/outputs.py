"""Name the graph outputs after what torch returned (the pytree path of each tensor: "output", "ctr", "0_1")."""

from __future__ import annotations

import re

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


class NameDimsPass(ir.passes.InPlacePass):
    """The exporter names dynamic dimensions `s0`, `s92`, …; the graph's inputs and outputs are what a user reads
    (`shark-export inspect`, ORT's `get_inputs()`), so each symbol gets a name that says what it counts: `batch`
    for the first dimension of the first output, else `<input>_dim<axis>` of the first input that has it (a bag's
    flat ids: `history_dim0`). Dimensions are expressions over symbols (`s1 - 1`, which tract evaluates), so the
    symbols are renamed inside every dimension of every value alike."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = [*graph.inputs, *(o for node in ir.traversal.RecursiveGraphIterator(graph) for o in node.outputs)]
        existing = {token for v in values for d in (v.shape or ()) for token in _SYMBOL.findall(_text(d))}
        names: dict[str, str] = {}
        for value, axis, dim in _symbolic_dims(graph.outputs[:1]):
            if axis == 0 and _SYMBOL.fullmatch(_text(dim)):
                names[_text(dim)] = "batch"
        for value, axis, dim in _symbolic_dims(graph.inputs):
            if _SYMBOL.fullmatch(_text(dim)) and _text(dim) not in names:
                names[_text(dim)] = re.sub(r"\W", "_", f"{value.name}_dim{axis}")
        names = {old: new for old, new in names.items() if new not in existing}  # a name given by the user stays
        if not names:
            return ir.passes.PassResult(model, modified=False)
        def rename(text: str) -> str:
            return _SYMBOL.sub(lambda m: names.get(m.group(0), m.group(0)), text)

        for value in values:
            if value.shape is not None and any(set(_SYMBOL.findall(_text(d))) & names.keys() for d in value.shape):
                value.shape = ir.Shape([ir.SymbolicDim(rename(_text(d))) if _text(d) else d for d in value.shape])
        return ir.passes.PassResult(model, modified=True)


_SYMBOL = re.compile(r"[A-Za-z_]\w*")


def _text(dim) -> str:
    """A symbolic dimension's expression (`s1 - 1`); "" for a fixed or unnamed one."""
    return dim.value if isinstance(dim, ir.SymbolicDim) and dim.value else ""


def _symbolic_dims(values):
    for value in values:
        for axis, dim in enumerate(value.shape or ()):
            if _text(dim):
                yield value, axis, dim


def graph_interface(graph: ir.Graph) -> dict[str, list[dict]]:
    """What a serving call feeds and reads: every graph input and output with its dtype and shape (dynamic
    dimensions by name), for the convert report."""
    def describe(value: ir.Value) -> dict:
        dtype = value.dtype.numpy().name if value.dtype is not None else "?"
        shape = [d if isinstance(d, int) else (_text(d) or "?") for d in value.shape] if value.shape is not None else None
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {"inputs": [describe(v) for v in graph.inputs], "outputs": [describe(v) for v in graph.outputs]}
