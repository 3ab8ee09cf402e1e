"""End-to-end conversion: every model shape, every preset, pruning, errors. Numbers come from ORT runs."""

from __future__ import annotations

import copy
import re

import numpy as np
import onnx
import pytest
import torch
from models import (
    BagModes,
    DenseMatrixInput,
    DictInput,
    MultiTask,
    NoEmbedding,
    SharedTable,
    TupleInputs,
    built,
)

import shark_export
from shark_export import QuantConfig, check_parity, convert
from shark_export.errors import (
    ExportError,
    SharkExportError,
    UnknownFieldError,
    UnsupportedModelError,
)
from shark_export.format import Tier, row_stride
from shark_export.inspect_model import read_tables
from shark_export.model_io import OnnxModelRunner

MODELS = [TupleInputs, DictInput, DenseMatrixInput, SharedTable, BagModes, MultiTask]


def _torch_outputs(model, batch):
    example = shark_export.export.ExampleInputs.of(batch)
    with torch.no_grad():
        out = model(*example.args, **example.kwargs)
    return [t.numpy() for t in torch.utils._pytree.tree_leaves(out)]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_fp32_preset_matches_torch_at_any_batch_size(tmp_path, cls):
    model = built(cls)
    path = tmp_path / "model.onnx"
    report = convert(model, cls.batch(4), path, quant="fp32")
    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Loop" not in ops and "SequenceInsert" not in ops  # EmbeddingBag no longer a Loop
    assert not [n for n in graph.node if n.op_type == "Gather" and n.input[0].endswith(".weight")]
    assert all(t.tiers == {"fp32": t.rows} for t in report.tables)
    runner = OnnxModelRunner(path)
    for n in (1, 7, 33):  # dynamic batch: none of these is the export batch
        batch = cls.batch(n, seed=n)
        for got, want in zip(runner.run(batch), _torch_outputs(model, batch)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("quant", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("cls", [DictInput, BagModes, SharedTable], ids=lambda c: c.__name__)
def test_quantized_presets_are_faithful_to_dequantized_weights(tmp_path, cls, quant):
    model = built(cls)
    calibration = [cls.batch(16, seed=s) for s in range(3)]
    report = convert(model, cls.batch(4), tmp_path / "m.onnx", quant=quant, calibration=calibration)
    assert report.faithfulness, str(report.faithfulness)
    assert report.faithfulness.outputs[0].max_abs <= 1e-5
    assert report.impact is not None and report.impact.outputs[0].max_abs > 0  # quantization is visible
    tier = {"fp16": Tier.FP16, "int8": Tier.INT8, "int4": Tier.INT4}[quant]
    for table in report.tables:
        # the default "auto": scale groups only where every row keeps its own bound, rows moved to a more precise
        # tier where that is what it takes; never more bytes than a header per row (v2), and the report says so
        as_precise = [str(t) for t in (Tier.FP32, Tier.FP16, Tier.INT8, Tier.INT4)[: (Tier.FP32, Tier.FP16, Tier.INT8, Tier.INT4).index(tier) + 1]]
        assert sum(table.tiers.values()) == table.rows and set(table.tiers) <= set(as_precise), table.tiers
        assert table.payload_bytes + table.scale_bytes <= table.rows * row_stride(tier, table.dim, 2)
        if tier.is_quantized and QuantConfig().group_rows_for(table.dim):
            assert "own bound" in table.storage, table.storage


def test_model_is_not_modified(tmp_path):
    model = built(DictInput)
    before = copy.deepcopy(model.state_dict())
    convert(model, DictInput.batch(4), tmp_path / "m.onnx", quant="int4", calibration=[DictInput.batch(8)])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


@pytest.mark.parametrize("fuse", [True, False])
def test_shared_table_is_stored_once_and_named_per_lookup(tmp_path, fuse):
    model = built(SharedTable)
    path = tmp_path / "m.onnx"
    report = convert(model, SharedTable.batch(4), path, quant="int8", fuse_lookups=fuse)
    assert report.fields == ["ids#0", "ids#1", "tied", "other"]
    tables, lookups = read_tables(path)
    assert sorted(tables) == ["ids.weight", "other.weight"]
    if fuse:  # the four lookups feed one torch.cat: one node, the fields named in order
        assert report.fused_lookups == [["ids#0", "ids#1", "tied", "other"]]
        assert [(name, op) for name, op, _ in lookups] == [
            (f"lookups/node_cat[{f}]", "RowwiseDequantMultiLookup") for f in ("ids#0", "ids#1", "tied", "other")]
    else:
        assert sorted(name for name, _, _ in lookups) == ["lookup/ids#0", "lookup/ids#1", "lookup/other", "lookup/tied"]
    payloads = [i for i in onnx.load(str(path)).graph.initializer if i.name.endswith(".payload")]
    assert len(payloads) == 2


def test_multi_output_names_and_values(tmp_path):
    model = built(MultiTask)
    path = tmp_path / "m.onnx"
    convert(model, MultiTask.batch(4), path, quant="fp32")
    runner = OnnxModelRunner(path)
    assert runner.output_names == ["ctr", "cvr"]
    batch = MultiTask.batch(9, seed=3)
    want = _torch_outputs(model, batch)
    for got, ref in zip(runner.run(batch), want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_pruning_removes_table_node_and_input_and_matches_mean_embedding(tmp_path):
    model = built(TupleInputs)
    calibration = [TupleInputs.batch(32, seed=s) for s in range(4)]
    path = tmp_path / "m.onnx"
    report = convert(model, TupleInputs.batch(4), path, quant="int8", prune=["item"], calibration=calibration)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["user_ids", "dense"]
    assert not [i.name for i in graph.initializer if i.name.startswith("item.")]
    assert [n.name for n in graph.node if n.domain == "shark_export"] == ["lookup/user"]
    assert report.pruned_fields == ["item"] and report.removed_inputs == ["item_ids"]
    assert report.faithfulness and report.faithfulness.outputs[0].max_abs <= 1e-5
    # independent check: the mean of the item embeddings over the calibration ids, fed through torch
    ids = torch.cat([b[1] for b in calibration])
    mean = model.item.weight[ids].mean(0).detach()
    batch = TupleInputs.batch(5, seed=11)
    with torch.no_grad():
        user = torch.from_numpy(shark_export.reference.dequantize(read_tables(path)[0]["user.weight"]))[batch[0]]
        want = model.head(torch.cat([user, mean.expand(5, -1), batch[2]], dim=1)).squeeze(1).numpy()
    got = OnnxModelRunner(path).run(batch)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pruning_a_bag_field_and_a_2d_bag(tmp_path):
    model = built(DictInput)
    calibration = [DictInput.batch(32, seed=s) for s in range(3)]
    path = tmp_path / "m.onnx"
    report = convert(model, DictInput.batch(4), path, quant="int8", prune=["tags", "genres"], calibration=calibration)
    inputs = [i.name for i in onnx.load(str(path)).graph.input]
    assert not any("tags" in name or "genres" in name for name in inputs), inputs
    assert report.faithfulness, str(report.faithfulness)
    assert {t.table for t in report.tables if t.pruned} == {"tags.weight", "genres.weight"}
    assert OnnxModelRunner(path).run(DictInput.batch(6, seed=9))[0].shape == (6,)


def test_mixed_preset_uses_priorities_and_is_smaller_than_int8(tmp_path):
    model = built(TupleInputs)
    g = torch.Generator().manual_seed(0)
    # skewed ids: a few hot users
    calibration = [(torch.randint(0, 20, (64,), generator=g), torch.randint(0, 120, (64,), generator=g), torch.randn(64, 3)) for _ in range(4)]
    labels = [torch.randint(0, 2, (64,), generator=g).float() for _ in range(4)]
    mixed = convert(model, TupleInputs.batch(4), tmp_path / "mixed.onnx", quant="mixed", calibration=calibration, labels=labels)
    int8 = convert(model, TupleInputs.batch(4), tmp_path / "int8.onnx", quant="int8")
    assert mixed.faithfulness
    assert mixed.bytes_after < int8.bytes_after
    user = next(t for t in mixed.tables if t.table == "user.weight")
    item = next(t for t in mixed.tables if t.table == "item.weight")
    # ranked over both tables (420 rows): 2% fp16, 20% int8; the 20 hot users are read most
    assert user.tiers == {"fp16": 8, "int8": 12, "int4": 280}
    assert item.tiers.get("fp16", 0) == 0 and user.tiers["int8"] + item.tiers["int8"] == 84
    tables, _ = read_tables(tmp_path / "mixed.onnx")
    tiers = tables["user.weight"].tiers()
    assert set(np.flatnonzero(tiers == Tier.FP16)) <= set(range(20))  # hot rows are among the seen ones
    assert mixed.impact.metrics and np.isfinite(mixed.impact.metrics[0].auc_onnx)


def test_budget_config_hits_target_and_overrides(tmp_path):
    model = built(DictInput)
    calibration = [DictInput.batch(64, seed=s) for s in range(4)]
    config = QuantConfig(target_ratio=0.4, overrides={"emb.site": "fp32"})  # D=6: int4 rows cost 1/3 of fp32
    report = convert(model, DictInput.batch(4), tmp_path / "m.onnx", quant=config, calibration=calibration)
    assert report.faithfulness
    site = next(t for t in report.tables if t.table == "emb.site.weight")
    assert site.tiers == {"fp32": 50}
    others = [t for t in report.tables if t.table != "emb.site.weight"]
    ratio = sum(t.bytes_after for t in others) / sum(t.fp32_bytes for t in others)
    assert 0.36 <= ratio <= 0.4


class Wide(torch.nn.Module):
    """Two D = 64 tables read with Zipf-like ids, so row priorities spread out."""

    def __init__(self):
        super().__init__()
        self.user, self.item = torch.nn.Embedding(3000, 64), torch.nn.Embedding(1000, 64)

    def forward(self, user, item):
        return (self.user(user) * self.item(item)).sum(1)

    @staticmethod
    def batch(n: int, seed: int):
        rng = np.random.default_rng(seed)
        return (torch.from_numpy(np.minimum(rng.zipf(1.3, n) - 1, 2999)), torch.from_numpy(np.minimum(rng.zipf(1.3, n) - 1, 999)))


@pytest.mark.parametrize("ratio", [0.05, 0.10])
def test_budget_below_the_int4_floor_drops_and_int2s_the_coldest_rows(tmp_path, ratio):
    """At D = 64 int4 rows cost 14% of fp32: a 5% or 10% budget reaches down through int2 and dropped rows,
    by row priority; the dropped rows read their table's default row, the mean of their float rows."""
    torch.manual_seed(0)
    model = Wide().eval()
    calibration = [Wide.batch(512, s) for s in range(4)]
    report = convert(model, Wide.batch(4, 9), tmp_path / "m.onnx", quant=QuantConfig(target_ratio=ratio), calibration=calibration)
    assert report.faithfulness and report.ratio <= ratio
    assert report.ratio >= ratio - 0.01  # the budget is spent
    tables, _ = read_tables(tmp_path / "m.onnx")
    all_codes = np.concatenate([t.tiers() for t in tables.values()])
    assert (all_codes == Tier.DROPPED).any() == (ratio < 0.09)  # int2 everywhere costs 7.8% + metadata
    assert (all_codes == Tier.INT2).any() and not (all_codes == Tier.INT8).any()
    for name, module in (("user.weight", model.user), ("item.weight", model.item)):
        dropped = tables[name].tiers() == Tier.DROPPED
        if dropped.any():
            want = module.weight.detach().numpy()[dropped].mean(0, dtype=np.float64).astype(np.float32)
            row = int(np.flatnonzero(dropped)[0])
            np.testing.assert_allclose(shark_export.reference.gather(tables[name], np.array([row]))[0], want, rtol=1e-6, atol=1e-7)
    # the most often seen ids are never dropped: id 0 is the hottest of both Zipf laws
    assert all(tables[n].tiers()[0] != Tier.DROPPED for n in tables)


def test_float16_outputs(tmp_path):
    model = built(TupleInputs)
    path = tmp_path / "m.onnx"
    convert(model, TupleInputs.batch(4), path, quant=QuantConfig("fp16", output_dtype="float16"))
    graph = onnx.load(str(path)).graph
    assert {a.i for n in graph.node if n.domain == "shark_export" for a in n.attribute if a.name == "output_dtype"} == {10}
    report = check_parity(model, path, TupleInputs.batch(8), atol=5e-3, rtol=5e-3)
    assert report, str(report)


def test_parity_report_fails_and_raises_on_a_different_model(tmp_path):
    model = built(TupleInputs)
    path = tmp_path / "m.onnx"
    convert(model, TupleInputs.batch(4), path, quant="fp32")
    other = built(TupleInputs, seed=1)
    measured = check_parity(other, path, [TupleInputs.batch(8), TupleInputs.batch(3, seed=2)])
    assert measured and "measured" in str(measured) and measured.outputs[0].max_abs > 1e-3  # no goal: a measurement
    report = check_parity(other, path, [TupleInputs.batch(8), TupleInputs.batch(3, seed=2)], atol=1e-5)
    assert not report and "FAILED" in str(report) and report.samples == 2
    with pytest.raises(shark_export.errors.ParityError, match="FAILED"):
        check_parity(other, path, TupleInputs.batch(8), atol=1e-5, raise_on_failure=True)
    assert check_parity(model, path, TupleInputs.batch(8), atol=1e-5, raise_on_failure=True)


def test_errors_name_the_problem_and_write_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedModelError, match="NoEmbedding has no nn.Embedding"):
        convert(NoEmbedding().eval(), torch.randn(2, 3), path)
    model = built(TupleInputs)
    with pytest.raises(UnknownFieldError, match="unknown field 'nope'.*user, item"):
        convert(model, TupleInputs.batch(4), path, prune=["nope"], calibration=[TupleInputs.batch(4)])
    with pytest.raises(SharkExportError, match=r"pruning \['item'\] needs calibration"):
        convert(model, TupleInputs.batch(4), path, prune=["item"])
    with pytest.raises(shark_export.quant_config.QuantConfigError, match="unknown preset 'int3'"):
        convert(model, TupleInputs.batch(4), path, quant="int3")
    max_norm = built(TupleInputs)
    max_norm.user.max_norm = 1.0
    with pytest.raises(UnsupportedModelError, match="'user' has max_norm"):
        convert(max_norm, TupleInputs.batch(4), path)
    assert list(tmp_path.iterdir()) == []


def test_training_mode_is_converted_in_eval_mode_and_restored(tmp_path):
    training = built(TupleInputs).train()
    calibration = [TupleInputs.batch(16, seed=s) for s in range(2)]
    report = convert(training, TupleInputs.batch(4), tmp_path / "m.onnx", calibration=calibration)
    assert training.training and all(m.training for m in training.modules())  # switched back
    assert any("training mode: converted in eval mode" in note for note in report.notes)
    assert "training mode" in str(report)
    assert report.faithfulness  # against the eval-mode model


def test_lookup_of_a_computed_weight_is_reported(tmp_path):
    class ComputedBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.known = torch.nn.Embedding(10, 4)
            self.raw = torch.nn.Parameter(torch.randn(10, 4))

        def forward(self, ids):
            bags = torch.nn.functional.embedding_bag(ids.reshape(1, -1), self.raw * 2.0)
            return self.known(ids) + bags

    # the bag pools a computed tensor: lowered to ai.onnx ops (no table); the module's table is served by our op
    model = ComputedBag().eval()
    ids = torch.tensor([1, 2, 3])
    report = convert(model, ids, tmp_path / "m.onnx", calibration=[ids, torch.tensor([4, 0, 9])])
    assert report.faithfulness and [t.table for t in report.tables] == ["known.weight"]
    stored = onnx.load(str(tmp_path / "m.onnx"))
    assert "raw" in {i.name for i in stored.graph.initializer} and any(n.op_type == "ScatterND" or n.op_type == "ReduceSum" for n in stored.graph.node)


def test_large_tables_are_written_as_external_data(tmp_path, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("shark_export.model_file"), "EXTERNAL_DATA_BYTES", 1000)
    model = built(TupleInputs)
    path = tmp_path / "m.onnx"
    convert(model, TupleInputs.batch(4), path, quant="int8")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] != "m.onnx" and names[0].endswith(".onnx.data") and names[1] == "m.onnx"
    stored = onnx.load(str(path), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in stored.graph.initializer)
    batch = TupleInputs.batch(5, seed=4)
    got = OnnxModelRunner(path).run(batch)[0]
    assert check_parity(model, path, batch, atol=0.05, rtol=0.05)
    assert read_tables(path)[0]["user.weight"].num_rows == 300 and got.shape == (5,)


@pytest.mark.parametrize("bad", ["past-the-end", "negative", "float"])
def test_bad_ids_in_the_example_or_calibration_inputs_name_the_module(bad, tmp_path):
    """torch would say `IndexError: index out of range in self`: the converter names the module, the id, its
    position and the table's rows (or the dtype), for the example inputs and for each calibration batch."""
    from models import DictInput

    from shark_export.errors import IndexOutOfRangeError, UnsupportedModelError

    model = DictInput().eval()
    good = DictInput.batch(4)
    broken = {k: v.clone() for k, v in good.items()}
    if bad == "float":
        broken["user"] = broken["user"].float()
        error, message = UnsupportedModelError, r"module 'emb\.user' \(Embedding\(200, 6\)\) got float32 ids"
    else:
        broken["user"][2] = 200 if bad == "past-the-end" else -3
        value = 200 if bad == "past-the-end" else -3
        error, message = IndexOutOfRangeError, rf"module 'emb\.user' got id {value} at position \[2\], outside its 200 rows"
    with pytest.raises(error, match="the example inputs: " + message):
        convert(model, broken, tmp_path / "m.onnx")
    with pytest.raises(error, match="calibration batch 1: " + message):
        convert(model, good, tmp_path / "m.onnx", calibration=[good, broken])
    assert not (tmp_path / "m.onnx").exists()


def test_run_takes_the_torch_models_own_arguments(tmp_path):
    """shark_export.run(path, batch) for model(batch): dict keys, int32 ids widened to the int64 inputs, outputs
    as the torch model gives them; a float where ids go is an error naming the input."""
    import shark_export
    from models import DictInput

    from shark_export.errors import SharkExportError

    model = DictInput().eval()
    path = tmp_path / "m.onnx"
    convert(model, DictInput.batch(4), path, quant="fp32")
    batch = DictInput.batch(7, seed=2)
    with torch.no_grad():
        want = model(batch)
    want = [want] if isinstance(want, torch.Tensor) else list(want.values() if isinstance(want, dict) else want)
    for given in (batch, {k: v.int() for k, v in batch.items()}):
        got = shark_export.run(path, given)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)
    runner = shark_export.OnnxModelRunner(path)
    np.testing.assert_array_equal(runner(batch)[0], shark_export.run(path, batch)[0])
    with pytest.raises(SharkExportError, match=r"input 'batch_user' \(.*user.*\) is float32, but m\.onnx takes int64"):
        runner({**batch, "user": batch["user"].float()})


