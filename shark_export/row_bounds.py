"""Every row keeps the error bound of its tier under its own range, and zero rows stay exactly zero.

A quantized row stored with its own header (format v2) is within ``scale_r / 2`` of its values (plus float32
rounding), where ``scale_r`` is computed from that row's own min and max: its **row-wise bound**. Scale groups
(format v3) share one range per group and tier, so a row whose range is smaller than its group's loses that
bound (a row near 1e-4 next to rows near 1 keeps none of its precision), and an all-zero row (a padding row)
no longer reads zero. The converter's default (`QuantConfig.scale_group="auto"`) therefore checks every row:

1. rows that are all zero are never dropped and never share a group's range: they take the cheapest tier
   that stores them exactly (a quantized row with its own header has scale 0 and bias 0; in a grouped table,
   fp16);
2. a grouped table is quantized, each quantized row's error is measured against its row-wise bound, and rows
   over it move one tier up (int2 → int4 → int8 → fp16 → fp32; the group ranges are then taken again over the
   rows that remain); this repeats until every row is within its bound;
3. the grouped table is kept only when it is smaller than the same table with a header per row; otherwise
   the table is stored with a header per row, which meets every bound by construction.

Why not a per-row scale code of a byte or so: a row's feasible (scale, bias) region for its own bound is as
narrow as the fp16 rounding of its own scale (zero-width for rows whose range is an exact fp16 number), so
anything short of its own fp16 scale and bias misses it for some rows. The bytes that groups save are kept
where they are free: on tables whose rows share ranges.
"""

from __future__ import annotations

import numpy as np

from .format import QuantizedTable, Tier, row_stride
from .tiers import BY_PRECISION, QUANTIZED_TIERS
from .quantize import is_row_source, plan_layout, quantize_table
from .row_codes import quant_params
from .reference import dequantize_rows

# Rows per chunk when measuring errors: bounded float64 temporaries.
_CHUNK_ELEMENTS = 1 << 20
# A row over its bound moves one tier up per round; four rounds reach fp32 from int2, two more let the
# group ranges settle after the rows that left them.
_MAX_ROUNDS = 6
_STORED = [t for t in BY_PRECISION if t is not Tier.DROPPED]
_UP = dict(zip(_STORED[1:], _STORED[:-1]))  # each stored tier to the next more precise one
_UP_CODES = np.array([_UP.get(t, t) for t in Tier], dtype=np.uint8)  # fp32 and dropped rows stay


def _chunks(rows: int, dim: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, dim))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def zero_rows(weight) -> np.ndarray:
    """Indices of the rows whose values are all zero (read in bounded chunks)."""
    found = []
    R, D = weight.shape
    for r0, r1 in _chunks(R, D):
        found.append(r0 + np.flatnonzero(~np.asarray(weight[r0:r1]).any(axis=1)))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def keep_zero_rows_exact(codes: np.ndarray, zeros: np.ndarray, dim: int, grouped: bool) -> np.ndarray:
    """Per-row tier `codes` (changed in place and returned) with every all-zero row at a tier that stores it
    exactly: never dropped (a dropped row reads the table's default row), and in a grouped table never a quantized
    tier that shares its group's range (fp16 there). A quantized row with its own header stores zeros exactly."""
    if zeros.shape[0] == 0:
        return codes
    at = codes[zeros]
    if grouped:
        at[np.isin(at, (Tier.DROPPED, *QUANTIZED_TIERS))] = Tier.FP16
    else:
        exact = Tier.INT2 if row_stride(Tier.INT2, dim, 2) < row_stride(Tier.FP16, dim, 2) else Tier.FP16
        at[at == Tier.DROPPED] = exact
    codes[zeros] = at
    return codes


