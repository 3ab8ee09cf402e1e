"""Content checksums of the stored tables: flipped payload bits or tier codes swapped within a block keep
every read in bounds (by design) but change the outputs, so the converter records a digest of each table's
tensors and attributes in the model's metadata; `inspect`, `check` and `session(..., verify=True)` recompute it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .domain import DOMAIN
from .errors import IntegrityError
from .lookup_spec import attributes_of_proto

CHECKSUMS_KEY = "shark_export.table_checksums"
# Every shark_export node's op, inputs and attributes (padding_idx, mode, output_dtype, … change outputs
# without touching a table): node name → digest.
LOOKUPS_KEY = "shark_export.lookup_checksums"
_ATTRIBUTES = ("format_version", "num_rows", "dim", "uniform_tier")


def table_digest(attributes: Mapping[str, int], payload: np.ndarray, row_meta: np.ndarray, default_row: np.ndarray) -> str:
    """blake2b-128 of the table's attributes and its three tensors (dtype, shape and bytes of each)."""
    digest = TableDigest(attributes, payload)
    if isinstance(payload, np.memmap) and payload.ndim == 1 and getattr(payload, "filename", None):
        _update_from_file(digest, payload.filename, int(payload.offset), payload.nbytes)
    else:
        digest.update(np.ascontiguousarray(payload).reshape(-1).view(np.uint8))
    return digest.finish(row_meta, default_row)


class TableDigest:
    """table_digest fed with the payload's bytes piece by piece, as they are copied (streamed_tables.pack)."""

    def __init__(self, attributes: Mapping[str, int], payload):
        """`payload`: the payload array, or its length in bytes (a uint8 vector)."""
        self._digest = hashlib.blake2b(digest_size=16)
        fields = {k: int(attributes[k]) for k in _ATTRIBUTES}
        if int(attributes.get("scale_group_rows", 0)):  # v3 only, so that v1/v2 digests stay what they were
            fields["scale_group_rows"] = int(attributes["scale_group_rows"])
        self._digest.update(json.dumps(fields, sort_keys=True).encode())
        header = (np.dtype(np.uint8).str, (int(payload),)) if isinstance(payload, (int, np.integer)) else (
            payload.dtype.str, payload.shape)
        self._digest.update(f"{header[0]}{header[1]}".encode())

    def update(self, data) -> None:
        self._digest.update(data)

    def finish(self, row_meta: np.ndarray, default_row: np.ndarray) -> str:
        for array in (row_meta, default_row):
            array = np.ascontiguousarray(array)
            self._digest.update(f"{array.dtype.str}{array.shape}".encode())
            self._digest.update(array.reshape(-1).view(np.uint8))
        return self._digest.hexdigest()


def _update_from_file(digest, filename: str, offset: int, length: int, block: int = 1 << 24) -> None:
    """Hash a file-backed tensor by reading it (a big table's pages never become this process's resident set)."""
    with open(filename, "rb", buffering=0) as f:
        for start in range(0, length, block):
            digest.update(os.pread(f.fileno(), min(block, length - start), offset + start))


def lookup_digest(op_type: str, inputs: list[str], attributes: Mapping) -> str:
    """blake2b-128 of a lookup node's op type, input names and attributes (name → int, list or string)."""
    canonical = {"op": op_type, "inputs": list(inputs),
                 "attributes": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(attributes.items())}}
    return hashlib.blake2b(json.dumps(canonical, sort_keys=True).encode(), digest_size=16).hexdigest()


def lookup_checksums_of(graph) -> str:
    """The metadata value for the shark_export nodes of an onnx_ir graph: each node digested as serialized, the
    same way verify reads it back (`_proto_lookup_digests`)."""
    import onnx_ir as ir

    nodes = [ir.serde.serialize_node(node) for node in graph if node.domain == DOMAIN]
    return json.dumps(_node_digests(nodes), sort_keys=True)


def _proto_lookup_digests(model) -> dict[str, str]:
    return _node_digests([node for node in model.graph.node if node.domain == DOMAIN])


