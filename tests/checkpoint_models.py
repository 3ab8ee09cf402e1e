"""The model of tests/test_checkpoints.py (imported by the tests and by a CLI factory module)."""

import torch


class Ranker(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.user = torch.nn.Embedding(3000, 16)
        self.hist = torch.nn.EmbeddingBag(5000, 32, mode="mean", padding_idx=0)
        self.bn = torch.nn.BatchNorm1d(48)
        self.out = torch.nn.Linear(48, 1)

    def forward(self, user, hist):
        return self.out(self.bn(torch.cat([self.user(user), self.hist(hist)], 1))).squeeze(-1)


class WideRanker(torch.nn.Module):
    """Tables wide enough for a header per row (dim > 32: split among workers) next to a narrow one (dim 16:
    scale groups under scale_group="auto", quantized by rank 0 alone); a padding row of zeros."""

    def __init__(self):
        super().__init__()
        self.user = torch.nn.Embedding(6000, 64, padding_idx=3)
        self.hist = torch.nn.EmbeddingBag(9000, 48, mode="sum")
        self.city = torch.nn.Embedding(700, 16)
        self.out = torch.nn.Linear(128, 1)

    def forward(self, user, hist, city):
        return self.out(torch.cat([self.user(user), self.hist(hist), self.city(city)], 1)).squeeze(-1)


def build_wide():
    return WideRanker()
