"""GroupLookupsPass: the lookups feeding one Concat along axis 1 become one RowwiseDequantMultiLookup.

Each case converts a small model twice, with and without fusion, and asserts which nodes the fused file
holds and that both files compute the same bits (the fused op writes what each single op writes).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import shark_export
from shark_export.model_io import OnnxModelRunner

MULTI = "RowwiseDequantMultiLookup"


class Stacked(nn.Module):
    """torch.stack of [B, D] lookups (an Unsqueeze per field and a Concat), read twice afterwards."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Embedding(50, 8), nn.Embedding(30, 8), nn.EmbeddingBag(40, 8, mode="mean")
        self.head = nn.Linear(24, 1)

    def forward(self, a, b, c, c_offsets):
        stacked = torch.stack([self.a(a), self.b(b), self.c(c, c_offsets)], dim=1)  # [B, 3, 8]
        return self.head(stacked.flatten(1)).squeeze(1) + stacked.pow(2).sum((1, 2))

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 4, (n,), generator=g)
        return (torch.randint(0, 50, (n,), generator=g), torch.randint(0, 30, (n,), generator=g),
                torch.randint(0, 40, (int(lengths.sum()),), generator=g),
                torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]))


class WithDense(nn.Module):
    """torch.cat(dim=1) of [B, D_k] lookups of different dims with dense features in the middle: two runs."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(50, 4), nn.Embedding(30, 16)
        self.c, self.d = nn.Embedding(20, 8), nn.EmbeddingBag(25, 6, mode="sum")
        self.head = nn.Linear(4 + 16 + 3 + 8 + 6, 1)

    def forward(self, a, b, dense, c, d):
        x = torch.cat([self.a(a), self.b(b), dense, self.c(c), self.d(d)], dim=1)  # d: 2-D bags [B, 3]
        return self.head(x).squeeze(1)

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 50, (n,), generator=g), torch.randint(0, 30, (n,), generator=g),
                torch.randn(n, 3, generator=g), torch.randint(0, 20, (n,), generator=g),
                torch.randint(0, 25, (n, 3), generator=g))


class SlicedIds(nn.Module):
    """deepctr's pattern: ids sliced from one [B, F] input, each lookup [B, 1, D], cat along dim 1; one field
    is also read by a first-order term, so it stays a single op and splits the run."""

    def __init__(self):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(60, 8) for _ in range(4))
        self.first_order = nn.Linear(8, 1)

    def forward(self, x):
        embs = [t(x[:, k: k + 1]) for k, t in enumerate(self.tables)]  # [B, 1, 8] each
        cat = torch.cat(embs, dim=1)  # [B, 4, 8]
        return cat.sum((1, 2)) + self.first_order(embs[2].squeeze(1)).squeeze(1)

    @staticmethod
    def batch(n: int, seed: int = 0):
        return (torch.randint(0, 60, (n, 4), generator=torch.Generator().manual_seed(seed)),)


class LastAxis(nn.Module):
    """Sequences concatenated along the embedding axis: not a per-sample block layout, never fused."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(50, 8), nn.Embedding(30, 8)

    def forward(self, a, b):
        return torch.cat([self.a(a), self.b(b)], dim=2).sum((1, 2))

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 50, (n, 5), generator=g), torch.randint(0, 30, (n, 5), generator=g)


def _convert(cls, tmp_path, fuse: bool, quant="mixed"):
    torch.manual_seed(0)
    model = cls().eval()
    calibration = [cls.batch(64, seed=s) for s in range(3)]
    path = tmp_path / f"{cls.__name__}_{fuse}.onnx"
    report = shark_export.convert(model, cls.batch(8), path, quant=quant, calibration=calibration, fuse_lookups=fuse)
    assert report.faithfulness, report.faithfulness
    return model, path, report


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node if n.domain == shark_export.DOMAIN]


@pytest.mark.parametrize("cls,groups,ops,concat_gone", [
    (Stacked, [["a", "b", "c"]], [MULTI], True),
    (WithDense, [["a", "b"], ["c", "d"]], [MULTI, MULTI], False),
    (SlicedIds, [["tables.0", "tables.1"]], [MULTI, "RowwiseDequantGather", "RowwiseDequantGather"], False),
    (LastAxis, [], ["RowwiseDequantGather", "RowwiseDequantGather"], False),
])
def test_fused_file_computes_the_same_bits(tmp_path, cls, groups, ops, concat_gone):
    model, fused_path, report = _convert(cls, tmp_path, True)
    _, plain_path, plain_report = _convert(cls, tmp_path, False)
    assert report.fused_lookups == groups and plain_report.fused_lookups == []
    assert sorted(_ops(fused_path)) == sorted(ops)
    concats = [len([n for n in onnx.load(str(p)).graph.node if n.op_type == "Concat"]) for p in (fused_path, plain_path)]
    assert concats[0] == concats[1] - concat_gone  # a Concat of lookups only is gone; a partial one stays
    fused, plain = OnnxModelRunner(fused_path), OnnxModelRunner(plain_path)
    for seed in (5, 6):  # (both files passed convert's faithfulness check against torch)
        batch = cls.batch(300, seed=seed)
        (got,), (want,) = fused.run(batch), plain.run(batch)
        np.testing.assert_array_equal(got, want)


def test_dense_features_keep_their_concat(tmp_path):
    _, path, _ = _convert(WithDense, tmp_path, True)
    graph = onnx.load(str(path)).graph
    (concat,) = [n for n in graph.node if n.op_type == "Concat" and n.name.endswith("after_fusion")]
    assert len(concat.input) == 3  # fused a+b, dense, fused c+d
    (multi_cd,) = [n for n in graph.node if n.op_type == MULTI and "c\nd" in onnx.helper.get_attribute_value(
        next(a for a in n.attribute if a.name == "field_names")).decode()]
    kinds = onnx.helper.get_attribute_value(next(a for a in multi_cd.attribute if a.name == "kinds"))
    assert kinds[0] == 0 and kinds[1] in (1, 2)  # a gather and a bag


def test_fp16_lookups_are_fused_with_one_cast(tmp_path):
    torch.manual_seed(0)
    model = Stacked().eval()
    config = shark_export.QuantConfig("int8", output_dtype="float16")
    path = tmp_path / "fp16.onnx"
    report = shark_export.convert(model, Stacked.batch(8), path, quant=config, calibration=[Stacked.batch(64)])
    assert report.fused_lookups == [["a", "b", "c"]]
    graph = onnx.load(str(path)).graph
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert len(casts) == 1 and casts[0].input[0] == [n for n in graph.node if n.op_type == MULTI][0].output[0]
    plain = tmp_path / "fp16_plain.onnx"
    shark_export.convert(model, Stacked.batch(8), plain, quant=config, calibration=[Stacked.batch(64)], fuse_lookups=False)
    batch = Stacked.batch(200, seed=9)
    np.testing.assert_array_equal(OnnxModelRunner(path).run(batch)[0], OnnxModelRunner(plain).run(batch)[0])
