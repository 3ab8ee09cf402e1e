"""RowwiseDequantMultiLookup: several fields' lookups (gathers and bags, tables of any tiers and dims) in
one node writing one [B, W] output.

Every field's block must equal, bit for bit, what the field's single op (RowwiseDequantGather /
RowwiseDequantEmbeddingBag) returns: that is what lets the converter fuse lookups without changing a
number. Independently, gather blocks equal shark_export.reference bit for bit and bag blocks agree with it
within float32 summation error (the single ops' exhaustive tests are in test_ops.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from op_models import bag_model, gather_model, multi_model

import shark_export
from shark_export import reference as ref
from shark_export.quantize import quantize_table

B = 2500  # more than one gather task (1024 lookups) and one bag task


def _table(R: int, D: int, tiers, seed: int):
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((R, D)) * 10.0 ** rng.uniform(-2, 1, size=(R, 1))).astype(np.float32)
    if isinstance(tiers, str) and tiers == "mixed":
        tiers = rng.integers(0, 6, size=R)
        tiers[:6] = np.arange(6)
    default_row = rng.standard_normal(D).astype(np.float32)
    return quantize_table(weights, tiers, name=f"t{seed}", default_row=default_row)


MIXED = _table(300, 20, "mixed", 1)
INT8 = _table(500, 64, "int8", 2)
INT4 = _table(200, 16, "int4", 3)
FP16 = _table(100, 8, "fp16", 4)
MIXED32 = _table(700, 32, "mixed", 5)


def _fields(index_dtype, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """(model fields, feeds per field) covering every kind: gathers of [B], [B, 3] and [B, 1] ids (one on a
    table another field also reads), bags with offsets (weighted sum; mean with include_last_offset) and a
    2-D mean bag with padding."""
    lengths = rng.integers(0, 5, size=B)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(index_dtype)
    n_bag = int(lengths.sum())
    lengths2 = rng.integers(0, 4, size=B)
    offsets2 = np.concatenate([[0], np.cumsum(lengths2)]).astype(index_dtype)  # B + 1 entries
    ids = lambda R, shape: rng.integers(0, R, size=shape).astype(index_dtype)  # noqa: E731
    fields = [
        dict(table=MIXED, kind=0, index_dtype=index_dtype, name="user"),
        dict(table=INT8, kind=0, index_rank=2, index_dtype=index_dtype, name="history"),
        dict(table=INT4, kind=2, index_dtype=index_dtype, weights=True, name="tags"),
        dict(table=FP16, kind=1, index_dtype=index_dtype, mode=1, padding_idx=5, name="slots"),
        dict(table=MIXED, kind=0, index_rank=2, index_dtype=index_dtype, name="user_again"),
        dict(table=MIXED32, kind=2, index_dtype=index_dtype, mode=1, include_last_offset=1, name="pages"),
    ]
    feeds = [
        dict(indices=ids(300, B)),
        dict(indices=ids(500, (B, 3))),
        dict(indices=ids(200, n_bag), offsets=offsets,
             weights=rng.standard_normal(n_bag).astype(np.float32)),
        dict(indices=ids(100, (B, 4))),
        dict(indices=ids(300, (B, 1))),
        dict(indices=ids(700, int(lengths2.sum()) + 2), offsets=offsets2),  # 2 trailing ids in no bag
    ]
    feeds[3]["indices"][::7, 1] = 5  # padding entries
    return fields, feeds


def _graph_feeds(feeds: list[dict]) -> dict:
    out = {}
    for k, f in enumerate(feeds):
        out[f"indices{k}"] = f["indices"]
        if "offsets" in f:
            out[f"offsets{k}"] = f["offsets"]
        if "weights" in f:
            out[f"weights{k}"] = f["weights"]
    return out


def _single(field: dict, feed: dict, out_dtype, threads) -> np.ndarray:
    """The field's own single op, run on its own."""
    idx = feed["indices"]
    if field.get("kind", 0) == 0:
        model = gather_model(field["table"], index_dtype=idx.dtype, index_rank=idx.ndim, out_dtype=out_dtype)
        (out,) = shark_export.session(model, threads=threads).run(None, {"indices": idx})
        return out.reshape(out.shape[0], -1)
    model = bag_model(field["table"], index_dtype=idx.dtype, index_rank=idx.ndim, offsets="offsets" in feed,
                      weights="weights" in feed, mode=field.get("mode", 0),
                      include_last_offset=field.get("include_last_offset", 0), padding_idx=field.get("padding_idx", -1),
                      out_dtype=out_dtype)
    feeds = {"indices": idx}
    if "offsets" in feed:
        feeds["offsets"] = feed["offsets"]
    if "weights" in feed:
        feeds["per_sample_weights"] = feed["weights"]
    (out,) = shark_export.session(model, threads=threads).run(None, feeds)
    return out


