"""Small torch models with every input signature and embedding use the converter must handle."""

from __future__ import annotations

import torch
from torch import nn


class TupleInputs(nn.Module):
    """Several positional index tensors plus a dense tensor."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(300, 8)
        self.item = nn.Embedding(120, 12)
        self.head = nn.Linear(8 + 12 + 3, 1)

    def forward(self, user_ids, item_ids, dense):
        return self.head(torch.cat([self.user(user_ids), self.item(item_ids), dense], dim=1)).squeeze(1)

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 300, (n,), generator=g), torch.randint(0, 120, (n,), generator=g), torch.randn(n, 3, generator=g))


class DictInput(nn.Module):
    """One dict argument: single-hot ids, a multi-hot bag with offsets, a 2-D bag."""

    def __init__(self):
        super().__init__()
        self.emb = nn.ModuleDict({"user": nn.Embedding(200, 6), "site": nn.Embedding(50, 6)})
        self.tags = nn.EmbeddingBag(80, 6, mode="sum")
        self.genres = nn.EmbeddingBag(30, 6, mode="mean", padding_idx=0)
        self.head = nn.Linear(24, 1)

    def forward(self, batch):
        parts = [
            self.emb["user"](batch["user"]),
            self.emb["site"](batch["site"]),
            self.tags(batch["tags"], batch["tag_offsets"]),
            self.genres(batch["genres"]),
        ]
        return torch.sigmoid(self.head(torch.cat(parts, dim=1)).squeeze(1))

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 5, (n,), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)[:-1]])
        return {
            "user": torch.randint(0, 200, (n,), generator=g),
            "site": torch.randint(0, 50, (n,), generator=g),
            "tags": torch.randint(0, 80, (int(lengths.sum()),), generator=g),
            "tag_offsets": offsets,
            "genres": torch.randint(0, 30, (n, 3), generator=g),
        }


class DenseMatrixInput(nn.Module):
    """A single float matrix whose columns are ids, sliced and cast inside forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Embedding(40, 4)
        self.b = nn.Embedding(70, 4)
        self.head = nn.Linear(8 + 1, 1)

    def forward(self, x):
        a = self.a(x[:, 0].long())
        b = self.b(x[:, 1].long())
        return self.head(torch.cat([a, b, x[:, 2:3]], dim=1)).squeeze(1)

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return torch.stack(
            [torch.randint(0, 40, (n,), generator=g).float(), torch.randint(0, 70, (n,), generator=g).float(), torch.randn(n, generator=g)],
            dim=1,
        )


class SharedTable(nn.Module):
    """One table looked up twice (query and candidate ids), and a second module tied to the same weight."""

    def __init__(self):
        super().__init__()
        self.ids = nn.Embedding(150, 8)
        self.tied = nn.Embedding(150, 8)
        self.tied.weight = self.ids.weight
        self.other = nn.Embedding(20, 8)
        self.head = nn.Linear(32, 1)

    def forward(self, query, candidate, history, ctx):
        parts = [self.ids(query), self.ids(candidate), self.tied(history), self.other(ctx)]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randint(0, high, (n,), generator=g) for high in (150, 150, 150, 20))


class BagModes(nn.Module):
    """EmbeddingBag in every supported mode: offsets (with and without last offset), 2-D, weights, padding."""

    def __init__(self):
        super().__init__()
        self.sum_bag = nn.EmbeddingBag(60, 5, mode="sum")
        self.mean_last = nn.EmbeddingBag(60, 5, mode="mean", include_last_offset=True)
        self.weighted = nn.EmbeddingBag(60, 5, mode="sum")
        self.padded_2d = nn.EmbeddingBag(60, 5, mode="mean", padding_idx=3)
        self.head = nn.Linear(20, 2)

    def forward(self, ids, offsets, weights, matrix):
        last = torch.cat([offsets, torch.tensor([ids.shape[0]], dtype=offsets.dtype)])
        parts = [
            self.sum_bag(ids, offsets),
            self.mean_last(ids, last),
            self.weighted(ids, offsets, per_sample_weights=weights),
            self.padded_2d(matrix),
        ]
        return self.head(torch.cat(parts, dim=1))

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(0, 6, (n,), generator=g)
        lengths[0] = 0  # an empty bag
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)[:-1]])
        total = int(lengths.sum())
        matrix = torch.randint(0, 60, (n, 4), generator=g)
        if n > 1:
            matrix[1] = 3  # a bag made only of padding
        return (torch.randint(0, 60, (total,), generator=g), offsets, torch.rand(total, generator=g), matrix)


class MultiTask(nn.Module):
    """Two heads returned as a dict."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(100, 8)
        self.item = nn.Embedding(100, 8)
        self.ctr = nn.Linear(16, 1)
        self.cvr = nn.Linear(16, 1)

    def forward(self, user, item):
        h = torch.cat([self.user(user), self.item(item)], dim=1)
        return {"ctr": torch.sigmoid(self.ctr(h)).squeeze(1), "cvr": self.cvr(h).squeeze(1)}

    @staticmethod
    def batch(n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(0, 100, (n,), generator=g), torch.randint(0, 100, (n,), generator=g))


class NoEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x):
        return self.lin(x)


def built(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():  # spread the rows so quantization differs visibly from fp32
        for module in model.modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                module.weight.normal_(0.0, 0.5)
    return model.eval()


def tuple_inputs_model(seed: int = 0) -> nn.Module:
    """Factory for CLI tests (`--model models:tuple_inputs_model`)."""
    return built(TupleInputs, seed)


def dict_input_model(seed: int = 0) -> nn.Module:
    return built(DictInput, seed)
