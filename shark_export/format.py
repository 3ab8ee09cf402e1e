"""Storage format v1/v2 (docs/FORMAT.md): tiers, row strides, the row-wise quantizer and the table object.

A table of ``R`` rows x ``D`` dims is three arrays -- ``payload`` (uint8, every row at the stride of its
tier, in row order), ``row_meta`` (uint64 ``[ceil(R/64), 4]`` block index for a mixed table, ``[0, 4]``
for a uniform one) and ``default_row`` (float32 ``[D]``, what dropped rows read as; in v2 ``[0]`` when
no row is dropped) -- plus the attributes ``format_version``, ``num_rows``, ``dim`` and ``uniform_tier``.
v1 pads every row to a multiple of 4 bytes; v2 (what is written now) stores rows unpadded.

This module only *writes* and *checks* that layout. ``shark_export.reference`` reads it back on an
independent code path; the C++ kernels are tested against that reader.
"""

from __future__ import annotations

import enum
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import FormatError, IndexOutOfRangeError

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "MAX_DIM",
    "MAX_ROWS",
    "FP16_MAX",
    "BLOCK_ROWS",
    "Tier",
    "row_stride",
    "row_bytes",
    "TableBytes",
    "QuantizedTable",
    "quantize_table",
]

FORMAT_VERSION = 2  # written
READABLE_VERSIONS = (1, 2)
MAX_DIM = 65536
MAX_ROWS = 2**40
FP16_MAX = 65504.0
BLOCK_ROWS = 64  # rows per row_meta block
_META_BLOCK_BYTES = 32  # one row_meta block: 4 x uint64

_FILE_MAGIC = "shark-export.table"
_FILE_KEYS = (
    "magic",
    "format_version",
    "name",
    "num_rows",
    "dim",
    "uniform_tier",
    "tier_counts",
    "payload",
    "row_meta",
    "default_row",
)


class Tier(enum.IntEnum):
    """Precision of one stored row; the value is the 3-bit code stored in ``row_meta``."""

    FP32 = 0
    FP16 = 1
    INT8 = 2
    INT4 = 3
    INT2 = 4
    DROPPED = 5

    @property
    def bits(self) -> int:
        """Bits per element (0 for a dropped row)."""
        return _TIER_BITS[self.value]

    @property
    def is_quantized(self) -> bool:
        """True for the int8/int4/int2 tiers (rows with a ``[scale f16][bias f16]`` header)."""
        return self.value in (2, 3, 4)

    @property
    def levels(self) -> int:
        """``L = 2^bits - 1``, the largest code of a quantized tier (0 for fp32/fp16/dropped)."""
        return (1 << self.bits) - 1 if self.is_quantized else 0

    @classmethod
    def parse(cls, value: Any) -> "Tier":
        """A Tier from a Tier, an int code 0..5, or a name (``"int8"``, ``"FP16"``, ``"float32"``, ``"drop"``)."""
        if isinstance(value, Tier):
            return value
        if isinstance(value, (bool, np.bool_)):
            raise FormatError(f"tier must be a Tier, a code 0..5 or a name, got {value!r}")
        if isinstance(value, (int, np.integer)):
            code = int(value)
            if 0 <= code <= 5:
                return cls(code)
            raise FormatError(f"invalid tier code {code} (valid codes: 0..5)")
        if isinstance(value, str):
            key = value.strip().lower()
            if key in _TIER_ALIASES:
                return _TIER_ALIASES[key]
            if key.isdigit():
                return cls.parse(int(key))
            raise FormatError(
                f"unknown tier name {value!r} (valid: {', '.join(t.name.lower() for t in Tier)})"
            )
        raise FormatError(f"tier must be a Tier, a code 0..5 or a name, got {value!r} ({type(value).__name__})")

    def __str__(self) -> str:
        return self.name.lower()


