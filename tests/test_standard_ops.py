"""ops="standard": portable models (ai.onnx ops only) against the numpy reference, in a stock ORT session.

Every session here is a plain `onnxruntime.InferenceSession` with no custom-op library registered; the
converter tests point SHARK_EXPORT_LIBRARY at a missing file, so any attempt to load the library would fail.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from models import BagModes, DictInput, TupleInputs, built
from op_models import bag_model, gather_model
from torch import nn

from shark_export import reference
from shark_export.cli import main
from shark_export.converter import convert
from shark_export.errors import FormatError
from shark_export.export import ExampleInputs
from shark_export.format import Tier
from shark_export.inspect_model import read_tables
from shark_export.integrity import verify_model
from shark_export.model_io import OnnxModelRunner
from shark_export.passes.standard_ops import StandardOpsPass
from shark_export.quantize import quantize_table
from shark_export.standard_tables import METADATA_KEY, StandardTable

R = 300
TIERS = ["fp32", "fp16", "int8", "int4", "int2", "dropped", "mixed", "mixed_quantized"]


def _tiers(kind: str, rng) -> object:
    if kind == "mixed":  # every tier, dropped rows included
        return rng.integers(0, 6, R)
    if kind == "mixed_quantized":
        return rng.choice([2, 3, 4], R)
    return kind


def _table(kind: str, dim: int, seed: int = 0, group: int = 0):
    """group > 0: format v3, scale groups of `group` rows."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(R, dim)).astype(np.float32)
    return quantize_table(weight, _tiers(kind, rng), name="t", default_row=rng.normal(size=dim).astype(np.float32),
                          scale_group_rows=group)


def _lower(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = ir.from_proto(proto)
    StandardOpsPass()(model)
    lowered = ir.to_proto(model)
    onnx.checker.check_model(lowered, full_check=True)
    assert {n.domain for n in lowered.graph.node} <= {""}, "a node outside ai.onnx"
    assert all(o.domain in ("", "ai.onnx") for o in lowered.opset_import)
    return lowered


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])  # no library


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint16)


@pytest.mark.parametrize("group", [0, 4], ids=["v2", "v3-groups-of-4"])
@pytest.mark.parametrize("kind", TIERS)
@pytest.mark.parametrize("dim", [1, 5, 16, 64])
def test_gather_is_bit_exact(kind, dim, group):
    table = _table(kind, dim, group=group)
    rng = np.random.default_rng(1)
    for rank, index_dtype, out_dtype in ((1, np.int64, np.float32), (2, np.int32, np.float32), (3, np.int64, np.float16),
                                         (0, np.int64, np.float32)):
        session = _session(_lower(gather_model(table, index_rank=rank, index_dtype=index_dtype, out_dtype=out_dtype)))
        indices = rng.integers(0, R, (4, 3, 2)[:rank]).astype(index_dtype)
        got = session.run(None, {"indices": indices})[0]
        want = reference.gather(table, indices, output_dtype=out_dtype)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(_bits(got), _bits(want)), (kind, dim, rank)
    empty = _session(_lower(gather_model(table))).run(None, {"indices": np.zeros(0, np.int64)})[0]
    assert empty.shape == (0, dim)


BAGS = [
    dict(offsets=True),
    dict(offsets=True, mode=1),
    dict(offsets=True, mode=1, include_last_offset=1),
    dict(offsets=True, weights=True),
    dict(offsets=True, mode=1, padding_idx=3),
    dict(offsets=True, weights=True, padding_idx=3, include_last_offset=1),
    dict(index_rank=2, offsets=False),
    dict(index_rank=2, offsets=False, mode=1, padding_idx=3),
    dict(index_rank=2, offsets=False, weights=True, padding_idx=3),
]


