"""Segment pooling over a tensor computed in forward (`F.embedding_bag(ids, activations, ...)`, issue 20.5): the
bag is lowered to ai.onnx ops and the rest of the model converts as usual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shark_export import convert
from shark_export.export import ExampleInputs
from shark_export.model_io import OnnxModelRunner

NODES, DIM = 40, 12


class SegmentPool(torch.nn.Module):
    """Node features from a table and a layer, pooled per segment of a flat id list (a graph recommender)."""

    def __init__(self, mode: str, include_last_offset: bool = False, padding_idx: int | None = None, weighted: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.nodes = torch.nn.Embedding(NODES, DIM)
        self.mix = torch.nn.Linear(DIM, DIM)
        self.out = torch.nn.Linear(DIM, 1)
        self.mode, self.include_last_offset, self.padding_idx, self.weighted = mode, include_last_offset, padding_idx, weighted

    def forward(self, ids, offsets, weights):
        activations = torch.tanh(self.mix(self.nodes.weight))  # computed in forward: not a table
        pooled = F.embedding_bag(ids, activations, offsets, mode=self.mode, include_last_offset=self.include_last_offset,
                                 padding_idx=self.padding_idx, per_sample_weights=weights if self.weighted else None)
        return self.out(pooled).squeeze(-1) + self.nodes(ids[:1]).sum()


def batch(seed: int, bags: int = 6, include_last_offset: bool = False):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 4, (bags,), generator=gen)
    sizes[1] = 0  # an empty bag
    n = int(sizes.sum())
    ids = torch.randint(0, NODES, (n,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1 if not include_last_offset else None]])
    return ids, offsets, torch.rand(n, generator=gen)


def _numpy_bag(act, ids, offsets, weights, mode, include_last_offset, padding_idx):
    """Independent reference of torch's embedding_bag semantics."""
    ends = list(offsets[1:]) + ([] if include_last_offset else [len(ids)])
    starts = list(offsets[: len(ends)])
    out = np.zeros((len(starts), act.shape[1]))
    for k, (s, e) in enumerate(zip(starts, ends)):
        keep = [i for i in range(s, e) if ids[i] != padding_idx]
        rows = np.array([act[ids[i]] * (weights[i] if weights is not None else 1.0) for i in keep]).reshape(-1, act.shape[1])
        if keep:
            out[k] = rows.sum(0) / (len(keep) if mode == "mean" else 1)
    return out


@pytest.mark.parametrize("mode,include_last_offset,padding_idx,weighted", [
    ("sum", False, None, False), ("mean", False, None, False), ("sum", True, None, True), ("mean", False, 3, False),
    ("max", False, None, False)])
def test_bag_over_computed_tensor_converts(tmp_path, mode, include_last_offset, padding_idx, weighted):
    model = SegmentPool(mode, include_last_offset, padding_idx, weighted).eval()
    cal = [batch(s, include_last_offset=include_last_offset) for s in range(3)]
    if mode == "max":
        with pytest.raises(Exception, match="max"):
            convert(model, cal[0], tmp_path / "m.onnx", quant="int8", calibration=cal)
        return
    report = convert(model, cal[0], tmp_path / "m.onnx", quant="int8", calibration=cal)
    assert report.faithfulness, str(report.faithfulness)
    assert [t.table for t in report.tables] == ["nodes.weight"]
    runner = OnnxModelRunner(tmp_path / "m.onnx")
    for b in [batch(9, bags=9, include_last_offset=include_last_offset), *cal]:
        got = runner.run(ExampleInputs.of(b))[0]
        with torch.no_grad():
            expected = model(*b).numpy()
        # the pooled activations themselves, against an independent numpy reference of the bag
        act = torch.tanh(model.mix(model.nodes.weight)).detach().numpy().astype(np.float64)
        pooled = _numpy_bag(act, b[0].numpy(), b[1].numpy(), b[2].numpy() if weighted else None, mode, include_last_offset,
                            -1 if padding_idx is None else padding_idx)
        with torch.no_grad():
            assert np.allclose(model.out(torch.from_numpy(pooled).float()).squeeze(-1).numpy()
                               + model.nodes(b[0][:1]).sum().numpy(), expected, atol=1e-5)
        assert np.abs(got - expected).max() < 0.05  # int8 table rows: the computed bag adds no error of its own


def test_bag_over_computed_tensor_is_exact_at_fp32(tmp_path):
    model = SegmentPool("mean").eval()
    cal = [batch(s) for s in range(2)]
    convert(model, cal[0], tmp_path / "m.onnx", quant="fp32", calibration=cal)
    runner = OnnxModelRunner(tmp_path / "m.onnx")
    for b in cal:
        with torch.no_grad():
            assert np.abs(runner.run(ExampleInputs.of(b))[0] - model(*b).numpy()).max() <= 3e-6