def row_bounds(weight, tiers: np.ndarray) -> np.ndarray:
    """float64 [R]: each row's row-wise bound at its tier (``scale_r / 2`` of its own min/max range, plus the
    float32 rounding of the stored value, ``2^-23 · max|x|``); +inf for rows that are not quantized."""
    R, D = weight.shape
    bounds = np.full(R, np.inf)
    for r0, r1 in _chunks(R, D):
        x = np.asarray(weight[r0:r1], dtype=np.float64)
        t = tiers[r0:r1]
        mn, mx = x.min(axis=1), x.max(axis=1)
        for tier in QUANTIZED_TIERS:
            sel = np.flatnonzero(t == tier)
            if sel.shape[0]:
                scale, _ = quant_params(mn[sel], mx[sel], tier.levels)
                rounding = np.ldexp(np.maximum(np.abs(mn[sel]), np.abs(mx[sel])), -23)
                bounds[r0 + sel] = scale.astype(np.float64) / 2 + rounding
    return bounds


def row_errors(weight, table: QuantizedTable) -> np.ndarray:
    """float64 [R]: each row's largest absolute error as stored in `table`."""
    R, D = weight.shape
    errors = np.empty(R)
    for r0, r1 in _chunks(R, D):
        stored = dequantize_rows(table, np.arange(r0, r1, dtype=np.int64)).astype(np.float64)
        errors[r0:r1] = np.abs(stored - np.asarray(weight[r0:r1], dtype=np.float64)).max(axis=1)
    return errors


def table_bytes(table: QuantizedTable) -> int:
    b = table.byte_report()
    return int(b.payload + b.scales + b.metadata)


def quantize_keeping_row_bounds(weight, grouped_tiers, plain_tiers, *, name: str, clip: str,
                                group_rows: int, store=None) -> tuple[QuantizedTable, str]:
    """The table of `weight` in scale groups of `group_rows` rows (tiers `grouped_tiers`, as planned for v3)
    with every quantized row within its row-wise bound, or with a header per row (tiers `plain_tiers`, as
    planned for v2) when that is no bigger; and a note saying which and why.

    With ``clip="l2"`` a row's bound is the larger of its min/max bound and its own clipped row's error (the
    clipping the user asked for, on the row's own range)."""
    R, D = weight.shape
    zeros = zero_rows(weight)
    plain_tiers = keep_zero_rows_exact(_per_row(plain_tiers, R), zeros, D, False)
    allocate = None if store is None else store.allocate
    plain = quantize_table(weight, plain_tiers, name=name, clip=clip, default_row=default_row(weight, plain_tiers),
                           allocate=allocate)
    tiers = keep_zero_rows_exact(_per_row(grouped_tiers, R), zeros, D, True)
    bounds = row_bounds(weight, tiers)
    bounds[zeros] = 0.0
    if clip == "l2":
        bounds = np.maximum(bounds, np.where(np.isfinite(bounds), row_errors(weight, plain), np.inf))
    promoted = 0
    default = default_row(weight, tiers)  # promotions never touch dropped rows
    grouped = None
    for _ in range(_MAX_ROUNDS):
        if grouped is not None and store is not None:
            store.release(grouped)  # the previous try
        grouped = quantize_table(weight, tiers, name=name, clip=clip, default_row=default, scale_group_rows=group_rows,
                                 allocate=allocate)
        over = np.flatnonzero(row_errors(weight, grouped) > bounds)
        if over.shape[0] == 0:
            break
        promoted += int(over.shape[0])
        tiers[over] = _UP_CODES[tiers[over]]
    else:
        _release(store, grouped)
        return plain, f"header per row: scale groups of {group_rows} rows kept rows over their own error bound"
    g_bytes, p_bytes = table_bytes(grouped), table_bytes(plain)
    if g_bytes >= p_bytes:
        _release(store, grouped)
        return plain, (f"header per row: scale groups of {group_rows} rows would take {g_bytes} B to keep every row "
                       f"within its own bound ({promoted} row(s) moved up a tier), against {p_bytes} B")
    _release(store, plain)
    moved = f", {promoted} row(s) moved up a tier to keep their own bound" if promoted else ""
    return grouped, f"v3: scale groups of {group_rows} rows, every row within its own bound{moved} ({g_bytes} B against {p_bytes} B with a header per row)"


def _release(store, table: QuantizedTable) -> None:
    if store is not None:
        store.release(table)


def _per_row(tiers, rows: int) -> np.ndarray:
    """uint8[R] tier codes (a copy) of a Tier or an array of codes."""
    if isinstance(tiers, np.ndarray):
        return tiers.astype(np.uint8, copy=True)
    return np.full(rows, int(tiers), dtype=np.uint8)


