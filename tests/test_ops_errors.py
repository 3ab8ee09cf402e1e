"""Every bad input to the kernels is an ONNX Runtime error that names the node and the offending value,
raised at session creation (attributes, tensor types) or on the first run (tensor contents, indices,
offsets); the kernel never reads outside its buffers, and a session keeps working after an error.
Valid inputs are covered by test_ops.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from op_models import BAG, GATHER, bag_model, gather_model, table_feeds

import shark_export
from shark_export import reference as ref
from shark_export.errors import IndexOutOfRangeError
from shark_export.format import BLOCK_ROWS, QuantizedTable, Tier
from shark_export.quantize import quantize_table

ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException, ort_state.InvalidGraph)

R, D = 200, 13


def _table(tiers, R=R, D=D, seed=0, name="t") -> QuantizedTable:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((R, D)).astype(np.float32)
    return quantize_table(w, tiers, name=name, default_row=rng.standard_normal(D).astype(np.float32))


def _mixed_table() -> QuantizedTable:
    codes = np.random.default_rng(1).integers(0, 6, size=R)
    codes[:6] = np.arange(6)
    return _table(codes, name="mixed")


MIXED = _mixed_table()  # 200 rows: 4 blocks, the last one partial
UNIFORM = _table("int4", name="uniform")


@pytest.fixture
def mixed() -> QuantizedTable:
    return MIXED


@pytest.fixture
def uniform() -> QuantizedTable:
    return UNIFORM


def _assert_message(err: BaseException, fragments) -> str:
    msg = str(err)
    missing = [f for f in fragments if f not in msg]
    assert not missing, f"message lacks {missing}: {msg}"
    return msg


def error_at_creation(model, *fragments, threads=None) -> str:
    with pytest.raises(ORT_ERRORS) as info:
        shark_export.session(model, threads=threads)
    return _assert_message(info.value, fragments)


def error_at_run(sess, feeds, *fragments) -> str:
    with pytest.raises(ORT_ERRORS) as info:
        sess.run(None, feeds)
    return _assert_message(info.value, fragments)


def error_at_creation_or_run(model, feeds, *fragments) -> str:
    try:
        sess = shark_export.session(model)
    except ORT_ERRORS as e:
        return _assert_message(e, fragments)
    return error_at_run(sess, feeds, *fragments)


def gather_ok(sess, table, idx) -> None:
    (got,) = sess.run(None, {"indices": idx})
    np.testing.assert_array_equal(got, ref.gather(table, idx))


# --------------------------------------------------------------------------------------------------
# Out-of-range indices
# --------------------------------------------------------------------------------------------------
BAD_VALUES = {
    np.int32: [-1, -(2**31), R, R + 1, 2**31 - 1],
    np.int64: [-1, -(2**63), R, 2**32 + 5, 2**40, 2**63 - 1],
}


@pytest.mark.parametrize("kind", ["mixed", "uniform"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["i32", "i64"])
def test_gather_out_of_range_index(request, kind, dtype):
    table = request.getfixturevalue(kind)
    sess = shark_export.session(gather_model(table, index_dtype=dtype, index_rank=2, name="user_lookup"))
    good = np.random.default_rng(0).integers(0, R, size=(7, 9)).astype(dtype)
    for value in BAD_VALUES[dtype]:
        idx = good.copy()
        idx[3, 4] = value  # flat position 31
        error_at_run(sess, {"indices": idx}, "RowwiseDequantGather", "node 'user_lookup'", f"index {value} ",
                     "position 31", f"{R} rows")
        gather_ok(sess, table, good)  # the session still works


@pytest.mark.parametrize("kind", ["mixed", "uniform"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64], ids=["i32", "i64"])
def test_bag_out_of_range_index(request, kind, dtype):
    table = request.getfixturevalue(kind)
    sess = shark_export.session(bag_model(table, index_dtype=dtype, name="item_bags", padding_idx=3))
    idx = np.random.default_rng(1).integers(0, R, size=40).astype(dtype)
    offsets = np.array([0, 10, 10, 25], dtype)
    want = ref.embedding_bag(table, idx, offsets, padding_idx=3)
    sess2d = shark_export.session(bag_model(table, index_dtype=dtype, index_rank=2, offsets=False, name="bags2d"))
    for value in BAD_VALUES[dtype]:
        bad = idx.copy()
        bad[27] = value  # in the last bag
        error_at_run(sess, {"indices": bad, "offsets": offsets}, "RowwiseDequantEmbeddingBag", "node 'item_bags'",
                     f"index {value} ", "position 27", f"{R} rows")
        (got,) = sess.run(None, {"indices": idx, "offsets": offsets})
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        error_at_run(sess2d, {"indices": bad.reshape(8, 5)}, "node 'bags2d'", f"index {value} ", "position 27",
                     f"{R} rows")


@pytest.mark.parametrize("op", [GATHER, BAG])
def test_first_bad_position_is_reported_with_threads(mixed, op):
    """Several bad indices in different parallel tasks: the lowest position is reported, every time."""
    idx = np.random.default_rng(2).integers(0, R, size=6000).astype(np.int64)
    idx[[5900, 4100, 1500, 2600]] = [-7, R + 9, R, -1]
    if op == GATHER:
        sess = shark_export.session(gather_model(mixed), threads=2)
        feeds = {"indices": idx}
    else:
        sess = shark_export.session(bag_model(mixed), threads=2)
        feeds = {"indices": idx, "offsets": np.arange(0, 6000, 3, dtype=np.int64)}
    for _ in range(5):
        error_at_run(sess, feeds, f"index {R} at position 1500 ", f"{R} rows")


def test_bag_out_of_range_index_past_last_offset(mixed):
    """FORMAT.md: an index < 0 or >= R fails the run -- also one after the last offset with
    include_last_offset=1 (in no bag). shark_export.reference raises for it too."""
    idx = np.array([1, 2, 3, R + 5], np.int64)
    offsets = np.array([0, 2, 3], np.int64)  # bags [0, 2) and [2, 3); index 3 is in no bag
    with pytest.raises(IndexOutOfRangeError, match=f"index {R + 5} at flat position 3"):
        ref.embedding_bag(mixed, idx, offsets, include_last_offset=True)
    sess = shark_export.session(bag_model(mixed, include_last_offset=1, name="ilo"))
    error_at_run(sess, {"indices": idx, "offsets": offsets}, "node 'ilo'", f"index {R + 5} ", "position 3",
                 f"{R} rows")


def test_out_of_range_padding_idx_value_still_fails(mixed):
    """padding_idx skips one valid row id; it does not make other ids acceptable."""
    sess = shark_export.session(bag_model(mixed, padding_idx=0, name="padded"))
    error_at_run(sess, {"indices": np.array([0, 0, -1]), "offsets": np.array([0])}, "index -1 ", "position 2")


# --------------------------------------------------------------------------------------------------
# Bag arguments
# --------------------------------------------------------------------------------------------------
def test_bad_offsets(mixed):
    for dtype in (np.int32, np.int64):
        sess = shark_export.session(bag_model(mixed, index_dtype=dtype, name="offs"))
        idx = np.arange(6, dtype=dtype)
        cases = [
            ([1, 3], ["offsets[0]", " 1,", "must be 0"]),
            ([-2, 3], ["offsets[0]", "-2"]),
            ([0, 4, 2], ["offsets[2] = 2", "offsets[1] = 4"]),
            ([0, 3, -1], ["offsets[2] = -1"]),
            ([0, 7], ["offsets[1] = 7", "number of indices 6"]),
            ([0, 2, 2**31 - 1], ["offsets[2] = 2147483647", "6"]),
        ]
        for offsets, fragments in cases:
            error_at_run(sess, {"indices": idx, "offsets": np.array(offsets, dtype)}, "node 'offs'", *fragments)
            (got,) = sess.run(None, {"indices": idx, "offsets": np.array([0, 2], dtype)})
            np.testing.assert_allclose(got, ref.embedding_bag(mixed, idx, np.array([0, 2])), rtol=1e-6, atol=1e-6)
    sess = shark_export.session(bag_model(mixed, include_last_offset=1, name="ilo"))
    error_at_run(sess, {"indices": np.arange(3), "offsets": np.zeros(0, np.int64)}, "node 'ilo'", "offsets",
                 "include_last_offset")
    error_at_run(sess, {"indices": np.arange(3), "offsets": np.array([0, 4])}, "offsets[1] = 4", "3")


def test_offsets_with_2d_indices(mixed):
    sess = shark_export.session(bag_model(mixed, index_rank=2, name="b2", check=False))
    error_at_run(sess, {"indices": np.zeros((2, 3), np.int64), "offsets": np.array([0, 1])}, "node 'b2'", "offsets",
                 "2-D", "[2, 3]")


def test_1d_indices_without_offsets(mixed):
    sess = shark_export.session(bag_model(mixed, offsets=False, name="b1", check=False))
    error_at_run(sess, {"indices": np.arange(4)}, "node 'b1'", "offsets", "1-D", "[4]")


def test_bag_indices_of_rank_0_or_3(mixed):
    for rank, shape in [(0, ()), (3, (2, 3, 1))]:
        sess = shark_export.session(bag_model(mixed, index_rank=rank, name="b3", check=False))
        error_at_run(sess, {"indices": np.zeros(shape, np.int64), "offsets": np.array([0])}, "node 'b3'",
                     f"got shape [{', '.join(map(str, shape))}]")


def test_per_sample_weights_wrong_shape(mixed):
    idx, offsets = np.arange(6), np.array([0, 3])
    for shape in [(5,), (7,), (6, 1), ()]:
        sess = shark_export.session(bag_model(mixed, weights=True, weights_rank=len(shape), name="w", check=False))
        error_at_run(sess, {"indices": idx, "offsets": offsets, "per_sample_weights": np.ones(shape, np.float32)},
                     "node 'w'", "per_sample_weights", str(list(shape)).replace("(", "["), "[6]")
    (got,) = sess.run(None, {"indices": idx, "offsets": offsets, "per_sample_weights": np.ones(6, np.float32)})
    np.testing.assert_allclose(got, ref.embedding_bag(mixed, idx, offsets), rtol=1e-6, atol=1e-6)
    sess = shark_export.session(bag_model(mixed, index_rank=2, offsets=False, weights=True, name="w2"))
    error_at_run(sess, {"indices": np.zeros((2, 3), np.int64), "per_sample_weights": np.ones((3, 2), np.float32)},
                 "node 'w2'", "[3, 2]", "[2, 3]")


def test_per_sample_weights_with_mean(mixed):
    sess = shark_export.session(bag_model(mixed, weights=True, mode=1, name="wm", check=False))
    error_at_run(sess, {"indices": np.arange(4), "offsets": np.array([0]), "per_sample_weights": np.ones(4, np.float32)},
                 "node 'wm'", "per_sample_weights", "mean")


@pytest.mark.parametrize("attrs,fragments", [
    ({"mode": 2}, ["mode 2"]),
    ({"mode": -1}, ["mode -1"]),
    ({"include_last_offset": 2}, ["include_last_offset 2"]),
    ({"padding_idx": R}, [f"padding_idx {R}"]),
    ({"padding_idx": -2}, ["padding_idx -2"]),
], ids=str)
def test_bad_bag_attributes_at_session_creation(mixed, attrs, fragments):
    model = bag_model(mixed, attrs=attrs, name="battr", check=False)
    error_at_creation(model, "RowwiseDequantEmbeddingBag", "node 'battr'", *fragments)


# --------------------------------------------------------------------------------------------------
# Table attributes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [GATHER, BAG])
@pytest.mark.parametrize("attrs,fragments", [
    ({"format_version": 3}, ["format_version 3"]),
    ({"format_version": 0}, ["format_version 0"]),
    ({"uniform_tier": 9}, ["uniform_tier 9"]),
    ({"uniform_tier": 6}, ["uniform_tier 6"]),
    ({"uniform_tier": -2}, ["uniform_tier -2"]),
    ({"dim": 0}, ["dim 0"]),
    ({"dim": 65537}, ["dim 65537"]),
    ({"num_rows": 0}, ["num_rows 0"]),
    ({"num_rows": -5}, ["num_rows -5"]),
    ({"output_dtype": 7}, ["output_dtype 7"]),
    ({"output_dtype": 11}, ["output_dtype 11"]),
], ids=str)
def test_bad_table_attributes_at_session_creation(uniform, op, attrs, fragments):
    build = gather_model if op == GATHER else bag_model
    error_at_creation(build(uniform, attrs=attrs, name="tattr", check=False), op, "node 'tattr'", *fragments)


@pytest.mark.parametrize("missing", ["format_version", "num_rows", "dim", "uniform_tier"])
def test_missing_table_attribute(uniform, missing):
    model = gather_model(uniform, name="noattr", check=False)
    node = model.graph.node[0]
    keep = [a for a in node.attribute if a.name != missing]
    del node.attribute[:]
    node.attribute.extend(keep)
    error_at_creation(model, "node 'noattr'", f"'{missing}'")


# --------------------------------------------------------------------------------------------------
# Table tensors
# --------------------------------------------------------------------------------------------------
def _with_meta(table: QuantizedTable, edit) -> np.ndarray:
    meta = table.row_meta.copy()
    edit(meta)
    return meta


def _set_code(meta: np.ndarray, row: int, code: int) -> None:
    b, j = divmod(row, BLOCK_ROWS)
    for k in range(3):
        bit = np.uint64(1 << j)
        meta[b, 1 + k] = (meta[b, 1 + k] | bit) if (code >> k) & 1 else (meta[b, 1 + k] & ~bit)


def _table_cases(mixed: QuantizedTable, uniform: QuantizedTable):
    """(label, table, overrides, attrs, message fragments) of broken tables."""
    nb = mixed.row_meta.shape[0]
    mp, up = mixed.payload, uniform.payload
    chain = _with_meta(mixed, lambda m: m.__setitem__((2, 0), m[2, 0] + np.uint64(4)))
    chain0 = _with_meta(mixed, lambda m: m.__setitem__((0, 0), np.uint64(4)))
    code6 = _with_meta(mixed, lambda m: _set_code(m, 70, 6))
    code7 = _with_meta(mixed, lambda m: _set_code(m, 199, 7))
    past = _with_meta(mixed, lambda m: m.__setitem__((nb - 1, 1), m[nb - 1, 1] | np.uint64(1 << (R % 64))))
    past_top = _with_meta(mixed, lambda m: m.__setitem__((nb - 1, 3), m[nb - 1, 3] | np.uint64(1 << 63)))
    return [
        ("mixed payload truncated by 4", mixed, {"payload": mp[:-4].copy()}, {}, [f"payload has {mp.size - 4} bytes"]),
        ("mixed payload truncated by 1", mixed, {"payload": mp[:-1].copy()}, {}, [f"payload has {mp.size - 1} bytes"]),
        ("mixed payload 1 byte too long", mixed, {"payload": np.append(mp, np.uint8(0))}, {},
         [f"payload has {mp.size + 1} bytes", str(mp.size)]),
        ("mixed payload empty", mixed, {"payload": np.zeros(0, np.uint8)}, {}, ["payload has 0 bytes"]),
        ("uniform payload truncated", uniform, {"payload": up[:-4].copy()}, {},
         [f"payload has {up.size - 4} bytes", str(up.size)]),
        ("uniform payload 1 byte too long", uniform, {"payload": np.append(up, np.uint8(0))}, {},
         [f"payload has {up.size + 1} bytes", str(up.size)]),
        ("payload 2-D", uniform, {"payload": up.reshape(R, -1)}, {}, ["payload", f"[{R}, {up.size // R}]"]),
        ("row_meta [blocks, 3]", mixed, {"row_meta": mixed.row_meta[:, :3].copy()}, {}, ["row_meta", f"[{nb}, 3]"]),
        ("row_meta one block short", mixed, {"row_meta": mixed.row_meta[:-1].copy()}, {},
         ["row_meta", f"[{nb - 1}, 4]", f"[{nb}, 4]"]),
        ("row_meta one block extra", mixed, {"row_meta": np.concatenate([mixed.row_meta, mixed.row_meta[-1:]])}, {},
         ["row_meta", f"[{nb + 1}, 4]"]),
        ("row_meta 1-D", mixed, {"row_meta": mixed.row_meta.reshape(-1)}, {}, ["row_meta", f"[{nb * 4}]"]),
        ("row_meta empty for a mixed table", mixed, {"row_meta": np.zeros((0, 4), np.uint64)}, {},
         ["row_meta", "[0, 4]"]),
        ("row_meta non-empty for a uniform table", uniform, {"row_meta": np.zeros((1, 4), np.uint64)}, {},
         ["row_meta", "[1, 4]", "int4"]),
        ("block offset chain broken", mixed, {"row_meta": chain}, {},
         ["block 2", str(int(chain[2, 0])), str(int(mixed.row_meta[2, 0]))]),
        ("block 0 offset not 0", mixed, {"row_meta": chain0}, {}, ["block 0", "4"]),
        ("tier code 6", mixed, {"row_meta": code6}, {}, ["row 70", "tier code 6"]),
        ("tier code 7", mixed, {"row_meta": code7}, {}, ["row 199", "tier code 7"]),
        ("bits set past R", mixed, {"row_meta": past}, {}, ["past", f"{R}"]),
        ("bits set past R (bit 63, plane 2)", mixed, {"row_meta": past_top}, {}, ["past", f"{R}"]),
        ("default_row too short", mixed, {"default_row": mixed.default_row[:-1].copy()}, {},
         ["default_row", f"[{D}]", f"[{D - 1}]"]),
        ("default_row too long", uniform, {"default_row": np.append(uniform.default_row, np.float32(0))}, {},
         ["default_row", f"[{D + 1}]"]),
        ("default_row 2-D", uniform, {"default_row": uniform.default_row[None, :]}, {}, ["default_row", f"[1, {D}]"]),
        ("num_rows larger than the payload", uniform, {}, {"num_rows": R + 1}, ["payload", str(up.size)]),
        ("num_rows smaller than the payload", uniform, {}, {"num_rows": R - 1}, ["payload", str(up.size)]),
        ("dim disagrees with default_row", mixed, {}, {"dim": D + 1}, ["default_row", f"[{D + 1}]", f"[{D}]"]),
        ("uniform_tier disagrees with payload", uniform, {}, {"uniform_tier": int(Tier.INT8)},
         ["payload", str(up.size)]),
        ("mixed table declared uniform", mixed, {}, {"uniform_tier": int(Tier.FP32)}, ["row_meta", f"[{nb}, 4]"]),
    ]


TABLE_CASES = _table_cases(MIXED, UNIFORM)


@pytest.mark.parametrize("case", range(len(TABLE_CASES)), ids=[c[0] for c in TABLE_CASES])
@pytest.mark.parametrize("op", [GATHER, BAG])
def test_broken_table_tensors(op, case):
    label, table, tensors, attrs, fragments = TABLE_CASES[case]
    name = "broken_" + op[-3:]
    if op == GATHER:
        model = gather_model(table, attrs=attrs, name=name, check=False, **tensors)
        feeds = {"indices": np.array([0, 1, R - 1])}
    else:
        model = bag_model(table, attrs=attrs, name=name, check=False, **tensors)
        feeds = {"indices": np.array([0, 1, R - 1]), "offsets": np.array([0, 1])}
    msg = error_at_creation_or_run(model, feeds, f"node '{name}'", *fragments)
    assert op in msg, msg
    # A failed validation is not cached as a pass: the next run of the same session fails again.
    try:
        sess = shark_export.session(model)
    except ORT_ERRORS:
        return
    error_at_run(sess, feeds, f"node '{name}'", *fragments)


@pytest.mark.parametrize("which,arr,type_name", [
    ("payload", lambda t: t.payload.view(np.float32), "tensor(float)"),
    ("payload", lambda t: t.payload.view(np.int8), "tensor(int8)"),
    ("row_meta", lambda t: t.row_meta.view(np.int64), "tensor(int64)"),
    ("row_meta", lambda t: t.row_meta.astype(np.float64), "tensor(double)"),
    ("default_row", lambda t: t.default_row.astype(np.float64), "tensor(double)"),
    ("default_row", lambda t: t.default_row.astype(np.float16), "tensor(float16)"),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("op", [GATHER, BAG])
def test_wrong_dtype_of_table_tensor(mixed, op, which, arr, type_name):
    """Caught at session creation by ORT's type check against the op's declared input types; the
    message names the input, the type and the node."""
    build = gather_model if op == GATHER else bag_model
    model = build(mixed, name="dt", check=False, **{which: arr(mixed)})
    error_at_creation(model, which, type_name, "dt")


def test_wrong_dtype_of_indices_or_offsets(mixed):
    error_at_creation(gather_model(mixed, index_dtype=np.float32, name="fi", check=False), "node 'fi'", "indices",
                      "float")
    error_at_creation(bag_model(mixed, index_dtype=np.int16, name="bi", check=False), "node 'bi'", "indices", "int16")
    error_at_creation(bag_model(mixed, offsets_dtype=np.float32, name="bo", check=False), "node 'bo'", "offsets",
                      "float")


# --------------------------------------------------------------------------------------------------
# Table tensors fed at run time: validated on every run
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [GATHER, BAG])
def test_graph_input_tables_are_revalidated_every_run(mixed, op):
    build = gather_model if op == GATHER else bag_model
    sess = shark_export.session(build(mixed, table_inputs=True, name="live"))
    idx = np.random.default_rng(3).integers(0, R, size=50)
    base = {"indices": idx} if op == GATHER else {"indices": idx, "offsets": np.arange(0, 50, 5)}
    meta = mixed.row_meta.copy()
    payload = mixed.payload.copy()
    feeds = {**base, **table_feeds(mixed, row_meta=meta, payload=payload)}
    (good,) = sess.run(None, feeds)
    # Corrupt the very same buffers (same data pointers) in place: each run must check again.
    _set_code(meta, 130, 7)
    error_at_run(sess, feeds, "node 'live'", "row 130", "tier code 7")
    meta[:] = mixed.row_meta
    meta[3, 0] += np.uint64(4)
    error_at_run(sess, feeds, "node 'live'", "block 3")
    meta[:] = mixed.row_meta
    (again,) = sess.run(None, feeds)
    np.testing.assert_array_equal(again, good)
    error_at_run(sess, {**feeds, "payload": payload[:-8]}, "node 'live'", f"payload has {payload.size - 8} bytes")
    error_at_run(sess, {**feeds, "default_row": np.zeros(D + 3, np.float32)}, "node 'live'", "default_row",
                 f"[{D + 3}]")
    other = _table(np.random.default_rng(9).integers(0, 6, size=R), seed=9, name="other")
    (got,) = sess.run(None, {**base, **table_feeds(other)})
    want = ref.gather(other, idx) if op == GATHER else ref.embedding_bag(other, idx, base["offsets"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_errors_and_valid_runs_concurrently(mixed):
    """Two threads on one session, one sending bad indices, one good: every bad run fails with its own
    position, every good run succeeds with the right values."""
    sess = shark_export.session(gather_model(mixed), threads=2)
    rng = np.random.default_rng(4)
    good = [rng.integers(0, R, size=3000) for _ in range(10)]
    wants = [ref.gather(mixed, g) for g in good]
    failures: list[BaseException] = []
    barrier = threading.Barrier(2)

    def bad_worker():
        try:
            barrier.wait()
            for i in range(10):
                idx = good[i].copy()
                idx[100 * i + 7] = R + i
                error_at_run(sess, {"indices": idx}, f"index {R + i} at position {100 * i + 7} ")
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    def good_worker():
        try:
            barrier.wait()
            for g, w in zip(good, wants):
                (got,) = sess.run(None, {"indices": g})
                np.testing.assert_array_equal(got, w)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)

    threads = [threading.Thread(target=bad_worker), threading.Thread(target=good_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
