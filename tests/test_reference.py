"""Tests of shark_export.reference: the numpy reader the C++ kernels are tested against."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from shark_export import reference as ref
from shark_export.errors import FormatError, IndexOutOfRangeError
from shark_export.format import QuantizedTable, Tier, row_stride
from shark_export.quantize import quantize_table

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _table(R=300, D=13, seed=0, tiers=None, name="emb"):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((R, D)) * rng.uniform(0.1, 10, (R, 1))).astype(np.float32)
    if tiers is None:
        tiers = rng.integers(0, 6, R).astype(np.uint8)
    default = rng.standard_normal(D).astype(np.float32)
    return quantize_table(w, tiers, name=name, default_row=default), w


@pytest.fixture(scope="module")
def mixed():
    return _table()


def _slow_decode(table: QuantizedTable) -> np.ndarray:
    """A third, deliberately naive reader: one row at a time with struct, offsets by walking all rows."""
    R, D = table.num_rows, table.dim
    codes = table.tiers()
    data = table.payload.tobytes()
    out = np.zeros((R, D), np.float32)
    pos = 0
    for r in range(R):
        t = Tier(int(codes[r]))
        if t is Tier.FP32:
            out[r] = struct.unpack(f"<{D}f", data[pos: pos + 4 * D])
        elif t is Tier.FP16:
            out[r] = struct.unpack(f"<{D}e", data[pos: pos + 2 * D])
        elif t is Tier.DROPPED:
            out[r] = table.default_row
        else:
            scale, bias = struct.unpack("<2e", data[pos: pos + 4])
            per = 8 // t.bits
            for j in range(D):
                byte = data[pos + 4 + j // per]
                q = (byte >> (t.bits * (j % per))) & t.levels
                out[r, j] = np.float32(q * scale + bias)  # python floats are float64: one rounding to float32
        pos += row_stride(t, D)
    assert pos == len(data)
    return out


# --------------------------------------------------------------------------------------------------
# dequantize / dequantize_rows
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("D", [1, 3, 8, 13])
def test_dequantize_matches_naive_reader(D):
    table, _ = _table(R=150, D=D, seed=D)
    np.testing.assert_array_equal(ref.dequantize(table), _slow_decode(table))


@pytest.mark.parametrize("tier", list(Tier))
def test_dequantize_uniform_tables(tier):
    table, w = _table(R=100, D=7, seed=int(tier), tiers=tier)
    deq = ref.dequantize(table)
    np.testing.assert_array_equal(deq, _slow_decode(table))
    if tier is Tier.FP32:
        np.testing.assert_array_equal(deq, w)
    if tier is Tier.DROPPED:
        np.testing.assert_array_equal(deq, np.broadcast_to(table.default_row, deq.shape))


def test_reference_offsets_agree_with_popcount_offsets(mixed):
    table, _ = mixed
    rows = np.arange(table.num_rows, dtype=np.int64)
    codes, offsets = ref._locate(table, rows)
    np.testing.assert_array_equal(codes, table.tiers())
    np.testing.assert_array_equal(offsets, table.row_offsets(rows))


def test_dequantize_rows_any_order_and_repeats(mixed):
    table, _ = mixed
    dense = ref.dequantize(table)
    rows = np.array([299, 0, 64, 63, 64, 5, 5, 128], np.int32)
    np.testing.assert_array_equal(ref.dequantize_rows(table, rows), dense[rows])
    assert ref.dequantize_rows(table, np.zeros(0, np.int64)).shape == (0, table.dim)


def test_dequantize_large_table_in_chunks():
    table, _ = _table(R=70000, D=16, seed=3)
    dense = ref.dequantize(table)  # several chunks
    pick = np.random.default_rng(0).integers(0, 70000, 500)
    np.testing.assert_array_equal(dense[pick], ref.dequantize_rows(table, pick))


def test_reference_rejects_broken_tables(mixed):
    table, _ = mixed
    meta = table.row_meta.copy()
    meta[0, 2] |= np.uint64(1 << 3)
    meta[0, 3] |= np.uint64(1 << 3)
    broken = QuantizedTable(table.name, table.num_rows, table.dim, table.payload, meta, table.default_row,
                            table.uniform_tier, table.tier_counts)
    with pytest.raises(FormatError, match=r"table 'emb': row 3 has invalid tier code [67]"):
        ref.dequantize_rows(broken, np.array([10]))
    short = QuantizedTable(table.name, table.num_rows, table.dim, table.payload[:-40], table.row_meta,
                           table.default_row, table.uniform_tier, table.tier_counts)
    with pytest.raises(FormatError, match=r"ends past the payload"):
        ref.dequantize(short)


# --------------------------------------------------------------------------------------------------
# gather
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (1,), (17,), (4, 5), (2, 0), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_gather_shapes(mixed, shape, dtype):
    table, _ = mixed
    dense = ref.dequantize(table)
    idx = np.random.default_rng(len(shape)).integers(0, table.num_rows, shape).astype(dtype)
    out = ref.gather(table, idx)
    assert out.shape == (*shape, table.dim) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.take(dense, idx, axis=0))
    out16 = ref.gather(table, idx, output_dtype=np.float16)
    assert out16.dtype == np.float16
    np.testing.assert_array_equal(out16, np.take(dense, idx, axis=0).astype(np.float16))


def test_gather_zero_d_index_and_python_ints(mixed):
    table, _ = mixed
    dense = ref.dequantize(table)
    np.testing.assert_array_equal(ref.gather(table, 7), dense[7])
    np.testing.assert_array_equal(ref.gather(table, [[1, 2]]), dense[[[1, 2]]])


@pytest.mark.parametrize(
    "idx, value, pos",
    [(np.array([0, 5, 300, 2], np.int64), 300, 1 + 1), (np.array([[1, 2], [3, -1]], np.int32), -1, 3),
     (np.array(-5), -5, 0), (np.array([2**40], np.int64), 2**40, 0)],
)
def test_gather_index_errors(mixed, idx, value, pos):
    table, _ = mixed
    with pytest.raises(IndexOutOfRangeError, match=rf"table 'emb': index {value} at flat position {pos} is out of range \(the table has 300 rows"):
        ref.gather(table, idx)


def test_gather_argument_errors(mixed):
    table, _ = mixed
    with pytest.raises(TypeError, match="integers"):
        ref.gather(table, np.array([1.0]))
    with pytest.raises(ValueError, match="output_dtype"):
        ref.gather(table, np.array([1]), output_dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# embedding_bag
# --------------------------------------------------------------------------------------------------


def _loop_bags(dense, idx, offsets, psw, mode, include_last_offset, padding_idx):
    """Explicit per-bag python loop in float64 (the documented accumulation), rounded to float32."""
    idx = list(np.asarray(idx).reshape(-1))
    bounds = list(offsets) + ([] if include_last_offset else [len(idx)])
    out = []
    for b in range(len(bounds) - 1):
        acc = np.zeros(dense.shape[1], np.float64)
        n = 0
        for p in range(bounds[b], bounds[b + 1]):
            if idx[p] == padding_idx:
                continue
            wgt = 1.0 if psw is None else float(np.asarray(psw).reshape(-1)[p])
            acc += dense[idx[p]].astype(np.float64) * wgt
            n += 1
        if mode == "mean" and n:
            acc /= n
        out.append(acc)
    return np.array(out, np.float64).reshape(len(bounds) - 1, dense.shape[1]).astype(np.float32)


def _torch_bag(dense, idx, offsets, psw, mode, include_last_offset, padding_idx):
    return F.embedding_bag(
        torch.from_numpy(np.asarray(idx, np.int64)),
        torch.from_numpy(dense),
        None if offsets is None else torch.from_numpy(np.asarray(offsets, np.int64)),
        mode=mode,
        per_sample_weights=None if psw is None else torch.from_numpy(np.asarray(psw, np.float32)),
        include_last_offset=include_last_offset,
        padding_idx=None if padding_idx == -1 else padding_idx,
    ).numpy()


CASES = [
    # (indices, offsets, include_last_offset)
    ([3, 1, 4, 1, 5, 9, 2, 6], [0, 3, 3, 5], False),  # an empty bag in the middle
    ([3, 1, 4, 1, 5, 9, 2, 6], [0, 3, 3, 5, 8], True),
    ([3, 1, 4, 1, 5, 9, 2, 6], [0, 2, 8, 8], True),  # trailing empty bag
    ([3, 1, 4, 1, 5, 9, 2, 6], [0, 2, 5], True),  # entries past the last offset are ignored
    ([3, 1, 4, 1, 5, 9, 2, 6], [0, 8], False),  # last bag empty
    ([], [0, 0, 0], False),
    ([7], [0], False),
]


@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("padding_idx", [-1, 1, 7])
def test_embedding_bag_1d(mixed, mode, weighted, case, padding_idx):
    table, _ = mixed
    dense = ref.dequantize(table)
    idx, offsets, ilo = CASES[case]
    idx = np.array(idx, np.int64)
    offsets = np.array(offsets, np.int32)
    psw = np.random.default_rng(case).uniform(-2, 2, idx.shape).astype(np.float32) if weighted else None
    got = ref.embedding_bag(table, idx, offsets, psw, mode=mode, include_last_offset=ilo, padding_idx=padding_idx)
    expected = _loop_bags(dense, idx, offsets, psw, mode, ilo, padding_idx)
    np.testing.assert_allclose(got, expected, rtol=1e-7, atol=0)
    if ilo and offsets[-1] < idx.shape[0]:
        # torch is inconsistent when include_last_offset leaves entries past offsets[-1]: without
        # padding_idx it drops them from the last bag's sum but counts them in its mean; with padding_idx
        # it adds them to the last bag. We use the bag [offsets[-2], offsets[-1]) throughout.
        return
    theirs = _torch_bag(dense, idx, offsets, psw, mode, ilo, padding_idx)
    assert got.shape == theirs.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, theirs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(4, 3), (1, 1), (3, 0), (0, 5)])
@pytest.mark.parametrize("padding_idx", [-1, 2])
def test_embedding_bag_2d(mixed, mode, shape, padding_idx):
    table, _ = mixed
    dense = ref.dequantize(table)
    idx = np.random.default_rng(0).integers(0, 4, shape).astype(np.int32)  # small ids -> padding hits
    got = ref.embedding_bag(table, idx, mode=mode, padding_idx=padding_idx)
    assert got.shape == (shape[0], table.dim)
    offsets = np.arange(shape[0]) * shape[1]
    np.testing.assert_allclose(got, _loop_bags(dense, idx.reshape(-1), offsets, None, mode, False, padding_idx), rtol=1e-7)
    if shape[0] and shape[1]:
        np.testing.assert_allclose(got, _torch_bag(dense, idx, None, None, mode, False, padding_idx), rtol=1e-5, atol=1e-4)


def test_embedding_bag_2d_weighted_and_random(mixed):
    table, _ = mixed
    dense = ref.dequantize(table)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, table.num_rows, (20, 6))
    psw = rng.standard_normal((20, 6)).astype(np.float32)
    got = ref.embedding_bag(table, idx, per_sample_weights=psw)
    np.testing.assert_allclose(got, _torch_bag(dense, idx, None, psw, "sum", False, -1), rtol=1e-5, atol=1e-4)
    # long random 1-D batch, both offset conventions
    idx = rng.integers(0, table.num_rows, 400)
    cuts = np.sort(rng.integers(0, 401, 49))
    offsets = np.concatenate([[0], cuts])
    for ilo, off in ((False, offsets), (True, np.append(offsets, 400))):
        for mode in ("sum", "mean"):
            got = ref.embedding_bag(table, idx, off, mode=mode, include_last_offset=ilo)
            assert got.shape == (50, table.dim)
            np.testing.assert_allclose(got, _loop_bags(dense, idx, off, None, mode, ilo, -1), rtol=1e-7)
            np.testing.assert_allclose(got, _torch_bag(dense, idx, off, None, mode, ilo, -1), rtol=1e-5, atol=1e-4)


def test_embedding_bag_float16_output_and_mode_codes(mixed):
    table, _ = mixed
    idx, off = np.array([1, 2, 3, 4]), np.array([0, 1])
    f32 = ref.embedding_bag(table, idx, off, mode=1)
    np.testing.assert_array_equal(f32, ref.embedding_bag(table, idx, off, mode="mean"))
    f16 = ref.embedding_bag(table, idx, off, mode="mean", output_dtype=np.float16)
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, f32.astype(np.float16))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(indices=[1, 2], offsets=[1, 2]), r"table 'emb': offsets\[0\] must be 0, got 1"),
        (dict(indices=[1, 2, 3], offsets=[0, 2, 1]), r"offsets must be non-decreasing, but offsets\[2\] = 1 < offsets\[1\] = 2"),
        (dict(indices=[1, 2], offsets=[0, 3]), r"offsets\[1\] = 3 exceeds len\(indices\) = 2"),
        (dict(indices=[1, 2], offsets=np.zeros(0, np.int64), include_last_offset=True), r"include_last_offset needs at least one offset"),
        (dict(indices=[1, 2], offsets=[[0]]), r"offsets must be a 1-D integer array"),
        (dict(indices=[1, 2], offsets=[0.0]), r"offsets must be a 1-D integer array"),
        (dict(indices=[[1, 2]], offsets=[0]), r"offsets must be None when indices is 2-D"),
        (dict(indices=[1, 2]), r"1-D indices need offsets"),
        (dict(indices=[[[1]]]), r"indices must be 1-D \(with offsets\) or 2-D"),
        (dict(indices=[1, 2], offsets=[0], per_sample_weights=[1.0, 1.0], mode="mean"), r"per_sample_weights is only supported in mode 'sum'"),
        (dict(indices=[1, 2], offsets=[0], per_sample_weights=[1.0]), r"per_sample_weights has shape \(1,\), expected the shape of indices \(2,\)"),
        (dict(indices=[1, 2], offsets=[0], per_sample_weights=[1, 2]), r"per_sample_weights must be floating point"),
        (dict(indices=[1, 2], offsets=[0], mode="max"), r"mode must be 'sum' \(0\) or 'mean' \(1\), got 'max'"),
        (dict(indices=[1, 2], offsets=[0], padding_idx=300), r"padding_idx 300 must be -1 \(none\) or in 0\.\.299"),
        (dict(indices=[1, 2], offsets=[0], padding_idx=-2), r"padding_idx -2 must be -1"),
    ],
)
def test_embedding_bag_argument_errors(mixed, kwargs, pattern):
    table, _ = mixed
    with pytest.raises(FormatError, match=pattern):
        ref.embedding_bag(table, **kwargs)
    assert issubclass(FormatError, ValueError)


def test_embedding_bag_index_errors(mixed):
    table, _ = mixed
    with pytest.raises(IndexOutOfRangeError, match=r"table 'emb': index 300 at flat position 2 is out of range"):
        ref.embedding_bag(table, np.array([1, 2, 300]), np.array([0, 1]))
    with pytest.raises(IndexOutOfRangeError, match=r"index -3 at flat position 4"):
        ref.embedding_bag(table, np.array([[1, 2], [3, 4], [-3, 0]]))
