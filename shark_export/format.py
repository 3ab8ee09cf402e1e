"""Storage format v1/v2/v3 (docs/FORMAT.md): tiers, row strides, the table object and its validation.

A table of ``R`` rows x ``D`` dims is three arrays -- ``payload`` (uint8, every row at the stride of its
tier, in row order), ``row_meta`` (uint64 ``[ceil(R/64), 4]`` block index for a mixed table, ``[0, 4]``
for a uniform one) and ``default_row`` (float32 ``[D]``, what dropped rows read as; in v2 ``[0]`` when
no row is dropped) -- plus the attributes ``format_version``, ``num_rows``, ``dim`` and ``uniform_tier``.
v1 pads every row to a multiple of 4 bytes; v2 (what is written by default) stores rows unpadded; v3 is
v2 with *scale groups*: quantized rows are their codes alone, and each group of ``scale_group_rows`` rows
shares one fp16 scale and bias per quantized tier, kept in a section at the end of ``payload``.

This module defines and *checks* that layout; `shark_export.quantize` writes it. ``shark_export.reference`` reads it back on an
independent code path; the C++ kernels are tested against that reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import FormatError, IndexOutOfRangeError
from .tiers import HEADER_BYTES, MAX_DIM, QUANTIZED_TIERS, Tier, row_bytes

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MAX_DIM",
    "MAX_ROWS",
    "FP16_MAX",
    "BLOCK_ROWS",
    "GROUP_RECORD_BYTES",
    "Tier",
    "group_section_bytes",
    "row_stride",
    "row_bytes",
    "TableBytes",
    "QuantizedTable",
]

FORMAT_VERSION = 2  # written for a table without scale groups
GROUPED_FORMAT_VERSION = 3  # written for a table with scale groups
READABLE_VERSIONS = (1, 2, 3)
GROUP_RECORD_BYTES = HEADER_BYTES * len(QUANTIZED_TIERS)  # v3: one [scale f16][bias f16] slot per quantized tier
MAX_GROUP_ROWS = 2**40
MAX_ROWS = 2**40
FP16_MAX = 65504.0
BLOCK_ROWS = 64  # rows per row_meta block


def row_stride(tier: Any, dim: int, format_version: int = FORMAT_VERSION) -> int:
    """Stored bytes of one row of ``tier``: :func:`row_bytes` (v2), rounded up to a multiple of 4 in v1,
    without the 4-byte scale/bias header of a quantized row in v3 (its group holds them)."""
    n = row_bytes(tier, dim)
    if format_version == 1:
        return (n + 3) & ~3
    if format_version >= 3 and Tier.parse(tier).is_quantized:
        return n - HEADER_BYTES
    return n


def group_section_bytes(num_rows: int, scale_group_rows: int) -> int:
    """Bytes of a v3 table's group section: 12 per group of ``scale_group_rows`` rows (0 without groups)."""
    if not scale_group_rows:
        return 0
    return -(-int(num_rows) // int(scale_group_rows)) * GROUP_RECORD_BYTES


def check_scale_group(format_version: int, scale_group_rows: Any, where: str) -> int:
    """``scale_group_rows`` as an int: a power of two in 1..2^40 for v3, 0 before; FormatError otherwise."""
    g = scale_group_rows
    if isinstance(g, (bool, np.bool_)) or not isinstance(g, (int, np.integer)):
        raise FormatError(f"{where}: scale_group_rows must be an integer, got {g!r}")
    g = int(g)
    if format_version >= 3:
        if not 1 <= g <= MAX_GROUP_ROWS or g & (g - 1):
            raise FormatError(f"{where}: scale_group_rows {g} is not a power of two in 1..2^40 (format_version 3 needs it)")
    elif g != 0:
        raise FormatError(f"{where}: scale_group_rows {g} is given, but format_version {format_version} has no scale groups")
    return g


def check_version(version: Any, where: str) -> int:
    """`version` as an int when this reader knows it, else FormatError naming `where` and the value."""
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)) or int(version) not in READABLE_VERSIONS:
        raise FormatError(
            f"{where}: format_version {version} is not supported (this reader knows versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    return int(version)


def _stride_lut(dim: int, format_version: int = FORMAT_VERSION) -> np.ndarray:
    """int64[8]: stride of each code 0..7 (codes 6 and 7 are invalid and get 0)."""
    lut = np.zeros(8, dtype=np.int64)
    for t in Tier:
        lut[t.value] = row_stride(t, dim, format_version)
    return lut


# --------------------------------------------------------------------------------------------------
# Table object
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableBytes:
    """Byte accounting of one table (FORMAT.md "Byte accounting").

    ``payload`` are the code/value bytes of the rows (padding included), ``scales`` the 4-byte
    ``[scale][bias]`` headers of the quantized rows (v3: the group section), ``metadata`` is ``row_meta`` plus ``default_row``.
    ``total = payload + scales + metadata`` is what the table really occupies; ``fp32 = R*D*4`` is the
    dense float32 table it replaces and ``ratio = total / fp32``.
    """

    payload: int
    scales: int
    metadata: int
    total: int
    fp32: int
    ratio: float


@dataclass(frozen=True, eq=False)
class QuantizedTable:
    """One embedding table in storage format v1, v2 or v3.

    Build it with :func:`shark_export.quantize.quantize_table` or read it with
    :func:`shark_export.table_file.load_table`; a hand-built instance is checked by :meth:`validate` (which
    `load_table` always runs). ``uniform_tier`` is the tier code of a uniform
    table (then ``row_meta`` has shape ``[0, 4]``) or ``-1`` for a mixed table. ``tier_counts`` maps
    every :class:`Tier` to its number of rows. ``format_version`` sets the row strides (v1 padded to 4
    bytes, v2 unpadded) and whether ``default_row`` may be empty (v2, no dropped row). v3 tables have
    ``scale_group_rows`` (a power of two; 0 in v1/v2) and end ``payload`` with the group section.
    """

    name: str
    num_rows: int
    dim: int
    payload: np.ndarray
    row_meta: np.ndarray
    default_row: np.ndarray
    uniform_tier: int
    tier_counts: Mapping[Tier, int]
    format_version: int = FORMAT_VERSION
    scale_group_rows: int = 0

    # ---- layout -----------------------------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        return self.uniform_tier >= 0

    def stride(self, tier: Any) -> int:
        """Row stride of ``tier`` in this table."""
        return row_stride(tier, self.dim, self.format_version)

    @property
    def group_bytes(self) -> int:
        """Bytes of the v3 group section at the end of ``payload`` (0 before v3)."""
        return group_section_bytes(self.num_rows, self.scale_group_rows)

    def group_scales(self) -> np.ndarray:
        """float16 ``[groups, len(QUANTIZED_TIERS), 2]``: (scale, bias) of each group's rows of each quantized tier
        (v3 only)."""
        if not self.scale_group_rows:
            raise FormatError(f"table {self.name!r} (format_version {self.format_version}) has no scale groups")
        n = self.group_bytes
        section = np.ascontiguousarray(self.payload[self.payload.shape[0] - n:])
        return section.view("<f2").reshape(-1, len(QUANTIZED_TIERS), 2)

    def tiers(self) -> np.ndarray:
        """uint8[R]: the tier code of every row (constant for a uniform table, decoded from the planes otherwise)."""
        if self.is_uniform:
            return np.full(self.num_rows, self.uniform_tier, dtype=np.uint8)
        nb = self.row_meta.shape[0]
        planes = np.ascontiguousarray(self.row_meta[:, 1:4], dtype="<u8").view(np.uint8).reshape(nb, 3, 8)
        bits = np.unpackbits(planes, axis=2, bitorder="little")  # [nb, 3, 64]
        codes = bits[:, 0] | (bits[:, 1] << 1) | (bits[:, 2] << 2)
        return codes.reshape(-1)[: self.num_rows].astype(np.uint8, copy=False)

    def row_offsets(self, rows: Any) -> np.ndarray:
        """int64 byte offsets in ``payload`` of ``rows`` (any shape), per the O(1) popcount formula of FORMAT.md."""
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu":
            raise TypeError(f"table {self.name!r}: rows must be integers, got dtype {rows.dtype}")
        flat = rows.reshape(-1)
        bad = (flat < 0) | (flat >= self.num_rows)
        if bad.any():
            pos = int(np.argmax(bad))
            raise IndexOutOfRangeError(
                f"table {self.name!r}: row {int(flat[pos])} at position {pos} is out of range "
                f"(table has {self.num_rows} rows)"
            )
        r = flat.astype(np.int64)
        if self.is_uniform:
            return (r * self.stride(self.uniform_tier)).reshape(rows.shape)
        lut = _stride_lut(self.dim, self.format_version)
        meta = self.row_meta[r >> 6]
        j = (r & 63).astype(np.uint64)
        before = (np.uint64(1) << j) - np.uint64(1)  # rows of the block before row r
        p0, p1, p2 = meta[:, 1], meta[:, 2], meta[:, 3]
        off = meta[:, 0].astype(np.int64)
        for t in range(len(Tier)):
            if lut[t] == 0:
                continue
            mask = (p0 if t & 1 else ~p0) & (p1 if t & 2 else ~p1) & (p2 if t & 4 else ~p2)
            off += lut[t] * np.bitwise_count(mask & before).astype(np.int64)
        return off.reshape(rows.shape)

    # ---- reporting --------------------------------------------------------------------------------
    def byte_report(self) -> TableBytes:
        """Sizes from the stored arrays' nbytes, split as in FORMAT.md (payload / scales / metadata)."""
        n_quantized = sum(int(self.tier_counts.get(t, 0)) for t in Tier if t.is_quantized)
        scales = self.group_bytes if self.scale_group_rows else 4 * n_quantized
        payload = int(self.payload.nbytes) - scales
        metadata = int(self.row_meta.nbytes) + int(self.default_row.nbytes)
        total = payload + scales + metadata
        fp32 = self.num_rows * self.dim * 4
        return TableBytes(payload=payload, scales=scales, metadata=metadata, total=total, fp32=fp32, ratio=total / fp32)

    def op_attributes(self) -> dict[str, int]:
        """The table attributes of an op node reading this table (``output_dtype`` is the op's own)."""
        attrs = {
            "format_version": int(self.format_version),
            "num_rows": int(self.num_rows),
            "dim": int(self.dim),
            "uniform_tier": int(self.uniform_tier),
        }
        if self.scale_group_rows:
            attrs["scale_group_rows"] = int(self.scale_group_rows)
        return attrs

    # ---- checks -----------------------------------------------------------------------------------
    @classmethod
    def from_stored(cls, name: str, attributes: Mapping[str, Any], payload: Any, row_meta: Any, default_row: Any) -> "QuantizedTable":
        """A table read from stored tensors and op attributes (a model file), validated before anything is
        computed from the claimed sizes: a hostile `num_rows` or `dim` raises :class:`FormatError` naming the
        table, never allocates what the tensors do not back."""
        missing = [k for k in ("format_version", "num_rows", "dim", "uniform_tier") if k not in attributes]
        if missing:
            raise FormatError(f"table {name!r}: attribute(s) {', '.join(missing)} missing")
        probe = cls(
            name=str(name), num_rows=attributes["num_rows"], dim=attributes["dim"], payload=payload, row_meta=row_meta,
            default_row=default_row, uniform_tier=attributes["uniform_tier"], tier_counts={},
            format_version=attributes["format_version"], scale_group_rows=attributes.get("scale_group_rows", 0),
        )
        counts = probe._stored_tier_counts()
        return cls(
            name=probe.name, num_rows=int(probe.num_rows), dim=int(probe.dim), payload=payload, row_meta=row_meta,
            default_row=default_row, uniform_tier=int(probe.uniform_tier), tier_counts=counts,
            format_version=int(probe.format_version), scale_group_rows=int(probe.scale_group_rows),
        )

    def validate(self) -> "QuantizedTable":
        """Run the checks the kernels run (shapes, dtypes, payload length, block chain, codes 6/7,
        zero bits past R) plus consistency of ``tier_counts``; raise :class:`FormatError` naming the table.

        Returns ``self`` so that ``table.validate()`` can be chained."""
        counts = self._stored_tier_counts()
        n = f"table {self.name!r}"
        given = {Tier.parse(k): int(v) for k, v in dict(self.tier_counts).items()}
        if any(given.get(t, 0) != counts[t] for t in Tier):
            raise FormatError(
                f"{n}: tier_counts {({str(k): v for k, v in given.items()})} do not match the stored tiers "
                f"{({str(k): v for k, v in counts.items()})}"
            )
        return self

    def _stored_tier_counts(self) -> dict[Tier, int]:
        """Every check of `validate` but the `tier_counts` one; the tier counts the stored tensors hold."""
        n = f"table {self.name!r}"
        for attr in ("num_rows", "dim", "uniform_tier"):
            v = getattr(self, attr)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise FormatError(f"{n}: {attr} must be an integer, got {v!r}")
        R, D, u = int(self.num_rows), int(self.dim), int(self.uniform_tier)
        version = check_version(self.format_version, n)
        G = check_scale_group(version, self.scale_group_rows, n)
        if not 1 <= R <= MAX_ROWS:
            raise FormatError(f"{n}: num_rows {R} is outside 1..2^40")
        if not 1 <= D <= MAX_DIM:
            raise FormatError(f"{n}: dim {D} is outside 1..{MAX_DIM}")
        if not -1 <= u < len(Tier):
            raise FormatError(f"{n}: uniform_tier {u} is not a tier code 0..{len(Tier) - 1} or -1 (mixed)")
        for attr, dtype, ndim in (("payload", np.uint8, 1), ("row_meta", np.uint64, 2), ("default_row", np.float32, 1)):
            arr = getattr(self, attr)
            if not isinstance(arr, np.ndarray):
                raise FormatError(f"{n}: {attr} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype != dtype or arr.ndim != ndim:
                raise FormatError(
                    f"{n}: {attr} must be {np.dtype(dtype).name} with {ndim} dimension(s), "
                    f"got {arr.dtype} with shape {arr.shape}"
                )
        empty_default = version >= 2 and self.default_row.shape == (0,)
        if self.default_row.shape != (D,) and not empty_default:
            allowed = f"({D},)" + (" or (0,)" if version >= 2 else "")
            raise FormatError(f"{n}: default_row has shape {self.default_row.shape}, expected {allowed}")
        if self.row_meta.shape[1] != 4:
            raise FormatError(f"{n}: row_meta has shape {self.row_meta.shape}, expected [*, 4]")
        lut = _stride_lut(D, version)
        n_payload = self.payload.shape[0] - group_section_bytes(R, G)
        if n_payload < 0:
            raise FormatError(
                f"{n}: payload has {self.payload.shape[0]} bytes, fewer than its group section "
                f"({group_section_bytes(R, G)} bytes for {R} rows in groups of {G})"
            )
        if u >= 0:
            if self.row_meta.shape[0] != 0:
                raise FormatError(
                    f"{n}: uniform table (tier {Tier(u)}) must have an empty row_meta [0, 4], "
                    f"got {self.row_meta.shape}"
                )
            expected = R * int(lut[u])
            if n_payload != expected:
                groups = f" plus {group_section_bytes(R, G)} of scale groups" if G else ""
                raise FormatError(
                    f"{n}: payload has {self.payload.shape[0]} bytes, expected {expected + group_section_bytes(R, G)} "
                    f"({R} rows x stride {lut[u]} of {Tier(u)}{groups})"
                )
            counts = {t: (R if t.value == u else 0) for t in Tier}
        else:
            counts = self._validate_blocks(n, R, lut, n_payload)
        if empty_default and counts[Tier.DROPPED]:
            raise FormatError(f"{n}: default_row is empty but {counts[Tier.DROPPED]} rows are dropped (they read default_row)")
        return counts

    def _validate_blocks(self, n: str, R: int, lut: np.ndarray, n_payload: int) -> dict[Tier, int]:
        nb = -(-R // BLOCK_ROWS)
        meta = self.row_meta
        if meta.shape[0] != nb:
            raise FormatError(f"{n}: row_meta has {meta.shape[0]} blocks, expected ceil({R}/64) = {nb}")
        p0, p1, p2 = meta[:, 1], meta[:, 2], meta[:, 3]
        tail = R - BLOCK_ROWS * (nb - 1)  # valid rows in the last block, 1..64
        valid = np.full(nb, np.iinfo(np.uint64).max, dtype=np.uint64)
        if tail < BLOCK_ROWS:
            valid[-1] = np.uint64((1 << tail) - 1)
        past = (p0 | p1 | p2) & ~valid
        if past.any():
            raise FormatError(
                f"{n}: row_meta block {nb - 1} has tier bits set for rows at or past num_rows={R}"
            )
        invalid = np.zeros_like(p0)  # rows whose code is no tier (every such code has a bit set: rows past R have none)
        for code in range(len(Tier), 8):
            invalid |= (p0 if code & 1 else ~p0) & (p1 if code & 2 else ~p1) & (p2 if code & 4 else ~p2)
        if invalid.any():
            b = int(np.flatnonzero(invalid)[0])
            j = int(np.flatnonzero(np.unpackbits(np.array([invalid[b]], dtype="<u8").view(np.uint8), bitorder="little"))[0])
            code = int(((int(p0[b]) >> j) & 1) | (((int(p1[b]) >> j) & 1) << 1) | (((int(p2[b]) >> j) & 1) << 2))
            raise FormatError(f"{n}: row {b * BLOCK_ROWS + j} has invalid tier code {code} (valid codes: 0..{len(Tier) - 1})")
        sizes = np.zeros(nb, dtype=np.uint64)
        counts = {}
        for t in Tier:
            mask = (p0 if t & 1 else ~p0) & (p1 if t & 2 else ~p1) & (p2 if t & 4 else ~p2) & valid
            pc = np.bitwise_count(mask).astype(np.uint64)
            counts[t] = int(pc.sum())
            sizes += pc * np.uint64(lut[t])
        offsets = meta[:, 0]
        if offsets[0] != 0:
            raise FormatError(f"{n}: row_meta block 0 has offset {int(offsets[0])}, expected 0")
        chain = offsets[1:] != offsets[:-1] + sizes[:-1]
        if chain.any():
            b = int(np.flatnonzero(chain)[0]) + 1
            raise FormatError(
                f"{n}: row_meta block {b} has offset {int(offsets[b])}, expected "
                f"{int(offsets[b - 1] + sizes[b - 1])} (block {b - 1} offset + its rows' strides)"
            )
        end = int(offsets[-1]) + int(sizes[-1])
        if end != n_payload:
            groups = (f" (and {group_section_bytes(R, self.scale_group_rows)} of scale groups)"
                      if self.scale_group_rows else "")
            raise FormatError(f"{n}: payload has {n_payload} bytes{groups}, but the rows' strides add up to {end}")
        return counts

