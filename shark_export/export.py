"""torch → ONNX (as an onnx-ir model) with every embedding lookup kept as one explicit staging node.

Why a custom translation instead of a rewrite after export: torch's exporter lowers `aten.embedding_bag`
into a Loop/Sequence subgraph whose shape varies with torch versions and options (padding_idx,
per_sample_weights, include_last_offset), which would have to be pattern-matched back. Translating the
aten ops ourselves yields one `shark_export.staging::FloatEmbedding[Bag]` node per lookup, reading the
fp32 table initializer (named by the parameter path), with the bag semantics as attributes. The
replace-lookups pass then turns each staging node into our real op. Staging nodes never reach a file.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import onnx
import onnx_ir as ir
import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import opset18 as op
from torch.utils import _pytree as pytree

from .errors import ExportError

STAGING_DOMAIN = "shark_export.staging"
FLOAT_GATHER = "FloatEmbedding"
FLOAT_BAG = "FloatEmbeddingBag"
EXPORT_OPSET = 18

_staging = onnxscript.values.Opset(STAGING_DOMAIN, 1)


def _register_staging_schemas() -> None:
    single = OpSchema.FormalParameterOption.Single
    optional = OpSchema.FormalParameterOption.Optional

    def param(name: str, type_str: str, option=single) -> OpSchema.FormalParameter:
        return OpSchema.FormalParameter(name, type_str, "", param_option=option)

    index = ("T", ["tensor(int32)", "tensor(int64)"], "index type")
    schemas = [
        OpSchema(
            FLOAT_GATHER, STAGING_DOMAIN, 1, "staging: embedding lookup on an fp32 table",
            inputs=[param("weight", "tensor(float)"), param("indices", "T")],
            outputs=[param("output", "tensor(float)")],
            type_constraints=[index],
        ),
        OpSchema(
            FLOAT_BAG, STAGING_DOMAIN, 1, "staging: embedding bag on an fp32 table",
            inputs=[
                param("weight", "tensor(float)"),
                param("indices", "T"),
                param("offsets", "T", optional),
                param("per_sample_weights", "tensor(float)", optional),
            ],
            outputs=[param("output", "tensor(float)")],
            type_constraints=[index],
            attributes=[
                OpSchema.Attribute(name, OpSchema.AttrType.INT, "", required=False)
                for name in ("mode", "include_last_offset", "padding_idx")
            ],
        ),
    ]
    for schema in schemas:
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


_register_staging_schemas()


# --- translations of the aten embedding ops (traced by onnxscript at export time) ---------------------


def _translate_embedding(weight, indices, padding_idx: int = -1, scale_grad_by_freq: bool = False, sparse: bool = False):
    # padding_idx only affects gradients in aten.embedding: the forward is a plain row lookup.
    return _staging.FloatEmbedding(weight, indices)


def _translate_embedding_bag(
    weight,
    indices,
    offsets,
    scale_grad_by_freq: bool = False,
    mode: int = 0,
    sparse: bool = False,
    per_sample_weights=None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
):
    if mode not in (0, 1):
        raise ExportError(f"EmbeddingBag mode {mode} (max) is not supported; use sum or mean")
    attributes = dict(mode=mode, include_last_offset=int(include_last_offset), padding_idx=-1 if padding_idx is None else padding_idx)
    if per_sample_weights is None:
        pooled = _staging.FloatEmbeddingBag(weight, indices, offsets, **attributes)
    else:
        pooled = _staging.FloatEmbeddingBag(weight, indices, offsets, per_sample_weights, **attributes)
    # aten returns (output, offset2bag, bag_size, max_indices); only output is ever read at inference.
    # Fresh values for the unused three keep the exporter from renaming graph inputs; they are dead code.
    return pooled, op.Shape(indices), op.Shape(indices), op.Shape(indices)


_TRANSLATIONS = {
    torch.ops.aten.embedding.default: _translate_embedding,
    torch.ops.aten.embedding_bag.default: _translate_embedding_bag,
    torch.ops.aten.embedding_bag.padding_idx: _translate_embedding_bag,
    torch.ops.aten._embedding_bag.default: _translate_embedding_bag,
    torch.ops.aten._embedding_bag_forward_only.default: _translate_embedding_bag,
}


# --- inputs and outputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleInputs:
    """Positional and keyword arguments of forward, normalized."""

    args: tuple
    kwargs: dict

    @staticmethod
    def of(example_inputs: Any, example_kwargs: dict | None = None) -> "ExampleInputs":
        if isinstance(example_inputs, ExampleInputs):
            return example_inputs
        if isinstance(example_inputs, list):
            example_inputs = tuple(example_inputs)
        if not isinstance(example_inputs, tuple):
            example_inputs = (example_inputs,)  # a single tensor or a single dict is one positional arg
        return ExampleInputs(example_inputs, dict(example_kwargs or {}))

    def tree(self) -> tuple:
        return (self.args, self.kwargs)

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Tensor leaves with their pytree key paths, in torch.export's flattening order."""
        leaves, _ = pytree.tree_flatten_with_path(self.tree())
        return [(pytree.keystr(path), leaf) for path, leaf in leaves if isinstance(leaf, torch.Tensor)]


