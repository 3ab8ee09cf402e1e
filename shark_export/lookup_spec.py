"""What a lookup node of ours says, as typed values: which stored table each field reads (its storage tensors'
names and the table's attributes) and how (gather, 2-D bag, bag with offsets; mode, padding, weights). One codec
for the node attributes, used by the pass that writes RowwiseDequantMultiLookup (passes.group_lookups) and by
every reader (inspect_model, passes.standard_ops, ort_errors). A leaf module apart from the error types."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from .errors import FormatError

#: RowwiseDequantMultiLookup field kinds (attribute `kinds`).
GATHER_FIELD, BAG_2D_FIELD, BAG_OFFSETS_FIELD = 0, 1, 2
#: ONNX element types a lookup writes (attribute `output_dtype`): onnx.TensorProto.FLOAT and FLOAT16.
FLOAT, FLOAT16 = 1, 10
OUTPUT_DTYPE_NAMES = {FLOAT: "float32", FLOAT16: "float16"}

#: The three graph tensors of one stored table, as every lookup of it takes them.
STORAGE_PARTS = ("payload", "row_meta", "default_row")
#: The inputs of RowwiseDequantGather (the first four) and RowwiseDequantEmbeddingBag, by position (an absent
#: optional input is an empty name). RowwiseDequantMultiLookup packs each field's: FieldSpec.input_roles.
SINGLE_OP_INPUTS = (*STORAGE_PARTS, "indices", "offsets", "per_sample_weights")


#: The key of a lookup node's in-memory metadata (onnx-ir `node.meta`) that holds the field it serves: passes read
#: it there, never from the node's name (ReplaceLookupsPass sets both; the name is for ORT's error messages).
FIELD_META = "shark_export.field"


def storage_names(table: str) -> tuple[str, str, str]:
    """The initializer names of `table`'s storage: `<table>.payload`, `<table>.row_meta`, `<table>.default_row`."""
    return tuple(f"{table}.{part}" for part in STORAGE_PARTS)


def table_of_storage(payload_name: str) -> str:
    """The table a payload tensor belongs to (the inverse of :func:`storage_names`)."""
    return payload_name.removesuffix(f".{STORAGE_PARTS[0]}")


@dataclass(frozen=True)
class FieldSpec:
    """One field of a lookup node: the table's attributes, the lookup kind and its bag attributes."""

    kind: int
    format_version: int
    num_rows: int
    dim: int
    uniform_tier: int
    mode: int = 0
    include_last_offset: int = 0
    padding_idx: int = -1
    has_weights: int = 0
    scale_group_rows: int = 0

    @property
    def input_roles(self) -> list[str]:
        """The node inputs this field takes, in order."""
        return [*STORAGE_PARTS, "indices", *(["offsets"] if self.kind == BAG_OFFSETS_FIELD else []),
                *(["per_sample_weights"] if self.has_weights else [])]

    def table_attributes(self) -> dict[str, int]:
        """The stored table's attributes (QuantizedTable.from_stored), scale_group_rows only when it has groups."""
        keys = ("format_version", "num_rows", "dim", "uniform_tier") + (("scale_group_rows",) if self.scale_group_rows else ())
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def of_single_op(cls, attributes: Mapping[str, Any], kind: int, has_weights: bool) -> "FieldSpec":
        """The field of a RowwiseDequantGather / EmbeddingBag node from its attributes."""
        known = {f.name for f in fields(cls)} - {"kind", "has_weights"}
        return cls(kind=kind, has_weights=int(has_weights),
                   **{k: int(v) for k, v in attributes.items() if k in known})


# RowwiseDequantMultiLookup: one int list per FieldSpec attribute (the first five are required).
_LISTS = {"kinds": "kind", "format_versions": "format_version", "num_rows": "num_rows", "dims": "dim",
          "uniform_tiers": "uniform_tier", "modes": "mode", "include_last_offsets": "include_last_offset",
          "padding_idxs": "padding_idx", "has_weights": "has_weights", "scale_group_rows": "scale_group_rows"}
_REQUIRED = ("kinds", "format_versions", "num_rows", "dims", "uniform_tiers")


@dataclass(frozen=True)
class MultiLookupSpec:
    """A RowwiseDequantMultiLookup node's fields, names and output type."""

    fields: tuple[FieldSpec, ...]
    names: tuple[str, ...]
    output_dtype: int = FLOAT

    ATTRIBUTE_NAMES = (*_LISTS, "output_dtype", "field_names")

    def attributes(self) -> dict[str, Any]:
        """The node attributes that encode this spec."""
        lists = {name: [getattr(f, attr) for f in self.fields] for name, attr in _LISTS.items()}
        return {**lists, "output_dtype": self.output_dtype, "field_names": "\n".join(self.names)}

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, Any], where: str) -> "MultiLookupSpec":
        """The spec of a node's attributes (ints, int lists, the `field_names` string); FormatError naming `where`
        and the attribute when one is missing or does not list one int per field."""
        kinds = attributes.get("kinds")
        if not isinstance(kinds, (list, tuple)) or not kinds:
            raise FormatError(f"{where}: attribute 'kinds' must be a non-empty int list")
        n = len(kinds)
        per_field = {}
        for name, attr in _LISTS.items():
            values = attributes.get(name)
            if values is None and name not in _REQUIRED:
                values = [getattr(FieldSpec, attr)] * n
            if not isinstance(values, (list, tuple)) or len(values) != n:
                raise FormatError(f"{where}: attribute {name!r} must list one int per field ({n})")
            per_field[attr] = values
        names = str(attributes.get("field_names", "")).split("\n")
        specs = tuple(FieldSpec(**{attr: int(values[k]) for attr, values in per_field.items()}) for k in range(n))
        return cls(specs, tuple(names[k] if k < len(names) and names[k] else f"#{k}" for k in range(n)),
                   int(attributes.get("output_dtype", FLOAT)))

    def field_inputs(self) -> list[tuple[int, FieldSpec, str]]:
        """(index of the field's first node input, spec, name) per field."""
        out, first = [], 0
        for spec, name in zip(self.fields, self.names):
            out.append((first, spec, name))
            first += len(spec.input_roles)
        return out


def attributes_of_proto(node) -> dict[str, Any]:
    """An onnx NodeProto's attributes as plain values: int, int list, string, or `"<TYPE>"` for any other type (no
    lookup attribute has one: readers refuse it, integrity digests it as such)."""
    return {a.name: attribute_value(a) for a in node.attribute}


def attribute_value(a) -> Any:
    """One onnx AttributeProto's value (see attributes_of_proto)."""
    import onnx

    if a.type == onnx.AttributeProto.INT:
        return a.i
    if a.type == onnx.AttributeProto.INTS:
        return list(a.ints)
    if a.type == onnx.AttributeProto.STRING:
        return a.s.decode("utf-8", "replace")
    return f"<{onnx.AttributeProto.AttributeType.Name(a.type)}>"


def attributes_of_ir(node) -> dict[str, Any]:
    """An onnx-ir node's attributes as plain values (int, int list, string)."""
    return {name: (list(attr.value) if isinstance(attr.value, (list, tuple)) else attr.value)
            for name, attr in node.attributes.items()}

