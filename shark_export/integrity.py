"""Content checksums of the stored tables: flipped payload bits or tier codes swapped within a block keep
every read in bounds (by design) but change the outputs, so the converter records a digest of each table's
tensors and attributes in the model's metadata; `inspect`, `check` and `session(..., verify=True)` recompute it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import IntegrityError

CHECKSUMS_KEY = "shark_export.table_checksums"
_ATTRIBUTES = ("format_version", "num_rows", "dim", "uniform_tier")


def table_digest(attributes: Mapping[str, int], payload: np.ndarray, row_meta: np.ndarray, default_row: np.ndarray) -> str:
    """blake2b-128 of the table's attributes and its three tensors (dtype, shape and bytes of each)."""
    digest = hashlib.blake2b(digest_size=16)
    fields = {k: int(attributes[k]) for k in _ATTRIBUTES}
    if int(attributes.get("scale_group_rows", 0)):  # v3 only, so that v1/v2 digests stay what they were
        fields["scale_group_rows"] = int(attributes["scale_group_rows"])
    digest.update(json.dumps(fields, sort_keys=True).encode())
    for array in (payload, row_meta, default_row):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def checksums_of(tables: Mapping) -> str:
    """The metadata value for {table name: QuantizedTable}."""
    return json.dumps(
        {name: table_digest(t.op_attributes(), t.payload, t.row_meta, t.default_row) for name, t in sorted(tables.items())},
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
    try:
        recorded = json.loads(metadata[CHECKSUMS_KEY])
        if not isinstance(recorded, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise IntegrityError(f"{path.name}: unreadable {CHECKSUMS_KEY} metadata ({exc})") from exc
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
    return seen