def _node_digests(nodes) -> dict[str, str]:
    """node name → digest of a shark_export NodeProto's op type, inputs and attributes."""
    digests = {}
    for node in nodes:
        attributes = attributes_of_proto(node)
        if node.name in digests:
            raise IntegrityError(f"two shark_export nodes are named {node.name!r}: their checksums cannot be told apart")
        digests[node.name] = lookup_digest(node.op_type, list(node.input), attributes)
    return digests


def checksums_of(tables: Mapping, known: Mapping[str, str] | None = None) -> str:
    """The metadata value for {table name: QuantizedTable}; `known`: digests already taken (as tables were packed)."""
    known = known or {}
    return json.dumps(
        {name: known.get(name) or table_digest(t.op_attributes(), t.payload, t.row_meta, t.default_row)
         for name, t in sorted(tables.items())},
        sort_keys=True,
    )


def verify_model(path, require: bool = True) -> dict[str, str] | None:
    """Recompute every table's digest from the model file; raise IntegrityError naming the first table that
    does not match (or a file whose checksums are unreadable, or missing when `require`). Returns
    {table: digest}, or None when no checksums are recorded and not `require`."""
    import onnx

    from .inspect_model import read_tables

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise IntegrityError(f"cannot read {str(path)!r} as an ONNX model: {exc}") from exc
    metadata = {p.key: p.value for p in model.metadata_props}
    if CHECKSUMS_KEY not in metadata:
        if not require:
            return None
        raise IntegrityError(f"{path.name}: no table checksums in the metadata ({CHECKSUMS_KEY}); it was not written by "
                             "this converter, or they were removed")
    recorded = _json_object(path, metadata, CHECKSUMS_KEY)
    tables, _ = read_tables(path)  # validated against their attributes first (a FormatError names the table)
    seen: dict[str, str] = {}
    for table, stored in tables.items():
        seen[table] = table_digest(stored.op_attributes(), stored.payload, stored.row_meta, stored.default_row)
        if table not in recorded:
            raise IntegrityError(f"{path.name}: table {table!r} has no recorded checksum")
        if recorded[table] != seen[table]:
            raise IntegrityError(
                f"{path.name}: table {table!r} does not match its checksum (stored {recorded[table]}, computed "
                f"{seen[table]}): its payload, row_meta, default_row or attributes changed after conversion"
            )
    missing = sorted(set(recorded) - set(seen))
    if missing:
        raise IntegrityError(f"{path.name}: table(s) {missing} have a checksum but no lookup reads them")
    _verify_lookups(path, model, metadata)
    return seen


def _verify_lookups(path: Path, model, metadata: dict) -> None:
    """Every shark_export node's op, inputs and attributes against the digests recorded at conversion."""
    computed = _proto_lookup_digests(model)
    if LOOKUPS_KEY not in metadata:
        if computed:
            raise IntegrityError(f"{path.name}: no lookup checksums in the metadata ({LOOKUPS_KEY}): the lookups' "
                                 "attributes (padding_idx, mode, output_dtype, …) cannot be verified; reconvert the model")
        return
    recorded = _json_object(path, metadata, LOOKUPS_KEY)
    for name, digest in sorted(computed.items()):
        if name not in recorded:
            raise IntegrityError(f"{path.name}: lookup node {name!r} has no recorded checksum: it was added after conversion")
        if recorded[name] != digest:
            raise IntegrityError(f"{path.name}: lookup node {name!r} does not match its checksum: its inputs or attributes "
                                 "(padding_idx, mode, modes, output_dtype, …) changed after conversion")
    gone = sorted(set(recorded) - set(computed))
    if gone:
        raise IntegrityError(f"{path.name}: lookup node(s) {gone} have a checksum but are not in the graph")


def _json_object(path: Path, metadata: dict, key: str) -> dict:
    try:
        value = json.loads(metadata[key])
        if not isinstance(value, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise IntegrityError(f"{path.name}: unreadable {key} metadata ({exc})") from exc
    return value
