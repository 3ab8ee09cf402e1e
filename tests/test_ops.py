"""The compiled kernels (RowwiseDequantGather / RowwiseDequantEmbeddingBag) against shark_export.reference.

Gathers are compared bit for bit (FORMAT.md makes dequantization exact: fma(q, scale, bias) with one
rounding; fp16 output is the float32 value rounded to nearest even). Pooled results are compared with a
bound derived from float32 summation (the kernel sums in float32 in index order, the reference in
float64): ``|got - want| <= (L + 2) * 2^-24 * sum_k |w_k x_k|`` per bag and dim (divided by the count
in mean mode), and independently against torch.nn.functional.embedding_bag on the dequantized table.
Dequantized rows are also checked against the original float32 weights within the FORMAT.md bound
(``scale/2`` plus float32 rounding), so the stated quantization error holds through the kernel.

Error cases live in test_ops_errors.py; the small build smoke tests in test_build.py.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_models import bag_model, gather_model, table_feeds

import shark_export
from shark_export import format as fmt
from shark_export import reference as ref
from shark_export.format import BLOCK_ROWS, QuantizedTable, Tier, row_stride
from shark_export.quantize import quantize_table

TIERS = list(Tier)
DIMS = [1, 3, 7, 8, 13, 64, 100]
ROWS = [1, 63, 64, 65, 200, 1000]
U = 2.0**-24  # float32 unit roundoff

HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------
def _weights(R: int, D: int, seed: int) -> np.ndarray:
    """Rows with magnitudes from 1e-3 to 1e2, a few constant rows (scale 0 or tiny) and a zero row."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((R, D)) * 10.0 ** rng.uniform(-3, 2, size=(R, 1))
    if R > 3:
        w[1] = 0.5  # exactly representable: int rows get scale 0
        w[2] = 0.1  # constant, not representable in fp16
        w[3] = 0.0
    return w.astype(np.float32)


