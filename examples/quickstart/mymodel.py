"""A small recommender for the command-line quickstart: a user id, a bag of recently seen items, one dense
feature. `build()` is the factory `shark-export --model mymodel:build` calls."""

import torch


class TinyRanker(torch.nn.Module):
    def __init__(self, users: int = 2000, items: int = 5000, dim: int = 16):
        super().__init__()
        self.user = torch.nn.Embedding(users, dim)
        self.history = torch.nn.EmbeddingBag(items, dim, mode="mean", padding_idx=0)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(2 * dim + 1, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, user, history, age):
        features = torch.cat([self.user(user), self.history(history), age.unsqueeze(-1)], dim=1)
        return self.mlp(features).squeeze(-1)  # a click logit per sample


def build(users: int = 2000, items: int = 5000, dim: int = 16) -> TinyRanker:
    return TinyRanker(users, items, dim)


def make_batch(n: int, generator: torch.Generator, users: int = 2000, items: int = 5000):
    """One batch of forward's positional arguments, and its click labels (a planted signal)."""
    user = torch.randint(0, users, (n,), generator=generator)
    history = torch.randint(1, items, (n, 5), generator=generator) * (torch.rand(n, 5, generator=generator) < 0.8)
    age = torch.rand(n, generator=generator)
    clicks = ((user % 7 == 0) | (history[:, 0] % 5 == 0)).float()
    return (user, history, age), clicks
