"""The arithmetic of quantized rows: fp16 scale and bias from a range, codes, the L2 clipping search (Guan et
al. 2019), bit packing, and the per-group ranges of format v3. shark_export.quantize lays rows out into tables
with them; shark_export.row_bounds checks them against each row's own bound."""

from __future__ import annotations

import numpy as np

from .tiers import QUANTIZED_TIERS, Tier, pack_codes, row_bytes

# Elements per internal work block: keeps the float64 temporaries of one block in cache-sized pieces.
WORK_ELEMENTS = 1 << 18


def _f16_directed(x: np.ndarray, up: bool) -> np.ndarray:
    """float64 -> float16 rounded toward +inf (``up``) or -inf: round to nearest, then step one ulp
    with ``np.nextafter`` where that went the wrong way. Inputs must lie within the fp16 range."""
    h = x.astype(np.float16)
    back = h.astype(np.float64)
    wrong = back < x if up else back > x
    if wrong.any():
        h[wrong] = np.nextafter(h[wrong], np.float16(np.inf if up else -np.inf))
    return h


def quant_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
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


def row_codes(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, levels: int) -> np.ndarray:
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


def l2_error(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-row squared L2 error of storing ``x`` (float64 [n, D]) with range [lo, hi], computed on the
    exact stored values (fp16 scale/bias, float32 dequantized result). ``valid`` (bool [n, D]) masks out
    padding (a v3 scale group padded to the longest group of its batch)."""
    scale, bias = quant_params(lo, hi, levels)
    q = row_codes(x.copy(), scale, bias, levels)
    q *= scale.astype(np.float64)[:, None]
    q += bias.astype(np.float64)[:, None]
    xhat = q.astype(np.float32).astype(np.float64)
    xhat -= x
    if valid is not None:
        xhat[~valid] = 0.0
    return np.einsum("ij,ij->i", xhat, xhat)


def l2_clip_range(x: np.ndarray, mn: np.ndarray, mx: np.ndarray, tier: Tier,
                   valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    bins, steps = tier.spec.clip_search
    L = tier.levels
    step = (mx - mn) / bins
    lo, hi = mn.copy(), mx.copy()
    best = l2_error(x, lo, hi, L, valid)
    best_lo, best_hi = lo.copy(), hi.copy()
    for _ in range(steps):
        e_left = l2_error(x, lo + step, hi, L, valid)
        e_right = l2_error(x, lo, hi - step, L, valid)
        left = e_left < e_right
        lo = np.where(left, lo + step, lo)
        hi = np.where(left, hi, hi - step)
        cur = np.where(left, e_left, e_right)
        better = cur < best
        best = np.where(better, cur, best)
        best_lo = np.where(better, lo, best_lo)
        best_hi = np.where(better, hi, best_hi)
    return best_lo, best_hi


def encode_tier_rows(x: np.ndarray, mn: np.ndarray, mx: np.ndarray, tier: Tier, clip: str, out: np.ndarray,
                 shared: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Encode rows ``x`` ([n, D], any float dtype; row min/max ``mn``/``mx``) of ``tier`` into ``out``
    (uint8 [n, stride], fully written, padding zero). ``shared``: each row's (scale, bias) from its v3
    scale group (float16 [n] each); the rows are then written as codes only."""
    n, D = x.shape
    if not tier.is_quantized:  # a float tier: the values (float64/float32 -> float16 rounds once, to nearest even)
        width = D * tier.bits // 8
        out[:, width:] = 0
        out[:, :width].view(tier.spec.dtype)[...] = x
        return
    L = tier.levels
    xf = x.astype(np.float64)
    if shared is not None:
        scale, bias = shared
        nbytes = row_bytes(tier, D) - 4
        pack_codes(row_codes(xf, scale, bias, L), tier, out[:, :nbytes])
        return
    lo, hi = mn.astype(np.float64), mx.astype(np.float64)
    if clip == "l2":
        lo, hi = l2_clip_range(xf, lo, hi, tier)
    scale, bias = quant_params(lo, hi, L)
    header = out[:, :4].view("<f2")
    header[:, 0] = scale
    header[:, 1] = bias
    nbytes = row_bytes(tier, D) - 4
    out[:, 4 + nbytes:] = 0
    pack_codes(row_codes(xf, scale, bias, L), tier, out[:, 4: 4 + nbytes])


def group_params(w: np.ndarray, codes: np.ndarray | None, uniform: int, G: int, clip: str) -> np.ndarray:
    """float16 [groups, len(QUANTIZED_TIERS), 2]: (scale, bias) per v3 scale group of ``G`` rows and quantized
    tier, from the min/max -- or with ``clip="l2"`` the L2-optimal clip range -- of all the values of the group's
    rows of that tier; zeros where a group has no row of a tier. Rows are read in bounded batches."""
    R, D = w.shape
    n_groups = -(-R // G)
    params = np.zeros((n_groups, len(QUANTIZED_TIERS), 2), dtype=np.float16)
    for slot, tier in enumerate(QUANTIZED_TIERS):
        if uniform >= 0:
            if uniform != tier:
                continue
            rows = None  # every row
        else:
            rows = np.flatnonzero(codes == tier)
            if rows.shape[0] == 0:
                continue
        ids = np.arange(R) if rows is None else rows
        if clip != "l2":  # min/max: per-row extremes in bounded chunks, reduced per group
            lo = np.full(n_groups, np.inf)
            hi = np.full(n_groups, -np.inf)
            step = max(1, WORK_ELEMENTS // D)
            for i0 in range(0, ids.shape[0], step):
                part = ids[i0: i0 + step]
                x = np.asarray(w[part], dtype=np.float64)
                np.minimum.at(lo, part // G, x.min(axis=1))
                np.maximum.at(hi, part // G, x.max(axis=1))
            present = np.isfinite(lo)
            scale, bias = quant_params(lo[present], hi[present], tier.levels)
            params[present, slot, 0] = scale
            params[present, slot, 1] = bias
            continue
        # The clipping search needs every value of a group at once: groups in batches of about
        # WORK_ELEMENTS values (at least one group per batch).
        counts = np.bincount(ids // G, minlength=n_groups)
        present = np.flatnonzero(counts)
        starts = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        per_batch = max(1, WORK_ELEMENTS // max(1, int(counts.max()) * D))
        for i0 in range(0, present.shape[0], per_batch):
            gs = present[i0: i0 + per_batch]
            n_rows = counts[gs]
            width = int(n_rows.max())
            # Position k of group gs[i] is row rows[starts[gs[i]] + k] (k < n_rows[i]).
            k = np.arange(width)
            valid_rows = k[None, :] < n_rows[:, None]
            pos = np.minimum(starts[gs][:, None] + k[None, :], starts[gs + 1][:, None] - 1)
            row_ids = pos if rows is None else rows[pos]
            x = np.asarray(w[row_ids.reshape(-1)], dtype=np.float64).reshape(gs.shape[0], width * D)
            valid = np.repeat(valid_rows, D, axis=1)
            mn = np.where(valid, x, np.inf).min(axis=1)
            mx = np.where(valid, x, -np.inf).max(axis=1)
            lo, hi = l2_clip_range(x, mn, mx, tier, valid if not valid.all() else None)
            scale, bias = quant_params(lo, hi, tier.levels)
            params[gs, slot, 0] = scale
            params[gs, slot, 1] = bias
    return params
