"""A model with a planted signal field, and the worker of the 2-process torch.distributed test.

They live in a module imported by name (tests/ is on sys.path) so that spawned processes can import them.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from shark_export.field_scoring import score_fields


class Planted(nn.Module):
    """signal carries the label, noise does not; tags is a bag; shared is one table looked up twice."""

    def __init__(self):
        super().__init__()
        self.signal = nn.Embedding(20, 4)
        self.noise = nn.Embedding(20, 4)
        self.tags = nn.EmbeddingBag(15, 4, mode="mean")
        self.shared = nn.Embedding(10, 4)
        self.head = nn.Linear(20, 1)

    def forward(self, batch):
        parts = [self.signal(batch["s"]), self.noise(batch["n"]), self.tags(batch["t"], batch["o"]),
                 self.shared(batch["a"]), self.shared(batch["b"])]
        return self.head(torch.cat(parts, 1)).squeeze(1)


def planted_data(n_batches: int = 8, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    effect = torch.randn(20, generator=g) * 2
    batches, labels = [], []
    for _ in range(n_batches):
        s = torch.randint(0, 20, (size,), generator=g)
        lengths = torch.randint(1, 4, (size,), generator=g)
        batch = {
            "s": s, "n": torch.randint(0, 20, (size,), generator=g),
            "t": torch.randint(0, 15, (int(lengths.sum()),), generator=g),
            "o": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]]),
            "a": torch.randint(0, 10, (size,), generator=g), "b": torch.randint(0, 10, (size,), generator=g),
        }
        batches.append(batch)
        labels.append((torch.rand(size, generator=g) < torch.sigmoid(effect[s])).float())
    return batches, labels


def distributed_worker(rank: int, world: int, port: int, state: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = Planted()
        model.load_state_dict(state)
        batches, labels = planted_data()
        scores = score_fields(model.eval(), batches[rank::world], labels[rank::world], method="taylor")
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            f.write(scores.to_json())
    finally:
        torch.distributed.destroy_process_group()
