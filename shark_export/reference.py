"""Pure numpy reference reader of storage formats v1, v2 and v3 -- what the C++ kernels are tested against.

Independent of the quantizer: rows are located by walking the bit-planes of ``row_meta`` (decode all 64
codes of a block, exclusive prefix sum of their strides) rather than the popcount formula used by
``QuantizedTable.row_offsets``, and decoded straight from the payload bytes per docs/FORMAT.md. Only the
tier codes and the stride formula are shared with ``shark_export.format``.

Numerics:
- fp32 rows are copied bit-exactly, fp16 rows widened exactly;
- quantized rows: ``float32(float64(q) * float64(scale) + float64(bias))`` -- one rounding, equal to the
  kernels' float32 ``fma``; ``scale``/``bias`` from the row's header (v1, v2) or from its scale group's
  slot for its tier in the section at the end of the payload (v3);
- dropped rows read as ``default_row``;
- :func:`embedding_bag` accumulates in float64 and rounds once to float32 at the end (mean divides the
  float64 sum by the count first); a float32-accumulating kernel differs from it by float32 summation
  error only. A float16 ``output_dtype`` is the float32 result rounded to nearest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FormatError, IndexOutOfRangeError
from .format import (GROUP_RECORD_BYTES, MAX_DIM, MAX_ROWS, QUANTIZED_TIERS, READABLE_VERSIONS, QuantizedTable,
                     row_stride)
from .tiers import HEADER_BYTES, Tier, decode_values, value_bytes

__all__ = ["dequantize_rows", "dequantize", "gather", "embedding_bag"]

_CHUNK_BYTES = 1 << 22  # rows per dequantize() chunk ~ 4 MiB of float32 output


def _label(table: QuantizedTable) -> str:
    return f"table {table.name!r}"


def _strides(dim: int, format_version: int) -> np.ndarray:
    lut = np.zeros(8, dtype=np.int64)  # codes 6/7: invalid, stride 0 here, rejected below
    for tier in Tier:
        lut[tier] = row_stride(tier, dim, format_version)
    return lut


def _header_bytes(table: QuantizedTable, code: int) -> int:
    """The [scale][bias] header in front of a quantized row's codes; none in v3 (groups hold it)."""
    return HEADER_BYTES if Tier(code).is_quantized and int(table.format_version) < 3 else 0


def _value_bytes(code: int, dim: int, header: int) -> int:
    """Bytes a row of ``code`` really uses (header + values, no padding)."""
    return header + value_bytes(Tier(code), dim)