def _tier_codes(R: int, mix: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    if mix == "all6":  # uniform random over the six tiers, every tier present
        codes = rng.integers(0, 6, size=R)
        codes[: min(R, 6)] = rng.permutation(6)[: min(R, 6)]
    elif mix == "skewed":  # mostly int4, some of everything else, runs of one tier
        codes = rng.choice(6, size=R, p=[0.05, 0.1, 0.15, 0.5, 0.1, 0.1])
        codes[R // 3: R // 3 + min(R // 4, 70)] = int(Tier.DROPPED)
        codes[: min(R, 6)] = np.arange(min(R, 6))
    elif mix == "two":
        codes = rng.choice([int(Tier.INT8), int(Tier.DROPPED)], size=R)
    else:
        raise ValueError(mix)
    return codes.astype(np.int64)


@functools.lru_cache(maxsize=None)
def make_table(R: int, D: int, tiers, seed: int = 0) -> tuple[QuantizedTable, np.ndarray]:
    """(table, float32 weights). ``tiers``: a tier name (uniform) or a mix name for _tier_codes."""
    w = _weights(R, D, seed)
    default_row = np.random.default_rng(seed + 2).standard_normal(D).astype(np.float32)
    spec = tiers if tiers in [t.name.lower() for t in Tier] else _tier_codes(R, tiers, seed)
    return quantize_table(w, spec, name=f"t{R}x{D}", default_row=default_row), w


def as_mixed(table: QuantizedTable) -> QuantizedTable:
    """The same rows stored as a *mixed* table (row_meta blocks), even when every row has one tier."""
    codes = table.tiers().astype(np.int64)
    R, D = table.num_rows, table.dim
    nb = -(-R // BLOCK_ROWS)
    lut = np.array([row_stride(t, D, table.format_version) for t in Tier], dtype=np.int64)
    sizes = np.zeros(nb * BLOCK_ROWS, dtype=np.int64)
    sizes[:R] = lut[codes]
    padded = np.zeros(nb * BLOCK_ROWS, dtype=np.uint64)
    padded[:R] = codes
    meta = np.zeros((nb, 4), dtype=np.uint64)
    meta[:, 0] = np.concatenate([[0], np.cumsum(sizes.reshape(nb, BLOCK_ROWS).sum(1))[:-1]]).astype(np.uint64)
    bit = np.uint64(1) << np.arange(BLOCK_ROWS, dtype=np.uint64)
    for k in range(3):
        planes = ((padded.reshape(nb, BLOCK_ROWS) >> np.uint64(k)) & np.uint64(1)) * bit
        meta[:, 1 + k] = np.bitwise_or.reduce(planes, axis=1)
    counts = {t: int((codes == t.value).sum()) for t in Tier}
    return QuantizedTable(
        name=table.name + "_mixed", num_rows=R, dim=D, payload=table.payload, row_meta=meta,
        default_row=table.default_row, uniform_tier=-1, tier_counts=counts, format_version=table.format_version,
        scale_group_rows=table.scale_group_rows,
    ).validate()


# --------------------------------------------------------------------------------------------------
# Running the ops
# --------------------------------------------------------------------------------------------------
def run_gather(table, idx, out_dtype=np.float32, threads=None) -> np.ndarray:
    idx = np.asarray(idx)
    sess = shark_export.session(
        gather_model(table, index_dtype=idx.dtype, index_rank=idx.ndim, out_dtype=out_dtype), threads=threads
    )
    (out,) = sess.run(None, {"indices": idx})
    return out


def run_bag(table, idx, offsets=None, psw=None, mode=0, include_last_offset=0, padding_idx=-1,
            out_dtype=np.float32, threads=None) -> np.ndarray:
    idx = np.asarray(idx)
    model = bag_model(
        table, index_dtype=idx.dtype, index_rank=idx.ndim, offsets=offsets is not None, weights=psw is not None,
        mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx, out_dtype=out_dtype,
    )
    feeds = {"indices": idx}
    if offsets is not None:
        feeds["offsets"] = np.asarray(offsets, dtype=idx.dtype)
    if psw is not None:
        feeds["per_sample_weights"] = np.asarray(psw, dtype=np.float32)
    (out,) = shark_export.session(model, threads=threads).run(None, feeds)
    return out


def assert_bits_equal(got: np.ndarray, want: np.ndarray, msg: str = "") -> None:
    """Same dtype, shape and bit patterns (so -0.0 vs 0.0 or a NaN payload would show)."""
    assert got.dtype == want.dtype, (got.dtype, want.dtype, msg)
    assert got.shape == want.shape, (got.shape, want.shape, msg)
    u = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    bad = got.view(u) != want.view(u)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{msg}: {int(bad.sum())} of {bad.size} elements differ; first at {pos}: got {got[pos]!r}, "
            f"want {want[pos]!r}"
        )


def check_gather(table, idx, out_dtype=np.float32, threads=None) -> np.ndarray:
    got = run_gather(table, idx, out_dtype, threads)
    want = ref.gather(table, idx, output_dtype=out_dtype)
    assert_bits_equal(got, want, f"gather {table.name} idx {np.asarray(idx).dtype}{np.shape(idx)} -> {np.dtype(out_dtype)}")
    return got


def assert_within_quantization_error(table: QuantizedTable, weight: np.ndarray, rows: np.ndarray,
                                     got: np.ndarray) -> None:
    """``got[i]`` (float32, the kernel's row ``rows[i]``) against the original float32 weights:
    fp32 exact, fp16 within half an fp16 ulp, int rows within scale/2 + 2^-23|x| (FORMAT.md), dropped
    rows equal to default_row."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    got = got.reshape(rows.shape[0], table.dim).astype(np.float64)
    x = weight[rows].astype(np.float64)
    codes = table.tiers()[rows]
    err = np.abs(got - x)
    for t in Tier:
        sel = codes == t.value
        if not sel.any():
            continue
        if t is Tier.FP32:
            bound = np.zeros_like(x[sel])
        elif t is Tier.FP16:
            bound = 2.0**-11 * np.abs(x[sel]) + 2.0**-25
        elif t is Tier.DROPPED:
            np.testing.assert_array_equal(got[sel], np.broadcast_to(table.default_row, got[sel].shape))
            continue
        elif table.scale_group_rows:  # v3: the scale of the row's group and tier
            scale = table.group_scales()[rows[sel] // table.scale_group_rows, t.value - Tier.INT8.value, 0]
            bound = scale.astype(np.float64)[:, None] / 2 + 2.0**-23 * np.maximum(np.abs(x[sel]), np.abs(got[sel]))
        else:
            off = table.row_offsets(rows[sel])
            scale = np.stack([table.payload[off], table.payload[off + 1]], 1).copy().view(np.float16)[:, 0]
            bound = scale.astype(np.float64)[:, None] / 2 + 2.0**-23 * np.maximum(np.abs(x[sel]), np.abs(got[sel]))
        over = err[sel] > bound
        assert not over.any(), (
            f"{table.name}: {t} rows exceed the quantization bound: row {rows[sel][np.argwhere(over)[0][0]]}, "
            f"max excess {float((err[sel] - bound).max())}"
        )


def _bag_bounds(idx: np.ndarray, offsets, include_last_offset: int) -> tuple[np.ndarray, np.ndarray]:
    if idx.ndim == 2:
        B, L = idx.shape
        starts = np.arange(B, dtype=np.int64) * L
        return starts, starts + L
    off = np.asarray(offsets, dtype=np.int64)
    if include_last_offset:
        return off[:-1], off[1:]
    return off, np.append(off[1:], idx.shape[0]).astype(np.int64)


def bag_tolerance(table, idx, offsets=None, psw=None, mode=0, include_last_offset=0, padding_idx=-1) -> np.ndarray:
    """[B, D] error bound of a float32 recursive sum vs the correctly rounded result:
    (L + 2) * u * sum |w_k x_k| (/ count in mean mode) for a bag of L kept entries."""
    idx = np.asarray(idx)
    dense = np.abs(ref.dequantize(table).astype(np.float64))
    flat = idx.reshape(-1).astype(np.int64)
    w = np.ones(flat.shape[0]) if psw is None else np.abs(np.asarray(psw, dtype=np.float64).reshape(-1))
    starts, ends = _bag_bounds(idx, offsets, include_last_offset)
    keep = flat != padding_idx
    terms = np.zeros((flat.shape[0] + 1, table.dim))
    terms[1:] = (w * keep)[:, None] * dense[np.where(keep, flat, 0)]
    mag = np.cumsum(terms, axis=0)  # prefix sums: a bag's total is a difference of two rows
    n = np.concatenate([[0], np.cumsum(keep)])
    count = (n[ends] - n[starts]).astype(np.float64)[:, None]
    total = np.maximum(mag[ends] - mag[starts], 0.0) + 4e-16 * mag[-1]  # + cancellation error of the difference
    if mode == 1:
        total = total / np.maximum(count, 1)
    return (count + 2) * U * total * (count > 0)


def check_bag(table, idx, offsets=None, psw=None, mode=0, include_last_offset=0, padding_idx=-1,
              out_dtype=np.float32, threads=None, against_torch=True) -> np.ndarray:
    idx = np.asarray(idx)
    kw = dict(offsets=offsets, psw=psw, mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx)
    got = run_bag(table, idx, out_dtype=out_dtype, threads=threads, **kw)
    want = ref.embedding_bag(table, idx, offsets=offsets, per_sample_weights=psw, mode=mode,
                             include_last_offset=bool(include_last_offset), padding_idx=padding_idx)  # float32
    tol = bag_tolerance(table, idx, **kw)
    if np.dtype(out_dtype) == np.float16:
        tol = tol + 2.0**-10 * np.abs(want) + 2.0**-24  # one fp16 ulp: both sides round to fp16
    label = f"bag {table.name} idx {idx.dtype}{idx.shape} mode={mode} ilo={include_last_offset} pad={padding_idx} " \
            f"weighted={psw is not None} out={np.dtype(out_dtype)}"
    assert got.dtype == np.dtype(out_dtype), label
    assert got.shape == want.shape, (got.shape, want.shape, label)
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    over = err > tol
    if over.any():
        b, d = (int(i) for i in np.argwhere(over)[0])
        raise AssertionError(f"{label}: bag {b} dim {d}: got {got[b, d]!r}, want {want[b, d]!r}, tol {tol[b, d]:.3g}")
    # Empty and all-padding bags are exactly zero.
    starts, ends = _bag_bounds(idx, offsets, include_last_offset)
    flat = idx.reshape(-1)
    empty = np.array([not np.any(flat[s:e] != padding_idx) for s, e in zip(starts, ends)], dtype=bool)
    if empty.any():
        assert not np.any(got[empty]), f"{label}: empty bags are not zero"
    if against_torch:
        check_against_torch(table, idx, got, tol, **kw)
    return got


def check_against_torch(table, idx, got, tol, offsets=None, psw=None, mode=0, include_last_offset=0,
                        padding_idx=-1) -> None:
    """Independent check: torch.nn.functional.embedding_bag on the dequantized table."""
    dense = torch.from_numpy(ref.dequantize(table))
    idx = np.asarray(idx)
    if idx.ndim == 2 and idx.shape[1] == 0:  # torch cannot take [B, 0]: the same bags as 1-D + offsets
        idx, offsets = idx.reshape(0), np.zeros(idx.shape[0], np.int64)
        psw = None if psw is None else np.zeros(0, np.float32)
    want = torch.nn.functional.embedding_bag(
        torch.from_numpy(np.asarray(idx).astype(np.int64)), dense,
        offsets=None if offsets is None else torch.from_numpy(np.asarray(offsets).astype(np.int64)),
        mode=("sum", "mean")[mode],
        per_sample_weights=None if psw is None else torch.from_numpy(np.asarray(psw, dtype=np.float32)),
        include_last_offset=bool(include_last_offset),
        padding_idx=None if padding_idx < 0 else padding_idx,
    ).numpy()
    if got.dtype == np.float16:
        tol = tol + 2.0**-10 * np.abs(want) + 2.0**-24
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), 2 * tol + 1e-30,
                                 err_msg="kernel vs torch.nn.functional.embedding_bag")


def random_bags(rng, B: int, R: int, max_len: int = 12, dtype=np.int64):
    """(indices, offsets) with empty bags first, in the middle and last."""
    sizes = rng.integers(0, max_len + 1, size=B)
    if B:
        sizes[[0, B // 2, B - 1]] = 0
    idx = rng.integers(0, R, size=int(sizes.sum())).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(dtype) if B else np.zeros(0, dtype)
    return idx, offsets


# --------------------------------------------------------------------------------------------------
# Gather
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("tier", TIERS, ids=str)
def test_gather_uniform_tier(tier, D):
    table, w = make_table(150, D, tier.name.lower(), seed=D)
    assert table.uniform_tier == tier.value
    rng = np.random.default_rng(D)
    idx = rng.integers(0, 150, size=300)
    idx[:3] = [0, 149, 0]
    got = check_gather(table, idx)
    assert_within_quantization_error(table, w, idx, got)
    check_gather(table, idx.astype(np.int32).reshape(20, 15), out_dtype=np.float16)


@pytest.mark.parametrize("R", ROWS)
@pytest.mark.parametrize("mix", ["all6", "skewed", "two"])
def test_gather_mixed_tables_across_blocks(R, mix):
    """Mixed tables whose rows span several 64-row blocks with a partial last block; every row read."""
    for D in (7, 64):
        table, w = make_table(R, D, mix, seed=R)
        rng = np.random.default_rng(R + D)
        idx = np.concatenate([np.arange(R), rng.integers(0, R, size=R)])  # every row, then random repeats
        rng.shuffle(idx)
        got = check_gather(table, idx)
        assert_within_quantization_error(table, w, idx, got)
        check_gather(table, idx.astype(np.int32), out_dtype=np.float16)


@pytest.mark.parametrize("tier", TIERS, ids=str)
def test_gather_single_tier_stored_as_mixed(tier):
    """A table whose rows all have one tier, stored with row_meta blocks (uniform_tier = -1)."""
    for R in (1, 64, 65):
        uniform, w = make_table(R, 13, tier.name.lower(), seed=R)
        mixed = as_mixed(uniform)
        idx = np.arange(R)[::-1].copy()
        got = check_gather(mixed, idx)
        assert_bits_equal(got, run_gather(uniform, idx), f"mixed vs uniform {tier} R={R}")
        check_gather(mixed, idx, out_dtype=np.float16)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("shape", [(), (1,), (17,), (4, 5), (2, 3, 4), (0,), (2, 0), (0, 3), (3, 0, 2)],
                         ids=str)
def test_gather_index_shapes_and_dtypes(shape, index_dtype, out_dtype):
    table, _ = make_table(200, 13, "all6")
    idx = np.random.default_rng(len(shape)).integers(0, 200, size=shape).astype(index_dtype)
    got = check_gather(table, idx, out_dtype)
    assert got.shape == (*shape, 13)


@pytest.mark.parametrize("tiers,D,out_dtype", [("all6", 64, np.float32), ("fp16", 64, np.float32),
                                               ("fp32", 128, np.float16), ("int4", 128, np.float16)], ids=str)
def test_gather_large_output(tiers, D, out_dtype):
    """Outputs of >= 8 MiB with whole 8-lane rows: the kernels may write them with non-temporal stores."""
    table, _ = make_table(1000, D, tiers, seed=D)
    n = (8 << 20) // (D * np.dtype(out_dtype).itemsize) + 77  # not a multiple of the 1024-lookup task size
    idx = np.random.default_rng(D).integers(0, 1000, size=n).astype(np.int32)
    check_gather(table, idx, out_dtype, threads=2)
    check_gather(table, idx[: n - 5].reshape(-1, 1), out_dtype, threads=1)


def test_gather_fp16_output_is_rounded_reference():
    """fp16 output == float32 reference rounded to nearest even, for every tier, including values that
    round to fp16 subnormals and rows whose float32 values are not representable in fp16."""
    table, _ = make_table(1000, 100, "all6", seed=5)
    idx = np.arange(1000)
    got = run_gather(table, idx, np.float16)
    assert_bits_equal(got, ref.gather(table, idx).astype(np.float16), "fp16 output")


# --------------------------------------------------------------------------------------------------
# EmbeddingBag
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("include_last_offset", [0, 1])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "wsum", "mean"])
def test_bag_offsets(mode, weighted, include_last_offset, index_dtype):
    table, _ = make_table(200, 13, "all6", seed=1)
    rng = np.random.default_rng(mode * 4 + weighted * 2 + include_last_offset)
    idx, offsets = random_bags(rng, 60, 200, dtype=index_dtype)
    if include_last_offset:
        offsets = np.append(offsets, len(idx)).astype(index_dtype)
    psw = rng.standard_normal(len(idx)).astype(np.float32) if weighted else None
    for out_dtype in (np.float32, np.float16):
        check_bag(table, idx, offsets, psw, mode=mode, include_last_offset=include_last_offset, out_dtype=out_dtype)


def test_bag_include_last_offset_ignores_trailing_indices():
    """With include_last_offset=1 the last offset may stop before the end of indices."""
    table, _ = make_table(200, 13, "all6", seed=1)
    idx = np.random.default_rng(3).integers(0, 200, size=30)
    check_bag(table, idx, np.array([0, 5, 5, 20]), include_last_offset=1)
    check_bag(table, idx, np.array([0]), include_last_offset=1)  # B = 0


@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "wsum", "mean"])
@pytest.mark.parametrize("shape", [(40, 7), (5, 1), (3, 0), (0, 4)], ids=str)
def test_bag_2d(shape, mode, weighted):
    table, _ = make_table(200, 13, "skewed", seed=2)
    rng = np.random.default_rng(shape[0])
    idx = rng.integers(0, 200, size=shape).astype(np.int32)
    psw = rng.standard_normal(shape).astype(np.float32) if weighted else None
    got = check_bag(table, idx, psw=psw, mode=mode)
    assert got.shape == (shape[0], 13)
    check_bag(table, idx.astype(np.int64), psw=psw, mode=mode, out_dtype=np.float16)


@pytest.mark.parametrize("padding_idx", [0, 7, 199])
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False)], ids=["sum", "wsum", "mean"])
def test_bag_padding_idx(padding_idx, mode, weighted):
    table, _ = make_table(200, 13, "all6", seed=3)
    rng = np.random.default_rng(padding_idx)
    idx, offsets = random_bags(rng, 50, 200)
    idx[rng.random(len(idx)) < 0.3] = padding_idx
    # bag 1: only padding; bag 2: one real row among padding (mean divides by 1, not 3)
    idx = np.concatenate([[padding_idx, padding_idx], [padding_idx, 5, padding_idx], idx]).astype(np.int64)
    offsets = np.concatenate([[0, 0, 2], offsets + 5]).astype(np.int64)
    psw = rng.standard_normal(len(idx)).astype(np.float32) if weighted else None
    got = check_bag(table, idx, offsets, psw, mode=mode, padding_idx=padding_idx)
    assert not got[0].any() and not got[1].any()
    if mode == 1:
        assert_bits_equal(got[2], ref.gather(table, np.array(5)), "mean of one row among padding")
    idx2 = idx[: 24 * 5].reshape(24, 5)
    check_bag(table, idx2, mode=mode, padding_idx=padding_idx, out_dtype=np.float16)


def test_bag_empty_batches():
    table, _ = make_table(65, 8, "all6", seed=4)
    i64 = np.int64
    check_bag(table, np.zeros(0, i64), np.zeros(0, i64))  # B = 0
    check_bag(table, np.zeros(0, i64), np.zeros(1, i64), include_last_offset=1)  # B = 0
    check_bag(table, np.zeros(0, i64), np.zeros(3, i64))  # 3 empty bags
    check_bag(table, np.zeros(0, i64), np.zeros(4, i64), include_last_offset=1, mode=1)
    check_bag(table, np.arange(5, dtype=i64), np.array([0, 0, 0], i64), mode=1)  # everything in the last bag
    check_bag(table, np.zeros((0, 3), i64), out_dtype=np.float16)
    got = check_bag(table, np.zeros((1 << 16, 0), i64))  # [B, 0]: B empty bags, no index bytes at all
    assert got.shape == (1 << 16, 8) and not got.any()
    check_bag(table, np.zeros((1000, 0), np.int32), out_dtype=np.float16)


def test_bag_shape_not_backed_by_input_bytes_fails_cleanly():
    """[B, 0] indices claim B bags with no index bytes: the output is allocated first, so an impossible B
    fails in that allocation (an ORT error) before anything else is sized by it."""
    table, _ = make_table(65, 8, "int8", seed=4)
    with pytest.raises(Exception, match="(?i)alloc|size|memory|overflow"):
        run_bag(table, np.zeros(((1 << 62) // 8, 0), np.int64))


@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("tier", TIERS, ids=str)
def test_bag_uniform_tier(tier, D):
    table, _ = make_table(150, D, tier.name.lower(), seed=D)
    rng = np.random.default_rng(D + 100)
    idx, offsets = random_bags(rng, 25, 150, dtype=np.int32)
    psw = rng.standard_normal(len(idx)).astype(np.float32)
    check_bag(table, idx, offsets, psw, against_torch=False)
    check_bag(table, idx, offsets, mode=1, out_dtype=np.float16, against_torch=False)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("D", [1, 2, 3, 5, 6, 13])
def test_format_versions_and_unpadded_rows(version, D):
    """v1 tables (rows padded to 4 bytes) still run; v2 rows are unpadded (unaligned for most D) and carry
    no default row when nothing is dropped. Bit-exact gathers, bags within float32 summation error."""
    w = _weights(130, D, seed=D)
    rng = np.random.default_rng(D)
    idx = rng.integers(0, 130, size=257)
    bag_idx, offsets = random_bags(rng, 40, 130)
    for spec in (np.arange(130) % 5, "fp32", "fp16", "int8", "int4", "int2"):
        table = quantize_table(w, spec, name=f"v{version}d{D}", format_version=version)
        assert table.format_version == version and table.op_attributes()["format_version"] == version
        assert table.default_row.shape == ((D,) if version == 1 else (0,))
        if version == 2:
            assert table.payload.nbytes == sum(int(table.tier_counts[t]) * fmt.row_bytes(t, D) for t in Tier)
        got = check_gather(table, idx)
        assert_within_quantization_error(table, w, idx, got)
        check_gather(table, idx.astype(np.int32).reshape(-1, 1), out_dtype=np.float16)
        check_bag(table, bag_idx, offsets)
        check_bag(table, bag_idx, offsets, mode=1, out_dtype=np.float16)
    mixed = as_mixed(quantize_table(w, "int8", format_version=version))  # one tier, block index
    check_gather(mixed, idx)


@pytest.mark.parametrize("D", [1, 3, 5, 16, 17, 64])
@pytest.mark.parametrize("G", [1, 64, 256])
def test_format_v3_scale_groups(D, G):
    """v3: quantized rows are codes only, scale and bias come from the row's group and tier. Every tier and
    mixed tables (also one tier stored mixed), both ops, float16 output: bit-exact against the reference
    reader, within the group's quantization bound of the weights, and no byte beyond codes + groups."""
    R = 300
    w = _weights(R, D, seed=D + G)
    rng = np.random.default_rng(D * G)
    idx = rng.integers(0, R, size=257)
    bag_idx, offsets = random_bags(rng, 40, R)
    psw = rng.normal(size=bag_idx.shape).astype(np.float32)
    for spec in (rng.integers(0, 6, R), np.arange(R) % 3 + 2, "int8", "int4", "int2", "fp16"):
        table = quantize_table(w, spec, name=f"v3d{D}g{G}", scale_group_rows=G)
        assert table.format_version == 3 and table.op_attributes()["scale_group_rows"] == G
        groups = 12 * -(-R // G)
        assert table.payload.nbytes == groups + sum(
            int(table.tier_counts[t]) * (fmt.row_bytes(t, D) - (4 if t.is_quantized else 0)) for t in Tier)
        got = check_gather(table, idx)
        assert_within_quantization_error(table, w, idx, got)
        check_gather(table, idx.astype(np.int32).reshape(-1, 1), out_dtype=np.float16)
        check_bag(table, bag_idx, offsets, against_torch=False)
        check_bag(table, bag_idx, offsets, psw=psw, against_torch=False)
        check_bag(table, bag_idx, offsets, mode=1, out_dtype=np.float16, against_torch=False)
        check_bag(table, bag_idx[: 40 * 3].reshape(40, 3), against_torch=False)
        if table.is_uniform:
            check_gather(as_mixed(table), idx)


def test_format_v3_bad_scale_group_rejected_at_session_creation():
    """scale_group_rows must be a power of two on a v3 node and absent before v3: the session fails naming it."""
    table = quantize_table(_weights(100, 8, seed=1), "int4", scale_group_rows=64)

    def run(model):
        shark_export.session(model).run(None, {"indices": np.arange(5)})

    for bad in (0, 3, 96):
        with pytest.raises(Exception, match=f"scale_group_rows {bad} is not a power of two"):
            run(gather_model(table, attrs={"scale_group_rows": bad}, check=False))
    v2 = quantize_table(_weights(100, 8, seed=1), "int4")
    with pytest.raises(Exception, match="scale_group_rows 64 is given"):
        run(gather_model(v2, attrs={"scale_group_rows": 64}, check=False))
    # A group section cut short: the payload no longer matches what the attributes describe.
    with pytest.raises(Exception, match="of them scale groups"):
        run(gather_model(table, payload=table.payload[:-12], check=False))


@pytest.mark.parametrize("R", ROWS)
def test_bag_mixed_tables_across_blocks(R):
    for D in (3, 64):
        table, _ = make_table(R, D, "all6", seed=R + 7)
        rng = np.random.default_rng(R + D)
        idx, offsets = random_bags(rng, 80, R)
        check_bag(table, idx, offsets, rng.standard_normal(len(idx)).astype(np.float32))
        check_bag(table, idx, offsets, mode=1, out_dtype=np.float16)


def test_bag_wide_rows_fp16_output_across_tasks():
    """D > 2048 with fp16 output (the accumulator of each parallel task is on the heap), > 1024 bags so
    that there are several tasks, and D at the format's limit of 65536."""
    table, _ = make_table(70, 2100, "all6", seed=3)
    idx, offsets = random_bags(np.random.default_rng(3), 1100, 70, max_len=3)
    one = check_bag(table, idx, offsets, mode=1, out_dtype=np.float16, threads=1, against_torch=False)
    two = check_bag(table, idx, offsets, mode=1, out_dtype=np.float16, threads=2, against_torch=False)
    assert_bits_equal(one, two, "wide fp16 bags threads=1 vs 2")
    table, w = make_table(3, 65536, "all6", seed=3)
    idx = np.array([0, 1, 2, 2, 1, 0])
    assert_within_quantization_error(table, w, idx, check_gather(table, idx))
    check_gather(table, idx, out_dtype=np.float16)
    check_bag(table, idx, np.array([0, 2, 2]), out_dtype=np.float16, against_torch=False)


def test_bag_single_lookups_are_exact():
    """A bag of one row in sum mode, or mean of one row, is the row itself (no rounding at all)."""
    table, _ = make_table(1000, 13, "all6", seed=8)
    idx = np.arange(1000, dtype=np.int64)
    want = ref.gather(table, idx)
    for mode in (0, 1):
        assert_bits_equal(run_bag(table, idx, np.arange(1000), mode=mode), want, f"single-row bags mode={mode}")
        assert_bits_equal(run_bag(table, idx.reshape(1000, 1), mode=mode, out_dtype=np.float16),
                          want.astype(np.float16), f"single-row 2-D bags fp16 mode={mode}")


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------
def test_gather_threads_identical():
    table, _ = make_table(1000, 64, "all6", seed=9)
    idx = np.random.default_rng(9).integers(0, 1000, size=(5000,)).astype(np.int32)  # several 1024-lookup tasks
    one = check_gather(table, idx, threads=1)
    two = check_gather(table, idx, threads=2)
    assert_bits_equal(one, two, "gather threads=1 vs 2")
    assert_bits_equal(run_gather(table, idx, np.float16, threads=1), run_gather(table, idx, np.float16, threads=2),
                      "gather fp16 threads=1 vs 2")


@pytest.mark.parametrize("mode", [0, 1])
def test_bag_threads_identical(mode):
    table, _ = make_table(1000, 13, "all6", seed=10)
    rng = np.random.default_rng(10 + mode)
    idx, offsets = random_bags(rng, 1500, 1000, max_len=8)  # ~6000 lookups, > 2 tasks of 2048
    assert len(idx) > 5000
    psw = rng.standard_normal(len(idx)).astype(np.float32) if mode == 0 else None
    one = check_bag(table, idx, offsets, psw, mode=mode, threads=1, against_torch=False)
    two = check_bag(table, idx, offsets, psw, mode=mode, threads=2)
    assert_bits_equal(one, two, f"bag threads=1 vs 2 mode={mode}")
    idx2 = rng.integers(0, 1000, size=(2500, 3))  # 2500 bags: > 1024 bags per task
    assert_bits_equal(run_bag(table, idx2, mode=mode, threads=1, out_dtype=np.float16),
                      run_bag(table, idx2, mode=mode, threads=2, out_dtype=np.float16), "2-D bag threads")


# --------------------------------------------------------------------------------------------------
# Sessions: repeated runs, concurrent runs, table tensors as graph inputs
# --------------------------------------------------------------------------------------------------
def test_repeated_runs_with_different_inputs():
    table, _ = make_table(200, 13, "all6", seed=11)
    rng = np.random.default_rng(11)
    gather = shark_export.session(gather_model(table, index_rank=2), threads=2)
    bag = shark_export.session(bag_model(table, weights=True), threads=2)
    for n in [0, 1, 7, 3000, 2, 0, 64]:
        idx = rng.integers(0, 200, size=(n, 3))
        (got,) = gather.run(None, {"indices": idx})
        assert_bits_equal(got, ref.gather(table, idx), f"gather run n={n}")
        bidx, offsets = random_bags(rng, n, 200)
        psw = rng.standard_normal(len(bidx)).astype(np.float32)
        (got,) = bag.run(None, {"indices": bidx, "offsets": offsets, "per_sample_weights": psw})
        want = ref.embedding_bag(table, bidx, offsets, psw)
        assert np.all(np.abs(got - want) <= bag_tolerance(table, bidx, offsets, psw)), f"bag run n={n}"


def _concurrent(fn, n_threads: int = 2) -> None:
    errors, barrier = [], threading.Barrier(n_threads)

    def worker(k):
        try:
            barrier.wait()
            fn(k)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("table_inputs", [False, True], ids=["initializers", "graph_inputs"])
def test_concurrent_runs_on_one_session(table_inputs):
    """Two Python threads run the same sessions at once, from the very first run (both threads race
    through the table validation and its cache)."""
    table, _ = make_table(1000, 13, "all6", seed=12)
    rng = np.random.default_rng(12)
    batches = [rng.integers(0, 1000, size=int(rng.integers(1, 3000))) for _ in range(16)]
    wants = [ref.gather(table, b) for b in batches]
    bags = [random_bags(rng, 300, 1000) for _ in range(16)]
    bag_wants = [ref.embedding_bag(table, i, o, mode=1) for i, o in bags]
    bag_tols = [bag_tolerance(table, i, o, mode=1) for i, o in bags]
    extra = table_feeds(table) if table_inputs else {}
    for _ in range(3):  # fresh sessions: the first run of each is concurrent
        gather = shark_export.session(gather_model(table, table_inputs=table_inputs), threads=2)
        bag = shark_export.session(bag_model(table, mode=1, table_inputs=table_inputs), threads=2)

        def work(k):
            for i in range(k, len(batches), 2):
                (got,) = gather.run(None, {"indices": batches[i], **extra})
                assert_bits_equal(got, wants[i], f"concurrent gather {i}")
                bi, bo = bags[i]
                (got,) = bag.run(None, {"indices": bi, "offsets": bo, **extra})
                assert np.all(np.abs(got - bag_wants[i]) <= bag_tols[i]), f"concurrent bag {i}"

        _concurrent(work)


@pytest.mark.parametrize("tiers", ["all6", "skewed", "int8", "int4", "fp16", "dropped"])
def test_eight_threads_on_one_session_match_a_single_threaded_run(tiers):
    """8 Python threads share one gather session and one bag session, each with its own inputs, from the
    first run on; every output equals (bit for bit) what a single-threaded run of the same input gives."""
    table, _ = make_table(700, 9, tiers, seed=21)
    rng = np.random.default_rng(21)
    batches = [rng.integers(0, 700, size=int(rng.integers(1, 2000))).astype(np.int64) for _ in range(32)]
    bags = [random_bags(rng, 200, 700) for _ in range(32)]
    gather = shark_export.session(gather_model(table), threads=2)
    bag = shark_export.session(bag_model(table, mode=0), threads=2)
    got: dict = {}

    def work(k):
        for i in range(k, 32, 8):
            got[("g", i)] = gather.run(None, {"indices": batches[i]})[0]
            bi, bo = bags[i]
            got[("b", i)] = bag.run(None, {"indices": bi, "offsets": bo})[0]

    _concurrent(work, n_threads=8)
    single_g = shark_export.session(gather_model(table), threads=1)
    single_b = shark_export.session(bag_model(table, mode=0), threads=1)
    for i in range(32):
        assert_bits_equal(got[("g", i)], single_g.run(None, {"indices": batches[i]})[0], f"gather {i}")
        bi, bo = bags[i]
        assert_bits_equal(got[("b", i)], single_b.run(None, {"indices": bi, "offsets": bo})[0], f"bag {i}")


def test_table_tensors_as_graph_inputs_follow_their_values():
    """Table tensors fed at run time: each run reads the table it is given (no stale validation or data)."""
    a, _ = make_table(200, 13, "all6", seed=13)
    b, _ = make_table(200, 13, "all6", seed=14)
    c = as_mixed(make_table(200, 13, "int4", seed=15)[0])
    idx = np.random.default_rng(13).integers(0, 200, size=500)
    sess = shark_export.session(gather_model(a, table_inputs=True))
    for t in (a, b, c, a):
        (got,) = sess.run(None, {"indices": idx, **table_feeds(t)})
        assert_bits_equal(got, ref.gather(t, idx), f"graph-input table {t.name}")
    # the same buffers (same data pointers), modified in place between runs
    a2 = quantize_table(_weights(200, 13, 99), a.tiers(), name="same_tiers", default_row=np.ones(13, np.float32))
    assert a2.payload.shape == a.payload.shape and np.array_equal(a2.row_meta, a.row_meta)
    payload, default_row = a.payload.copy(), a.default_row.copy()
    feeds = {"indices": idx, **table_feeds(a, payload=payload, default_row=default_row)}
    (got,) = sess.run(None, feeds)
    assert_bits_equal(got, ref.gather(a, idx), "before in-place change")
    payload[:] = a2.payload
    default_row[:] = a2.default_row
    (got,) = sess.run(None, feeds)
    assert_bits_equal(got, ref.gather(a2, idx), "in-place modified table")


def test_model_passes_onnx_checker_and_shape_inference():
    import onnx

    table, _ = make_table(65, 7, "all6")
    for model, want in [
        (gather_model(table, index_rank=3, out_dtype=np.float16), (["n0", "n1", "n2", 7], onnx.TensorProto.FLOAT16)),
        (bag_model(table, index_rank=2, offsets=False), (["n0", 7], onnx.TensorProto.FLOAT)),
    ]:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        out = inferred.graph.output[0].type.tensor_type
        dims = [d.dim_param or d.dim_value for d in out.shape.dim]
        assert (dims, out.elem_type) == want


# --------------------------------------------------------------------------------------------------
# Hypothesis
# --------------------------------------------------------------------------------------------------
@st.composite
def tables(draw):
    R = draw(st.integers(1, 300))
    D = draw(st.integers(1, 72))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["uniform", "mixed", "mixed_as_blocks"]))
    w = _weights(R, D, seed)
    default_row = rng.standard_normal(D).astype(np.float32)
    if kind == "uniform":
        spec = draw(st.sampled_from(TIERS))
    else:
        present = draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=6, unique=True))
        spec = rng.choice([t.value for t in present], size=R)
    table = quantize_table(w, spec, name=f"hyp{R}x{D}", default_row=default_row)
    if kind == "mixed_as_blocks" and table.is_uniform:
        table = as_mixed(table)
    return table, w


