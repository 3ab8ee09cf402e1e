"""The row-wise quantizer: float rows in, a table in storage format v1/v2/v3 (docs/FORMAT.md) out.

Asymmetric min/max per row (fp16 scale rounded up, fp16 bias rounded down, round-half-even codes), or the
clip range that minimizes each row's L2 error (Guan et al. 2019); rows processed in bounded chunks. In v3
the same ranges are taken per scale group and tier (all values of the group's rows of that tier).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import FormatError
from .page_hints import advise_mapping
from .row_codes import WORK_ELEMENTS, encode_tier_rows, group_params
from .format import (
    BLOCK_ROWS,
    FORMAT_VERSION,
    FP16_MAX,
    GROUPED_FORMAT_VERSION,
    MAX_DIM,
    MAX_ROWS,
    QuantizedTable,
    Tier,
    check_scale_group,
    check_version,
    group_section_bytes,
    _stride_lut,
)
from .tiers import QUANTIZED_TIERS

__all__ = ["quantize_table", "plan_layout", "TableLayout", "encode_rows", "is_row_source"]

def _let_go(payload: np.ndarray, start: int, end: int) -> int:
    """Drop the written pages [start, end) of a file-backed (np.memmap, shared) payload from this process's mapping:
    the data stays in the page cache and the file, the resident set does not grow with the table. Returns how far
    it got (a page boundary)."""
    return advise_mapping(payload, "MADV_DONTNEED", start, end)


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
        raise FormatError(f"table {name!r}: tiers must be an integer array of tier codes, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= len(Tier))
    if bad.any():
        r = int(np.argmax(bad))
        raise FormatError(f"table {name!r}: row {r} has invalid tier code {int(arr[r])} (valid codes: 0..{len(Tier) - 1})")
    codes = arr.astype(np.uint8, copy=False)
    first = int(codes[0])
    if np.all(codes == first):
        return first, None
    return -1, codes


def row_meta_of(codes: np.ndarray, dim: int, format_version: int) -> tuple[np.ndarray, int]:
    """row_meta [nb, 4] and the rows' payload length for per-row tier ``codes`` (uint8[R], all valid) of a table
    of ``dim`` in ``format_version``."""
    return _build_row_meta(codes, _stride_lut(dim, format_version))


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
    format_version: int | None = None,
    scale_group_rows: int = 0,
    allocate: Any = None,
) -> QuantizedTable:
    """Store ``weight`` ([R, D] float16/32/64, anything ``np.asarray`` takes) in format ``format_version``.

    ``tiers`` is one tier for every row (a :class:`Tier`, code or name; the table is then *uniform*) or
    an integer array of R codes (a table whose codes are all equal is stored as uniform too).
    ``default_row`` (float32 [D], finite) is what dropped rows read as; by default zeros when a row is
    dropped, and (v2) empty when none is.
    ``clip="l2"`` runs the per-row clipping search (see :func:`l2_clip_range`; ~70-140x slower) for
    quantized rows instead of using their min/max.
    ``allocate``: called with the payload's byte count, returns the zero-filled uint8 buffer to write it into
    (default: a new array). ``scale_group_rows`` (a power of two; format v3, the default version when it is given) shares one
    scale and bias per tier among each group of that many rows, and stores quantized rows as codes
    only; ranges (and the clipping search) then run over the group's rows of a tier.

    Rows are processed in chunks of at most ``chunk_rows`` (rounded up to a multiple of 64, and
    reduced so that one chunk holds at most 2^18 elements, but at least 64 rows): the extra memory on top of the output is a
    few float64 copies of one chunk plus, for a mixed table, ``tiers`` as uint8[R] and ``row_meta``.

    Raises :class:`FormatError` (naming the table, and the row and value where there is one) for a
    weight that is not 2-D, R = 0, D outside 1..65536, a non-finite value, a value |x| > 65504 in a row
    stored as fp16/int8/int4/int2, a bad ``tiers`` array or a bad ``default_row``.
    """
    w, layout = plan_layout(weight, tiers, name=name, default_row=default_row, format_version=format_version,
                            scale_group_rows=scale_group_rows)
    if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise FormatError(f"table {layout.name!r}: chunk_rows must be a positive integer, got {chunk_rows!r}")
    if clip not in ("none", "l2"):
        raise FormatError(f"table {layout.name!r}: clip must be 'none' or 'l2', got {clip!r}")
    name, R, G = layout.name, layout.rows, layout.group_rows
    # `allocate(nbytes)`: a zero-filled buffer to write into (a file-backed one: the table is never held whole)
    payload = np.zeros(layout.nbytes, dtype=np.uint8) if allocate is None else allocate(layout.nbytes)
    groups = None
    if G:
        chunk = layout.chunk_rows(chunk_rows)
        for r0 in range(0, R, chunk):  # every value checked before any group range is taken from it
            r1 = min(R, r0 + chunk)
            _check_chunk(w[r0:r1], None if layout.uniform >= 0 else layout.codes[r0:r1], layout.uniform, r0, name)
        groups = group_params(w, layout.codes, layout.uniform, G, clip)
        payload[layout.row_bytes:] = groups.reshape(-1).view(np.uint8)
    encode_rows(w, layout, payload, 0, R, clip=clip, chunk_rows=chunk_rows, group_params=groups)
    return layout.table(payload)


def is_row_source(weight: Any) -> bool:
    """A checkpoint's table (shark_export.checkpoint_reader.TensorSource), read by row blocks, never whole; not an
    array in memory."""
    return callable(getattr(weight, "read", None)) and hasattr(weight, "take")


def plan_layout(weight: Any, tiers: Any, *, name: str = "table", default_row: Any = None,
                format_version: int | None = None, scale_group_rows: int = 0) -> tuple[Any, "TableLayout"]:
    """(the rows to read, the table's layout) for quantize_table's arguments, checked as it checks them."""
    name = str(name)
    if format_version is None:
        format_version = GROUPED_FORMAT_VERSION if scale_group_rows else FORMAT_VERSION
    format_version = check_version(format_version, f"table {name!r}")
    G = check_scale_group(format_version, scale_group_rows, f"table {name!r}")
    if hasattr(weight, "detach") and hasattr(weight, "cpu"):  # a torch tensor, possibly a trainable parameter
        weight = weight.detach().cpu()
    w = weight if is_row_source(weight) else np.asarray(weight)
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

    return w, _layout(name, R, D, format_version, G, tiers, default)


@dataclass
class TableLayout:
    """Where every row of a table goes in its payload, and its header fields: all of a stored table but its
    rows' bytes. `codes` and `row_meta` (None / empty for a uniform table) start at row `first_row` (a multiple
    of BLOCK_ROWS): `part` cuts the layout of a row range to send to a worker (shark_export.parallel_store)."""

    name: str
    rows: int
    dim: int
    format_version: int
    group_rows: int
    uniform: int
    codes: np.ndarray | None
    row_meta: np.ndarray
    row_bytes: int  # payload bytes before the v3 group section
    counts: dict
    default_row: np.ndarray
    first_row: int = 0

    @property
    def nbytes(self) -> int:
        return self.row_bytes + group_section_bytes(self.rows, self.group_rows)

    def chunk_rows(self, chunk_rows: int = 65536) -> int:
        """Rows per work chunk: at most `chunk_rows` and 2^18 values, a multiple of BLOCK_ROWS."""
        chunk = max(BLOCK_ROWS, min(int(chunk_rows), WORK_ELEMENTS // self.dim))
        return -(-chunk // BLOCK_ROWS) * BLOCK_ROWS

    def offset_of(self, r: int) -> int:
        """Payload offset of row `r` (a multiple of BLOCK_ROWS, or `rows`, in a mixed table)."""
        if self.uniform >= 0:
            return r * int(_stride_lut(self.dim, self.format_version)[self.uniform])
        block = (r - self.first_row) // BLOCK_ROWS
        if r >= self.rows or block >= self.row_meta.shape[0]:
            return self.row_bytes
        return int(self.row_meta[block, 0])

    def part(self, r0: int, r1: int) -> "TableLayout":
        """The layout of rows [r0, r1) only (r0 a multiple of BLOCK_ROWS)."""
        if r0 % BLOCK_ROWS:
            raise ValueError(f"a layout part starts at a multiple of {BLOCK_ROWS} rows, got {r0}")
        if self.codes is None:
            return replace(self, first_row=r0)
        b0, b1 = (r0 - self.first_row) // BLOCK_ROWS, -(-(r1 - self.first_row) // BLOCK_ROWS)
        # one block more than the rows need, where there is one: offset_of(r1) is where the part ends
        return replace(self, codes=self.codes[r0 - self.first_row: r1 - self.first_row], row_meta=self.row_meta[b0:b1 + 1],
                       first_row=r0)

    def table(self, payload: np.ndarray) -> QuantizedTable:
        return QuantizedTable(name=self.name, num_rows=int(self.rows), dim=int(self.dim), payload=payload,
                              row_meta=self.row_meta, default_row=self.default_row, uniform_tier=int(self.uniform),
                              tier_counts=self.counts, format_version=self.format_version,
                              scale_group_rows=self.group_rows)


def _layout(name: str, R: int, D: int, format_version: int, G: int, tiers: Any, default) -> TableLayout:
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
        bc = np.bincount(codes, minlength=len(Tier))
        counts = {t: int(bc[t.value]) for t in Tier}
    return TableLayout(name, int(R), int(D), format_version, G, int(uniform), codes, row_meta, int(n_payload), counts,
                       default)


def encode_rows(w: Any, layout: TableLayout, payload: np.ndarray, r0: int, r1: int, *, clip: str = "none",
                chunk_rows: int = 65536, group_params: np.ndarray | None = None) -> None:
    """Quantize rows [r0, r1) of `w` (r0 a multiple of BLOCK_ROWS, within the rows `layout` covers) into their
    places in `payload` (the whole table's payload). Raises FormatError naming the table, row and value of a
    non-finite or out-of-range value. `group_params` (v3 only): the table's (scale, bias) per group and tier."""
    name, uniform, G = layout.name, layout.uniform, layout.group_rows
    lut = _stride_lut(layout.dim, layout.format_version)
    # v1: every offset and stride is a multiple of 4, so rows are scattered as words; v2 rows are bytes.
    words = payload.view(np.uint32) if layout.row_bytes and layout.format_version == 1 else None

    def shared(rows: np.ndarray, tier: Tier) -> tuple[np.ndarray, np.ndarray] | None:
        """The v3 group (scale, bias) of each of ``rows`` (absolute row ids) of a quantized ``tier``."""
        if not G or not tier.is_quantized:
            return None
        slot = group_params[rows // G, QUANTIZED_TIERS.index(tier)]
        return slot[:, 0], slot[:, 1]

    chunk = layout.chunk_rows(chunk_rows)
    written = layout.offset_of(r0)  # payload bytes before this are final: a file-backed payload lets go of their pages
    for c0 in range(r0, r1, chunk):
        c1 = min(r1, c0 + chunk)
        if c0 > r0:
            written = _let_go(payload, written, layout.offset_of(c0))
        x = w[c0:c1]
        cc = None if uniform >= 0 else layout.codes[c0 - layout.first_row: c1 - layout.first_row]
        mn, mx = _check_chunk(x, cc, uniform, c0, name)
        if uniform >= 0:
            s = int(lut[uniform])
            if s:
                region = payload[c0 * s: c1 * s].reshape(c1 - c0, s)
                encode_tier_rows(x, mn, mx, Tier(uniform), clip, region, shared(np.arange(c0, c1), Tier(uniform)))
            continue
        base = layout.offset_of(c0)
        sizes = lut[cc]
        ends = np.cumsum(sizes)
        present = np.flatnonzero(np.bincount(cc, minlength=len(Tier)))
        if present.shape[0] == 1:  # one tier in this chunk: its rows are contiguous
            t = Tier(int(present[0]))
            s = int(lut[t])
            if s:
                region = payload[base: base + int(ends[-1])].reshape(c1 - c0, s)
                encode_tier_rows(x, mn, mx, t, clip, region, shared(np.arange(c0, c1), t))
            continue
        starts = base + ends - sizes
        for code in present:
            t = Tier(int(code))
            s = int(lut[t])
            if s == 0:
                continue
            sel = np.flatnonzero(cc == code)
            buf = np.empty((sel.shape[0], s), dtype=np.uint8)
            encode_tier_rows(x[sel], mn[sel], mx[sel], t, clip, buf, shared(c0 + sel, t))
            if words is not None:
                words[(starts[sel] >> 2)[:, None] + np.arange(s >> 2)] = buf.view(np.uint32)
            else:
                payload[starts[sel][:, None] + np.arange(s)] = buf
    _let_go(payload, written, layout.offset_of(r1))
