"""Each graph pass on small exported graphs: the op types it leaves and the numbers the graph computes.

Intermediate graphs still hold staging lookups, which ORT cannot run; they are evaluated with onnx's
reference evaluator plus numpy implementations of the two staging ops.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from models import DictInput, TupleInputs, built
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import shark_export
from shark_export.errors import ExportError, UnknownFieldError
from shark_export.export import STAGING_DOMAIN, ExampleInputs, export_to_ir
from shark_export.fields import find_fields, find_tables
from shark_export.quantize import quantize_table
from shark_export.passes import (
    FinalizeVersionsPass,
    NameOutputsPass,
    PruneFieldsPass,
    RemoveDeadPass,
    ReplaceLookupsPass,
    TidyExportPass,
    find_lookups,
)
from shark_export.reference import dequantize


class FloatEmbedding(OpRun):
    op_domain = STAGING_DOMAIN

    def _run(self, weight, indices):
        return (weight[indices],)


class FloatEmbeddingBag(OpRun):
    op_domain = STAGING_DOMAIN

    def _run(self, weight, indices, offsets=None, per_sample_weights=None, mode=0, include_last_offset=0, padding_idx=-1):
        out = torch.nn.functional.embedding_bag(
            torch.tensor(indices), torch.tensor(weight), None if offsets is None else torch.tensor(offsets),
            mode=["sum", "mean"][mode], include_last_offset=bool(include_last_offset),
            padding_idx=None if padding_idx < 0 else padding_idx,
            per_sample_weights=None if per_sample_weights is None else torch.tensor(per_sample_weights),
        )
        return (out.numpy(),)


def _evaluate(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    proto = ir.to_proto(model)
    return ReferenceEvaluator(proto, new_ops=[FloatEmbedding, FloatEmbeddingBag]).run(None, feeds)


def _feeds(model: ir.Model, batch) -> dict:
    names = [v.name for v in model.graph.inputs]
    tensors = [t.numpy() for _, t in ExampleInputs.of(batch).named_tensors()]
    return dict(zip(names, tensors))


def _exported(cls):
    model = built(cls)
    example = ExampleInputs.of(cls.batch(4))
    tables = find_tables(model)
    weights = {n: p.detach().numpy() for n, p in model.named_parameters() if n in tables}
    fields = find_fields(model, example)
    ir_model, origins = export_to_ir(model, example)
    tidy = TidyExportPass()
    tidy(ir_model)
    node_origins = {node: [origin] for node, origin in origins.items() if node not in tidy.merged}
    found = find_lookups(ir_model, fields, tables, weights, node_origins)
    return model, ir_model, found.lookups, tables, weights


def _op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def test_export_keeps_one_staging_node_per_lookup_and_computes_torch_outputs():
    model, ir_model, lookups, _, _ = _exported(DictInput)
    assert [(lk.field, lk.node.op_type) for lk in lookups] == [
        ("emb.user", "FloatEmbedding"), ("emb.site", "FloatEmbedding"), ("tags", "FloatEmbeddingBag"), ("genres", "FloatEmbeddingBag"),
    ]
    assert "Loop" not in _op_types(ir_model)
    batch = DictInput.batch(6, seed=1)
    with torch.no_grad():
        want = model(batch).numpy()
    (got,) = _evaluate(ir_model, _feeds(ir_model, (batch,)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prune_pass_replaces_the_lookup_by_the_broadcast_mean():
    model, ir_model, lookups, _, _ = _exported(TupleInputs)
    mean = np.linspace(-1, 1, 12).astype(np.float32)
    PruneFieldsPass(lookups, {"item": mean})(ir_model)
    RemoveDeadPass()(ir_model)
    assert _op_types(ir_model).count("FloatEmbedding") == 1
    assert "Expand" in _op_types(ir_model)
    assert [v.name for v in ir_model.graph.inputs] == ["user_ids", "dense"]
    assert "item.weight" not in ir_model.graph.initializers
    users, _, dense = TupleInputs.batch(5, seed=2)
    with torch.no_grad():
        want = model.head(torch.cat([model.user(users), torch.from_numpy(mean).expand(5, -1), dense], 1)).squeeze(1).numpy()
    (got,) = _evaluate(ir_model, {"user_ids": users.numpy(), "dense": dense.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prune_pass_rejects_unknown_fields():
    _, _, lookups, _, _ = _exported(TupleInputs)
    with pytest.raises(UnknownFieldError, match=r"\['nope'\]"):
        PruneFieldsPass(lookups, {"nope": np.zeros(8)})


def test_prune_pass_keeps_the_index_input_when_no_live_input_has_the_batch_symbol():
    class OnlyEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Embedding(10, 3)
            self.b = torch.nn.Embedding(10, 3)

        def forward(self, a, b):  # a and b have unrelated lengths
            return self.a(a).sum(0) + self.b(b).sum(0)

    model = OnlyEmbeddings().eval()
    example = ExampleInputs.of((torch.tensor([1, 2, 3]), torch.tensor([4, 5])))
    tables = find_tables(model)
    ir_model, origins = export_to_ir(model, example)
    weights = {n: p.detach().numpy() for n, p in model.named_parameters()}
    lookups = find_lookups(ir_model, find_fields(model, example), tables, weights, {k: [v] for k, v in origins.items()}).lookups
    PruneFieldsPass(lookups, {"b": np.ones(3, np.float32)})(ir_model)
    RemoveDeadPass()(ir_model)
    assert [v.name for v in ir_model.graph.inputs] == ["a", "b"]  # b's length is still needed
    (got,) = _evaluate(ir_model, {"a": np.array([1, 2, 3]), "b": np.array([4, 5, 6, 7])})
    want = model.a.weight[[1, 2, 3]].sum(0).detach().numpy() + 4.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_replace_pass_leaves_only_our_ops_and_matches_dequantized_weights():
    model, ir_model, lookups, tables, weights = _exported(DictInput)
    quantized = {n: quantize_table(weights[n], "int4", name=n) for n in tables}
    ReplaceLookupsPass(lookups, quantized)(ir_model)
    RemoveDeadPass()(ir_model)
    FinalizeVersionsPass()(ir_model)
    ours = [node.op_type for node in ir_model.graph if node.domain == shark_export.DOMAIN]
    assert ours == ["RowwiseDequantGather", "RowwiseDequantGather", "RowwiseDequantEmbeddingBag", "RowwiseDequantEmbeddingBag"]
    assert not any(node.domain == STAGING_DOMAIN for node in ir_model.graph)
    assert not any(name.endswith(".weight") and name != "head.weight" for name in ir_model.graph.initializers)
    assert ir_model.ir_version == 10 and STAGING_DOMAIN not in ir_model.opset_imports
    batch = DictInput.batch(7, seed=3)
    session = shark_export.session(ir.to_proto(ir_model).SerializeToString())
    (got,) = session.run(None, _feeds(ir_model, (batch,)))
    reference = built(DictInput)
    with torch.no_grad():
        for name, table in quantized.items():
            dict(reference.named_parameters())[name].copy_(torch.from_numpy(dequantize(table)))
        want = reference(batch).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_finalize_pass_refuses_staging_nodes():
    _, ir_model, _, _, _ = _exported(TupleInputs)
    with pytest.raises(ir.passes.PostconditionError, match="staging lookups left"):
        FinalizeVersionsPass()(ir_model)


def test_find_lookups_verifies_weights_by_value():
    model, ir_model, _, tables, weights = _exported(TupleInputs)
    fields = find_fields(model, ExampleInputs.of(TupleInputs.batch(4)))
    wrong = dict(weights)
    wrong["user.weight"] = weights["user.weight"] + 1
    with pytest.raises(ExportError, match="'user.weight' does not hold the weight"):
        find_lookups(ir_model, fields, tables, wrong)


def test_passes_report_honestly_whether_they_changed_the_model():
    _, ir_model, lookups, tables, weights = _exported(TupleInputs)
    quantized = {n: quantize_table(weights[n], "int8", name=n) for n in tables}
    assert ReplaceLookupsPass(lookups, quantized)(ir_model).modified
    assert RemoveDeadPass()(ir_model).modified
    assert not RemoveDeadPass()(ir_model).modified  # nothing left to remove
    assert FinalizeVersionsPass()(ir_model).modified
    assert not FinalizeVersionsPass()(ir_model).modified
    names = [v.name for v in ir_model.graph.outputs]
    assert not NameOutputsPass(names)(ir_model).modified
    assert NameOutputsPass(["score"])(ir_model).modified and ir_model.graph.outputs[0].name == "score"
    assert not PruneFieldsPass(lookups, {})(ir_model).modified


def test_pass_conditions_name_what_is_wrong():
    _, ir_model, lookups, tables, weights = _exported(TupleInputs)
    with pytest.raises(ir.passes.PreconditionError, match=r"no stored table for \['item.weight'\]"):
        ReplaceLookupsPass(lookups, {"user.weight": quantize_table(weights["user.weight"], "int8")})(ir_model)
    with pytest.raises(ir.passes.PreconditionError, match="exported graph has 1 outputs, torch returned 2"):
        NameOutputsPass(["a", "b"])(ir_model)


def test_lookup_rewrite_rule_checks_before_it_rewrites():
    """The rule's check names what our op cannot serve (a stored table of another shape), and a refused
    lookup leaves the model untouched: no lookup of the model was rewritten."""
    from shark_export.passes.replace_lookups import LookupRewrite

    _, ir_model, lookups, tables, weights = _exported(TupleInputs)
    quantized = {n: quantize_table(weights[n], "int8", name=n) for n in tables}
    rule = LookupRewrite(quantized)
    assert [rule.pattern(lookup) for lookup in lookups] == [True] * len(lookups)
    assert [rule.check(lookup) for lookup in lookups] == [None] * len(lookups)

    short = dict(quantized)
    rows, dim = weights["item.weight"].shape
    short["item.weight"] = quantize_table(weights["item.weight"][: rows - 1], "int8", name="item.weight")
    before = [node.op_type for node in ir_model.graph]
    with pytest.raises(ExportError, match=rf"reads 'item.weight' of shape \[{rows}, {dim}\], but the stored table is "
                                          rf"\[{rows - 1}, {dim}\]"):
        ReplaceLookupsPass(lookups, short)(ir_model)
    assert [node.op_type for node in ir_model.graph] == before

    lookups[0].node.inputs[1].dtype = ir.DataType.FLOAT  # a hand-made graph could look rows up with floats
    assert "FLOAT indices; the op reads int32 or int64" in rule.check(lookups[0])