@HYPOTHESIS
@given(tw=tables(), data=st.data())
def test_gather_hypothesis(tw, data):
    table, w = tw
    R = table.num_rows
    shape = tuple(data.draw(st.lists(st.integers(0, 6), min_size=0, max_size=3), label="shape"))
    dtype = data.draw(st.sampled_from([np.int32, np.int64]), label="dtype")
    out_dtype = data.draw(st.sampled_from([np.float32, np.float16]), label="out")
    idx = np.asarray(data.draw(st.lists(st.integers(0, R - 1), min_size=int(np.prod(shape)),
                                        max_size=int(np.prod(shape))), label="idx"), dtype=dtype).reshape(shape)
    got = check_gather(table, idx, out_dtype)
    if out_dtype == np.float32:
        assert_within_quantization_error(table, w, idx, got)


@HYPOTHESIS
@given(tw=tables(), data=st.data())
def test_bag_hypothesis(tw, data):
    table, _ = tw
    R = table.num_rows
    dtype = data.draw(st.sampled_from([np.int32, np.int64]), label="dtype")
    mode = data.draw(st.sampled_from([0, 1]), label="mode")
    weighted = mode == 0 and data.draw(st.booleans(), label="weighted")
    padding_idx = data.draw(st.sampled_from([-1, 0, R - 1]), label="padding_idx")
    out_dtype = data.draw(st.sampled_from([np.float32, np.float16]), label="out")
    if data.draw(st.booleans(), label="2-D"):
        B, L = data.draw(st.integers(0, 8), label="B"), data.draw(st.integers(0, 6), label="L")
        idx = np.asarray(data.draw(st.lists(st.integers(0, R - 1), min_size=B * L, max_size=B * L)),
                         dtype=dtype).reshape(B, L)
        offsets, ilo = None, 0
    else:
        sizes = data.draw(st.lists(st.integers(0, 6), max_size=10), label="bag sizes")
        n = sum(sizes)
        idx = np.asarray(data.draw(st.lists(st.integers(0, R - 1), min_size=n, max_size=n)), dtype=dtype)
        ilo = data.draw(st.sampled_from([0, 1]), label="include_last_offset")
        bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        offsets = (bounds if ilo else bounds[:-1]).astype(dtype)
    psw = None
    if weighted:
        psw = np.asarray(data.draw(st.lists(st.floats(-4, 4, width=32), min_size=idx.size, max_size=idx.size)),
                         dtype=np.float32).reshape(idx.shape)
    check_bag(table, idx, offsets, psw, mode=mode, include_last_offset=ilo, padding_idx=padding_idx,
              out_dtype=out_dtype)
