"""Portable table storage (``convert(..., ops="standard")``): a quantized table as plain ONNX tensors that
stock ai.onnx ops read (docs/PORTABLE.md).

A table of R rows x D dims becomes one *sub-table* per tier it holds, in tier-code order (its *slot* order):

| tier    | tensors                                                     | bytes per row          |
|---------|-------------------------------------------------------------|------------------------|
| fp32    | ``<t>.fp32.values`` float32 [n, D]                          | 4·D                    |
| fp16    | ``<t>.fp16.values`` float16 [n, D]                          | 2·D                    |
| int8    | ``<t>.int8.codes`` uint8 [n, D], ``<t>.int8.scale_bias`` float16 [n, 2] | D + 4      |
| int4    | ``<t>.int4.codes`` uint8 [n, P = ceil(D/2)] (planar: element k in the low nibble of byte k, P+k in the high one), ``.scale_bias`` | ceil(D/2) + 4 |
| int2    | ``<t>.int2.codes`` uint8 [n, P = ceil(D/4)] (planar: element j·P+k in bits 2j..2j+1 of byte k), ``.scale_bias`` | ceil(D/4) + 4 |
| dropped | ``<t>.dropped.default_row`` float32 [1, D]                  | 0 (4·D once)           |

The codes and ``[scale, bias]`` pairs are the bytes of the stored format rearranged, nothing re-quantized (int4
and int2 codes *planar*: the stored format interleaves a row's elements in its bytes; planar, a row unpacks into
its first P elements and its next P with two standard ops each, and no element-wise interleave). A
format v3 table (scale groups of G rows) keeps its groups: a quantized sub-table has no per-row pairs but
``<t>.<tier>.group_scale_bias`` float16 [ceil(R/G), 2], the pair of each group's rows of that tier, found
by the row's index divided by G (4 bytes per group and tier present, against the stored format's 12 per group).
A *uniform* table (one tier, not dropped) is its sub-table alone: row r is sub-table row r. Any other table
adds a *slot map* (:class:`SlotMap`): ``<t>.slot_codes`` uint8 [R] holds row r's sub-table p and its rank
among that sub-table's rows in its block of S rows (``p·S + rank``; S = 256, 128, 64 or 32 for 1, 2, up to 4 or
up to 8 sub-tables), ``<t>.slot_bases`` [ceil(R/S), P] (the narrowest of uint8, uint16, int32) each sub-table's rows before each block: row r is
row ``bases[r // S, p] + rank`` of sub-table p (every dropped row is the one default row). 1 byte per row plus
1, 2 or 4 bytes per block and sub-table: 1.06–1.25 bytes per row at 3 or 4 sub-tables. (Files written before it hold ``<t>.slots``, an
unsigned [R] tensor of global slots; they are still read.) The table's shape, tiers and source format version are recorded in the model's metadata
(``shark_export.standard_tables``), so :func:`read_tables` can rebuild the very ``QuantizedTable`` the
converter stored (its checksum then matches the one recorded at conversion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import FormatError
from .format import BLOCK_ROWS, GROUP_RECORD_BYTES, QuantizedTable, Tier, row_bytes, row_stride
from .tiers import QUANTIZED_TIERS

__all__ = ["METADATA_KEY", "Part", "PortableBytes", "SlotMap", "StandardTable", "read_tables", "inspect_text"]

METADATA_KEY = "shark_export.standard_tables"
_CHUNK_ROWS = 65536
PLANAR = "planar"  # metadata `code_layout` of int4/int2 codes; files without it hold the interleaved bytes


def _repack(codes: np.ndarray, bits: int, to_planar: bool) -> np.ndarray:
    """uint8 [n, P] packed codes from the stored (interleaved: element per·k + j in field j of byte k) to the
    planar layout (element j·P + k in field j of byte k), or back. A permutation of the fields: lossless, the
    padding fields past D included."""
    per, n, P = 8 // bits, codes.shape[0], codes.shape[1]
    mask = (1 << bits) - 1
    fields = np.stack([(codes >> (bits * j)) & mask for j in range(per)], axis=2)  # [n, P, per]: field j of byte k
    elements = fields.reshape(n, P * per) if to_planar else fields.transpose(0, 2, 1).reshape(n, P * per)
    regrouped = elements.reshape(n, per, P).transpose(0, 2, 1) if to_planar else elements.reshape(n, P, per)
    out = np.zeros((n, P), dtype=np.uint8)
    for j in range(per):
        out |= (regrouped[:, :, j] << (bits * j)).astype(np.uint8)
    return out
_SLOT_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # the legacy slot map's
_BASE_DTYPES = (np.uint8, np.uint16, np.int32)  # the narrowest that holds a table's slot bases


@dataclass(frozen=True, eq=False)
class SlotMap:
    """Row → (sub-table, row in it) of a table with several sub-tables (or dropped rows only).

    Packed (written now): ``codes`` uint8 [R] = p·block + rank, ``bases`` [ceil(R/block), P] (uint8, uint16 or
    int32); row r is row
    ``bases[r // block, p] + rank`` of sub-table p. Legacy (read back only): ``legacy`` [R], the global slot."""

    codes: np.ndarray | None
    bases: np.ndarray | None
    block: int
    legacy: np.ndarray | None = None

    @staticmethod
    def block_rows(parts: int) -> int:
        return 256 >> max(0, (parts - 1).bit_length())

    @classmethod
    def build(cls, part_of_row: np.ndarray, dropped_part: int | None, parts: int) -> "SlotMap":
        R, S = part_of_row.shape[0], cls.block_rows(parts)
        blocks = -(-R // S)
        bases = np.zeros((blocks, parts), dtype=np.int64)
        rank = np.zeros(R, dtype=np.int64)
        for p in range(parts):
            if p == dropped_part:
                continue  # every dropped row is row 0 of its sub-table: rank 0, base 0
            member = part_of_row == p
            before = np.concatenate([[0], np.cumsum(member)])  # rows of p before each row
            bases[:, p] = before[np.arange(blocks) * S]
            rows = np.flatnonzero(member)
            rank[rows] = before[rows] - bases[rows // S, p]
        top = int(bases.max(initial=0))
        dtype = next((d for d in _BASE_DTYPES if top <= np.iinfo(d).max), None)
        if dtype is None:
            raise FormatError(f"a sub-table of {top} rows does not fit the int32 slot bases")
        return cls((part_of_row * S + rank).astype(np.uint8), bases.astype(dtype), S)

    def locate(self, part_rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(sub-table index, row in it) of every row, int64 [R] each."""
        if self.legacy is not None:
            starts = np.cumsum([0] + part_rows)
            slots = self.legacy.astype(np.int64)
            part = np.searchsorted(starts, slots, side="right") - 1
            return part, slots - starts[part]
        codes = self.codes.astype(np.int64)
        part, rank = codes // self.block, codes % self.block
        return part, self.bases.astype(np.int64)[np.arange(codes.shape[0]) // self.block, part] + rank

    def tensors(self, table: str) -> dict[str, np.ndarray]:
        if self.legacy is not None:
            return {f"{table}.slots": self.legacy}
        return {f"{table}.slot_codes": self.codes, f"{table}.slot_bases": self.bases}

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors("").values())

    @classmethod
    def read(cls, where: str, table: str, block: int | None, tensors: Mapping[str, np.ndarray], R: int,
             part_rows: list[int]) -> "SlotMap":
        """The map of a file, every shape and value checked: a hostile file is a FormatError naming the tensor."""
        P = len(part_rows)
        if block is None:  # a file written before the packed map
            slots = tensors.get(f"{table}.slots")
            if slots is None or slots.shape != (R,) or slots.dtype not in [np.dtype(d) for d in _SLOT_DTYPES]:
                raise FormatError(f"{where}: {table}.slots must be an unsigned integer [{R}] tensor")
            if R and int(slots.max()) >= sum(part_rows):
                raise FormatError(f"{where}: slot {int(slots.max())} is past the {sum(part_rows)} slots of its sub-tables")
            return cls(None, None, 0, slots)
        if block != cls.block_rows(P):
            raise FormatError(f"{where}: slot block {block} for {P} sub-tables (expected {cls.block_rows(P)})")
        codes, bases = tensors.get(f"{table}.slot_codes"), tensors.get(f"{table}.slot_bases")
        if codes is None or codes.shape != (R,) or codes.dtype != np.uint8:
            raise FormatError(f"{where}: {table}.slot_codes must be uint8 [{R}]")
        if bases is None or bases.shape != (-(-R // block), P) or bases.dtype not in [np.dtype(d) for d in _BASE_DTYPES]:
            raise FormatError(f"{where}: {table}.slot_bases must be uint8, uint16 or int32 [{-(-R // block)}, {P}]")
        slot_map = cls(codes, bases, block)
        part = codes.astype(np.int64) // block
        if R and int(part.max()) >= P:
            raise FormatError(f"{where}: {table}.slot_codes names sub-table {int(part.max())} of {P}")
        part, local = slot_map.locate(part_rows)
        bad = np.flatnonzero((local < 0) | (local >= np.asarray(part_rows, dtype=np.int64)[part]))
        if bad.size:
            r = int(bad[0])
            raise FormatError(f"{where}: row {r} maps to row {int(local[r])} of sub-table {int(part[r])}, which has "
                              f"{part_rows[int(part[r])]} rows")
        return slot_map


@dataclass(frozen=True)
class Part:
    """One tier's sub-table: ``rows`` slots; ``arrays`` maps a tensor suffix (values, codes, scale_bias,
    default_row) to its array."""

    tier: Tier
    rows: int
    arrays: Mapping[str, np.ndarray]

    @property
    def value_bytes(self) -> int:
        return sum(int(a.nbytes) for k, a in self.arrays.items() if k in ("values", "codes"))

    @property
    def scale_bytes(self) -> int:
        return sum(int(a.nbytes) for k, a in self.arrays.items() if k in ("scale_bias", "group_scale_bias"))


@dataclass(frozen=True)
class PortableBytes:
    """Bytes of a portable table: ``values`` (codes or float values), ``scales`` (float16 [scale, bias] per
    quantized row), ``metadata`` (the slot map and the default row); ``total`` and ``fp32 = 4·R·D``."""

    values: int
    scales: int
    metadata: int
    total: int
    fp32: int


def _row_bytes_of(table: QuantizedTable, rows: np.ndarray, tier: Tier) -> np.ndarray:
    """uint8 [len(rows), row_bytes(tier)]: the stored bytes (header and values, no padding) of `rows`."""
    nbytes = table.stride(tier) if table.format_version >= 3 else row_bytes(tier, table.dim)
    payload = table.payload
    if table.is_uniform:
        stride = table.stride(tier)
        return payload[:table.num_rows * stride].reshape(table.num_rows, stride)[rows, :nbytes]
    out = np.empty((rows.shape[0], nbytes), dtype=np.uint8)
    span = np.arange(nbytes, dtype=np.int64)
    for r0 in range(0, rows.shape[0], _CHUNK_ROWS):
        chunk = rows[r0:r0 + _CHUNK_ROWS]
        out[r0:r0 + chunk.shape[0]] = payload[table.row_offsets(chunk)[:, None] + span]
    return out


@dataclass(frozen=True, eq=False)
class StandardTable:
    """A table in portable storage. ``parts`` in slot order; ``slots`` None for a uniform (not dropped) table."""

    name: str
    num_rows: int
    dim: int
    parts: tuple[Part, ...]
    slots: SlotMap | None
    uniform_tier: int
    format_version: int
    scale_group_rows: int = 0
    planar: bool = True  # int4/int2 code layout (False: read from a file written before planar codes)

    # ---- from and back to the stored format -----------------------------------------------------
    @classmethod
    def from_quantized(cls, table: QuantizedTable) -> "StandardTable":
        """The portable form of a format v1/v2 table (the bytes rearranged; every value stays the same)."""
        if int(table.format_version) not in (1, 2, 3):
            raise FormatError(f"table {table.name!r}: portable storage reads format versions 1 to 3, "
                              f"not {table.format_version}")
        R, D = int(table.num_rows), int(table.dim)
        G = int(getattr(table, "scale_group_rows", 0) or 0)
        groups = table.group_scales() if G else None  # float16 [ceil(R/G), quantized tiers, 2]
        codes = table.tiers()
        parts = []
        uniform = table.is_uniform and table.uniform_tier != Tier.DROPPED
        part_of_row = None if uniform else np.empty(R, dtype=np.int64)
        dropped_part = None
        for tier in Tier:
            rows = np.flatnonzero(codes == tier.value) if not table.is_uniform else (
                np.arange(R) if tier.value == table.uniform_tier else np.empty(0, np.int64))
            if rows.shape[0] == 0:
                continue
            if tier is Tier.DROPPED:
                arrays = {"default_row": np.asarray(table.default_row, dtype=np.float32).reshape(1, D).copy()}
                n = 1
                dropped_part = len(parts)
            else:
                raw = _row_bytes_of(table, rows, tier)
                if tier is Tier.FP32:
                    arrays = {"values": np.ascontiguousarray(raw).view("<f4").astype(np.float32)}
                elif tier is Tier.FP16:
                    arrays = {"values": np.ascontiguousarray(raw).view("<f2").astype(np.float16)}
                else:
                    codes_ = raw if G else raw[:, 4:]
                    if tier is not Tier.INT8:
                        codes_ = _repack(codes_, tier.bits, to_planar=True)
                    arrays = {"codes": np.ascontiguousarray(codes_)}
                    if G:
                        arrays["group_scale_bias"] = np.ascontiguousarray(groups[:, QUANTIZED_TIERS.index(tier), :]).astype(np.float16)
                    else:
                        arrays["scale_bias"] = np.ascontiguousarray(raw[:, :4]).view("<f2").astype(np.float16)
                n = int(rows.shape[0])
            if part_of_row is not None:
                part_of_row[rows] = len(parts)
            parts.append(Part(tier, n, arrays))
        slots = None if uniform else SlotMap.build(part_of_row, dropped_part, len(parts))
        return cls(str(table.name), R, D, tuple(parts), slots, int(table.uniform_tier), int(table.format_version), G, True)

    def row_tiers(self) -> np.ndarray:
        """uint8 [R]: every row's tier code."""
        if self.slots is None:
            return np.full(self.num_rows, self.parts[0].tier.value, dtype=np.uint8)
        part, _ = self.slots.locate([p.rows for p in self.parts])
        return np.array([p.tier.value for p in self.parts], dtype=np.uint8)[part]

    def to_quantized(self) -> QuantizedTable:
        """The stored-format table this was made from (same tensors, so the same checksum). A v1 table with no
        dropped row gets a zero default row (the portable form keeps none)."""
        R, D, version = self.num_rows, self.dim, self.format_version
        codes = self.row_tiers()
        strides = np.array([row_stride(t, D, version) for t in Tier] + [0, 0], dtype=np.int64)
        dropped = next((p for p in self.parts if p.tier is Tier.DROPPED), None)
        default = (dropped.arrays["default_row"].reshape(D).astype(np.float32) if dropped is not None
                   else np.zeros(D if version == 1 else 0, dtype=np.float32))
        row_strides = strides[codes]
        offsets = np.cumsum(row_strides) - row_strides
        G = self.scale_group_rows
        payload = np.zeros(int(row_strides.sum()) + (-(-R // G) * GROUP_RECORD_BYTES if G else 0), dtype=np.uint8)
        section = np.zeros((-(-R // G), len(QUANTIZED_TIERS), 2), dtype="<f2") if G else None
        local = self._local_rows()
        for part in self.parts:
            if part.tier is Tier.DROPPED:
                continue
            rows = np.flatnonzero(codes == part.tier.value)
            if "values" in part.arrays:
                raw = np.ascontiguousarray(part.arrays["values"].astype("<f4" if part.tier is Tier.FP32 else "<f2")).view(np.uint8)
            else:
                raw = part.arrays["codes"]
                if part.tier is not Tier.INT8 and self.planar:
                    raw = _repack(raw, part.tier.bits, to_planar=False)
                if G:
                    section[:, QUANTIZED_TIERS.index(part.tier), :] = part.arrays["group_scale_bias"]
                else:
                    raw = np.concatenate([np.ascontiguousarray(part.arrays["scale_bias"].astype("<f2")).view(np.uint8),
                                          raw], axis=1)
            raw = raw.reshape(part.rows, -1)[local[rows]]
            span = np.arange(raw.shape[1], dtype=np.int64)
            for r0 in range(0, rows.shape[0], _CHUNK_ROWS):
                chunk = rows[r0:r0 + _CHUNK_ROWS]
                payload[offsets[chunk][:, None] + span] = raw[r0:r0 + chunk.shape[0]]
        if G:
            payload[payload.shape[0] - section.nbytes:] = section.reshape(-1).view(np.uint8)
        if self.uniform_tier >= 0:
            row_meta = np.zeros((0, 4), dtype=np.uint64)
        else:
            nb = -(-R // BLOCK_ROWS)
            row_meta = np.zeros((nb, 4), dtype=np.uint64)
            row_meta[:, 0] = offsets[::BLOCK_ROWS].astype(np.uint64)
            padded = np.zeros(nb * BLOCK_ROWS, dtype=np.uint8)
            padded[:R] = codes
            for k in range(3):
                bits = ((padded >> k) & 1).reshape(nb, BLOCK_ROWS)
                row_meta[:, 1 + k] = np.packbits(bits, axis=1, bitorder="little").view("<u8").reshape(nb)
        attributes = {"format_version": version, "num_rows": R, "dim": D, "uniform_tier": self.uniform_tier}
        if G:
            attributes["scale_group_rows"] = G
        return QuantizedTable.from_stored(self.name, attributes, payload, row_meta, default)

    def _local_rows(self) -> np.ndarray:
        """int64 [R]: every row's index in its sub-table (0 for dropped rows)."""
        if self.slots is None:
            return np.arange(self.num_rows, dtype=np.int64)
        return self.slots.locate([p.rows for p in self.parts])[1]

    # ---- tensors and metadata ---------------------------------------------------------------------
    def tensor_name(self, part: Part, key: str) -> str:
        return f"{self.name}.{part.tier}.{key}"

    def initializers(self) -> dict[str, np.ndarray]:
        """Every tensor of the table by initializer name."""
        tensors = {self.tensor_name(p, k): a for p in self.parts for k, a in p.arrays.items()}
        if self.slots is not None:
            tensors.update(self.slots.tensors(self.name))
        return tensors

    def metadata(self) -> dict:
        return {"num_rows": self.num_rows, "dim": self.dim, "uniform_tier": self.uniform_tier,
                "format_version": self.format_version, "parts": [[str(p.tier), p.rows] for p in self.parts],
                "slots": self.slots is not None, "scale_group_rows": self.scale_group_rows,
                **({"slot_block": self.slots.block} if self.slots is not None and self.slots.legacy is None else {}),
                **({"code_layout": PLANAR} if self.planar else {})}

    @property
    def tier_counts(self) -> dict[Tier, int]:
        codes = self.row_tiers()
        return {t: int((codes == t.value).sum()) for t in Tier}

    def byte_report(self) -> PortableBytes:
        values = sum(p.value_bytes for p in self.parts)
        scales = sum(p.scale_bytes for p in self.parts)
        meta = (self.slots.nbytes if self.slots is not None else 0) + sum(
            int(p.arrays["default_row"].nbytes) for p in self.parts if "default_row" in p.arrays)
        return PortableBytes(values, scales, meta, values + scales + meta, 4 * self.num_rows * self.dim)

    @classmethod
    def from_tensors(cls, name: str, meta: Mapping, tensors: Mapping[str, np.ndarray]) -> "StandardTable":
        """A table read back from a model (its metadata entry and initializers), every shape and dtype checked
        against the metadata before anything is sized from it: a hostile file gives a FormatError naming the table."""
        where = f"table {name!r} (portable storage)"
        try:
            R, D, u, version = (int(meta[k]) for k in ("num_rows", "dim", "uniform_tier", "format_version"))
            listed = [(Tier.parse(t), int(n)) for t, n in meta["parts"]]
            has_slots = bool(meta["slots"])
            G = int(meta.get("scale_group_rows", 0))
            block = None if meta.get("slot_block") is None else int(meta["slot_block"])
            planar = meta.get("code_layout", "interleaved") == PLANAR
            if meta.get("code_layout", PLANAR) not in (PLANAR, "interleaved"):
                raise ValueError(f"code_layout {meta['code_layout']!r}")
        except (KeyError, TypeError, ValueError, FormatError) as exc:
            raise FormatError(f"{where}: unreadable metadata {meta!r} ({exc})") from exc
        if (not listed or not 1 <= D <= 65536 or R < 1 or version not in (1, 2, 3) or (version == 3) != (G > 0)
                or G < 0 or G & (G - 1)):
            raise FormatError(f"{where}: bad metadata {meta!r}")
        parts = []
        for tier, n in listed:
            expect = {"default_row": ((1, D), np.float32)} if tier is Tier.DROPPED else (
                {"values": ((n, D), np.float32 if tier is Tier.FP32 else np.float16)} if tier in (Tier.FP32, Tier.FP16) else
                {"codes": ((n, -(-D * tier.bits // 8)), np.uint8),
                 **({"group_scale_bias": ((-(-R // G), 2), np.float16)} if G else {"scale_bias": ((n, 2), np.float16)})})
            arrays = {}
            for key, (shape, dtype) in expect.items():
                tensor_name = f"{name}.{tier}.{key}"
                array = tensors.get(tensor_name)
                if array is None or array.shape != shape or array.dtype != dtype:
                    got = "missing" if array is None else f"{array.dtype} {list(array.shape)}"
                    raise FormatError(f"{where}: {tensor_name} must be {np.dtype(dtype).name} {list(shape)}, got {got}")
                arrays[key] = array
            parts.append(Part(tier, n, arrays))
        slots = None
        total = sum(n for _, n in listed)
        if has_slots:
            slots = SlotMap.read(where, name, block, tensors, R, [n for _, n in listed])
        elif len(listed) != 1 or total != R or listed[0][0] is Tier.DROPPED:
            raise FormatError(f"{where}: a table without slots must be one sub-table of {R} rows")
        return cls(name, R, D, tuple(parts), slots, u, version, G, planar)


def read_tables(metadata: Mapping[str, str], initializers: Mapping[str, np.ndarray]) -> tuple[dict[str, StandardTable], list]:
    """(portable tables by name, lookups as (node name, op, table)) from a model's metadata and initializers;
    empty when the model holds no portable tables."""
    if METADATA_KEY not in metadata:
        return {}, []
    try:
        recorded = json.loads(metadata[METADATA_KEY])
        tables_meta, lookups = recorded["tables"], recorded["lookups"]
        if not isinstance(tables_meta, dict) or not isinstance(lookups, list):
            raise ValueError("not a {tables, lookups} object")
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"unreadable {METADATA_KEY} metadata ({exc})") from exc
    tables = {name: StandardTable.from_tensors(name, meta, initializers) for name, meta in tables_meta.items()}
    return tables, [tuple(entry) for entry in lookups]


def inspect_text(path, tables: Mapping[str, StandardTable], lookups: list) -> str:
    """`shark-export inspect` for a portable model: per table its tiers and the bytes of its standard tensors."""
    header = (f"{'table':<32} {'rows':>10} {'dim':>5} {'tiers':<40} {'values':>11} {'scales':>9} {'slots+def':>9} "
              f"{'total':>11} {'of fp32':>8}")
    lines = [f"{path} (ops=standard: ai.onnx ops only, no custom-op library needed)", header, "-" * len(header)]
    total = fp32 = 0
    for name, table in tables.items():
        b = table.byte_report()
        tiers = " ".join(f"{t}:{c}" for t, c in table.tier_counts.items() if c)
        lines.append(f"{name:<32} {table.num_rows:>10} {table.dim:>5} {tiers:<40} {b.values:>11} {b.scales:>9} "
                     f"{b.metadata:>9} {b.total:>11} {b.total / b.fp32:>8.2%}")
        total += b.total
        fp32 += b.fp32
    lines.append("-" * len(header))
    lines.append(f"{'total':<32} {'':>10} {'':>5} {'':<40} {'':>11} {'':>9} {'':>9} {total:>11} {total / max(fp32, 1):>8.2%}")
    lines.append("lookups: " + ", ".join(f"{node} ({op} on {table}, standard ops)" for node, op, table in lookups))
    return "\n".join(lines)
