"""Four small recommenders whose portable files (ops="standard") every ONNX runtime must run right (issue 23):
tests/test_portable_runtimes.py runs them on each runtime, benchmarks/bench_portable.py times them.

- `DeepFMFields`: 16 single-id Embedding fields read as `x[:, i]` (the exporter's Slice pattern), a D = 1
  first-order table per field, a dense input and an MLP.
- `OffsetBags`: 1-D EmbeddingBags with offsets: sum with per_sample_weights, mean with include_last_offset,
  empty bags.
- `MatrixBags`: 2-D EmbeddingBags (mean and sum) with padding_idx, D = 13.
- `TwoTower`: dict inputs, two outputs (score and user vector), one table shared by both towers.

`PRESETS` names the quantization settings each is converted with (fp16, int8, int4, mixed, an 8% budget
with int2 and dropped rows). `batch(name, n, seed)` gives a model's inputs as torch tensors (fed to a file through
`shark_export.OnnxModelRunner(path).feeds(ExampleInputs.of(batch))`).
"""

from __future__ import annotations

import torch
from torch import nn

from shark_export import QuantConfig

ROWS = (30000, 12000, 5000, 2000, 800, 300, 100, 60, 40, 20, 12, 8, 6, 5, 4, 3)
PRESETS = {"fp16": "fp16", "int8": "int8", "int4": "int4", "mixed": "mixed",
           "budget8": QuantConfig(target_ratio=0.08)}


class DeepFMFields(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(r, dim) for r in ROWS)
        self.first_order = nn.ModuleList(nn.Embedding(r, 1) for r in ROWS)
        self.mlp = nn.Sequential(nn.Linear(len(ROWS) * dim + 4, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, dense):
        vectors = [e(x[:, i]) for i, e in enumerate(self.embeddings)]
        linear = sum(e(x[:, i]) for i, e in enumerate(self.first_order))
        stacked = torch.stack(vectors, dim=1)
        fm = 0.5 * (stacked.sum(1).pow(2) - stacked.pow(2).sum(1)).sum(1, keepdim=True)
        return (linear + fm + self.mlp(torch.cat(vectors + [dense], dim=1))).squeeze(1)


class OffsetBags(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.weighted = nn.EmbeddingBag(20000, dim, mode="sum")
        self.mean_last = nn.EmbeddingBag(5000, dim, mode="mean", include_last_offset=True)
        self.head = nn.Linear(2 * dim, 1)

    def forward(self, ids, offsets, weights, tags, tag_offsets):
        return self.head(torch.cat([self.weighted(ids, offsets, per_sample_weights=weights),
                                    self.mean_last(tags, tag_offsets)], dim=1)).squeeze(1)


class MatrixBags(nn.Module):
    def __init__(self, dim: int = 13):
        super().__init__()
        self.history = nn.EmbeddingBag(20000, dim, mode="mean", padding_idx=0)
        self.genres = nn.EmbeddingBag(400, dim, mode="sum", padding_idx=0)
        self.head = nn.Linear(2 * dim, 1)

    def forward(self, history, genres):
        return self.head(torch.cat([self.history(history), self.genres(genres)], dim=1)).squeeze(1)


class TwoTower(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.ids = nn.Embedding(20000, dim)  # users and items share it
        self.city = nn.Embedding(300, dim)
        self.user_mlp = nn.Linear(2 * dim, dim)
        self.item_mlp = nn.Linear(2 * dim, dim)

    def forward(self, batch: dict[str, torch.Tensor]):
        user = self.user_mlp(torch.cat([self.ids(batch["user"]), self.city(batch["city"])], dim=1))
        item = self.item_mlp(torch.cat([self.ids(batch["item"]).mean(1), self.ids(batch["item"][:, 0])], dim=1))
        return (user * item).sum(1), user


MODELS = {"deepfm": DeepFMFields, "offset_bags": OffsetBags, "matrix_bags": MatrixBags, "two_tower": TwoTower}


def _zipf(g: torch.Generator, high: int, shape) -> torch.Tensor:
    """Skewed ids in 0..high-1 (hot rows first), as a recommender sees them."""
    u = torch.rand(shape, generator=g)
    return torch.clamp((high ** u - 1).long(), 0, high - 1)


def batch(name: str, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if name == "deepfm":
        return (torch.stack([_zipf(g, r, (n,)) for r in ROWS], dim=1), torch.rand(n, 4, generator=g))
    if name == "offset_bags":
        lengths = torch.randint(0, 9, (n,), generator=g)
        lengths[0] = 0  # an empty bag
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)[:-1]])
        tag_lengths = torch.randint(0, 4, (n,), generator=g)
        tag_offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(tag_lengths, 0)])  # n + 1
        total, tags = int(lengths.sum()), int(tag_lengths.sum())
        return (_zipf(g, 20000, (total,)), offsets, torch.rand(total, generator=g), _zipf(g, 5000, (tags,)), tag_offsets)
    if name == "matrix_bags":
        history = _zipf(g, 20000, (n, 20))
        history[:, 12:] = 0  # padding at the end of short histories
        genres = _zipf(g, 400, (n, 5))
        genres[0] = 0  # a bag made only of padding
        return (history, genres)
    if name == "two_tower":
        return ({"user": _zipf(g, 20000, (n,)), "city": _zipf(g, 300, (n,)), "item": _zipf(g, 20000, (n, 3))},)
    raise KeyError(name)


def built(name: str, seed: int = 0) -> nn.Module:
    """The model with trained-looking tables: rows of different scales, a zero padding row."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                rows = module.weight.shape[0]
                scale = torch.logspace(0, -3, rows).unsqueeze(1)  # hot rows large, rare rows small
                module.weight.mul_(scale)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx] = 0
    return model.eval()


def convert_pair(name: str, preset: str, out_dir, seed: int = 0) -> dict:
    """The model converted with our ops and with ops="standard": {"custom": path, "standard": path}."""
    from pathlib import Path

    from shark_export import convert

    model = built(name, seed)
    calibration = [batch(name, 64, seed=s) for s in range(1, 4)]
    labels = [torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(s)).float() for s in range(1, 4)]
    paths = {}
    for ops in ("custom", "standard"):
        path = Path(out_dir) / f"{name}_{preset}_{ops}.onnx"
        convert(model, batch(name, 8), path, quant=PRESETS[preset], calibration=calibration, labels=labels, ops=ops)
        paths[ops] = path
    return paths
