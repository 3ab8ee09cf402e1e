"""Tests of shark_export.format: tiers, strides, the quantizer, the table object and its files."""

from __future__ import annotations

import os
import zipfile
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shark_export import format as fmt
from shark_export import reference as ref
from shark_export.errors import FormatError, IndexOutOfRangeError
from shark_export.format import FORMAT_VERSION, READABLE_VERSIONS, QuantizedTable, Tier, row_stride
from shark_export.quantize import quantize_table
from shark_export.table_file import load_table, save_table

DIMS = [1, 3, 7, 8, 13, 64]
ROWS = [1, 63, 64, 65, 200]
VERSIONS = [1, 2]


def _rng(*seed):
    return np.random.default_rng(list(seed) if seed else 0)


def _weights(rng, R, D, scale=1.0):
    w = rng.standard_normal((R, D)) * scale
    w[rng.random(R) < 0.1] *= 100.0  # a few rows with a much larger range
    return w.astype(np.float32)


def _expected_strides(D, version=FORMAT_VERSION):
    def up4(n):  # v1 pads rows to 4 bytes; v2 stores them unpadded
        return -(-n // 4) * 4 if version == 1 else n

    return {
        Tier.FP32: 4 * D,
        Tier.FP16: up4(2 * D),
        Tier.INT8: up4(4 + D),
        Tier.INT4: up4(4 + -(-D // 2)),
        Tier.INT2: up4(4 + -(-D // 4)),
        Tier.DROPPED: 0,
    }


def _headers(table, rows):
    """(scale, bias) float64 of quantized ``rows``, read straight from the payload."""
    off = table.row_offsets(np.asarray(rows, dtype=np.int64))
    raw = table.payload[off[:, None] + np.arange(4)]
    h = raw.copy().view("<f2").astype(np.float64)
    return h[:, 0], h[:, 1]


def _check_values(w, table, deq=None):
    """Every row of ``deq`` (default: the reference dequantization) honours FORMAT.md for its tier."""
    if deq is None:
        deq = ref.dequantize(table)
    codes = table.tiers()
    w32 = np.asarray(w, dtype=np.float32)
    for t in Tier:
        rows = np.flatnonzero(codes == t)
        if rows.size == 0:
            continue
        got = deq[rows].astype(np.float64)
        if t is Tier.FP32:
            np.testing.assert_array_equal(deq[rows], w32[rows])
        elif t is Tier.FP16:
            np.testing.assert_array_equal(deq[rows], np.asarray(w)[rows].astype(np.float16).astype(np.float32))
        elif t is Tier.DROPPED:
            np.testing.assert_array_equal(deq[rows], np.broadcast_to(table.default_row, got.shape))
        else:
            x = np.asarray(w)[rows].astype(np.float64)
            scale, bias = _headers(table, rows)
            L = t.levels
            assert np.all(bias <= x.min(axis=1)), "bias must be <= row min"
            assert np.all(bias + L * scale >= x.max(axis=1)), "bias + L*scale must cover row max"
            bound = scale[:, None] / 2 * (1 + 2.0**-20) + 2.0**-23 * np.maximum(np.abs(x), np.abs(got))
            err = np.abs(got - x)
            assert np.all(err <= bound), f"{t}: max excess {np.max(err - bound)}"


# --------------------------------------------------------------------------------------------------
# Tiers and strides
# --------------------------------------------------------------------------------------------------


def test_tier_codes_and_helpers():
    assert [int(t) for t in Tier] == [0, 1, 2, 3, 4, 5]
    assert [t.bits for t in Tier] == [32, 16, 8, 4, 2, 0]
    assert [t.is_quantized for t in Tier] == [False, False, True, True, True, False]
    assert [t.levels for t in Tier] == [0, 0, 255, 15, 3, 0]
    assert fmt.FORMAT_VERSION == 2
    assert fmt.READABLE_VERSIONS == (1, 2, 3) and fmt.GROUPED_FORMAT_VERSION == 3


@pytest.mark.parametrize(
    "value, tier",
    [("int8", Tier.INT8), ("INT4", Tier.INT4), (" fp16 ", Tier.FP16), ("float32", Tier.FP32), ("dropped", Tier.DROPPED),
     ("drop", Tier.DROPPED), ("int2", Tier.INT2), ("3", Tier.INT4),
     (2, Tier.INT8), (np.uint8(5), Tier.DROPPED), (Tier.FP16, Tier.FP16)],
)
def test_tier_parse(value, tier):
    assert Tier.parse(value) is tier


@pytest.mark.parametrize("value, text", [("int3", "unknown tier name 'int3'"), (6, "invalid tier code 6"),
                                         (-1, "invalid tier code -1"), (1.5, "got 1.5"), (True, "got True")])
def test_tier_parse_errors(value, text):
    with pytest.raises(FormatError, match=text):
        Tier.parse(value)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("D", DIMS + [2, 4, 5, 65536])
def test_row_stride_formula(D, version):
    for t, s in _expected_strides(D, version).items():
        assert row_stride(t, D, version) == s
        assert row_stride(str(t), D, version) == s
        if version == 1:
            assert s % 4 == 0
        else:
            assert s == fmt.row_bytes(t, D)
    assert row_stride(Tier.FP16, 1) == 2 and row_stride(Tier.INT8, 5) == 9  # v2: no padding


def test_row_stride_examples_from_spec():
    assert [row_stride(t, 64) for t in Tier] == [256, 128, 68, 36, 20, 0]
    with pytest.raises(FormatError, match="dim 0"):
        row_stride(Tier.INT8, 0)
    with pytest.raises(FormatError, match="dim 65537"):
        row_stride(Tier.INT8, 65537)


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("R", ROWS)
def test_uniform_round_trip(tier, D, R, version):
    rng = _rng(int(tier), D, R)
    w = _weights(rng, R, D)
    default = rng.standard_normal(D).astype(np.float32) if tier is Tier.DROPPED else None
    table = quantize_table(w, tier, name="emb", default_row=default, format_version=version)
    table.validate()
    assert table.uniform_tier == int(tier)
    assert table.row_meta.shape == (0, 4) and table.row_meta.dtype == np.uint64
    stride = _expected_strides(D, version)[tier]
    assert table.payload.dtype == np.uint8 and table.payload.shape == (R * stride,)
    assert table.tier_counts[tier] == R and sum(table.tier_counts.values()) == R
    np.testing.assert_array_equal(table.tiers(), np.full(R, int(tier), np.uint8))
    np.testing.assert_array_equal(table.row_offsets(np.arange(R)), np.arange(R) * stride)
    _check_values(w, table)
    rep = table.byte_report()
    assert rep.payload + rep.scales == table.payload.nbytes
    assert rep.scales == (4 * R if tier.is_quantized else 0)
    # uniform: no row_meta at all, only default_row (v2: only when rows are dropped)
    assert rep.metadata == (4 * D if version == 1 or tier is Tier.DROPPED else 0)
    assert rep.total == rep.payload + rep.scales + rep.metadata
    assert rep.fp32 == R * D * 4 and rep.ratio == pytest.approx(rep.total / rep.fp32)
    assert table.op_attributes() == {"format_version": version, "num_rows": R, "dim": D, "uniform_tier": int(tier)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("R", ROWS)
def test_mixed_round_trip(D, R, version):
    rng = _rng(D, R, 7)
    w = _weights(rng, R, D)
    codes = rng.integers(0, 6, R).astype(np.uint8)
    if R > 1 and np.all(codes == codes[0]):
        codes[-1] = (codes[0] + 1) % 6
    default = rng.standard_normal(D).astype(np.float32)
    table = quantize_table(w, codes, name="mixed", default_row=default, format_version=version)
    table.validate()
    if R == 1:
        assert table.uniform_tier == int(codes[0])
        return
    assert table.uniform_tier == -1
    nb = -(-R // 64)
    assert table.row_meta.shape == (nb, 4)
    np.testing.assert_array_equal(table.tiers(), codes)
    strides = np.array([row_stride(t, D, version) for t in Tier])[codes]
    offsets = np.concatenate([[0], np.cumsum(strides)[:-1]])
    np.testing.assert_array_equal(table.row_offsets(np.arange(R)), offsets)
    np.testing.assert_array_equal(table.row_meta[:, 0], offsets[::64])
    assert table.payload.nbytes == strides.sum()
    assert {t: table.tier_counts[t] for t in Tier} == {t: int(np.sum(codes == t)) for t in Tier}
    _check_values(w, table)
    rep = table.byte_report()
    n_q = int(np.isin(codes, [2, 3, 4]).sum())
    assert rep.scales == 4 * n_q
    assert rep.payload == strides.sum() - 4 * n_q
    assert rep.metadata == 32 * nb + 4 * D
    assert rep.total == table.payload.nbytes + table.row_meta.nbytes + table.default_row.nbytes
    assert table.op_attributes()["uniform_tier"] == -1


def test_mixed_metadata_is_half_a_byte_per_row():
    R, D = 6400, 8
    rng = _rng(1)
    codes = rng.integers(0, 6, R).astype(np.uint8)
    table = quantize_table(_weights(rng, R, D), codes)
    assert table.row_meta.nbytes == R // 2
    assert table.byte_report().metadata == R // 2 + 4 * D
    for R in (1000, 65, 130):
        t = quantize_table(np.ones((R, 2), np.float32), np.arange(R) % 6)
        assert t.row_meta.nbytes == 32 * -(-R // 64) <= 0.5 * R + 31.5


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_d64_stride_is_68_bytes_per_row(version):
    table = quantize_table(_weights(_rng(2), 1000, 64), "int8", format_version=version)
    assert table.payload.nbytes == 68 * 1000
    rep = table.byte_report()
    # v2 stores no default row for a table without dropped rows
    assert (rep.payload, rep.scales, rep.metadata) == (64 * 1000, 4 * 1000, 256 if version == 1 else 0)


@pytest.mark.parametrize("D", [1, 2, 3, 5, 6, 9])
def test_v2_small_dims_cost_their_row_bytes(D):
    w = _weights(_rng(D, 5), 100, D)
    for tier in (Tier.FP16, Tier.INT8, Tier.INT4, Tier.INT2):
        table = quantize_table(w, tier)
        assert table.payload.nbytes == 100 * fmt.row_bytes(tier, D)
        assert table.default_row.shape == (0,)
        _check_values(w, table)
    codes = np.arange(100) % 5  # every stored tier, unaligned rows everywhere
    table = quantize_table(w, codes)
    assert table.payload.nbytes == sum(fmt.row_bytes(Tier(int(c)), D) for c in codes)
    _check_values(w, table)


def test_all_rows_one_tier_array_is_uniform():
    table = quantize_table(_weights(_rng(3), 100, 5), np.full(100, 3, np.int64))
    assert table.uniform_tier == 3 and table.row_meta.shape == (0, 4)


def test_chunking_gives_identical_bytes():
    rng = _rng(4)
    R, D = 1000, 8
    w = _weights(rng, R, D)
    codes = rng.integers(0, 6, R).astype(np.uint8)
    codes[:256] = 2  # whole single-tier chunks take the contiguous fast path
    codes[256:320] = 5
    a = quantize_table(w, codes)
    for chunk in (1, 64, 100, 333):
        b = quantize_table(w, codes, chunk_rows=chunk)
        np.testing.assert_array_equal(a.payload, b.payload)
        np.testing.assert_array_equal(a.row_meta, b.row_meta)
    u1, u2 = quantize_table(w, "int4"), quantize_table(w, "int4", chunk_rows=64)
    np.testing.assert_array_equal(u1.payload, u2.payload)


def test_non_contiguous_weights():
    rng = _rng(13)
    base = _weights(rng, 300, 20)
    codes = rng.integers(0, 6, 150).astype(np.uint8)
    views = [base[::2, ::2], np.asfortranarray(base[:150, :10]), base[:150, 3:13]]
    for v in views:
        a = quantize_table(v, codes, chunk_rows=64)
        b = quantize_table(np.ascontiguousarray(v), codes)
        np.testing.assert_array_equal(a.payload, b.payload)


def test_padding_bytes_are_zero():
    rng = _rng(5)
    D = 13
    codes = np.tile(np.arange(6, dtype=np.uint8), 20)
    table = quantize_table(_weights(rng, codes.size, D), codes)
    off = table.row_offsets(np.arange(codes.size))
    for r, c in enumerate(codes):
        used = fmt.row_bytes(int(c), D)
        pad = table.payload[off[r] + used: off[r] + row_stride(int(c), D)]
        assert not pad.any()


# --------------------------------------------------------------------------------------------------
# Exact quantization rules
# --------------------------------------------------------------------------------------------------


def test_exact_bytes_int4_int2_int8_fp16():
    t4 = quantize_table(np.array([[0.0, 1.5, 0.5]], np.float32), "int4", format_version=1)
    scale = np.frombuffer(t4.payload[:2].tobytes(), "<f2")[0]
    assert float(scale) == float(np.nextafter(np.float16(0.1), np.float16(1)))  # 0.1 rounded *up* in fp16
    assert t4.payload[2:4].tolist() == [0, 0]  # bias 0.0
    assert t4.payload[4:].tolist() == [0xF0, 5, 0, 0]  # element 0 low nibble, element 1 high nibble

    t2 = quantize_table(np.array([[0.0, 3.0, 1.0, 2.0, 3.0]], np.float32), "int2", format_version=1)
    assert np.frombuffer(t2.payload[:4].tobytes(), "<f2").tolist() == [1.0, 0.0]
    assert t2.payload[4:].tolist() == [0b10011100, 3, 0, 0]  # element 4k+i in bits 2i..2i+1

    t8 = quantize_table(np.array([[-2.0, 0.0, 2.0]], np.float32), "int8", format_version=1)
    s, b = np.frombuffer(t8.payload[:4].tobytes(), "<f2").astype(np.float64)
    assert b == -2.0 and s == float(np.nextafter(np.float16(4 / 255), np.float16(1)))  # up from nearest
    assert t8.payload[4:7].tolist() == [0, int(np.rint(2 / s)), 255]
    assert t8.payload[7] == 0

    t16 = quantize_table(np.array([[1.0, -2.5, 0.1]], np.float32), "fp16", format_version=1)
    assert t16.payload.tobytes() == np.array([1.0, -2.5, 0.1], "<f2").tobytes() + b"\0\0"
    # v2: the same bytes without the padding
    assert quantize_table(np.array([[0.0, 1.5, 0.5]], np.float32), "int4").payload.tolist() == t4.payload.tolist()[:6]
    assert quantize_table(np.array([[-2.0, 0.0, 2.0]], np.float32), "int8").payload.tolist() == t8.payload.tolist()[:7]
    v2_16 = quantize_table(np.array([[1.0, -2.5, 0.1]], np.float32), "fp16")
    assert v2_16.payload.tobytes() == np.array([1.0, -2.5, 0.1], "<f2").tobytes()
    t32 = quantize_table(np.array([[1.0, -2.5, 0.1]], np.float32), "fp32")
    assert t32.payload.tobytes() == np.array([1.0, -2.5, 0.1], "<f4").tobytes()


def _f16_neighbours(v):
    h = np.float16(v)
    return np.nextafter(h, np.float16(-np.inf)), np.nextafter(h, np.float16(np.inf))


@pytest.mark.parametrize("tier", [Tier.INT8, Tier.INT4, Tier.INT2])
def test_scale_bias_are_the_tightest_directed_fp16_values(tier):
    rng = _rng(int(tier), 11)
    w = np.concatenate([_weights(rng, 150, 9), rng.uniform(-1e-6, 1e-6, (20, 9)).astype(np.float32),
                        rng.uniform(-6e4, 6e4, (10, 9)).astype(np.float32)])
    table = quantize_table(w, tier)
    scale, bias = _headers(table, np.arange(w.shape[0]))
    L = tier.levels
    for r in range(w.shape[0]):
        lo, hi = Fraction(float(w[r].min())), Fraction(float(w[r].max()))
        b, s = Fraction(float(bias[r])), Fraction(float(scale[r]))
        assert b <= lo < Fraction(float(np.nextafter(np.float16(bias[r]), np.float16(np.inf))))
        target = (hi - b) / L
        assert s >= target
        assert Fraction(float(np.nextafter(np.float16(scale[r]), np.float16(-np.inf)))) < target
        # the codes are round-half-even((x - bias)/scale), clamped
        off = table.row_offsets(np.array([r]))[0]
        got = ref.dequantize_rows(table, np.array([r]))[0]
        for j in range(w.shape[1]):
            x = Fraction(float(w[r, j]))
            q = min(max(round((x - b) / s), 0), L) if s else 0  # Python round() is half-even
            assert float(got[j]) == float(np.float32(float(q * s + b))), (r, j, off)


def test_constant_rows():
    w = np.array([[0.5] * 4, [0.1] * 4, [0.0] * 4, [-3.0] * 4], np.float32)
    for tier in ("int8", "int4", "int2"):
        table = quantize_table(w, tier)
        scale, bias = _headers(table, np.arange(4))
        assert scale[0] == 0 and bias[0] == 0.5 and scale[2] == 0 and scale[3] == 0
        deq = ref.dequantize(table)
        np.testing.assert_array_equal(deq[[0, 2, 3]], w[[0, 2, 3]])
        _check_values(w, table, deq)


def test_extreme_fp16_range_rows():
    w = np.array([[-65504.0, 65504.0, 0.0, 1.0], [65504.0] * 4, [-65504.0, 1e-30, -1e-30, 3.0]], np.float32)
    for tier in ("fp16", "int8", "int4", "int2"):
        _check_values(w, quantize_table(w, tier))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_input_dtypes(dtype):
    rng = _rng(6)
    w = (rng.standard_normal((70, 6)) * 3).astype(dtype)
    codes = np.arange(70) % 6
    table = quantize_table(w, codes)
    _check_values(w, table)
    if dtype == np.float64:  # fp16 rows round float64 -> float16 directly (single rounding)
        np.testing.assert_array_equal(ref.dequantize(table)[codes == 1], w[codes == 1].astype(np.float16).astype(np.float32))


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    w = torch.randn(90, 12, generator=torch.Generator().manual_seed(0))
    a = quantize_table(w, "int8")
    b = quantize_table(w.numpy(), "int8")
    c = quantize_table(w.clone().requires_grad_(True), "int8")  # a trainable parameter works too
    np.testing.assert_array_equal(a.payload, b.payload)
    np.testing.assert_array_equal(a.payload, c.payload)


def test_int8_error_comparable_with_torch_prepack():
    torch = pytest.importorskip("torch")
    if not hasattr(torch.ops.quantized, "embedding_bag_byte_prepack"):
        pytest.skip("this torch build has no quantized embedding ops")
    rng = _rng(8)
    w = _weights(rng, 500, 64)
    table = quantize_table(w, "int8")
    ours = ref.dequantize(table).astype(np.float64)
    packed = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(w))
    theirs = torch.ops.quantized.embedding_bag_byte_unpack(packed).numpy().astype(np.float64)
    t_scale = packed[:, 64:68].contiguous().view(torch.float32).numpy().astype(np.float64)[:, 0]
    scale, _ = _headers(table, np.arange(500))
    # fbgemm: scale = (max - min)/255 in float32; ours is the same range widened to fp16 steps
    assert np.all(scale >= t_scale * (1 - 1e-6))
    assert np.all(scale <= t_scale * (1 + 2.0**-9) + 2.0**-24 * 2)
    x = w.astype(np.float64)
    bound = scale[:, None] / 2 * (1 + 2.0**-20) + 2.0**-23 * np.abs(x)
    assert np.all(np.abs(ours - x) <= bound)
    assert np.all(np.abs(theirs - x) <= t_scale[:, None] / 2 * (1 + 1e-5) + 1e-6 * np.abs(x))
    # same quality: our mean error within a few percent of torch's
    assert np.abs(ours - x).mean() <= 1.05 * np.abs(theirs - x).mean()


# --------------------------------------------------------------------------------------------------
# Clipping search
# --------------------------------------------------------------------------------------------------


def _row_l2(w, table):
    return ((ref.dequantize(table).astype(np.float64) - w.astype(np.float64)) ** 2).sum(axis=1)


@pytest.mark.parametrize("tier", ["int8", "int4", "int2"])
def test_l2_clip_never_increases_row_error(tier):
    rng = _rng(9)
    w = np.concatenate([
        rng.standard_normal((60, 16)),
        rng.standard_t(1.5, (60, 16)),
        rng.uniform(-1, 1, (30, 16)),
        np.repeat(rng.standard_normal((5, 1)), 16, axis=1),  # constant rows
        rng.standard_normal((5, 1)) * np.ones((1, 16)) + np.eye(5, 16),
    ]).astype(np.float32)
    plain = _row_l2(w, quantize_table(w, tier))
    clipped_table = quantize_table(w, tier, clip="l2")
    clipped = _row_l2(w, clipped_table)
    assert np.all(clipped <= plain)
    # mixed tables take the same path per tier
    codes = np.arange(w.shape[0]) % 6
    mixed_plain, mixed_clip = _row_l2(w, quantize_table(w, codes)), _row_l2(w, quantize_table(w, codes, clip="l2"))
    assert np.all(mixed_clip <= mixed_plain)
    np.testing.assert_array_equal(mixed_clip[np.isin(codes, [0, 1, 5])], mixed_plain[np.isin(codes, [0, 1, 5])])


@pytest.mark.parametrize("tier, gain", [("int8", 0.97), ("int4", 0.9), ("int2", 0.5)])
def test_l2_clip_helps_heavy_tailed_rows(tier, gain):
    rng = _rng(10)
    w = rng.standard_t(2.0, (200, 64)).astype(np.float32)
    plain, clipped = _row_l2(w, quantize_table(w, tier)), _row_l2(w, quantize_table(w, tier, clip="l2"))
    assert clipped.sum() < gain * plain.sum()
    assert np.mean(clipped < plain) > 0.5


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight, tiers, kwargs, pattern",
    [
        (np.zeros(5, np.float32), "int8", {}, r"table 'tbl': weight must be 2-D .* shape \(5,\)"),
        (np.zeros((2, 3, 4), np.float32), "int8", {}, r"table 'tbl': weight must be 2-D"),
        (np.zeros((0, 4), np.float32), "int8", {}, r"table 'tbl' is empty \(0 rows\)"),
        (np.zeros((3, 0), np.float32), "int8", {}, r"table 'tbl': dim 0 is outside"),
        (np.zeros((1, 65537), np.float32), "int8", {}, r"table 'tbl': dim 65537 is outside .*1\.\.65536"),
        (np.zeros((3, 4), np.int32), "int8", {}, r"table 'tbl': weight must be float16, float32 or float64, got int32"),
        (np.zeros((3, 4), np.float32), np.zeros(4, np.uint8), {}, r"table 'tbl': tiers must be one tier code per row \(3\)"),
        (np.zeros((3, 4), np.float32), np.array([0, 6, 1]), {}, r"table 'tbl': row 1 has invalid tier code 6"),
        (np.zeros((3, 4), np.float32), np.array([0, 1, -2]), {}, r"table 'tbl': row 2 has invalid tier code -2"),
        (np.zeros((3, 4), np.float32), np.array([0.0, 1.0, 2.0]), {}, r"table 'tbl': tiers must be an integer array"),
        (np.zeros((3, 4), np.float32), "int3", {}, r"table 'tbl': unknown tier name 'int3'"),
        (np.zeros((3, 4), np.float32), 9, {}, r"table 'tbl': invalid tier code 9"),
        (np.zeros((3, 4), np.float32), "int8", {"default_row": np.zeros(3)}, r"table 'tbl': default_row must have shape \(4,\)"),
        (np.zeros((3, 4), np.float32), "int8", {"default_row": [0, 0, np.nan, 0]}, r"table 'tbl': default_row has a non-finite value nan .* column 2"),
        (np.zeros((3, 4), np.float32), "int8", {"default_row": [0, 1e39, 0, 0]}, r"default_row has a non-finite value inf"),
        (np.zeros((3, 4), np.float32), "int8", {"clip": "mse"}, r"table 'tbl': clip must be 'none' or 'l2', got 'mse'"),
        (np.zeros((3, 4), np.float32), "int8", {"chunk_rows": 0}, r"table 'tbl': chunk_rows must be a positive integer"),
    ],
)
def test_argument_errors(weight, tiers, kwargs, pattern):
    with pytest.raises(FormatError, match=pattern):
        quantize_table(weight, tiers, name="tbl", **kwargs)


@pytest.mark.parametrize("tier", list(Tier))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_names_row_and_value(tier, bad):
    w = np.ones((300, 5), np.float32)
    w[170, 3] = bad
    w[250, 1] = np.nan
    with pytest.raises(FormatError, match=rf"table 'users': row 170 has a non-finite value {bad!r} at column 3"):
        quantize_table(w, tier, name="users", chunk_rows=64)


@pytest.mark.parametrize("tier", ["fp16", "int8", "int4", "int2"])
def test_out_of_fp16_range_names_row_and_value(tier):
    w = np.ones((100, 4), np.float32)
    w[77, 2] = -70000.0
    w[90, 0] = 1e6
    with pytest.raises(FormatError, match=rf"table 'items': row 77 \(tier {tier}\) has value -70000.0 at column 2 outside the fp16 range"):
        quantize_table(w, tier, name="items")
    just_over = np.nextafter(np.float32(65504), np.float32(np.inf))
    with pytest.raises(FormatError, match="row 0"):
        quantize_table(np.array([[just_over, 0]], np.float32), tier)
    quantize_table(np.array([[65504.0, -65504.0]], np.float32), tier)  # the limit itself is fine


def test_out_of_fp16_range_allowed_for_fp32_and_dropped_rows():
    w = np.ones((4, 3), np.float32)
    w[0, 0] = 1e30
    w[1, 1] = -1e30
    table = quantize_table(w, np.array([0, 5, 2, 3]))
    deq = ref.dequantize(table)
    assert deq[0, 0] == np.float32(1e30) and not deq[1].any()
    with pytest.raises(FormatError, match=r"row 1 \(tier int8\)"):
        quantize_table(w, np.array([0, 2, 2, 3]))


def test_non_finite_in_dropped_row_is_rejected():
    w = np.ones((4, 3), np.float32)
    w[2, 1] = np.nan
    with pytest.raises(FormatError, match="row 2 has a non-finite value nan"):
        quantize_table(w, np.array([0, 1, 5, 2]))


# --------------------------------------------------------------------------------------------------
# validate() and row_offsets()
# --------------------------------------------------------------------------------------------------


def _mixed(R=200, D=7, seed=12):
    rng = _rng(seed)
    codes = rng.integers(0, 6, R).astype(np.uint8)
    return quantize_table(_weights(rng, R, D), codes, name="m"), codes


def _replace(table, **changes):
    fields = dict(name=table.name, num_rows=table.num_rows, dim=table.dim, payload=table.payload,
                  row_meta=table.row_meta, default_row=table.default_row, uniform_tier=table.uniform_tier,
                  tier_counts=table.tier_counts, format_version=table.format_version)
    fields.update(changes)
    return QuantizedTable(**fields)


def test_validate_rejects_broken_tables():
    table, codes = _mixed()
    assert table.validate() is table

    def expect(pattern, **changes):
        with pytest.raises(FormatError, match=pattern):
            _replace(table, **changes).validate()

    meta = table.row_meta.copy()
    j = 10
    meta[1, 2] |= np.uint64(1 << j)
    meta[1, 3] |= np.uint64(1 << j)  # code 6 or 7 at row 64 + 10
    expect(r"table 'm': row 74 has invalid tier code [67]", row_meta=meta)

    meta = table.row_meta.copy()
    meta[-1, 1] |= np.uint64(1 << 63)  # R = 200 -> last block holds 8 rows
    expect(r"tier bits set for rows at or past num_rows=200", row_meta=meta)

    meta = table.row_meta.copy()
    meta[2, 0] += np.uint64(4)
    expect(r"row_meta block 2 has offset \d+, expected \d+", row_meta=meta)

    meta = table.row_meta.copy()
    meta[0, 0] = np.uint64(4)
    expect(r"block 0 has offset 4, expected 0", row_meta=meta)

    expect(r"payload has \d+ bytes, but the rows' strides add up to", payload=table.payload[:-4])
    expect(r"payload must be uint8", payload=table.payload.view(np.int8))
    expect(r"row_meta has 3 blocks, expected ceil\(200/64\) = 4", row_meta=table.row_meta[:3])
    expect(r"default_row has shape \(6,\)", default_row=np.zeros(6, np.float32))
    expect(r"default_row must be float32", default_row=np.zeros(7, np.float64))
    expect(r"uniform_tier 7 is not a tier code", uniform_tier=7)
    expect(r"uniform table \(tier int8\) must have an empty row_meta", uniform_tier=2)
    expect(r"num_rows 0 is outside", num_rows=0)
    expect(r"dim 0 is outside", dim=0)
    expect(r"tier_counts .* do not match", tier_counts={t: 0 for t in Tier})

    uniform = quantize_table(np.ones((10, 3), np.float32), "int4", name="u")
    with pytest.raises(FormatError, match=r"table 'u': payload has 56 bytes, expected 60"):
        _replace(uniform, payload=uniform.payload[:-4]).validate()
    old = quantize_table(np.ones((10, 3), np.float32), "int4", name="u", format_version=1)
    with pytest.raises(FormatError, match=r"table 'u': payload has 76 bytes, expected 80"):
        _replace(old, payload=old.payload[:-4]).validate()
    expect(r"format_version 4 is not supported", format_version=4)
    expect(r"scale_group_rows 0 is not a power of two", format_version=3)
    expect(r"scale_group_rows 64 is given, but format_version 2", scale_group_rows=64)


def test_empty_default_row_only_without_dropped_rows():
    table, codes = _mixed()  # has dropped rows: a default row is stored
    assert (codes == Tier.DROPPED).any() and table.default_row.shape == (7,)
    with pytest.raises(FormatError, match=r"table 'm': default_row is empty but \d+ rows are dropped"):
        _replace(table, default_row=np.zeros(0, np.float32)).validate()
    kept = quantize_table(np.ones((10, 3), np.float32), np.arange(10) % 5, name="k")  # no dropped row
    assert kept.default_row.shape == (0,) and kept.byte_report().metadata == kept.row_meta.nbytes
    with pytest.raises(FormatError, match=r"default_row has shape \(0,\), expected \(3,\)$"):
        _replace(quantize_table(np.ones((10, 3), np.float32), "int8", format_version=1), default_row=np.zeros(0, np.float32)).validate()
    dropped = quantize_table(np.ones((10, 3), np.float32), "dropped", name="d")
    assert dropped.default_row.shape == (3,)  # zeros: every row reads it
    with pytest.raises(FormatError, match="default_row is empty but 10 rows are dropped"):
        _replace(dropped, default_row=np.zeros(0, np.float32)).validate()


def test_row_offsets_any_shape_and_range_errors():
    table, codes = _mixed()
    rows = np.array([[0, 199], [64, 63]], np.int32)
    off = table.row_offsets(rows)
    assert off.shape == (2, 2) and off.dtype == np.int64
    full = table.row_offsets(np.arange(200))
    np.testing.assert_array_equal(off, full[rows])
    assert table.row_offsets(np.array(5)).shape == ()
    with pytest.raises(IndexOutOfRangeError, match=r"table 'm': row 200 at position 1 is out of range \(table has 200 rows\)"):
        table.row_offsets([0, 200])
    with pytest.raises(IndexOutOfRangeError, match="row -1 at position 0"):
        table.row_offsets([-1])


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _assert_same(a, b):
    assert (a.name, a.num_rows, a.dim, a.uniform_tier) == (b.name, b.num_rows, b.dim, b.uniform_tier)
    assert dict(a.tier_counts) == dict(b.tier_counts)
    for k in ("payload", "row_meta", "default_row"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("uniform", [False, True])
def test_save_load_round_trip(tmp_path, uniform):
    table, codes = _mixed()
    if uniform:
        table = quantize_table(_weights(_rng(1), 50, 7), "int2", name="ü-table")
    path = tmp_path / "t.npz"
    save_table(table, path)
    loaded = load_table(path)
    _assert_same(table, loaded)
    np.testing.assert_array_equal(ref.dequantize(loaded), ref.dequantize(table))
    assert os.listdir(tmp_path) == ["t.npz"]  # no temp file left behind
    save_table(table, str(path))  # overwrite in place
    _assert_same(table, load_table(str(path)))
    path2 = tmp_path / "no_suffix"
    save_table(table, path2)
    assert sorted(os.listdir(tmp_path)) == ["no_suffix", "t.npz"]
    _assert_same(table, load_table(path2))


def test_save_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    table, _ = _mixed()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_table(table, tmp_path / "t.npz")
    assert os.listdir(tmp_path) == []


def test_load_corrupt_truncated_and_foreign_files(tmp_path):
    table, _ = _mixed()
    good = tmp_path / "good.npz"
    save_table(table, good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=r"truncated\.npz"):
        load_table(truncated)

    with zipfile.ZipFile(good) as z:
        info = z.getinfo("payload.npy")
    corrupt = bytearray(data)
    start = info.header_offset + 30 + len(info.filename) + 200  # inside the payload member's data
    corrupt[start: start + 8] = bytes(b ^ 0xFF for b in corrupt[start: start + 8])
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(FormatError, match=r"corrupt\.npz"):
        load_table(bad)

    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(FormatError, match=r"text\.npz: not a readable shark-export table file"):
        load_table(text)

    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(FormatError, match=r"array\.npy: not a shark-export table file"):
        load_table(npy)

    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(FormatError, match=r"other\.npz: not a shark-export table file \(missing"):
        load_table(other)

    with pytest.raises(FileNotFoundError):
        load_table(tmp_path / "missing.npz")


def _rewrite(src, dst, **changes):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(dst, **arrays)


def test_load_wrong_version_and_inconsistent_content(tmp_path):
    table, _ = _mixed()
    good = tmp_path / "good.npz"
    save_table(table, good)
    v4 = tmp_path / "v4.npz"
    _rewrite(good, v4, format_version=np.array(4))
    with pytest.raises(FormatError, match=r"v4\.npz: format_version 4 is not supported \(this reader knows versions 1, 2, 3\)"):
        load_table(v4)
    grouped = quantize_table(_weights(_rng(9), 300, 5), np.arange(300) % 6, scale_group_rows=64)
    save_table(grouped, tmp_path / "g.npz")
    back = load_table(tmp_path / "g.npz")  # v3 files keep their scale groups
    assert back.format_version == 3 and back.scale_group_rows == 64
    np.testing.assert_array_equal(back.payload, grouped.payload)
    _rewrite(tmp_path / "g.npz", tmp_path / "g0.npz", scale_group_rows=np.array(0))
    with pytest.raises(FormatError, match=r"g0\.npz: .*scale_group_rows 0 is not a power of two"):
        load_table(tmp_path / "g0.npz")
    old = quantize_table(_weights(_rng(8), 70, 5), np.arange(70) % 6, format_version=1)
    save_table(old, tmp_path / "v1.npz")
    back = load_table(tmp_path / "v1.npz")  # version 1 files still read, with their strides
    assert back.format_version == 1 and back.payload.nbytes == old.payload.nbytes
    np.testing.assert_array_equal(ref.dequantize(back), ref.dequantize(old))
    short = tmp_path / "short.npz"
    _rewrite(good, short, payload=table.payload[:-4])
    with pytest.raises(FormatError, match=r"short\.npz: table 'm': payload has"):
        load_table(short)
    magic = tmp_path / "magic.npz"
    _rewrite(good, magic, magic=np.array("something else"))
    with pytest.raises(FormatError, match=r"magic\.npz: not a shark-export table file \(magic"):
        load_table(magic)


# --------------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------------


@st.composite
def _tables(draw):
    R = draw(st.integers(1, 300))
    D = draw(st.integers(1, 70))
    allowed = draw(st.lists(st.sampled_from(list(Tier)), min_size=1, max_size=6, unique=True))
    seed = draw(st.integers(0, 2**32 - 1))
    magnitude = draw(st.sampled_from([1e-6, 1.0, 300.0, 3e4]))
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.array([int(t) for t in allowed], np.uint8), R)
    w = (rng.standard_normal((R, D)) * magnitude).clip(-65504, 65504).astype(np.float32)
    chunk = draw(st.sampled_from([64, 128, 65536]))
    return w, codes, chunk


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_property_round_trip(case):
    w, codes, chunk = case
    R, D = w.shape
    table = quantize_table(w, codes, name="p", default_row=np.full(D, 0.25, np.float32), chunk_rows=chunk)
    table.validate()
    np.testing.assert_array_equal(table.tiers(), codes)
    strides = np.array([row_stride(t, D, table.format_version) for t in Tier])[codes]
    assert table.payload.nbytes == int(strides.sum())
    np.testing.assert_array_equal(table.row_offsets(np.arange(R)), np.cumsum(strides) - strides)
    assert table.row_meta.shape == ((0, 4) if np.all(codes == codes[0]) else (-(-R // 64), 4))
    _check_values(w, table)


@pytest.mark.parametrize("clip", ["none", "l2"])
def test_v3_group_scales_cover_their_groups_rows(clip):
    """v3: each group's slot for a tier is computed from that group's rows of that tier only: without clipping
    bias = fp16-down(min) and bias + L*scale >= max over exactly those rows; with clipping the range lies inside
    it. Slots of tiers a group does not use are zero; rows decode within scale/2 of their weights (no clip)."""
    rng = np.random.default_rng(3)
    R, D, G = 700, 5, 64
    w = (rng.normal(size=(R, D)) * rng.uniform(0.1, 3.0, size=(R, 1))).astype(np.float32)
    codes = rng.choice([Tier.FP16, Tier.INT8, Tier.INT4, Tier.INT2, Tier.DROPPED], size=R).astype(np.uint8)
    codes[128:192] = Tier.FP16  # group 2 has no quantized row
    table = quantize_table(w, codes, scale_group_rows=G, clip=clip)
    slots = table.group_scales().astype(np.float64)
    assert slots.shape == (-(-R // G), 3, 2)
    for g in range(slots.shape[0]):
        for k, tier in enumerate((Tier.INT8, Tier.INT4, Tier.INT2)):
            rows = np.flatnonzero(codes[g * G:(g + 1) * G] == tier) + g * G
            scale, bias = slots[g, k]
            if rows.shape[0] == 0:
                assert scale == 0 and bias == 0, (g, tier)
                continue
            lo, hi = float(w[rows].min()), float(w[rows].max())
            if clip == "none":
                assert bias <= lo and bias == float(np.float16(bias)) and bias + tier.levels * scale >= hi, (g, tier)
                assert lo - bias < 2 * abs(lo) * 2.0**-10 + 2.0**-24, (g, tier)  # bias is lo rounded down to fp16
            else:
                assert bias >= lo - max(abs(lo), 1e-3) * 2.0**-9 and bias + tier.levels * scale <= hi + scale, (g, tier)
    if clip == "none":
        back = ref.dequantize(table)
        for k, tier in enumerate((Tier.INT8, Tier.INT4, Tier.INT2)):
            sel = np.flatnonzero(codes == tier)
            bound = slots[sel // G, k, 0][:, None] / 2 + 2.0**-23 * np.abs(w[sel])
            assert (np.abs(back[sel].astype(np.float64) - w[sel]) <= bound).all(), tier
