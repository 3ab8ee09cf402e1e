"""ExporterPatternsPass: the exporter patterns other runtimes misread become their exact equivalents, and only
those (a Slice that drops something, offsets a user passes, stay as they are)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from shark_export import convert, ops
from shark_export.export import ExampleInputs, export_to_ir
from shark_export.passes import ExporterPatternsPass


def _rewrites(model: nn.Module, example: tuple) -> dict:
    ir_model, _ = export_to_ir(model.eval(), ExampleInputs.of(example))
    rule = ExporterPatternsPass()
    rule(ir_model)
    return rule.rewritten


class Columns(nn.Module):
    def __init__(self, start: int = 0):
        super().__init__()
        self.start = start
        self.a, self.b = nn.Embedding(50, 4), nn.Embedding(30, 4)

    def forward(self, x):
        x = x[self.start:]
        return self.a(x[:, 0]) + self.b(x[:, 1])


class MatrixBag(nn.Module):
    def __init__(self, weighted: bool):
        super().__init__()
        self.weighted = weighted
        self.bag = nn.EmbeddingBag(40, 6, mode="sum", padding_idx=2)

    def forward(self, ids, weights):
        return self.bag(ids, per_sample_weights=weights if self.weighted else None)


class OffsetBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(40, 6, mode="mean")

    def forward(self, ids, offsets):
        return self.bag(ids, offsets)


def _ids(rows, shape, seed=0):
    return torch.randint(0, rows, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("start", [0, 1])
def test_noop_column_slices_go_and_a_slice_that_drops_rows_stays(start, tmp_path):
    """`x[:, i]` exports a Slice of every row (0 to INT64_MAX) before its Gather: it goes; `x[1:]` drops a row:
    it stays (the converted model still gives torch's outputs, one row fewer)."""
    model = Columns(start).eval()
    example = (torch.stack([_ids(30, (6,)), _ids(30, (6,), 1)], dim=1),)
    assert _rewrites(model, example)["noop_slice"] >= 2
    path = tmp_path / "m.onnx"
    convert(model, example, path, quant="fp32")
    x = torch.stack([_ids(30, (9,), 5), _ids(30, (9,), 6)], dim=1)
    session = ops.session(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (9 - start, 4)
    np.testing.assert_array_equal(got, model(x).detach().numpy())
    slices = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Slice"]
    assert len(slices) == start  # the x[1:] one alone


@pytest.mark.parametrize("weighted", [False, True])
def test_matrix_bags_get_their_2d_ids_back_and_match_torch(weighted, tmp_path):
    torch.manual_seed(0)
    model = MatrixBag(weighted).eval()
    example = (_ids(40, (5, 7)), torch.rand(5, 7))
    assert _rewrites(model, example)["matrix_bag"] == 1
    for kind in ("custom", "standard"):
        path = tmp_path / f"{kind}.onnx"
        convert(model, example, path, quant="fp32", ops=kind)
        graph = onnx.load(str(path)).graph
        assert not any(n.op_type == "Range" for n in graph.node), [n.op_type for n in graph.node]
        session = ops.session(str(path))
        ids, weights = _ids(40, (9, 7), 3), torch.rand(9, 7)
        ids[0] = 2  # a bag of padding only
        feeds = dict(zip([i.name for i in session.get_inputs()], [ids.numpy(), weights.numpy()]))
        got = session.run(None, feeds)[0]
        np.testing.assert_allclose(got, model(ids, weights).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_offsets_the_user_passes_are_kept():
    example = (_ids(40, (12,)), torch.tensor([0, 3, 3, 8]))
    assert _rewrites(OffsetBag(), example)["matrix_bag"] == 0
