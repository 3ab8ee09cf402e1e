"""torch → ONNX (as an onnx-ir model) with every embedding lookup kept as one explicit staging node.

Why a custom translation instead of a rewrite after export: torch's exporter lowers `aten.embedding_bag`
into a Loop/Sequence subgraph whose shape varies with torch versions and options (padding_idx,
per_sample_weights, include_last_offset), which would have to be pattern-matched back. Translating the
aten ops ourselves yields one `shark_export.staging::FloatEmbedding[Bag]` node per lookup, reading the
fp32 table initializer (named by the parameter path), with the bag semantics as attributes. The
replace-lookups pass then turns each staging node into our real op. Staging nodes never reach a file.
"""

from __future__ import annotations

import contextlib
import inspect
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
    """First dimension of every tensor dynamic, mirroring the inputs' structure."""

    def spec(value):
        return pytree.tree_map(
            lambda leaf: {0: hint} if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1 else None,
            value,
            is_leaf=lambda x: isinstance(x, torch.Tensor),
        )

    if not example.kwargs:
        return tuple(spec(arg) for arg in example.args)
    # With keyword arguments torch.export wants the spec keyed by forward's parameter names.
    bound = inspect.signature(model.forward).bind(*example.args, **example.kwargs)
    return {name: spec(value) for name, value in bound.arguments.items()}


def export_program(model: torch.nn.Module, example: ExampleInputs) -> torch.export.ExportedProgram:
    """torch.export with a dynamic first dimension on every input (DYNAMIC, falling back to AUTO)."""
    # Export through torch.export so a forward taking one dict is not read as keyword arguments.
    failures = []
    for hint in (torch.export.Dim.DYNAMIC, torch.export.Dim.AUTO):
        try:
            return torch.export.export(
                model, example.args, example.kwargs or None,
                dynamic_shapes=_dynamic_shapes(example, model, hint), strict=False,
            )
        except Exception as exc:  # noqa: BLE001 - retried with AUTO, then reported with both causes
            failures.append(f"  with {hint}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise ExportError(f"torch.export failed for {type(model).__name__}:\n" + "\n".join(failures))


def export_to_ir(model: torch.nn.Module, example: ExampleInputs) -> ir.Model:
    """Export to an onnx-ir model whose lookups are staging nodes; initializers keep parameter names."""
    program = export_program(model, example)
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)  # "torchvision is not installed" notes are noise here
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            custom_translation_table=_TRANSLATIONS,
            opset_version=EXPORT_OPSET,
            optimize=True,
            verbose=False,
        )
    registration_log.setLevel(level)
    return onnx_program.model