def default_row(weight, tiers) -> np.ndarray | None:
    """Dropped rows read as the mean of the dropped rows (the value closest to all of them in L2)."""
    if isinstance(tiers, np.ndarray) and (tiers == Tier.DROPPED).any():
        dropped = np.flatnonzero(tiers == Tier.DROPPED)
        total = np.zeros(weight.shape[1], dtype=np.float64)
        step = max(1, _CHUNK_ELEMENTS // max(1, weight.shape[1]))
        for i0 in range(0, dropped.shape[0], step):
            total += np.asarray(weight[dropped[i0:i0 + step]], dtype=np.float64).sum(axis=0)
        return (total / dropped.shape[0]).astype(np.float32)
    return None


def store_tables(weights: dict, plans: dict, clip: str = "none", show_progress: bool = False,
                 store=None, workers=None) -> tuple[dict, dict]:
    """The converter's quantize step: (name → QuantizedTable, name → storage note) for every planned table, in
    name order. `plans`: name → (tiers, group_rows, plain_tiers): the tiers planned for the table (with scale
    groups of `group_rows` rows, or 0 for a header per row) and, where the groups must keep every row's own
    bound (`scale_group="auto"`), the tiers planned with a header per row, else None. All-zero rows always read
    exactly zero. `store` (streamed_tables.SegmentStore): payloads are written into its files, never held whole.
    `workers` (parallel_store.WorkerGroup, with a store): the rows of the tables read from a checkpoint without
    scale groups are quantized by all the ranks, each its share (the same bytes)."""
    from .parallel_store import RowsJob
    from .progress import progress

    tables, notes = {}, {}
    jobs, alone = [], []
    for name in sorted(plans):
        tiers, group_rows, plain_tiers = plans[name]
        if workers is not None and store is not None and not group_rows and is_row_source(weights[name]):
            tiers = _zero_rows_kept(weights[name], tiers, group_rows)
            w, layout = plan_layout(weights[name], tiers, name=name, default_row=default_row(weights[name], tiers))
            payload = store.allocate(layout.nbytes)
            tables[name], notes[name] = layout.table(payload), ""
            if layout.nbytes:
                jobs.append(RowsJob(w, layout, 0, layout.rows, str(store.path_of(payload)), clip))
        else:
            alone.append(name)

    def quantize_alone() -> None:
        for name in progress(alone, desc="quantize", enabled=show_progress):
            tables[name], notes[name] = _store_table(name, weights[name], *plans[name], clip=clip, store=store)

    if jobs:
        workers.quantize(jobs, quantize_alone)
    else:
        quantize_alone()
    return {n: tables[n] for n in sorted(tables)}, notes


def _zero_rows_kept(weight, tiers, group_rows: int):
    """`tiers` with every all-zero row at a tier that stores it exactly. Only dropped rows and rows of a grouped
    table can lose their zeros: other tables are not scanned (a pass over the table saved)."""
    dropped = bool((tiers == Tier.DROPPED).any()) if isinstance(tiers, np.ndarray) else int(tiers) == Tier.DROPPED
    if not group_rows and not dropped:
        return tiers
    zeros = zero_rows(weight)
    if zeros.shape[0]:  # (a uniform table without zero rows stays a Tier: no per-row array)
        tiers = keep_zero_rows_exact(_per_row(tiers, weight.shape[0]), zeros, weight.shape[1], bool(group_rows))
    return tiers


def _store_table(name: str, weight, tiers, group_rows: int, plain_tiers, *, clip: str, store) -> tuple[QuantizedTable, str]:
    if group_rows and plain_tiers is not None:
        return quantize_keeping_row_bounds(weight, tiers, plain_tiers, name=name, clip=clip, group_rows=group_rows,
                                           store=store)
    tiers = _zero_rows_kept(weight, tiers, group_rows)
    return quantize_table(weight, tiers, name=name, clip=clip, default_row=default_row(weight, tiers),
                         scale_group_rows=group_rows, allocate=None if store is None else store.allocate), ""