def _dynamic_shapes(example: ExampleInputs, model: torch.nn.Module, hint) -> dict | tuple:
    """First dimension of every tensor leaf dynamic, whatever the inputs' structure.

    `torch.export.ShapesCollection` builds the spec by tensor identity, so it fits any pytree: tuples, dicts
    and registered classes such as torchrec's KeyedJaggedTensor (whose spec is the list of its flattened
    children; rebuilding one around dicts with `tree_map` fails).
    """
    collection = torch.export.ShapesCollection()
    for _, leaf in example.named_tensors():
        if leaf.dim() >= 1:
            collection[leaf] = {0: hint}
    return collection.dynamic_shapes(model, example.args, example.kwargs or None)


def export_program(model: torch.nn.Module, example: ExampleInputs) -> torch.export.ExportedProgram:
    """torch.export with a dynamic first dimension on every input (DYNAMIC, then size-oblivious DYNAMIC, then AUTO)."""
    # Export through torch.export so a forward taking one dict is not read as keyword arguments.
    failures = []
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)  # a failed attempt logs a traceback; the ExportError carries the cause
    try:
        return _export_with_dynamic_batch(model, example, failures)
    finally:
        fake_log.setLevel(level)


def _export_with_dynamic_batch(model: torch.nn.Module, example: ExampleInputs, failures: list) -> torch.export.ExportedProgram:
    from torch.fx.experimental import _config as fx_config

    # An example batch of 1 (or a bag input with 0 or 1 ids) makes torch.export specialize that dimension;
    # size-oblivious reasoning keeps it dynamic. AUTO last: it may make a dimension static.
    attempts = [
        ("DYNAMIC", torch.export.Dim.DYNAMIC, contextlib.nullcontext),
        ("DYNAMIC, size-oblivious", torch.export.Dim.DYNAMIC, lambda: fx_config.patch(backed_size_oblivious=True)),
        ("AUTO", torch.export.Dim.AUTO, contextlib.nullcontext),
    ]
    for label, hint, context in attempts:
        try:
            with context():
                return torch.export.export(
                    model, example.args, example.kwargs or None,
                    dynamic_shapes=_dynamic_shapes(example, model, hint), strict=False,
                )
        except Exception as exc:  # noqa: BLE001 - retried, then reported with every cause
            failures.append(f"  with {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise ExportError(f"torch.export failed for {type(model).__name__}:\n" + "\n".join(failures))


@dataclass(frozen=True)
class ExportedLookup:
    """An embedding op of the exported program: the module call that made it, and the parameter it reads.

    `module_path`/`call_index` come from torch.export's module stack (the innermost module, when it is an
    embedding module; `call_index` counts that module's calls like the converter's forward hooks). A lookup
    made by `F.embedding(ids, weight)` outside an embedding module has `module_path=None`.
    """

    fx_name: str
    module_path: str | None
    call_index: int
    parameter: str | None


_LOOKUP_TARGETS = frozenset(_TRANSLATIONS)


def _calling_module(node: torch.fx.Node, canonical: dict[str, str]) -> str | None:
    """The embedding module whose call made this op (innermost of torch.export's module stack), by the
    path the converter names it with (an aliased module, registered under several paths, has one)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    _, (path, _) = list(stack.items())[-1]
    return canonical.get(path)


def exported_lookups(program: torch.export.ExportedProgram, canonical: dict[str, str]) -> dict[str, ExportedLookup]:
    """Every embedding op of `program` by FX node name (the ONNX exporter scopes its nodes by that name).

    `canonical`: every path of an embedding module (aliases included) → the path the converter uses. A
    module's call index counts its ops in program order, which is call order (the forward hooks count the
    same way; torch.export keeps unused calls in the program)."""
    parameters = dict(program.graph_signature.inputs_to_parameters)
    calls: dict[str, int] = {}
    found = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in _LOOKUP_TARGETS:
            continue
        weight = node.args[0]
        parameter = parameters.get(weight.name) if isinstance(weight, torch.fx.Node) else None
        path = _calling_module(node, canonical)
        index = calls.get(path, 0)
        if path is not None:
            calls[path] = index + 1
        found[node.name] = ExportedLookup(node.name, path, index, parameter)
    return found


def embedding_module_paths(model: torch.nn.Module) -> dict[str, str]:
    """Every path of an embedding module, aliases included → its first path (what named_modules() gives)."""
    first: dict[int, str] = {}
    paths = {}
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
            paths[path] = first.setdefault(id(module), path)
    return paths


def fx_node_of(node: ir.Node) -> str | None:
    """Name of the FX node an ONNX node was translated from (recorded by torch's exporter), if known."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = None
        if isinstance(names, list) and names:
            return str(names[-1])
    return None


@functools.lru_cache(maxsize=1)
def _translation_registry():
    """torch's ONNX translation registry with our lookup translations, built once per process: building it
    reads the source of ~1,500 torchlib functions (over a second), which torch.onnx.export does on every call.
    None where this torch has no such internal API (then torch.onnx.export builds its own each time)."""
    try:
        from torch.onnx._internal.exporter import _core, _registration

        registry = _registration.ONNXRegistry.from_torchlib(opset_version=EXPORT_OPSET)
        for torch_op, translation in _TRANSLATIONS.items():
            registry.register_op(torch_op, translation, is_complex=False)
        return _core, registry
    except (ImportError, AttributeError, TypeError):
        return None


def _onnx_export(program: torch.export.ExportedProgram):
    cached = _translation_registry()
    if cached is None:
        return torch.onnx.export(program, dynamo=True, custom_translation_table=_TRANSLATIONS,
                                 opset_version=EXPORT_OPSET, optimize=False, verbose=False)
    core, registry = cached
    return core.export(program, registry=registry, optimize=False, opset_version=EXPORT_OPSET, verbose=False)


def export_to_ir(model: torch.nn.Module, example: ExampleInputs):
    """Export to an onnx-ir model whose lookups are staging nodes; initializers keep parameter names.

    Returns (model, lookups) where `lookups` maps each staging node to the `ExportedLookup` it came from.
    The onnxscript optimizer is not run: it merges and drops lookups and has deleted a `+ 1e-16` that
    kept a division finite. Only rewrites we vouch for run afterwards (see `passes.tidy`).
    """
    program = export_program(model, example)
    fx_lookups = exported_lookups(program, embedding_module_paths(model))
    # "torchvision is not installed", "Output node output has None output": notes, not problems, here
    quiet = [logging.getLogger(f"torch.onnx._internal.exporter.{name}") for name in ("_registration", "_core")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            onnx_program = _onnx_export(program)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as ours, with its cause
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {type(exc).__name__}: {exc}") from exc
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    ir_model = onnx_program.model
    by_node = {}
    for node in ir_model.graph:
        if node.domain == STAGING_DOMAIN:
            fx = fx_node_of(node)
            by_node[node] = fx_lookups.get(fx) if fx else None
    return ir_model, by_node