def test_a_missing_output_directory_is_an_error_before_any_work(tmp_path):
    """A mistyped directory is not silently created: a typed error naming it, raised before the export."""
    from models import DictInput

    from shark_export.errors import SharkExportError

    target = tmp_path / "no_such_dir" / "m.onnx"
    with pytest.raises(SharkExportError, match=r"output directory '.*no_such_dir' does not exist .*mkdir -p"):
        convert(DictInput().eval(), DictInput.batch(4), target)
    assert not target.parent.exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SharkExportError, match="is not a directory"):
        convert(DictInput().eval(), DictInput.batch(4), tmp_path / "a_file" / "m.onnx")


def test_a_raw_session_names_the_input_fed_with_the_wrong_dtype(tmp_path):
    """ORT alone says `Unexpected input data type. Actual: (tensor(int32))`: shark_export.session's run names the
    input, both dtypes and the fix; a right feed runs as before."""
    from models import DictInput

    from shark_export.errors import InputTypeError

    path = tmp_path / "m.onnx"
    convert(DictInput().eval(), DictInput.batch(4), path, quant="int8")
    sess = shark_export.session(path)
    feeds = OnnxModelRunner(path).feeds(shark_export.export.ExampleInputs.of(DictInput.batch(5, seed=1)))
    want = sess.run(None, feeds)
    name = next(k for k, v in feeds.items() if v.dtype == np.int64)
    for wrong in (np.int32, np.float32):
        with pytest.raises(InputTypeError, match=rf"input '{name}' is {np.dtype(wrong).name} but the model takes int64"):
            sess.run(None, {**feeds, name: feeds[name].astype(wrong)})
    np.testing.assert_array_equal(sess.run(None, feeds)[0], want[0])