_TIER_BITS = (32, 16, 8, 4, 2, 0)
_TIER_ALIASES = {
    "fp32": Tier.FP32,
    "float32": Tier.FP32,
    "f32": Tier.FP32,
    "float": Tier.FP32,
    "fp16": Tier.FP16,
    "float16": Tier.FP16,
    "f16": Tier.FP16,
    "half": Tier.FP16,
    "int8": Tier.INT8,
    "int4": Tier.INT4,
    "int2": Tier.INT2,
    "dropped": Tier.DROPPED,
    "drop": Tier.DROPPED,
    "none": Tier.DROPPED,
}


def _check_dim(dim: int) -> int:
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise FormatError(f"dim must be an integer, got {dim!r}")
    dim = int(dim)
    if not 1 <= dim <= MAX_DIM:
        raise FormatError(f"dim {dim} is outside the supported range 1..{MAX_DIM}")
    return dim


def row_bytes(tier: Any, dim: int) -> int:
    """Bytes of one row of ``tier`` *before* padding (FORMAT.md table): 4D, 2D, 4+D, 4+ceil(D/2), 4+ceil(D/4), 0."""
    tier = Tier.parse(tier)
    dim = _check_dim(dim)
    if tier is Tier.FP32:
        return 4 * dim
    if tier is Tier.FP16:
        return 2 * dim
    if tier is Tier.INT8:
        return 4 + dim
    if tier is Tier.INT4:
        return 4 + (dim + 1) // 2
    if tier is Tier.INT2:
        return 4 + (dim + 3) // 4
    return 0


def row_stride(tier: Any, dim: int, format_version: int = FORMAT_VERSION) -> int:
    """Stored bytes of one row of ``tier``: :func:`row_bytes` (v2), rounded up to a multiple of 4 in v1."""
    n = row_bytes(tier, dim)
    return (n + 3) & ~3 if format_version == 1 else n