@pytest.mark.parametrize("group", [0, 64], ids=["v2", "v3-groups-of-64"])
@pytest.mark.parametrize("kind", TIERS)
@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("bag", BAGS, ids=lambda b: "-".join(f"{k}={v}" for k, v in b.items()))
def test_bag_matches_reference(kind, dim, bag, group):
    table = _table(kind, dim, group=group)
    rng = np.random.default_rng(2)
    session = _session(_lower(bag_model(table, **bag)))
    if bag.get("index_rank") == 2:
        indices = rng.integers(0, R, (6, 4))
        indices[1] = 3  # a bag of padding only
        feeds, offsets = {"indices": indices}, None
    else:
        indices = rng.integers(0, R, 20)
        indices[[2, 5]] = 3
        # include_last_offset: 5 bags, entries 18 and 19 past the last offset are in none
        offsets = np.array([0, 0, 3, 3, 10, 18] if bag.get("include_last_offset") else [0, 0, 3, 3, 10, 19, 20])
        feeds = {"indices": indices, "offsets": offsets}
    weights = None
    if bag.get("weights"):
        weights = rng.random(indices.shape).astype(np.float32)
        feeds["per_sample_weights"] = weights
    got = session.run(None, feeds)[0]
    want = reference.embedding_bag(table, indices, offsets, weights, mode=bag.get("mode", 0),
                                   include_last_offset=bool(bag.get("include_last_offset", 0)),
                                   padding_idx=bag.get("padding_idx", -1))
    assert got.shape == want.shape
    # float32 sums in entry order against the reference's float64 sums: the summation error only
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if offsets is not None:
        assert np.all(got[0] == 0)  # an empty bag
    elif bag.get("padding_idx") is not None:
        assert np.all(got[1] == 0)  # padding only


def test_single_entry_bags_are_bit_exact():
    table = _table("mixed", 16)
    session = _session(_lower(bag_model(table)))
    indices = np.arange(0, R, 7)
    got = session.run(None, {"indices": indices, "offsets": np.arange(indices.shape[0])})[0]
    assert np.array_equal(_bits(got), _bits(reference.gather(table, indices)))


@pytest.mark.parametrize("kind", ["int8", "mixed"])
def test_out_of_range_index_fails_the_run(kind):
    """ORT's Gather rejects an index >= R; a negative one is moved to R first (ONNX Gather would wrap it)."""
    table = _table(kind, 8)
    for proto, extra in ((gather_model(table), {}), (bag_model(table), {"offsets": np.array([0])})):
        session = _session(_lower(proto))
        for bad in (R, R + 5, -1):
            with pytest.raises(Exception, match=rf"out of data bounds, idx={max(bad, R)}"):
                session.run(None, {"indices": np.array([1, bad]), **extra})


@pytest.mark.parametrize("include_last_offset", [0, 1])
def test_bad_offsets_fail_the_run_naming_the_rule(include_last_offset):
    """Standard ONNX has no assert: the lowered bag routes its offsets through a Gather that fails unless
    offsets[0] == 0, they do not decrease and none exceeds len(indices); the error names that rule. Valid offsets
    (empty bags and all) still give the reference's sums."""
    table = _table("mixed", 8)
    session = _session(_lower(bag_model(table, include_last_offset=include_last_offset)))
    indices = np.array([1, 5, 9, 2, 7], dtype=np.int64)
    for bad in ([1, 2], [0, 3, 2], [0, 6], [0, 2, 9]):
        with pytest.raises(Exception, match="offsets must not decrease"):
            session.run(None, {"indices": indices, "offsets": np.array(bad, dtype=np.int64)})
    good = np.array([0, 0, 2, 5, 5], dtype=np.int64)
    got = session.run(None, {"indices": indices, "offsets": good})[0]
    want = reference.embedding_bag(table, indices, offsets=good, include_last_offset=bool(include_last_offset))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    if not include_last_offset:  # no bags at all
        empty = session.run(None, {"indices": np.zeros(0, np.int64), "offsets": np.zeros(0, np.int64)})[0]
        assert empty.shape == (0, 8)