def _reference_fields(fields: list[dict], feeds: list[dict]) -> list[dict]:
    out = []
    for f, feed in zip(fields, feeds):
        entry = dict(table=f["table"], indices=feed["indices"], bag=f.get("kind", 0) != 0)
        if entry["bag"]:
            entry.update(offsets=feed.get("offsets"), per_sample_weights=feed.get("weights"), mode=f.get("mode", 0),
                         include_last_offset=f.get("include_last_offset", 0), padding_idx=f.get("padding_idx", -1))
        out.append(entry)
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_each_block_is_its_single_op_bit_for_bit_and_matches_the_reference(index_dtype, out_dtype, threads):
    rng = np.random.default_rng(7)
    fields, feeds = _fields(index_dtype, rng)
    (got,) = shark_export.session(multi_model(fields, out_dtype=out_dtype), threads=threads).run(None, _graph_feeds(feeds))
    singles = [_single(f, feed, out_dtype, threads) for f, feed in zip(fields, feeds)]
    assert got.dtype == np.dtype(out_dtype)
    assert got.shape == (B, sum(s.shape[1] for s in singles)) == (B, 20 + 3 * 64 + 16 + 8 + 20 + 32)
    column = 0
    for f, single in zip(fields, singles):
        block = got[:, column: column + single.shape[1]]
        np.testing.assert_array_equal(block.view(np.uint16 if out_dtype == np.float16 else np.uint32),
                                      single.view(np.uint16 if out_dtype == np.float16 else np.uint32),
                                      err_msg=f"field {f['name']}")
        column += single.shape[1]
    want = ref.multi_lookup(_reference_fields(fields, feeds), output_dtype=np.float32)
    gathers = np.concatenate([np.arange(0, 212), np.arange(236, 256)])  # user, history, user_again
    np.testing.assert_array_equal(got[:, gathers], want[:, gathers].astype(out_dtype))
    scale = np.abs(want).max() + 1e-30
    np.testing.assert_allclose(got.astype(np.float64), want.astype(out_dtype).astype(np.float64),
                               rtol=2e-3 if out_dtype == np.float16 else 1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("config", [{"cpu_isa": "generic"}, {"stream_bytes": "0"}], ids=["generic", "stream"])
def test_other_cpu_paths_give_the_same_bits(config):
    rng = np.random.default_rng(8)
    fields, feeds = _fields(np.int64, rng)
    model = multi_model(fields)
    (want,) = shark_export.session(model).run(None, _graph_feeds(feeds))
    (got,) = shark_export.session(model, config=config, threads=2).run(None, _graph_feeds(feeds))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_shape_inference_gives_batch_and_width():
    fields, _ = _fields(np.int64, np.random.default_rng(0))
    for f, dims in zip(fields, (["b0"], ["b0", 3], None, ["b0", 4], ["b0", 1], None)):
        if dims:
            f["index_dims"] = dims
    model = multi_model(fields)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (out,) = model.graph.output
    dims = out.type.tensor_type.shape.dim
    assert dims[0].dim_param == "b0" and dims[1].dim_value == 20 + 3 * 64 + 16 + 8 + 20 + 32


def test_empty_batch_gives_an_empty_output_and_still_checks_indices():
    fields = [dict(table=MIXED, kind=0), dict(table=INT4, kind=2)]
    session = shark_export.session(multi_model(fields))
    empty = np.zeros(0, np.int64)
    (got,) = session.run(None, {"indices0": empty, "indices1": empty, "offsets1": empty})
    assert got.shape == (0, 36)
    with pytest.raises(Exception, match=r"field 'f1': index 999 at position 0 is out of range for table with 200 rows"):
        session.run(None, {"indices0": empty, "indices1": np.array([999]), "offsets1": empty})


def _error(model, feeds, threads=1) -> str:
    with pytest.raises(Exception) as info:
        shark_export.session(model, threads=threads).run(None, feeds)
    return str(info.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_out_of_range_index_names_node_field_value_and_position(threads):
    fields = [dict(table=MIXED, kind=0, name="user"), dict(table=INT8, kind=0, index_rank=2, name="items")]
    idx1 = np.zeros((B, 3), np.int64)
    idx1[1500, 2] = 500
    idx1[2000, 0] = -3
    msg = _error(multi_model(fields), {"indices0": np.zeros(B, np.int64), "indices1": idx1}, threads)
    assert "RowwiseDequantMultiLookup node 'multi_node': field 'items': index 500 at position 4502 is out of range " \
           "for table with 500 rows" in msg


def test_fields_with_different_batch_sizes_are_refused():
    fields = [dict(table=MIXED, kind=0, name="user"), dict(table=INT4, kind=2, name="tags")]
    msg = _error(multi_model(fields), {"indices0": np.zeros(5, np.int64), "indices1": np.zeros(3, np.int64),
                                      "offsets1": np.array([0, 1, 2, 3], np.int64)})
    assert "field 'tags': has 4 samples, field 'user' has 5" in msg


@pytest.mark.parametrize("attrs,message", [
    ({"dims": [20]}, "attribute 'dims' has 1 entries, kinds has 2 (one per field)"),
    ({"kinds": [0, 7]}, "field 'f1': kind 7 is not 0 (gather), 1 (bag, 2-D indices) or 2 (bag with offsets)"),
    ({"modes": [0, 2]}, "field 'f1': mode 2 is not supported"),
    ({"padding_idxs": [-1, 200]}, "field 'f1': padding_idx 200 must be -1 (none) or a row in [0, 200)"),
    ({"num_rows": [300, 201]}, "field 'f1': invalid table"),
    ({"format_versions": [2, 9]}, "field 'f1': format_version 9"),
    ({"has_weights": [1, 0]}, "field 'f0': a gather field takes no per_sample_weights"),
    ({"kinds": [0, 1]}, "the fields' kinds and has_weights need 8 inputs, the node has 9"),
])
def test_bad_attributes_are_named_at_session_creation(attrs, message):
    model = multi_model([dict(table=MIXED, kind=0), dict(table=INT4, kind=2)], attrs=attrs, check=False)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        shark_export.session(model)


def test_bad_bag_inputs_are_named_by_field():
    model = multi_model([dict(table=MIXED, kind=0), dict(table=INT4, kind=2, weights=True, name="tags")])
    base = {"indices0": np.zeros(2, np.int64), "indices1": np.zeros(3, np.int64),
            "offsets1": np.array([0, 1], np.int64), "weights1": np.ones(3, np.float32)}
    assert "field 'tags': offsets[0] is 1, must be 0" in _error(model, {**base, "offsets1": np.array([1, 2], np.int64)})
    assert "field 'tags': per_sample_weights shape [2] must equal the indices shape [3]" in _error(
        model, {**base, "weights1": np.ones(2, np.float32)})


def test_scalar_gather_indices_are_refused():
    model = multi_model([dict(table=MIXED, kind=0, index_rank=0)], check=False)
    assert "field 'f0': indices must have a batch dimension, got a scalar" in _error(model, {"indices0": np.array(3)})