def _check_version(version: Any, where: str) -> int:
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
    ``[scale][bias]`` headers of the quantized rows, ``metadata`` is ``row_meta`` plus ``default_row``.
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
    """One embedding table in storage format v1.

    Build it with :func:`quantize_table` or :meth:`load`; a hand-built instance is checked by
    :meth:`validate` (which :meth:`load` always runs). ``uniform_tier`` is the tier code of a uniform
    table (then ``row_meta`` has shape ``[0, 4]``) or ``-1`` for a mixed table. ``tier_counts`` maps
    every :class:`Tier` to its number of rows. ``format_version`` sets the row strides (v1 padded to 4
    bytes, v2 unpadded) and whether ``default_row`` may be empty (v2, no dropped row).
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

    # ---- layout -----------------------------------------------------------------------------------
    @property
    def is_uniform(self) -> bool:
        return self.uniform_tier >= 0

    def stride(self, tier: Any) -> int:
        """Row stride of ``tier`` in this table."""
        return row_stride(tier, self.dim, self.format_version)

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
        for t in range(6):
            if lut[t] == 0:
                continue
            mask = (p0 if t & 1 else ~p0) & (p1 if t & 2 else ~p1) & (p2 if t & 4 else ~p2)
            off += lut[t] * np.bitwise_count(mask & before).astype(np.int64)
        return off.reshape(rows.shape)

    # ---- reporting --------------------------------------------------------------------------------
    def byte_report(self) -> TableBytes:
        """Sizes from the stored arrays' nbytes, split as in FORMAT.md (payload / scales / metadata)."""
        n_quantized = sum(int(self.tier_counts.get(t, 0)) for t in Tier if t.is_quantized)
        scales = 4 * n_quantized
        payload = int(self.payload.nbytes) - scales
        metadata = int(self.row_meta.nbytes) + int(self.default_row.nbytes)
        total = payload + scales + metadata
        fp32 = self.num_rows * self.dim * 4
        return TableBytes(payload=payload, scales=scales, metadata=metadata, total=total, fp32=fp32, ratio=total / fp32)

    def op_attributes(self) -> dict[str, int]:
        """The table attributes of an op node reading this table (``output_dtype`` is the op's own)."""
        return {
            "format_version": int(self.format_version),
            "num_rows": int(self.num_rows),
            "dim": int(self.dim),
            "uniform_tier": int(self.uniform_tier),
        }

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
            format_version=attributes["format_version"],
        )
        counts = probe._stored_tier_counts()
        return cls(
            name=probe.name, num_rows=int(probe.num_rows), dim=int(probe.dim), payload=payload, row_meta=row_meta,
            default_row=default_row, uniform_tier=int(probe.uniform_tier), tier_counts=counts,
            format_version=int(probe.format_version),
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
        version = _check_version(self.format_version, n)
        if not 1 <= R <= MAX_ROWS:
            raise FormatError(f"{n}: num_rows {R} is outside 1..2^40")
        if not 1 <= D <= MAX_DIM:
            raise FormatError(f"{n}: dim {D} is outside 1..{MAX_DIM}")
        if not -1 <= u <= 5:
            raise FormatError(f"{n}: uniform_tier {u} is not a tier code 0..5 or -1 (mixed)")
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
        n_payload = self.payload.shape[0]
        if u >= 0:
            if self.row_meta.shape[0] != 0:
                raise FormatError(
                    f"{n}: uniform table (tier {Tier(u)}) must have an empty row_meta [0, 4], "
                    f"got {self.row_meta.shape}"
                )
            expected = R * int(lut[u])
            if n_payload != expected:
                raise FormatError(
                    f"{n}: payload has {n_payload} bytes, expected {expected} ({R} rows x stride {lut[u]} of {Tier(u)})"
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
        invalid = p1 & p2  # codes 6 and 7 have bits 1 and 2 set
        if invalid.any():
            b = int(np.flatnonzero(invalid)[0])
            j = int(np.flatnonzero(np.unpackbits(np.array([invalid[b]], dtype="<u8").view(np.uint8), bitorder="little"))[0])
            code = int(((int(p0[b]) >> j) & 1) | (((int(p1[b]) >> j) & 1) << 1) | (((int(p2[b]) >> j) & 1) << 2))
            raise FormatError(f"{n}: row {b * BLOCK_ROWS + j} has invalid tier code {code} (valid codes: 0..5)")
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
            raise FormatError(f"{n}: payload has {n_payload} bytes, but the rows' strides add up to {end}")
        return counts

    # ---- files ------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the table to one uncompressed ``.npz`` file, atomically (temp file in the same
        directory, fsync, ``os.replace``), with the format version inside."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=".npz", dir=directory)
        try:
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a saved table is an ordinary readable file
            with os.fdopen(fd, "wb") as f:
                counts = np.array([int(self.tier_counts.get(t, 0)) for t in Tier], dtype=np.int64)
                np.savez(
                    f,
                    magic=np.array(_FILE_MAGIC),
                    format_version=np.array(self.format_version, dtype=np.int64),
                    name=np.array(str(self.name)),
                    num_rows=np.array(self.num_rows, dtype=np.int64),
                    dim=np.array(self.dim, dtype=np.int64),
                    uniform_tier=np.array(self.uniform_tier, dtype=np.int64),
                    tier_counts=counts,
                    payload=self.payload,
                    row_meta=self.row_meta,
                    default_row=self.default_row,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "QuantizedTable":
        """Read a file written by :meth:`save` and validate it. A missing file raises FileNotFoundError;
        a corrupt, truncated, foreign or wrong-version file raises :class:`FormatError` naming the file."""
        path = os.fspath(path)
        try:
            data = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - anything np.load trips over is a format problem
            raise FormatError(f"{path}: not a readable shark-export table file ({type(e).__name__}: {e})") from e
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise FormatError(f"{path}: not a shark-export table file (a single .npy array, not an .npz archive)")
        try:
            with data:
                missing = [k for k in _FILE_KEYS if k not in data.files]
                if missing:
                    raise FormatError(f"{path}: not a shark-export table file (missing {', '.join(missing)})")
                if str(data["magic"][()]) != _FILE_MAGIC:
                    raise FormatError(f"{path}: not a shark-export table file (magic {data['magic'][()]!r})")
                version = _check_version(int(data["format_version"][()]), path)
                arrays = {k: data[k] for k in _FILE_KEYS}  # reads (and CRC-checks) every member
        except FormatError:
            raise
        except Exception as e:  # noqa: BLE001
            raise FormatError(f"{path}: corrupt or truncated shark-export table file ({type(e).__name__}: {e})") from e
        try:
            counts_arr = arrays["tier_counts"]
            if counts_arr.shape != (6,):
                raise FormatError(f"tier_counts has shape {counts_arr.shape}, expected (6,)")
            table = cls(
                name=str(arrays["name"][()]),
                num_rows=int(arrays["num_rows"][()]),
                dim=int(arrays["dim"][()]),
                payload=arrays["payload"],
                row_meta=arrays["row_meta"],
                default_row=arrays["default_row"],
                uniform_tier=int(arrays["uniform_tier"][()]),
                tier_counts={t: int(counts_arr[t.value]) for t in Tier},
                format_version=version,
            )
            return table.validate()
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from e
        except (TypeError, ValueError) as e:
            raise FormatError(f"{path}: malformed shark-export table file ({e})") from e


# --------------------------------------------------------------------------------------------------
# Quantizer
# --------------------------------------------------------------------------------------------------

# Clipping search parameters per tier: (bins, max_steps). Each step evaluates two candidate ranges.
# int4/int2: steps of 1% of the range, shrinking it by up to 50%. int8: its error surface is jagged at
# coarse steps (a 1% clip rarely beats min/max), so steps of 1/800 of the range, shrinking it by up to 10%.
_CLIP_SEARCH = {Tier.INT8: (800, 80), Tier.INT4: (100, 50), Tier.INT2: (100, 50)}
# Elements per internal work block: keeps the float64 temporaries of one block in cache-sized pieces.
_WORK_ELEMENTS = 1 << 18


def _f16_directed(x: np.ndarray, up: bool) -> np.ndarray:
    """float64 -> float16 rounded toward +inf (``up``) or -inf: round to nearest, then step one ulp
    with ``np.nextafter`` where that went the wrong way. Inputs must lie within the fp16 range."""
    h = x.astype(np.float16)
    back = h.astype(np.float64)
    wrong = back < x if up else back > x
    if wrong.any():
        h[wrong] = np.nextafter(h[wrong], np.float16(np.inf if up else -np.inf))
    return h


def _quant_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) as float16 for rows with range [lo, hi] (float64): bias = fp16 down of lo,
    scale = fp16 up of (hi - bias)/L, bumped one more ulp in the rare case float64 rounding of the
    quotient left ``bias + L*scale < hi`` (that product and sum are exact in float64)."""
    bias = _f16_directed(lo, up=False)
    b64 = bias.astype(np.float64)
    scale = _f16_directed((hi - b64) / levels, up=True)
    short = b64 + levels * scale.astype(np.float64) < hi
    if short.any():
        scale[short] = np.nextafter(scale[short], np.float16(np.inf))
    return scale, bias


def _codes(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, levels: int) -> np.ndarray:
    """float64 [n, D] codes ``clamp(rint((x - bias)/scale), 0, L)`` (0 where scale == 0).
    ``x`` must be a float64 scratch array: it is overwritten and returned."""
    s = scale.astype(np.float64)
    zero = s == 0
    s[zero] = 1.0
    np.subtract(x, bias.astype(np.float64)[:, None], out=x)
    np.divide(x, s[:, None], out=x)
    np.rint(x, out=x)
    np.clip(x, 0, levels, out=x)
    if zero.any():
        x[zero] = 0
    return x


def _l2_error(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    """Per-row squared L2 error of storing ``x`` (float64 [n, D]) with range [lo, hi], computed on the
    exact stored values (fp16 scale/bias, float32 dequantized result)."""
    scale, bias = _quant_params(lo, hi, levels)
    q = _codes(x.copy(), scale, bias, levels)
    q *= scale.astype(np.float64)[:, None]
    q += bias.astype(np.float64)[:, None]
    xhat = q.astype(np.float32).astype(np.float64)
    xhat -= x
    return np.einsum("ij,ij->i", xhat, xhat)


def _l2_clip_range(x: np.ndarray, mn: np.ndarray, mx: np.ndarray, tier: Tier) -> tuple[np.ndarray, np.ndarray]:
    """Greedy clipping search of Guan et al. 2019 ("Post-training 4-bit quantization on embedding
    tables"), vectorized across the rows of ``x`` (float64 [n, D]).

    Start at [min, max] with step (max - min)/bins; at each step evaluate raising ``lo`` by one step and
    lowering ``hi`` by one step, move the end whose candidate has the lower L2 error, and keep the best
    range seen (the start range included, so the result is never worse than min/max). Errors are
    measured on the exact stored representation (fp16 scale/bias, float32 result).

    Cost: ``2 * max_steps + 1`` full quantize-dequantize evaluations per row, ~12 float64 passes over
    the row each. With (bins, max_steps) = (100, 50) for int4/int2 (the range may shrink by up to half)
    and (800, 80) for int8 (up to 10%), that is 101 resp. 161 evaluations: roughly 70-140x the plain
    min/max quantizer (measured, 100k x 64 rows, one core: int4/int2 ~6.5 s, int8 ~13 s against ~0.1 s
    without clipping; so ~11 / ~22 min for a 10M x 64 table). Memory stays a few float64 copies of
    one chunk.
    Typical gain (D = 64): L2 error -15..-25% for int4, -10% for int8, -50..-75% for int2 on
    heavy-tailed rows.
    """
    bins, steps = _CLIP_SEARCH[tier]
    L = tier.levels
    step = (mx - mn) / bins
    lo, hi = mn.copy(), mx.copy()
    best = _l2_error(x, lo, hi, L)
    best_lo, best_hi = lo.copy(), hi.copy()
    for _ in range(steps):
        e_left = _l2_error(x, lo + step, hi, L)
        e_right = _l2_error(x, lo, hi - step, L)
        left = e_left < e_right
        lo = np.where(left, lo + step, lo)
        hi = np.where(left, hi, hi - step)
        cur = np.where(left, e_left, e_right)
        better = cur < best
        best = np.where(better, cur, best)
        best_lo = np.where(better, lo, best_lo)
        best_hi = np.where(better, hi, best_hi)
    return best_lo, best_hi


def _pack(q: np.ndarray, tier: Tier, out: np.ndarray) -> None:
    """Write codes ``q`` (float64 or uint8 [n, D], values 0..L) into ``out`` (uint8 [n, nbytes])."""
    n, D = q.shape
    if tier is Tier.INT8:
        np.copyto(out, q, casting="unsafe")
        return
    per = 2 if tier is Tier.INT4 else 4
    width = 8 // per
    nbytes = out.shape[1]
    padded = np.zeros((n, nbytes * per), dtype=np.uint8)
    np.copyto(padded[:, :D], q, casting="unsafe")
    acc = padded[:, 0::per].copy()
    for i in range(1, per):
        acc |= padded[:, i::per] << (width * i)
    out[...] = acc


def _encode_rows(x: np.ndarray, mn: np.ndarray, mx: np.ndarray, tier: Tier, clip: str, out: np.ndarray) -> None:
    """Encode rows ``x`` ([n, D], any float dtype; row min/max ``mn``/``mx``) of ``tier`` into ``out``
    (uint8 [n, stride], fully written, padding zero)."""
    n, D = x.shape
    if tier is Tier.FP32:
        out.view("<f4")[...] = x
        return
    if tier is Tier.FP16:
        out[:, 2 * D:] = 0
        out[:, : 2 * D].view("<f2")[...] = x  # float64/float32 -> float16 is rounded once, to nearest even
        return
    L = tier.levels
    xf = x.astype(np.float64)
    lo, hi = mn.astype(np.float64), mx.astype(np.float64)
    if clip == "l2":
        lo, hi = _l2_clip_range(xf, lo, hi, tier)
    scale, bias = _quant_params(lo, hi, L)
    header = out[:, :4].view("<f2")
    header[:, 0] = scale
    header[:, 1] = bias
    nbytes = row_bytes(tier, D) - 4
    out[:, 4 + nbytes:] = 0
    _pack(_codes(xf, scale, bias, L), tier, out[:, 4: 4 + nbytes])


def _parse_tiers(tiers: Any, R: int, name: str) -> tuple[int, np.ndarray | None]:
    """(uniform code, None) or (-1, uint8[R] codes)."""
    if isinstance(tiers, (Tier, int, np.integer, str, bool, np.bool_)) or (
        isinstance(tiers, np.ndarray) and tiers.ndim == 0
    ):
        if isinstance(tiers, np.ndarray):
            tiers = tiers[()]
        try:
            return int(Tier.parse(tiers)), None
        except FormatError as e:
            raise FormatError(f"table {name!r}: {e}") from None
    arr = np.asarray(tiers)
    if arr.ndim != 1 or arr.shape[0] != R:
        raise FormatError(
            f"table {name!r}: tiers must be one tier code per row ({R}), got an array of shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        raise FormatError(f"table {name!r}: tiers must be an integer array of codes 0..5, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr > 5)
    if bad.any():
        r = int(np.argmax(bad))
        raise FormatError(f"table {name!r}: row {r} has invalid tier code {int(arr[r])} (valid codes: 0..5)")
    codes = arr.astype(np.uint8, copy=False)
    first = int(codes[0])
    if np.all(codes == first):
        return first, None
    return -1, codes


def _build_row_meta(codes: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, int]:
    """row_meta [nb, 4] and payload length for per-row ``codes`` (uint8[R], all valid)."""
    R = codes.shape[0]
    nb = -(-R // BLOCK_ROWS)
    meta = np.zeros((nb, 4), dtype=np.uint64)
    sizes = np.zeros(nb, dtype=np.int64)
    piece = 16384  # blocks per piece: bounded temporaries for huge tables
    for b0 in range(0, nb, piece):
        b1 = min(nb, b0 + piece)
        blk = np.zeros((b1 - b0) * BLOCK_ROWS, dtype=np.uint8)
        part = codes[b0 * BLOCK_ROWS: b1 * BLOCK_ROWS]
        blk[: part.shape[0]] = part
        blk = blk.reshape(b1 - b0, BLOCK_ROWS)
        for k in range(3):
            plane = np.packbits((blk >> k) & 1, axis=1, bitorder="little")  # bit j <- row j
            meta[b0:b1, 1 + k] = plane.view("<u8")[:, 0]
        row_sizes = lut[blk]
        if part.shape[0] < blk.size:  # rows past R (code 0 padding) occupy nothing
            row_sizes.reshape(-1)[part.shape[0]:] = 0
        sizes[b0:b1] = row_sizes.sum(axis=1)
    starts = np.zeros(nb, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    meta[:, 0] = starts.astype(np.uint64)
    return meta, int(starts[-1] + sizes[-1])


def _check_chunk(x: np.ndarray, codes: np.ndarray | None, uniform: int, r0: int, name: str):
    """Row min/max of a chunk; raises on non-finite values and on fp16-range violations of stored
    non-fp32 rows. NaN/Inf propagate into min/max, so no extra pass is needed to find them."""
    mn = x.min(axis=1)
    mx = x.max(axis=1)
    finite = np.isfinite(mn) & np.isfinite(mx)
    if not finite.all():
        i = int(np.argmin(finite))
        row = np.asarray(x[i])
        c = int(np.argmin(np.isfinite(row)))
        raise FormatError(
            f"table {name!r}: row {r0 + i} has a non-finite value {float(row[c])!r} at column {c}; "
            f"row values must be finite"
        )
    absmax = np.maximum(np.abs(mn.astype(np.float64)), np.abs(mx.astype(np.float64)))
    too_big = absmax > FP16_MAX
    if uniform >= 0:
        too_big &= uniform not in (Tier.FP32, Tier.DROPPED)
    else:
        too_big &= (codes != Tier.FP32) & (codes != Tier.DROPPED)
    if too_big.any():
        i = int(np.argmax(too_big))
        row = np.asarray(x[i], dtype=np.float64)
        c = int(np.argmax(np.abs(row)))
        tier = Tier(uniform if uniform >= 0 else int(codes[i]))
        raise FormatError(
            f"table {name!r}: row {r0 + i} (tier {tier}) has value {float(row[c])!r} at column {c} outside "
            f"the fp16 range |x| <= 65504; store that row as fp32"
        )
    return mn, mx


def quantize_table(
    weight: Any,
    tiers: Any,
    *,
    name: str = "table",
    default_row: Any = None,
    clip: str = "none",
    chunk_rows: int = 65536,
    format_version: int = FORMAT_VERSION,
) -> QuantizedTable:
    """Store ``weight`` ([R, D] float16/32/64, anything ``np.asarray`` takes) in format ``format_version``.

    ``tiers`` is one tier for every row (a :class:`Tier`, code or name; the table is then *uniform*) or
    an integer array of R codes (a table whose codes are all equal is stored as uniform too).
    ``default_row`` (float32 [D], finite) is what dropped rows read as; by default zeros when a row is
    dropped, and (v2) empty when none is.
    ``clip="l2"`` runs the per-row clipping search (see :func:`_l2_clip_range`; ~70-140x slower) for
    quantized rows instead of using their min/max.

    Rows are processed in chunks of at most ``chunk_rows`` (rounded up to a multiple of 64, and
    reduced so that one chunk holds at most 2^18 elements, but at least 64 rows): the extra memory on top of the output is a
    few float64 copies of one chunk plus, for a mixed table, ``tiers`` as uint8[R] and ``row_meta``.

    Raises :class:`FormatError` (naming the table, and the row and value where there is one) for a
    weight that is not 2-D, R = 0, D outside 1..65536, a non-finite value, a value |x| > 65504 in a row
    stored as fp16/int8/int4/int2, a bad ``tiers`` array or a bad ``default_row``.
    """
    name = str(name)
    format_version = _check_version(format_version, f"table {name!r}")
    if clip not in ("none", "l2"):
        raise FormatError(f"table {name!r}: clip must be 'none' or 'l2', got {clip!r}")
    if hasattr(weight, "detach") and hasattr(weight, "cpu"):  # a torch tensor, possibly a trainable parameter
        weight = weight.detach().cpu()
    w = np.asarray(weight)
    if w.ndim != 2:
        raise FormatError(f"table {name!r}: weight must be 2-D [rows, dim], got shape {w.shape}")
    if w.dtype not in (np.float16, np.float32, np.float64):
        raise FormatError(f"table {name!r}: weight must be float16, float32 or float64, got {w.dtype}")
    R, D = w.shape
    if R == 0:
        raise FormatError(f"table {name!r} is empty (0 rows); a table needs at least one row")
    if R > MAX_ROWS:
        raise FormatError(f"table {name!r}: {R} rows exceed the format's limit of 2^40")
    if D == 0 or D > MAX_DIM:
        raise FormatError(f"table {name!r}: dim {D} is outside the supported range 1..{MAX_DIM}")
    if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise FormatError(f"table {name!r}: chunk_rows must be a positive integer, got {chunk_rows!r}")

    if default_row is None:
        default = None  # decided once the tiers are known
    else:
        given = np.asarray(default_row)
        if given.shape != (D,):
            raise FormatError(f"table {name!r}: default_row must have shape ({D},), got {given.shape}")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                default = given.astype(np.float32)  # a copy: the table owns its arrays
        except (TypeError, ValueError) as e:
            raise FormatError(f"table {name!r}: default_row must be numeric, got {given.dtype} ({e})") from None
        if not np.isfinite(default).all():
            c = int(np.argmin(np.isfinite(default)))
            raise FormatError(
                f"table {name!r}: default_row has a non-finite value {float(default[c])!r} (as float32) at column {c}"
            )

    uniform, codes = _parse_tiers(tiers, R, name)
    if default is None:
        any_dropped = uniform == Tier.DROPPED or (uniform < 0 and bool((codes == Tier.DROPPED).any()))
        default = np.zeros(D if any_dropped or format_version == 1 else 0, dtype=np.float32)
    lut = _stride_lut(D, format_version)
    if uniform >= 0:
        row_meta = np.zeros((0, 4), dtype=np.uint64)
        n_payload = R * int(lut[uniform])
        counts = {t: (R if t.value == uniform else 0) for t in Tier}
    else:
        row_meta, n_payload = _build_row_meta(codes, lut)
        bc = np.bincount(codes, minlength=6)
        counts = {t: int(bc[t.value]) for t in Tier}
    payload = np.zeros(n_payload, dtype=np.uint8)
    # v1: every offset and stride is a multiple of 4, so rows are scattered as words; v2 rows are bytes.
    words = payload.view(np.uint32) if n_payload and format_version == 1 else None

    chunk = max(BLOCK_ROWS, min(int(chunk_rows), _WORK_ELEMENTS // D))
    chunk = -(-chunk // BLOCK_ROWS) * BLOCK_ROWS
    for r0 in range(0, R, chunk):
        r1 = min(R, r0 + chunk)
        x = w[r0:r1]
        cc = None if uniform >= 0 else codes[r0:r1]
        mn, mx = _check_chunk(x, cc, uniform, r0, name)
        if uniform >= 0:
            s = int(lut[uniform])
            if s:
                region = payload[r0 * s: r1 * s].reshape(r1 - r0, s)
                _encode_rows(x, mn, mx, Tier(uniform), clip, region)
            continue
        base = int(row_meta[r0 // BLOCK_ROWS, 0])
        sizes = lut[cc]
        ends = np.cumsum(sizes)
        present = np.flatnonzero(np.bincount(cc, minlength=6))
        if present.shape[0] == 1:  # one tier in this chunk: its rows are contiguous
            t = Tier(int(present[0]))
            s = int(lut[t])
            if s:
                region = payload[base: base + int(ends[-1])].reshape(r1 - r0, s)
                _encode_rows(x, mn, mx, t, clip, region)
            continue
        starts = base + ends - sizes
        for code in present:
            t = Tier(int(code))
            s = int(lut[t])
            if s == 0:
                continue
            sel = np.flatnonzero(cc == code)
            buf = np.empty((sel.shape[0], s), dtype=np.uint8)
            _encode_rows(x[sel], mn[sel], mx[sel], t, clip, buf)
            if words is not None:
                words[(starts[sel] >> 2)[:, None] + np.arange(s >> 2)] = buf.view(np.uint32)
            else:
                payload[starts[sel][:, None] + np.arange(s)] = buf

    return QuantizedTable(
        name=name,
        num_rows=int(R),
        dim=int(D),
        payload=payload,
        row_meta=row_meta,
        default_row=default,
        uniform_tier=int(uniform),
        tier_counts=counts,
        format_version=format_version,
    )