@pytest.mark.parametrize("kind", TIERS)
def test_portable_table_round_trips(kind):
    for version, group in ((1, 0), (2, 0), (3, 1), (3, 32)):
        rng = np.random.default_rng(3)
        table = quantize_table(rng.normal(size=(R, 7)).astype(np.float32), _tiers(kind, rng), name="t", format_version=version,
                               scale_group_rows=group)
        portable = StandardTable.from_quantized(table)
        back = StandardTable.from_tensors("t", json.loads(json.dumps(portable.metadata())), portable.initializers()).to_quantized()
        assert np.array_equal(back.payload, table.payload) and np.array_equal(back.row_meta, table.row_meta)
        assert back.uniform_tier == table.uniform_tier and back.tier_counts == table.tier_counts
        assert back.format_version == table.format_version and back.scale_group_rows == table.scale_group_rows
        if version == 2 or table.tier_counts[Tier.DROPPED]:
            assert np.array_equal(back.default_row, table.default_row)
        uniform = table.is_uniform and table.uniform_tier != Tier.DROPPED
        assert (portable.slots is None) == uniform
        b = portable.byte_report()
        assert b.total == sum(a.nbytes for a in portable.initializers().values())


def test_hostile_portable_tensors_are_named():
    portable = StandardTable.from_quantized(_table("mixed", 8))
    tensors = portable.initializers()
    tensors["t.int8.codes"] = tensors["t.int8.codes"][:-1]
    with pytest.raises(FormatError, match=r"t\.int8\.codes must be uint8"):
        StandardTable.from_tensors("t", portable.metadata(), tensors)
    S = portable.slots.block
    tensors = portable.initializers()
    tensors["t.slot_codes"] = np.full(R, 255, dtype=np.uint8)  # a sub-table past the last
    with pytest.raises(FormatError, match=r"t\.slot_codes names sub-table"):
        StandardTable.from_tensors("t", portable.metadata(), tensors)
    tensors = portable.initializers()
    tensors["t.slot_bases"] = tensors["t.slot_bases"].astype(np.int32) + np.int32(10 ** 6)  # rows past a sub-table's end
    with pytest.raises(FormatError, match=r"maps to row \d+ of sub-table"):
        StandardTable.from_tensors("t", portable.metadata(), tensors)
    tensors = portable.initializers()
    tensors["t.slot_bases"] = tensors["t.slot_bases"][:, :1]
    with pytest.raises(FormatError, match=r"t\.slot_bases must be uint8, uint16 or int32"):
        StandardTable.from_tensors("t", portable.metadata(), tensors)
    with pytest.raises(FormatError, match="slot block"):
        StandardTable.from_tensors("t", {**portable.metadata(), "slot_block": S * 2}, portable.initializers())


def test_files_written_before_planar_codes_and_packed_slots_still_verify():
    """A portable file of the earlier layout (interleaved int4/int2 codes, a global `slots` tensor, no
    `code_layout` nor `slot_block` in the metadata) still reads back to the very stored table."""
    from shark_export.standard_tables import SlotMap, _repack

    table = _table("mixed_quantized", 7)
    portable = StandardTable.from_quantized(table)
    part, local = portable.slots.locate([p.rows for p in portable.parts])
    starts = np.cumsum([0] + [p.rows for p in portable.parts])
    tensors = {k: v for k, v in portable.initializers().items() if ".slot_" not in k}
    tensors["t.slots"] = (starts[part] + local).astype(np.uint16)
    for p in portable.parts:
        if p.tier.bits in (2, 4):
            tensors[f"t.{p.tier}.codes"] = _repack(p.arrays["codes"], p.tier.bits, to_planar=False)
    meta = {k: v for k, v in portable.metadata().items() if k not in ("code_layout", "slot_block")}
    old = StandardTable.from_tensors("t", meta, tensors)
    assert isinstance(old.slots, SlotMap) and old.slots.legacy is not None and not old.planar
    back = old.to_quantized()
    assert np.array_equal(back.payload, table.payload) and np.array_equal(back.row_meta, table.row_meta)


