"""The patterns public recommender libraries use, each on a small model, converted end to end.

Merged identical lookups (one layer feeding two parts), ids computed in forward (offset-add into one
shared table), lookups outside embedding modules (F.embedding / index_select on a weight), tied output
projections, D = 1 and tiny tables, multi-task outputs, a `+ 1e-16` that must survive the export.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import shark_export
from shark_export import QuantConfig, check_parity, convert
from shark_export.inspect_model import read_tables
from shark_export.model_io import OnnxModelRunner


def _ids(n, high, seed, shape=None):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape or (n,), generator=g)


def _lookup_nodes(path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return [n.op_type for n in model.graph.node if n.domain == shark_export.DOMAIN]


def _initializer_names(path) -> set[str]:
    return {i.name for i in onnx.load(str(path), load_external_data=False).graph.initializer}


# --------------------------------------------------------------------------------------------------
# One layer, two uses: calls with equal inputs are one field and one lookup
# --------------------------------------------------------------------------------------------------
class SharedLayer(nn.Module):
    """torch-rechub's DeepFM: the same embedding layer output feeds the FM part and the deep part."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.other = nn.Embedding(30, 8)
        self.mlp = nn.Linear(16, 1)

    def forward(self, x, y):
        fm = (self.emb(x.long()) * self.other(y)).sum(1)  # "FM" part
        deep = self.mlp(torch.cat([self.emb(x.long()), self.other(y)], 1)).squeeze(1)  # "deep" part
        return torch.sigmoid(fm + deep)

    @staticmethod
    def batch(n, seed=0):
        return (_ids(n, 50, seed).int(), _ids(n, 30, seed + 1))


def _calibration(cls, n=4, size=64):
    return [cls.batch(size, seed=10 + k) for k in range(n)]


def test_equal_calls_are_one_field_and_one_lookup(tmp_path):
    model = SharedLayer().eval()
    fields = shark_export.find_fields(model, SharedLayer.batch(8), more_batches=_calibration(SharedLayer))
    assert list(fields) == ["emb#0", "other#0"]
    assert fields["emb#0"].names == ("emb#0", "emb#1") and fields["other#0"].names == ("other#0", "other#1")
    report = convert(model, SharedLayer.batch(8), tmp_path / "m.onnx", calibration=_calibration(SharedLayer))
    assert report.merged_fields == {"emb#0": ["emb#1"], "other#0": ["other#1"]}
    assert _lookup_nodes(tmp_path / "m.onnx") == ["RowwiseDequantGather", "RowwiseDequantGather"]
    assert report.faithfulness and report.faithfulness.outputs[0].max_abs <= 1e-5
    assert "also stands for emb#1" in str(report)


def test_pruning_a_merged_field_by_any_call_name_prunes_all_its_calls(tmp_path):
    model = SharedLayer().eval()
    calibration = _calibration(SharedLayer)
    report = convert(model, SharedLayer.batch(8), tmp_path / "m.onnx", prune=["emb#1"], calibration=calibration)
    assert report.pruned_fields == ["emb#0"] and report.faithfulness
    mean = torch.cat([model.emb(b[0].long()) for b in calibration]).mean(0).detach()
    x, y = SharedLayer.batch(16, seed=99)
    with torch.no_grad():
        o = model.other(y)
        m = mean.expand(16, 8)
        want = torch.sigmoid((m * o).sum(1) + model.mlp(torch.cat([m, o], 1)).squeeze(1))
    got = OnnxModelRunner(tmp_path / "m.onnx").run((x, y))[0]
    np.testing.assert_allclose(got, want.numpy(), atol=0.02)  # the other table is int8
    pruned = shark_export.prune_fields(model, ["emb#1"], calibration)
    assert check_parity(pruned, tmp_path / "m.onnx", [(x, y)], atol=0.02)


