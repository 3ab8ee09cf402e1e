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