def _group_section(table: QuantizedTable) -> tuple[int, int]:
    """(rows per scale group, byte where the v3 group section starts); (0, payload length) before v3."""
    n = int(table.payload.shape[0])
    G = int(getattr(table, "scale_group_rows", 0) or 0)
    if int(table.format_version) < 3:
        return 0, n
    groups = -(-int(table.num_rows) // G)
    return G, n - GROUP_RECORD_BYTES * groups


def _check_rows(table: QuantizedTable, flat: np.ndarray) -> None:
    R = int(table.num_rows)
    bad = (flat < 0) | (flat >= R)
    if bad.any():
        pos = int(np.argmax(bad))
        raise IndexOutOfRangeError(
            f"{_label(table)}: index {int(flat[pos])} at flat position {pos} is out of range "
            f"(the table has {R} rows; valid indices are 0..{R - 1})"
        )


def _locate(table: QuantizedTable, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tier codes uint8[n], byte offsets int64[n]) of in-range ``rows`` (int64[n])."""
    R, D = int(table.num_rows), int(table.dim)
    lut = _strides(D, int(table.format_version))
    n_payload = _group_section(table)[1]  # the rows end where the v3 group section starts
    if table.uniform_tier >= 0:
        code = int(table.uniform_tier)
        if not 0 <= code < len(Tier):
            raise FormatError(f"{_label(table)}: uniform_tier {code} is not a tier code")
        codes = np.full(rows.shape, code, dtype=np.uint8)
        offsets = rows * lut[code]
    else:
        nb = -(-R // 64)
        if table.row_meta.shape != (nb, 4):
            raise FormatError(f"{_label(table)}: row_meta has shape {table.row_meta.shape}, expected ({nb}, 4)")
        blocks, within = rows // 64, rows % 64
        ublocks, inverse = np.unique(blocks, return_inverse=True)
        meta = np.asarray(table.row_meta[ublocks], dtype=np.uint64)
        shifts = np.arange(64, dtype=np.uint64)
        block_codes = np.zeros((ublocks.shape[0], 64), dtype=np.int64)
        for k in range(3):
            block_codes |= ((meta[:, 1 + k, None] >> shifts) & np.uint64(1)).astype(np.int64) << k
        row_ids = ublocks[:, None] * 64 + np.arange(64)
        in_table = row_ids < R
        invalid = (block_codes >= len(Tier)) & in_table
        if invalid.any():
            b, j = np.argwhere(invalid)[0]
            raise FormatError(
                f"{_label(table)}: row {int(row_ids[b, j])} has invalid tier code {int(block_codes[b, j])}"
            )
        sizes = np.where(in_table, lut[block_codes], 0)
        before = np.cumsum(sizes, axis=1) - sizes  # exclusive prefix sum inside the block
        offsets = meta[inverse, 0].astype(np.int64) + before[inverse, within]
        codes = block_codes[inverse, within].astype(np.uint8)
    ends = offsets + np.array([_value_bytes(c, D, _header_bytes(table, c)) for c in range(len(Tier))], dtype=np.int64)[codes]
    overrun = ends > n_payload
    if overrun.any():
        i = int(np.argmax(overrun))
        raise FormatError(
            f"{_label(table)}: row {int(rows[i])} (tier {Tier(int(codes[i]))}) at offset {int(offsets[i])} "
            f"ends past the payload ({n_payload} bytes)"
        )
    return codes, offsets


def row_spans(table: QuantizedTable, rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """(byte offsets, byte lengths) in the payload of the distinct in-range `rows` (other ids are skipped): what a
    lookup of them reads, header included."""
    r = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
    r = r[(r >= 0) & (r < int(table.num_rows))]
    codes, offsets = _locate(table, r)
    D = int(table.dim)
    lengths = np.array([_value_bytes(c, D, _header_bytes(table, c)) for c in range(len(Tier))], dtype=np.int64)[codes]
    return offsets, lengths


def _decode(table: QuantizedTable, code: int, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float32 [n, D] values of ``rows`` of one tier ``code`` at byte ``offsets``."""
    D = int(table.dim)
    n = offsets.shape[0]
    tier = Tier(code)
    if tier is Tier.DROPPED:
        if table.default_row.shape != (D,):
            raise FormatError(f"{_label(table)}: {n} dropped row(s) read default_row, which is empty")
        return np.broadcast_to(np.asarray(table.default_row, dtype=np.float32), (n, D))
    header = _header_bytes(table, code)
    nbytes = _value_bytes(code, D, header)
    payload = np.asarray(table.payload)
    raw = payload[offsets[:, None] + np.arange(nbytes)]  # [n, nbytes] uint8, contiguous
    if not tier.is_quantized:
        return decode_values(raw, tier, D)
    if header:
        sb = raw[:, 0:HEADER_BYTES]
    else:  # v3: the slot of the row's tier in its group's record
        G, section = _group_section(table)
        slot = section + GROUP_RECORD_BYTES * (rows // G) + HEADER_BYTES * QUANTIZED_TIERS.index(tier)
        sb = payload[slot[:, None] + np.arange(HEADER_BYTES)]
    scale = sb[:, 0:2].copy().view("<f2")[:, 0].astype(np.float64)
    bias = sb[:, 2:4].copy().view("<f2")[:, 0].astype(np.float64)
    return decode_values(raw[:, header:], tier, D, scale, bias)


def _as_rows(table: QuantizedTable, rows: Any) -> np.ndarray:
    arr = np.asarray(rows)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{_label(table)}: row indices must be integers, got dtype {arr.dtype}")
    return arr


def _checked(table: QuantizedTable) -> QuantizedTable:
    """The attributes checked against the tensors' shapes before anything is sized from them (a hostile
    `num_rows` or `dim` raises FormatError, never allocates). Row contents are checked where rows are read."""
    if not isinstance(table, QuantizedTable):
        raise FormatError(f"expected a QuantizedTable, got {type(table).__name__}")
    name = _label(table)
    values = {}
    for attr, low, high in (("num_rows", 1, MAX_ROWS), ("dim", 1, MAX_DIM), ("uniform_tier", -1, len(Tier) - 1)):
        v = getattr(table, attr)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not low <= int(v) <= high:
            raise FormatError(f"{name}: {attr} {v!r} is outside {low}..{high}")
        values[attr] = int(v)
    R, D, u = values["num_rows"], values["dim"], values["uniform_tier"]
    version = table.format_version
    if version not in READABLE_VERSIONS:
        raise FormatError(f"{name}: format_version {version!r} is not supported")
    G = getattr(table, "scale_group_rows", 0)
    if version >= 3:
        if isinstance(G, (bool, np.bool_)) or not isinstance(G, (int, np.integer)) or not 1 <= int(G) <= MAX_ROWS \
                or int(G) & (int(G) - 1):
            raise FormatError(f"{name}: scale_group_rows {G!r} is not a power of two in 1..2^40")
    elif G:
        raise FormatError(f"{name}: scale_group_rows {G!r} is set on a format_version {version} table")
    arrays = {"payload": (np.uint8, 1), "row_meta": (np.uint64, 2), "default_row": (np.float32, 1)}
    for attr, (dtype, ndim) in arrays.items():
        arr = getattr(table, attr)
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
            raise FormatError(f"{name}: {attr} must be a {np.dtype(dtype).name} array of {ndim} dimension(s)")
    expected_blocks = 0 if u >= 0 else -(-R // 64)
    if table.row_meta.shape != (expected_blocks, 4):
        raise FormatError(f"{name}: row_meta has shape {table.row_meta.shape}, expected ({expected_blocks}, 4)")
    if table.default_row.shape not in ((D,), (0,)) or (table.default_row.shape == (0,) and version < 2):
        raise FormatError(f"{name}: default_row has shape {table.default_row.shape}, expected ({D},)")
    groups = 12 * -(-R // int(G)) if version >= 3 else 0
    if table.payload.shape[0] < groups:
        raise FormatError(f"{name}: payload has {table.payload.shape[0]} bytes, fewer than its {groups}-byte group section")
    if u >= 0 and table.payload.shape[0] != R * row_stride(u, D, version) + groups:
        raise FormatError(f"{name}: payload has {table.payload.shape[0]} bytes, a uniform {Tier(u)} table of {R} rows needs "
                          f"{R * row_stride(u, D, version) + groups}")
    return table


def dequantize_rows(table: QuantizedTable, rows: Any) -> np.ndarray:
    """float32 ``[len(rows), D]``: the stored value of each of ``rows`` (1-D integer array)."""
    return _dequantize_rows(_checked(table), rows)


def _dequantize_rows(table: QuantizedTable, rows: Any) -> np.ndarray:
    arr = _as_rows(table, rows)
    if arr.ndim != 1:
        raise ValueError(f"{_label(table)}: rows must be 1-D, got shape {arr.shape}")
    _check_rows(table, arr)
    r = arr.astype(np.int64)
    out = np.empty((r.shape[0], int(table.dim)), dtype=np.float32)
    if r.shape[0] == 0:
        return out
    codes, offsets = _locate(table, r)
    for code in np.unique(codes):
        sel = np.flatnonzero(codes == code)
        out[sel] = _decode(table, int(code), offsets[sel], r[sel])
    return out


def dequantize(table: QuantizedTable) -> np.ndarray:
    """float32 ``[R, D]``: the whole table, decoded in row chunks."""
    _checked(table)
    R, D = int(table.num_rows), int(table.dim)
    out = np.empty((R, D), dtype=np.float32)
    step = max(64, _CHUNK_BYTES // (4 * D))
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        out[r0:r1] = _dequantize_rows(table, np.arange(r0, r1, dtype=np.int64))
    return out


def _output_dtype(output_dtype: Any) -> np.dtype:
    dt = np.dtype(output_dtype)
    if dt not in (np.float32, np.float16):
        raise ValueError(f"output_dtype must be float32 or float16, got {dt}")
    return dt


def gather(table: QuantizedTable, indices: Any, output_dtype: Any = np.float32) -> np.ndarray:
    """``[*indices.shape, D]`` rows of the table (``RowwiseDequantGather``). ``indices``: integers of any
    rank (0-d and empty included). A negative or ``>= R`` index raises :class:`IndexOutOfRangeError`
    naming the table, the value, its flat position and R."""
    dt = _output_dtype(output_dtype)
    _checked(table)
    idx = _as_rows(table, indices)
    flat = idx.reshape(-1)
    _check_rows(table, flat)
    uniq, inverse = np.unique(flat.astype(np.int64), return_inverse=True)
    rows = _dequantize_rows(table, uniq)
    return rows[inverse.reshape(-1)].reshape(*idx.shape, int(table.dim)).astype(dt, copy=False)


def embedding_bag(
    table: QuantizedTable,
    indices: Any,
    offsets: Any = None,
    per_sample_weights: Any = None,
    mode: str | int = "sum",
    include_last_offset: bool = False,
    padding_idx: int = -1,
    output_dtype: Any = np.float32,
) -> np.ndarray:
    """``[B, D]`` bag reductions with ``torch.nn.EmbeddingBag`` semantics (``RowwiseDequantEmbeddingBag``).

    ``indices`` 1-D with ``offsets`` (B starts, or B+1 with ``include_last_offset``; ``offsets[0] == 0``,
    non-decreasing, ``<= len(indices)``), or 2-D ``[B, L]`` without offsets. ``mode`` "sum"/"mean" (or
    0/1). ``per_sample_weights`` (same shape as ``indices``) in sum mode only. Entries equal to
    ``padding_idx`` (``-1``: none) neither add nor count; empty bags (and all-padding bags) give zeros.
    Sums are accumulated in float64 and rounded once to float32 (mean: float64 sum / count, then
    float32); float16 output rounds that float32 result. Errors: :class:`FormatError` (a ValueError) for
    bad arguments/offsets, :class:`IndexOutOfRangeError` for an index outside [0, R) anywhere in
    ``indices``.
    """
    dt = _output_dtype(output_dtype)
    _checked(table)
    name = _label(table)
    modes = {"sum": 0, "mean": 1, 0: 0, 1: 1}
    if isinstance(mode, bool) or mode not in modes:
        raise FormatError(f"{name}: embedding_bag mode must be 'sum' (0) or 'mean' (1), got {mode!r}")
    mean = modes[mode] == 1
    idx = _as_rows(table, indices)
    padding_idx = _checked_padding(name, padding_idx, int(table.num_rows))
    starts, ends = _bag_bounds(name, idx, offsets, include_last_offset)
    flat = idx.reshape(-1)
    _check_rows(table, flat)
    weights = None
    if per_sample_weights is not None:
        if mean:
            raise FormatError(f"{name}: per_sample_weights is only supported in mode 'sum', got mode {mode!r}")
        weights = _checked_weights(name, per_sample_weights, idx.shape)
    return _reduce_bags(table, flat, starts, ends, weights, mean, padding_idx).astype(np.float32).astype(dt, copy=False)


def _checked_padding(name: str, padding_idx: Any, num_rows: int) -> int:
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
        raise FormatError(f"{name}: padding_idx must be an integer, got {padding_idx!r}")
    padding_idx = int(padding_idx)
    if padding_idx != -1 and not 0 <= padding_idx < num_rows:
        raise FormatError(f"{name}: padding_idx {padding_idx} must be -1 (none) or in 0..{num_rows - 1}")
    return padding_idx


def _bag_bounds(name: str, idx: np.ndarray, offsets: Any, include_last_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each bag's [start, end) among the flat indices: rows of a 2-D `idx`, or checked `offsets`."""
    if idx.ndim == 2:
        if offsets is not None:
            raise FormatError(f"{name}: offsets must be None when indices is 2-D (got shape {idx.shape})")
        B, L = idx.shape
        starts = np.arange(B, dtype=np.int64) * L
        return starts, starts + L
    if idx.ndim != 1:
        raise FormatError(f"{name}: indices must be 1-D (with offsets) or 2-D [B, L], got shape {idx.shape}")
    if offsets is None:
        raise FormatError(f"{name}: 1-D indices need offsets")
    off = np.asarray(offsets)
    if off.ndim != 1 or off.dtype.kind not in "iu":
        raise FormatError(f"{name}: offsets must be a 1-D integer array, got {off.dtype} with shape {off.shape}")
    off = off.astype(np.int64)
    n = idx.shape[0]
    if include_last_offset and off.shape[0] == 0:
        raise FormatError(f"{name}: include_last_offset needs at least one offset (B + 1 entries)")
    if off.shape[0] and off[0] != 0:
        raise FormatError(f"{name}: offsets[0] must be 0, got {int(off[0])}")
    dec = np.flatnonzero(np.diff(off) < 0)
    if dec.shape[0]:
        i = int(dec[0]) + 1
        raise FormatError(
            f"{name}: offsets must be non-decreasing, but offsets[{i}] = {int(off[i])} < "
            f"offsets[{i - 1}] = {int(off[i - 1])}"
        )
    if off.shape[0] and off[-1] > n:
        raise FormatError(f"{name}: offsets[{off.shape[0] - 1}] = {int(off[-1])} exceeds len(indices) = {n}")
    if include_last_offset:
        return off[:-1], off[1:]
    return off, np.append(off[1:], n)


def _checked_weights(name: str, per_sample_weights: Any, shape: tuple) -> np.ndarray:
    psw = np.asarray(per_sample_weights)
    if psw.shape != shape:
        raise FormatError(f"{name}: per_sample_weights has shape {psw.shape}, expected the shape of indices {shape}")
    if psw.dtype.kind != "f":
        raise FormatError(f"{name}: per_sample_weights must be floating point, got {psw.dtype}")
    return psw.reshape(-1).astype(np.float64)


def _reduce_bags(table: QuantizedTable, flat: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 weights: np.ndarray | None, mean: bool, padding_idx: int) -> np.ndarray:
    """float64 [B, D]: each bag's (weighted) sum or mean of its non-padding rows; empty bags are zeros."""
    B = starts.shape[0]
    lengths = ends - starts
    bag = np.repeat(np.arange(B, dtype=np.int64), lengths)
    bag_first = np.cumsum(lengths) - lengths  # where each bag starts among the selected entries
    pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - bag_first, lengths)
    rows = flat[pos].astype(np.int64)
    keep = rows != padding_idx if padding_idx >= 0 else np.ones(rows.shape, dtype=bool)
    bag, pos, rows = bag[keep], pos[keep], rows[keep]

    out = np.zeros((B, int(table.dim)), dtype=np.float64)
    counts = np.bincount(bag, minlength=B)
    if rows.shape[0]:
        uniq, inverse = np.unique(rows, return_inverse=True)
        values = _dequantize_rows(table, uniq).astype(np.float64)[inverse.reshape(-1)]
        if weights is not None:
            values *= weights[pos][:, None]
        nonempty = np.flatnonzero(counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])[nonempty]
        out[nonempty] = np.add.reduceat(values, first, axis=0)  # entries are grouped by bag, in order
        if mean:
            out[nonempty] /= counts[nonempty, None]
    return out


def multi_lookup(fields: list[dict], output_dtype: Any = np.float32) -> np.ndarray:
    """``[B, W]``: several fields' lookups side by side, in field order (``RowwiseDequantMultiLookup``).

    Each field is a dict: ``table``, ``indices`` and, for a bag, ``bag=True`` with the arguments of
    :func:`embedding_bag` (``offsets``, ``per_sample_weights``, ``mode``, ``include_last_offset``,
    ``padding_idx``). A gather with indices ``[B, L...]`` fills ``L... * D`` columns, a bag ``D``. Every
    field must give the same B (a :class:`FormatError` naming both fields otherwise)."""
    dt = _output_dtype(output_dtype)
    blocks = []
    for k, f in enumerate(fields):
        table = f["table"]
        if f.get("bag", False):
            out = embedding_bag(table, f["indices"], f.get("offsets"), f.get("per_sample_weights"), f.get("mode", 0),
                                bool(f.get("include_last_offset", False)), f.get("padding_idx", -1))
        else:
            out = gather(table, f["indices"])
            if out.ndim < 2:
                raise FormatError(f"field {k} ({_label(table)}): indices must have a batch dimension, got a scalar")
        if blocks and out.shape[0] != blocks[0].shape[0]:
            raise FormatError(f"field {k} ({_label(table)}) has {out.shape[0]} samples, field 0 has {blocks[0].shape[0]}")
        blocks.append(out.reshape(out.shape[0], -1))
    if not blocks:
        raise FormatError("multi_lookup needs at least one field")
    return np.concatenate(blocks, axis=1).astype(dt, copy=False)
