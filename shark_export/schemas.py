"""ONNX schemas of our custom ops, registered with the onnx Python package.

ORT learns the ops from the compiled library; onnx (checker, shape inference) learns them from here, so
that `onnx.checker.check_model(model, full_check=True)` and `onnx.shape_inference` understand converted
models. Registration is idempotent and happens on import of `shark_export`.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto
from onnx.defs import OpSchema

from .domain import BAG_OP, DOMAIN, GATHER_OP, MULTI_OP
from .domain import DOMAIN_VERSION as OPSET_VERSION
from .errors import FormatError
from .format import READABLE_VERSIONS
from .lookup_spec import BAG_2D_FIELD, BAG_OFFSETS_FIELD, GATHER_FIELD, MultiLookupSpec, attribute_value


_INDEX_TYPES = ["tensor(int32)", "tensor(int64)"]
_OUTPUT_TYPES = ["tensor(float)", "tensor(float16)"]
_OUTPUT_DTYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)

_TABLE_INPUTS = [
    OpSchema.FormalParameter("payload", "tensor(uint8)", "all rows in row order at their tier strides"),
    OpSchema.FormalParameter("row_meta", "tensor(uint64)", "[ceil(R/64), 4] block index, or [0, 4] (uniform)"),
    OpSchema.FormalParameter("default_row", "tensor(float)", "[D] value of dropped rows ([0] in v2 when none is dropped)"),
]


def _table_attributes() -> list[OpSchema.Attribute]:
    attr = OpSchema.Attribute
    return [
        attr("format_version", OpSchema.AttrType.INT, "storage format version (1, 2 or 3)"),
        attr("num_rows", OpSchema.AttrType.INT, "rows R of the table"),
        attr("dim", OpSchema.AttrType.INT, "embedding dimension D"),
        attr("uniform_tier", OpSchema.AttrType.INT, "tier code of a uniform table, -1 when mixed"),
        attr("output_dtype", onnx.helper.make_attribute("output_dtype", TensorProto.FLOAT), "1 float32, 10 float16"),
        attr("scale_group_rows", onnx.helper.make_attribute("scale_group_rows", 0),
             "v3: rows per scale group (a power of two); 0 before v3"),
    ]


def _int_attribute(ctx, name: str, default: int | None = None) -> int:
    attribute = ctx.get_attribute(name)
    if attribute is None:
        if default is None:
            raise onnx.shape_inference.InferenceError(f"{ctx.get_display_name()}: missing attribute {name!r}")
        return default
    return attribute.i


def _output_elem_type(ctx) -> int:
    dtype = _int_attribute(ctx, "output_dtype", TensorProto.FLOAT)
    if dtype not in _OUTPUT_DTYPES:
        raise onnx.shape_inference.InferenceError(
            f"{ctx.get_display_name()}: output_dtype must be 1 (float) or 10 (float16), got {dtype}"
        )
    return dtype


def _check_version(ctx) -> None:
    version = _int_attribute(ctx, "format_version")
    if version not in READABLE_VERSIONS:
        raise onnx.shape_inference.InferenceError(
            f"{ctx.get_display_name()}: format_version {version} is not supported (this build reads versions 1 to 3)"
        )


def _infer_gather(ctx) -> None:
    _check_version(ctx)
    dim = _int_attribute(ctx, "dim")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = _output_elem_type(ctx)
    indices = ctx.get_input_type(3)
    if indices is not None and indices.tensor_type.HasField("shape"):
        shape = out.tensor_type.shape
        shape.CopyFrom(indices.tensor_type.shape)
        shape.dim.add().dim_value = dim
    ctx.set_output_type(0, out)


def _infer_bag(ctx) -> None:
    _check_version(ctx)
    dim = _int_attribute(ctx, "dim")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = _output_elem_type(ctx)
    shape = out.tensor_type.shape
    batch = shape.dim.add()
    shape.dim.add().dim_value = dim
    indices = ctx.get_input_type(3)
    has_offsets = ctx.get_num_inputs() > 4 and ctx.has_input(4)
    if has_offsets:
        offsets = ctx.get_input_type(4)
        if offsets is not None and offsets.tensor_type.HasField("shape"):
            (n_offsets,) = offsets.tensor_type.shape.dim
            if n_offsets.HasField("dim_value"):
                batch.dim_value = n_offsets.dim_value - _int_attribute(ctx, "include_last_offset", 0)
    elif indices is not None and indices.tensor_type.HasField("shape"):
        dims = indices.tensor_type.shape.dim
        if len(dims) != 2:
            raise onnx.shape_inference.InferenceError(
                f"{ctx.get_display_name()}: indices without offsets must be 2-D [B, L], got rank {len(dims)}"
            )
        batch.CopyFrom(dims[0])
    ctx.set_output_type(0, out)


def _gather_schema() -> OpSchema:
    schema = OpSchema(
        GATHER_OP,
        DOMAIN,
        OPSET_VERSION,
        "Row lookup from a row-wise mixed-precision table (docs/FORMAT.md); output [*indices.shape, D].",
        inputs=[*_TABLE_INPUTS, OpSchema.FormalParameter("indices", "T_index", "row ids, any rank")],
        outputs=[OpSchema.FormalParameter("output", "T_out", "dequantized rows")],
        type_constraints=[("T_index", _INDEX_TYPES, "index type"), ("T_out", _OUTPUT_TYPES, "output type")],
        attributes=_table_attributes(),
    )
    schema.set_type_and_shape_inference_function(_infer_gather)
    return schema


def _bag_schema() -> OpSchema:
    optional = OpSchema.FormalParameterOption.Optional
    attr = OpSchema.Attribute
    schema = OpSchema(
        BAG_OP,
        DOMAIN,
        OPSET_VERSION,
        "Pooled lookup with torch.nn.EmbeddingBag semantics (sum/mean) over a row-wise mixed-precision table.",
        inputs=[
            *_TABLE_INPUTS,
            OpSchema.FormalParameter("indices", "T_index", "1-D with offsets, or 2-D [B, L]"),
            OpSchema.FormalParameter("offsets", "T_index", "bag starts (1-D indices only)", param_option=optional),
            OpSchema.FormalParameter(
                "per_sample_weights", "tensor(float)", "weights, same shape as indices", param_option=optional
            ),
        ],
        outputs=[OpSchema.FormalParameter("output", "T_out", "[B, D] pooled rows")],
        type_constraints=[("T_index", _INDEX_TYPES, "index type"), ("T_out", _OUTPUT_TYPES, "output type")],
        attributes=[
            *_table_attributes(),
            attr("mode", onnx.helper.make_attribute("mode", 0), "0 sum, 1 mean"),
            attr("include_last_offset", onnx.helper.make_attribute("include_last_offset", 0), "torch semantics"),
            attr("padding_idx", onnx.helper.make_attribute("padding_idx", -1), "row id that is skipped, -1 none"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_bag)
    return schema


def _multi_spec(ctx) -> MultiLookupSpec:
    found = {name: ctx.get_attribute(name) for name in MultiLookupSpec.ATTRIBUTE_NAMES}
    attributes = {name: attribute_value(a) for name, a in found.items() if a is not None}
    try:
        return MultiLookupSpec.from_attributes(attributes, ctx.get_display_name())
    except FormatError as exc:
        raise onnx.shape_inference.InferenceError(str(exc)) from None


def _infer_multi(ctx) -> None:
    spec = _multi_spec(ctx)
    for field in spec.fields:
        if field.format_version not in READABLE_VERSIONS:
            raise onnx.shape_inference.InferenceError(
                f"{ctx.get_display_name()}: format_version {field.format_version} is not supported (this build reads "
                f"versions 1 to 3)"
            )
    needed = sum(len(field.input_roles) for field in spec.fields)
    if ctx.get_num_inputs() != needed:
        raise onnx.shape_inference.InferenceError(
            f"{ctx.get_display_name()}: the fields' kinds and has_weights need {needed} inputs, the node has "
            f"{ctx.get_num_inputs()}"
        )
    out = onnx.TypeProto()
    out.tensor_type.elem_type = _output_elem_type(ctx)
    batch, width = None, 0
    for first, field, _ in spec.field_inputs():
        kind, dim, last = field.kind, field.dim, field.include_last_offset
        indices = ctx.get_input_type(first + 3)
        shape = indices.tensor_type.shape if indices is not None and indices.tensor_type.HasField("shape") else None
        samples = None
        if kind == GATHER_FIELD:
            if shape is None or not shape.dim or any(not d.HasField("dim_value") for d in shape.dim[1:]):
                width = None
            elif width is not None:
                per_sample = 1
                for d in shape.dim[1:]:
                    per_sample *= d.dim_value
                width += per_sample * dim
            samples = shape.dim[0] if shape is not None and shape.dim else None
        else:
            width = None if width is None else width + dim
            if kind == BAG_2D_FIELD and shape is not None and len(shape.dim) == 2:
                samples = shape.dim[0]
            elif kind == BAG_OFFSETS_FIELD:
                offsets = ctx.get_input_type(first + 4)
                if offsets is not None and offsets.tensor_type.HasField("shape") and len(offsets.tensor_type.shape.dim) == 1:
                    (n_offsets,) = offsets.tensor_type.shape.dim
                    if n_offsets.HasField("dim_value"):
                        samples = onnx.TensorShapeProto.Dimension(dim_value=n_offsets.dim_value - last)
                    elif not last:
                        samples = n_offsets
        if batch is None and samples is not None:
            batch = samples
    shape = out.tensor_type.shape
    b = shape.dim.add()
    if batch is not None:
        b.CopyFrom(batch)
    w_dim = shape.dim.add()
    if width is not None:
        w_dim.dim_value = width
    ctx.set_output_type(0, out)


def _multi_schema() -> OpSchema:
    attr = OpSchema.Attribute
    ints = OpSchema.AttrType.INTS
    schema = OpSchema(
        MULTI_OP,
        DOMAIN,
        OPSET_VERSION,
        "The lookups of several fields, each on its own row-wise mixed-precision table, written side by side into "
        "one output [B, W] (what the single lookups followed by Concat along axis 1 compute).",
        inputs=[
            OpSchema.FormalParameter(
                "inputs", "T_in",
                "per field: payload, row_meta, default_row, indices, then offsets (kind 2), per_sample_weights",
                param_option=OpSchema.FormalParameterOption.Variadic, is_homogeneous=False, min_arity=4,
            )
        ],
        outputs=[OpSchema.FormalParameter("output", "T_out", "[B, W]: field k in its W_k columns, in field order")],
        type_constraints=[
            ("T_in", ["tensor(uint8)", "tensor(uint64)", "tensor(float)", *_INDEX_TYPES], "the fields' inputs"),
            ("T_out", _OUTPUT_TYPES, "output type"),
        ],
        attributes=[
            attr("kinds", ints, "per field: 0 gather, 1 bag over 2-D indices [B, L], 2 bag with offsets"),
            attr("format_versions", ints, "per field: storage format version"),
            attr("num_rows", ints, "per field: rows R of its table"),
            attr("dims", ints, "per field: embedding dimension D"),
            attr("uniform_tiers", ints, "per field: tier code of a uniform table, -1 when mixed"),
            attr("modes", onnx.helper.make_attribute("modes", [0]), "per field (bags): 0 sum, 1 mean"),
            attr("include_last_offsets", onnx.helper.make_attribute("include_last_offsets", [0]), "per field (bags)"),
            attr("padding_idxs", onnx.helper.make_attribute("padding_idxs", [-1]), "per field (bags): skipped row, -1 none"),
            attr("has_weights", onnx.helper.make_attribute("has_weights", [0]), "per field (bags): per_sample_weights given"),
            attr("scale_group_rows", onnx.helper.make_attribute("scale_group_rows", [0]),
                 "per field: v3 rows per scale group, 0 before v3"),
            attr("output_dtype", onnx.helper.make_attribute("output_dtype", TensorProto.FLOAT), "1 float32, 10 float16"),
            attr("field_names", onnx.helper.make_attribute("field_names", ""), "the fields' names, one per line"),
        ],
    )
    schema.set_type_and_shape_inference_function(_infer_multi)
    return schema


def register_schemas() -> None:
    """Make onnx's checker and shape inference know our ops (safe to call more than once)."""
    for schema in (_gather_schema(), _bag_schema(), _multi_schema()):
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)
