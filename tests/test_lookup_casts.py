"""LookupCastsPass: lookups read only through Cast(to=float16) write float16 themselves, same bits."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

import shark_export
from shark_export import reference as ref
from shark_export.inspect_model import read_tables
from shark_export.model_io import OnnxModelRunner


class HalfEmbeddings(nn.Module):
    """Embeddings narrowed to float16 (a float16 consumer): one concatenated pair, one lone bag."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(70, 8), nn.Embedding(50, 16)
        self.c = nn.EmbeddingBag(40, 8, mode="sum")

    def forward(self, a, b, c, c_offsets):
        pair = torch.cat([self.a(a).half(), self.b(b).half()], dim=1)
        return pair, self.c(c, c_offsets).half(), self.a(a)  # the last: float32, must stay so

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 4, (n,), generator=g)
        return (torch.randint(0, 70, (n,), generator=g), torch.randint(0, 50, (n,), generator=g),
                torch.randint(0, 40, (int(lengths.sum()),), generator=g),
                torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]))


def test_float16_readers_get_float16_lookups_with_the_cast_bits(tmp_path):
    torch.manual_seed(0)
    model = HalfEmbeddings().eval()
    path = tmp_path / "half.onnx"
    report = shark_export.convert(model, HalfEmbeddings.batch(8), path, quant="mixed",
                                  calibration=[HalfEmbeddings.batch(64, s) for s in range(3)])
    assert report.faithfulness
    graph = onnx.load(str(path)).graph
    lookups = [n for n in graph.node if n.domain == shark_export.DOMAIN]
    out16 = {n.name for n in lookups if any(a.name == "output_dtype" and a.i == 10 for a in n.attribute)}
    assert sorted(report.float16_lookups) == sorted(out16) and len(out16) == 2  # the fused pair and the bag
    assert not [n for n in graph.node if n.op_type == "Cast"]
    tables, _ = read_tables(path)
    batch = HalfEmbeddings.batch(300, seed=5)
    pair, bag, a32 = OnnxModelRunner(path).run(batch)  # run() returns float32 copies of the outputs
    ia, ib, ic, offsets = (t.numpy() for t in batch)
    want_pair = np.concatenate([ref.gather(tables["a.weight"], ia).astype(np.float16),
                                ref.gather(tables["b.weight"], ib).astype(np.float16)], axis=1)
    np.testing.assert_array_equal(pair, want_pair.astype(np.float32))
    np.testing.assert_array_equal(a32, ref.gather(tables["a.weight"], ia))
    want_bag = ref.embedding_bag(tables["c.weight"], ic, offsets).astype(np.float16)
    np.testing.assert_allclose(bag, want_bag.astype(np.float32), rtol=1e-3, atol=1e-3)  # float32 sum order
    session = shark_export.session(str(path))
    assert [o.type for o in session.get_outputs()] == ["tensor(float16)", "tensor(float16)", "tensor(float)"]