def test_calls_equal_on_the_example_but_not_on_calibration_stay_two_fields():
    class TwoColumns(nn.Module):
        def __init__(self):
            super().__init__()
            self.city = nn.Embedding(20, 4)

        def forward(self, a, b):
            return (self.city(a) * self.city(b)).sum(1)

    model = TwoColumns().eval()
    zeros = (torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    assert list(shark_export.find_fields(model, zeros)) == ["city#0"]  # equal on this batch alone
    real = [(_ids(32, 20, s), _ids(32, 20, s + 100)) for s in range(3)]
    assert list(shark_export.find_fields(model, zeros, more_batches=real)) == ["city#0", "city#1"]


# --------------------------------------------------------------------------------------------------
# ids computed in forward; lookups outside embedding modules
# --------------------------------------------------------------------------------------------------
class OffsetIds(nn.Module):
    """pytorch-fm: per-field offsets are added to the ids, every field is looked up in one shared table, and a
    D = 1 table holds the first-order weights."""

    def __init__(self, field_dims=(7, 3, 40)):
        super().__init__()
        self.register_buffer("offsets", torch.tensor((0, *np.cumsum(field_dims)[:-1])), persistent=False)
        self.embedding = nn.Embedding(sum(field_dims), 8)
        self.linear = nn.Embedding(sum(field_dims), 1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = x + self.offsets.unsqueeze(0)
        v = self.embedding(x)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        return torch.sigmoid(self.linear(x).sum((1, 2)) + self.bias + fm)

    @staticmethod
    def batch(n, seed=0):
        return torch.stack([_ids(n, 7, seed), _ids(n, 3, seed + 1), _ids(n, 40, seed + 2)], 1)


def test_offset_ids_into_one_shared_table(tmp_path):
    model = OffsetIds().eval()
    mixed = QuantConfig(preset="mixed", scale_group="none")  # a header per quantized row (format v2)
    report = convert(model, OffsetIds.batch(8), tmp_path / "m.onnx", quant=mixed, calibration=_calibration(OffsetIds))
    assert report.fields == ["embedding", "linear"] and report.faithfulness
    linear = next(t for t in report.tables if t.table == "linear.weight")
    assert linear.tiers == {"fp16": 50} and linear.bytes_after == 50 * 2  # D = 1: fp16 rows, nothing else
    assert "→fp16" in linear.storage
    # With scale groups asked for, an int8 row of D = 1 is one byte: cheaper than fp16, never above it.
    shared = QuantConfig(preset="mixed", scale_group=256)
    report = convert(model, OffsetIds.batch(8), tmp_path / "g.onnx", quant=shared, calibration=_calibration(OffsetIds))
    linear = next(t for t in report.tables if t.table == "linear.weight")
    assert report.faithfulness and "v3: scale groups of 256" in linear.storage
    assert linear.tiers.get("int8", 0) > 0 and linear.bytes_after < 50 * 2


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.known = nn.Embedding(30, 4)
        self.raw = nn.Parameter(torch.randn(25, 4))

    def forward(self, ids):
        a = nn.functional.embedding(ids, self.known.weight)  # a module's table, read without the module
        b = nn.functional.embedding(ids % 25, self.raw)  # a bare parameter used as a table
        c = self.known.weight.index_select(0, ids)
        return (a + b + c).sum(1)

    @staticmethod
    def batch(n, seed=0):
        return _ids(n, 30, seed)


def test_functional_lookups_are_fields_of_their_tables(tmp_path):
    model = Functional().eval()
    report = convert(model, Functional.batch(8), tmp_path / "m.onnx", calibration=_calibration(Functional))
    assert set(report.fields) == {"known.weight@0", "known.weight@1", "raw@0"}  # the module itself is never called
    assert {t.table for t in report.tables if not t.pruned} == {"known.weight", "raw"}
    assert _lookup_nodes(tmp_path / "m.onnx").count("RowwiseDequantGather") == 3
    assert not {"known.weight", "raw"} & _initializer_names(tmp_path / "m.onnx")  # no fp32 copy left
    assert report.faithfulness


# --------------------------------------------------------------------------------------------------
# Tied output projection: one stored copy
# --------------------------------------------------------------------------------------------------
class TiedProjection(nn.Module):
    """SASRec / GRU4Rec: the item table embeds the history and scores every item (`h @ items.weight.T`)."""

    def __init__(self, items=400, dim=16):
        super().__init__()
        self.items = nn.Embedding(items, dim, padding_idx=0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, history):
        h = self.proj(self.items(history).mean(1))
        return h @ self.items.weight.T

    @staticmethod
    def batch(n, seed=0):
        return _ids(n, 400, seed, (n, 5))


def test_tied_projection_reads_the_one_stored_table(tmp_path):
    model = TiedProjection().eval()
    path = tmp_path / "m.onnx"
    # A header per row: the impact bound below is int8's per-row error on these N(0, 1) rows.
    report = convert(model, TiedProjection.batch(4), path, quant=QuantConfig("int8", scale_group="none"),
                     calibration=_calibration(TiedProjection))
    (table,) = [t for t in report.tables if t.table == "items.weight"]
    assert table.dense_uses and table.dense_uses[0].split()[0] in ("MatMul", "Transpose", "Gemm")
    assert "items.weight" not in _initializer_names(path)  # no fp32 copy next to the quantized one
    assert report.faithfulness, str(report.faithfulness)
    plain = 400 * 16 * 4 + sum(p.numel() * 4 for n, p in model.named_parameters() if n != "items.weight")
    assert report.file_bytes == path.stat().st_size < 0.5 * plain + 1024  # + graph and metadata
    stored = onnx.load(str(path))
    storage = {f"items.weight.{part}" for part in ("payload", "row_meta", "default_row")}
    other = sum(onnx.numpy_helper.to_array(i).nbytes for i in stored.graph.initializer if i.name not in storage)
    assert report.dense_bytes == other >= sum(p.numel() * 4 for n, p in model.named_parameters() if n != "items.weight")
    assert "dense use" in str(report) and "one copy" in str(report)
    assert report.impact.outputs[0].max_abs < 0.05  # int8 table in both uses


# --------------------------------------------------------------------------------------------------
# Small D and tiny tables: never bigger than they should be
# --------------------------------------------------------------------------------------------------
class Dims(nn.Module):
    def __init__(self, dims, rows=(3, 200)):
        super().__init__()
        self.tables = nn.ModuleList([nn.Embedding(r, d) for d in dims for r in rows])

    def forward(self, ids):
        return torch.cat([t(ids % t.num_embeddings).sum(1) for t in self.tables], 1).sum(1)


@pytest.mark.parametrize("scale_group", ["auto", "none", 1, 4])
@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8", "int4", "mixed"])
def test_no_table_is_bigger_than_its_rules_allow(tmp_path, quant, scale_group):
    dims = (1, 2, 3, 4, 5, 9, 16)
    model = Dims(dims).eval()
    batches = [_ids(64, 200, s, (64, 3)) for s in range(4)]
    config = QuantConfig(quant, scale_group=scale_group)
    report = convert(model, batches[0], tmp_path / "m.onnx", quant=config, calibration=batches)
    assert report.faithfulness
    for t in report.tables:
        per_row = t.bytes_after / t.rows
        assert t.bytes_after <= t.fp32_bytes, t
        if quant == "int8":
            assert per_row <= min(t.dim + 4, 2 * t.dim), t  # uniform: no metadata, no default row
        if quant == "mixed":  # hot rows may be fp16; the block index only where it pays
            assert t.bytes_after <= t.rows * 2 * t.dim + 32 * -(-t.rows // 64), t
        if t.rows == 3:
            assert t.metadata_bytes == 0, t  # tiny tables carry no block index and no default row
    int8_budget = sum(t.rows * (min(t.dim + 4, 2 * t.dim) + 1) for t in report.tables)
    if quant == "mixed":
        assert report.bytes_after <= 0.8 * int8_budget
    stored = read_tables(tmp_path / "m.onnx")[0]
    assert sum(q.payload.nbytes + q.row_meta.nbytes + q.default_row.nbytes for q in stored.values()) == report.bytes_after


@pytest.mark.parametrize("ratio", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("scale_group", ["auto", "none"])
def test_budgets_never_store_a_table_above_its_fp32_bytes(tmp_path, ratio, scale_group):
    """Byte budgets (the dropped/int2 ladder up to fp32), tiny and small-D tables: every table as stored costs at
    most its fp32 bytes (block index, default row and scale groups included) and the model is faithful."""
    model = Dims((1, 2, 3, 9, 16)).eval()
    batches = [_ids(64, 200, s, (64, 3)) for s in range(4)]
    config = QuantConfig(target_ratio=ratio, scale_group=scale_group)
    report = convert(model, batches[0], tmp_path / "m.onnx", quant=config, calibration=batches)
    assert report.faithfulness, str(report.faithfulness)
    for t in report.tables:
        assert t.bytes_after <= t.fp32_bytes, t
    stored = read_tables(tmp_path / "m.onnx")[0]
    assert all(q.payload.nbytes + q.row_meta.nbytes + q.default_row.nbytes <= 4 * q.num_rows * q.dim for q in stored.values())


def test_int8_rule_picks_fp16_for_small_dims(tmp_path):
    model = Dims((1, 4, 5)).eval()
    report = convert(model, _ids(8, 200, 0, (8, 2)), tmp_path / "m.onnx", quant=QuantConfig("int8", scale_group="none"))
    tiers = {(t.dim, t.rows): t.tiers for t in report.tables}
    assert tiers[(1, 200)] == {"fp16": 200} and tiers[(4, 200)] == {"fp16": 200} and tiers[(5, 200)] == {"int8": 200}
    assert next(t for t in report.tables if t.dim == 1 and t.rows == 200).bytes_after == 400
    assert report.file_bytes == (tmp_path / "m.onnx").stat().st_size


def test_scale_groups_store_small_dims_as_their_codes(tmp_path):
    """Scale groups asked for (v3): int8 rows of D = 1, 4, 5 are D bytes of codes, plus 12 bytes per group
    of 256 rows -- below fp16 and far below fp32 -- and the model stays faithful."""
    model = Dims((1, 4, 5)).eval()
    batches = [_ids(64, 200, s, (64, 3)) for s in range(3)]
    report = convert(model, batches[0], tmp_path / "m.onnx", quant=QuantConfig("int8", scale_group=256), calibration=batches)
    assert report.faithfulness, str(report.faithfulness)
    for t in (t for t in report.tables if t.rows == 200):
        assert t.tiers == {"int8": t.rows}, t
        assert t.bytes_after == t.rows * t.dim + 12 * -(-t.rows // 256), t
        assert t.bytes_after < t.rows * t.dim * 2 and "v3" in t.storage
    # 3-row tables: a group record costs as much as the headers it replaces, and ties keep the headers (v2).
    tiny = {t.dim: t for t in report.tables if t.rows == 3}
    assert tiny[1].tiers == {"fp16": 3} and tiny[4].tiers == {"fp16": 3} and tiny[5].tiers == {"int8": 3}
    assert all("v3" not in t.storage for t in tiny.values())


# --------------------------------------------------------------------------------------------------
# Multi-task outputs and per-task AUC
# --------------------------------------------------------------------------------------------------
class TwoTasks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.heads = nn.Linear(8, 2)

    def forward(self, ids):
        return torch.sigmoid(self.heads(self.emb(ids)))  # [B, 2]


def _two_task_data(n_batches=4, size=256):
    w = torch.randn(100, 2)
    batches, labels = [], []
    for k in range(n_batches):
        ids = _ids(size, 100, k)
        p = torch.sigmoid(w[ids] * 3)
        labels.append((torch.rand(size, 2, generator=torch.Generator().manual_seed(k)) < p).float())
        batches.append(ids)
    return batches, labels


def test_multi_task_labels_give_per_task_auc(tmp_path):
    model = TwoTasks().eval()
    batches, labels = _two_task_data()
    report = convert(model, batches[0], tmp_path / "m.onnx", calibration=batches, labels=labels, quant="mixed")
    metrics = {m.output: m for m in report.impact.metrics}
    assert sorted(metrics) == ["output[0]", "output[1]"]
    y = torch.cat(labels).numpy()
    with torch.no_grad():
        p = torch.cat([model(b) for b in batches]).numpy()
    from shark_export.metrics import auc

    assert metrics["output[1]"].auc_reference == pytest.approx(auc(y[:, 1], p[:, 1]))
    report2 = check_parity(model, tmp_path / "m.onnx", batches, labels={"output": y}, atol=0.05)
    assert [m.output for m in report2.metrics] == ["output[0]", "output[1]"]
    with pytest.raises(shark_export.errors.SharkExportError, match=r"labels for 'output' have 1 column.*2 per sample"):
        check_parity(model, tmp_path / "m.onnx", batches, labels=y[:, 0], atol=0.05)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.ctr = nn.Linear(8, 1)
        self.cvr = nn.Linear(8, 1)

    def forward(self, ids):
        v = self.emb(ids)
        return {"ctr": torch.sigmoid(self.ctr(v)).squeeze(1), "cvr": torch.sigmoid(self.cvr(v)).squeeze(1)}


def test_labels_by_output_name_and_by_column_for_several_outputs(tmp_path):
    model = TwoHeads().eval()
    batches, labels = _two_task_data()
    report = convert(model, batches[0], tmp_path / "m.onnx", calibration=batches, labels=labels)
    assert [m.output for m in report.impact.metrics] == ["ctr", "cvr"]  # column t labels output t
    by_name = [{"cvr": y[:, 1]} for y in labels]
    report = convert(model, batches[0], tmp_path / "m2.onnx", calibration=batches, labels=by_name)
    assert [m.output for m in report.impact.metrics] == ["cvr"]


# --------------------------------------------------------------------------------------------------
# The exporter's optimizer is not run: a `+ 1e-16` that keeps a division finite survives
# --------------------------------------------------------------------------------------------------
class MeanPooledHistory(nn.Module):
    """torch-rechub's DSSM: mean pooling of a padded history, `sum / (count + 1e-16)`; empty histories give 0."""

    def __init__(self):
        super().__init__()
        self.items = nn.Embedding(60, 8, padding_idx=0)

    def forward(self, history):
        mask = (history > 0).float().unsqueeze(-1)
        pooled = (self.items(history) * mask).sum(1) / (mask.sum(1) + 1e-16)
        return pooled.sum(1)


def test_epsilon_in_a_denominator_survives_the_export(tmp_path):
    model = MeanPooledHistory().eval()
    history = _ids(16, 60, 3, (16, 6))
    history[:5] = 0  # empty histories: 0 / (0 + 1e-16)
    report = convert(model, history, tmp_path / "m.onnx", quant="fp32", calibration=[history])
    got = OnnxModelRunner(tmp_path / "m.onnx").run(history)[0]
    assert np.isfinite(got).all() and np.all(got[:5] == 0)
    assert report.faithfulness


def test_unused_call_is_reported_and_costs_nothing(tmp_path):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Embedding(10, 4)
            self.unused = nn.Embedding(1000, 4)

        def forward(self, ids):
            self.unused(ids)  # result thrown away
            return self.used(ids).sum(1)

    report = convert(Unused().eval(), _ids(8, 10, 0), tmp_path / "m.onnx")
    assert report.unused_fields == ["unused"]
    assert not any(t.table == "unused.weight" and not t.pruned for t in report.tables)


def test_scores_over_many_items_get_one_auc(tmp_path):
    model = TiedProjection().eval()
    batches = _calibration(TiedProjection)
    with torch.no_grad():
        scores = [model(b) for b in batches]
    labels = [(s > s.quantile(0.99)).float() for s in scores]  # [B, 400]: one column per item
    report = convert(model, batches[0], tmp_path / "m.onnx", calibration=batches, labels=labels)
    (metric,) = report.impact.metrics
    assert metric.output == "output" and metric.auc_reference > 0.99


# --------------------------------------------------------------------------------------------------
# Embedding subclasses with their own forward; one module registered under two paths
# --------------------------------------------------------------------------------------------------
class ScaledEmbedding(nn.Embedding):
    """A transformer's token embedding: the lookup times sqrt(D)."""

    def forward(self, ids):
        return super().forward(ids) * self.embedding_dim ** 0.5


class Subclassed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens = ScaledEmbedding(100, 8)
        self.shared = nn.Embedding(50, 8)
        self.left = self.shared  # the same module under two more paths
        self.right = self.shared
        self.head = nn.Linear(8, 1)

    def forward(self, x, y):
        return self.head(self.tokens(x).mean(1) + self.left(y) + self.right(y + 1)).squeeze(1)

    @staticmethod
    def batch(n, seed=0):
        return (_ids(n, 100, seed, (n, 4)), _ids(n, 40, seed + 1))


def test_subclass_forward_and_aliased_modules(tmp_path):
    model = Subclassed().eval()
    calibration = _calibration(Subclassed)
    report = convert(model, Subclassed.batch(8), tmp_path / "m.onnx", quant="int8", calibration=calibration)
    assert report.fields == ["tokens", "shared#0", "shared#1"] and not report.unused_fields  # named by module calls
    assert report.faithfulness, str(report.faithfulness)  # the scaling stays in the graph, applied to stored rows
    with pytest.raises(shark_export.errors.UnsupportedModelError, match=r"'tokens' is read through ScaledEmbedding\.forward"):
        convert(model, Subclassed.batch(8), tmp_path / "p.onnx", prune=["tokens"], calibration=calibration)
    report = convert(model, Subclassed.batch(8), tmp_path / "q.onnx", prune=["shared#1"], calibration=calibration)
    assert report.pruned_fields == ["shared#1"] and report.faithfulness