# --- through the converter ------------------------------------------------------------------------


@pytest.fixture()
def no_library(monkeypatch):
    """Any attempt to load the custom-op library now fails."""
    monkeypatch.setenv("SHARK_EXPORT_LIBRARY", "/nonexistent/libshark_export_ops.so")


@pytest.mark.parametrize("cls", [BagModes, DictInput])
@pytest.mark.parametrize("quant", ["int8", "int4", "mixed"])
def test_convert_standard_is_faithful_without_the_library(cls, quant, tmp_path, no_library):
    model = built(cls)
    calibration = [cls.batch(16, seed=s) for s in range(3)]
    labels = [torch.randint(0, 2, (16,)).float() for _ in range(3)]
    path = tmp_path / "m.onnx"
    report = convert(model, cls.batch(4), path, quant=quant, calibration=calibration,
                     labels=labels if cls is DictInput else None, ops="standard")
    assert report.ops == "standard" and report.to_dict()["ops"] == "standard" and "ops=standard" in str(report)
    assert report.faithfulness and report.fused_lookups == []
    proto = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    assert {n.domain for n in proto.graph.node} == {""}
    assert "shark_export" not in {o.domain for o in proto.opset_import}
    recorded = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert set(recorded["tables"]) == {t.table for t in report.tables if not t.pruned}
    verify_model(path)  # the portable tensors rebuild the very tables whose checksums were recorded
    tables, lookups = read_tables(path)
    assert set(tables) == set(recorded["tables"]) and lookups
    # the report's bytes are the portable tensors' bytes
    stored = {i.name: onnx.numpy_helper.to_array(i).nbytes for i in proto.graph.initializer}
    table_bytes = sum(v for k, v in stored.items() if any(k.startswith(t + ".") for t in tables) and not k.endswith(("view/start", "view/limit", "view/delta")))
    assert report.bytes_after == table_bytes


class _OneTable(nn.Module):
    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)
        self.head = nn.Linear(2 * dim, 1)

    def forward(self, a, b):
        return self.head(torch.cat([self.emb(a), self.emb(b)], dim=1)).squeeze(1)


@pytest.mark.parametrize("dim", [16, 64])
def test_file_size_within_1_15_of_the_custom_model(dim, tmp_path):
    torch.manual_seed(0)
    model = _OneTable(4000, dim).eval()
    example = (torch.randint(0, 4000, (8,)), torch.randint(0, 4000, (8,)))
    for quant in ("int8", "int4"):
        sizes = {}
        for ops in ("custom", "standard"):
            report = convert(model, example, tmp_path / f"{quant}_{ops}.onnx", quant=quant, ops=ops)
            sizes[ops] = report.file_bytes
            assert report.file_bytes == (tmp_path / f"{quant}_{ops}.onnx").stat().st_size
        assert sizes["standard"] <= 1.15 * sizes["custom"], (quant, dim, sizes)