class _LastOffsetBag(torch.nn.Module):
    """A 1-D bag with include_last_offset (offsets are one longer than the batch: the exporter writes `s - 1`)."""

    def __init__(self):
        super().__init__()
        self.user = torch.nn.Embedding(50, 4)
        self.items = torch.nn.EmbeddingBag(60, 4, mode="sum", include_last_offset=True)

    def forward(self, user, items, offsets):
        return (self.user(user) * self.items(items, offsets)).sum(1)


def test_dynamic_dimensions_are_named_after_what_they_count(tmp_path):
    """`batch` for the outputs' first dimension, `<input>_dim<axis>` for the others, renamed inside the expressions
    of every value so the file stays consistent (ORT and onnx's shape inference agree with it)."""
    model = _LastOffsetBag().eval()
    batch = (torch.randint(0, 50, (6,)), torch.randint(0, 60, (15,)), torch.tensor([0, 2, 2, 5, 9, 12, 15]))
    path = tmp_path / "m.onnx"
    report = convert(model, batch, path, quant="int8")
    graph = onnx.load(str(path)).graph
    sess = shark_export.session(path)  # the report lists what ORT will ask for and give, in order
    assert [(v["name"], v["dtype"]) for v in report.inputs] == [(i.name, "int64") for i in sess.get_inputs()]
    assert [v["name"] for v in report.outputs] == [o.name for o in sess.get_outputs()]
    assert [v["shape"] for v in report.inputs] == [i.shape for i in sess.get_inputs()]
    assert "inputs: user int64 [batch], items int64 [items_dim0]" in str(report), str(report)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.input, *graph.output]}
    assert dims["user"] == ["batch"] and dims["output"] == ["batch"] and dims["items"] == ["items_dim0"], dims
    assert re.fullmatch(r"batch ?\+ ?1", str(dims["offsets"][0])), dims  # the exporter's `s0 + 1`, renamed inside
    every = {d.dim_param for v in [*graph.value_info, *graph.input, *graph.output] for d in v.type.tensor_type.shape.dim}
    assert not any(re.search(r"\bs\d+\b", p) for p in every if p), sorted(every)
    onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    args = (torch.randint(0, 50, (3,)), torch.randint(0, 60, (4,)), torch.tensor([0, 1, 1, 4]))
    with torch.no_grad():
        np.testing.assert_allclose(shark_export.run(path, *args)[0], model(*args).numpy(), atol=0.05)


def test_asking_for_a_provider_this_onnxruntime_lacks_says_why(tmp_path):
    """ORT quietly runs on the CPU when the CUDA provider is not in the installed wheel; shark_export.session warns
    with what to install."""
    import onnxruntime as ort
    from models import DictInput

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    path = tmp_path / "m.onnx"
    convert(DictInput().eval(), DictInput.batch(4), path, quant="int8")
    with pytest.warns(RuntimeWarning, match=r"\['CUDAExecutionProvider'\] are not available .*onnxruntime-gpu"):
        sess = shark_export.session(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