def test_cli_convert_inspect_check(tmp_path, capsys, no_library):
    model = built(TupleInputs)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(TupleInputs.batch(4), tmp_path / "example.pt")
    torch.save([TupleInputs.batch(16, seed=s) for s in range(3)], tmp_path / "cal.pt")
    out = tmp_path / "m.onnx"
    model_args = ["--model", "models:tuple_inputs_model", "--state-dict", str(tmp_path / "state.pt")]
    assert main(["convert", *model_args, "--inputs", str(tmp_path / "example.pt"), "--out", str(out), "--quiet",
                 "--quant", "mixed", "--ops", "standard", "--calibration", str(tmp_path / "cal.pt"),
                 "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["ops"] == "standard"
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ops=standard" in text and "user.weight" in text and "int4:" in text and "checksums: all 2 table(s) match" in text
    assert main(["check", str(out), *model_args, "--inputs", str(tmp_path / "cal.pt"), "--atol", "0.1", "--rtol", "0.1"]) == 0


def test_a_fused_custom_model_lowers_to_the_same_numbers(tmp_path):
    """StandardOpsPass also lowers RowwiseDequantMultiLookup, reading the tables from the op's inputs."""
    from shark_export.ops import session

    model = built(DictInput)
    path = tmp_path / "custom.onnx"
    report = convert(model, DictInput.batch(4), path, quant="mixed")
    assert report.fused_lookups
    ir_model = ir.load(path)
    StandardOpsPass()(ir_model)
    lowered = ir.to_proto(ir_model)
    onnx.checker.check_model(lowered, full_check=True)
    assert {n.domain for n in lowered.graph.node} == {""}
    batch = DictInput.batch(32, seed=5)
    feeds = OnnxModelRunner(path).feeds(ExampleInputs.of(batch))
    custom = session(str(path)).run(None, feeds)[0]
    portable = _session(lowered).run(None, feeds)[0]
    np.testing.assert_allclose(portable, custom, rtol=1e-5, atol=1e-6)


def test_standard_with_int8_dense_layers_runs_without_the_library(tmp_path, no_library):
    """ops="standard" with dense="int8": ORT's dynamic quantization of the MatMul/Gemm leaves the portable tables
    alone (the same tensors, bit for bit), the file still needs no library, and the dense layers' own impact is
    reported."""
    model = built(DictInput)
    calibration = [DictInput.batch(16, seed=s) for s in range(3)]
    plain = convert(model, DictInput.batch(4), tmp_path / "fp32.onnx", quant="int8", calibration=calibration, ops="standard")
    report = convert(model, DictInput.batch(4), tmp_path / "int8.onnx", quant="int8", calibration=calibration,
                     ops="standard", dense="int8")
    assert report.faithfulness and report.dense == "int8" and report.dense_int8_nodes >= 1
    assert report.dense_impact is not None and report.dense_impact.outputs[0].max_abs > 0
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    assert "shark_export" not in {n.domain for n in proto.graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & {n.op_type for n in proto.graph.node}
    before = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "fp32.onnx")).graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    recorded = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    portable = [n for n in before if any(n.startswith(t + ".") for t in recorded["tables"])]
    assert portable
    for name in portable:
        np.testing.assert_array_equal(after[name], before[name])
    verify_model(tmp_path / "int8.onnx")
    sess = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])  # a stock session
    assert sess.get_outputs() and plain.dense == "fp32"


@pytest.mark.parametrize("bad", [
    [0, 1, np.iinfo(np.int64).min],              # a tail of INT64_MIN: the old guard's subtraction overflowed
    [0, np.iinfo(np.int64).max, 2],              # INT64_MAX then a drop
    [np.iinfo(np.int64).min, 0, 1],              # first offset INT64_MIN
    [0, 5, np.iinfo(np.int64).max],              # past the end by everything
])
def test_offset_guard_has_no_arithmetic_that_overflows(bad):
    table = _table("int8", 4)
    session = _session(_lower(bag_model(table)))
    indices = np.arange(10) % R
    with pytest.raises(Exception, match="Gather checking the bag offsets"):
        session.run(None, {"indices": indices, "offsets": np.array(bad, dtype=np.int64)})


@pytest.mark.slow
def test_offset_guard_with_exactly_2_24_violations():
    """The probe's case: 2^24 violations made the old guard's index bad * 2^40 wrap to 0 and a [16860686, 2]
    result came back. Sawtooth offsets in [-101, 100] over 100 ids must fail the run naming the rule."""
    table = quantize_table(np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32), "int8", name="t")
    session = _session(_lower(bag_model(table)))
    n = 16_860_686
    offsets = (np.arange(n, dtype=np.int64) % 202) - 101
    offsets[0] = 0
    with pytest.raises(Exception, match="Gather checking the bag offsets"):
        session.run(None, {"indices": np.arange(100, dtype=np.int64) % 50, "offsets": offsets})
