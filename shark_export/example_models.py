"""A DeepFM-style CTR model and a small training loop, used by the demo, the samples and the benchmarks.

The model takes one dict batch: `"<field>"` int64 [B] for single-hot fields, `"<field>"` int64 [N] plus
`"<field>_offsets"` int64 [B] for multi-hot (EmbeddingBag, sum) fields, and optionally `"dense"` float [B, n].
It returns the click logit [B].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class FieldSpec:
    name: str
    cardinality: int
    multi_hot: bool = False


class DeepFM(nn.Module):
    """Field embeddings → FM second-order term + MLP; the first-order term is a linear layer on the embeddings."""

    def __init__(self, fields: list[FieldSpec], dim: int = 16, hidden: tuple[int, ...] = (64, 32), n_dense: int = 0, sparse: bool = True):
        super().__init__()
        self.fields = list(fields)
        self.n_dense = n_dense
        self.embeddings = nn.ModuleDict()
        for f in self.fields:
            if f.multi_hot:
                self.embeddings[f.name] = nn.EmbeddingBag(f.cardinality, dim, mode="sum", sparse=sparse)
            else:
                self.embeddings[f.name] = nn.Embedding(f.cardinality, dim, sparse=sparse)
            nn.init.normal_(self.embeddings[f.name].weight, std=0.05)
        width = len(self.fields) * dim + n_dense
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.linear = nn.Linear(len(self.fields) * dim + n_dense, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = []
        for f in self.fields:
            table = self.embeddings[f.name]
            if f.multi_hot:
                vectors.append(table(batch[f.name], batch[f"{f.name}_offsets"]))
            else:
                vectors.append(table(batch[f.name]))
        stacked = torch.stack(vectors, dim=1)  # [B, F, D]
        fm = 0.5 * (stacked.sum(1).pow(2) - stacked.pow(2).sum(1)).sum(1)
        flat = stacked.flatten(1)
        if self.n_dense:
            flat = torch.cat([flat, batch["dense"]], dim=1)
        return fm + self.mlp(flat).squeeze(1) + self.linear(flat).squeeze(1)


def train(
    model: nn.Module,
    batches: list[dict[str, torch.Tensor]],
    labels: list[torch.Tensor],
    *,
    epochs: int = 3,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """Adam on binary cross-entropy (SparseAdam for sparse embeddings); leaves the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    sparse = [m.weight for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers = [torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)]
    if sparse:
        optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        for k in torch.randperm(len(batches), generator=generator).tolist():
            for optimizer in optimizers:
                optimizer.zero_grad()
            loss_fn(model(batches[k]), labels[k].float()).backward()
            for optimizer in optimizers:
                optimizer.step()
    return model.eval()


def predict(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([torch.sigmoid(model(b)).numpy() for b in batches])


def split_batches(columns: dict[str, np.ndarray], labels: np.ndarray, fields: list[FieldSpec], batch_size: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """Batches of a table of single-hot columns (`columns[name]` int [n]) and multi-hot columns
    (`columns[name]` a list of int arrays, one per sample)."""
    n = labels.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = {}
        for f in fields:
            if f.multi_hot:
                bags = columns[f.name][start:stop]
                lengths = np.array([len(b) for b in bags], dtype=np.int64)
                batch[f.name] = torch.from_numpy(np.concatenate(bags).astype(np.int64)) if len(bags) else torch.zeros(0, dtype=torch.int64)
                batch[f"{f.name}_offsets"] = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
            else:
                batch[f.name] = torch.from_numpy(np.asarray(columns[f.name][start:stop], dtype=np.int64))
        if "dense" in columns:
            batch["dense"] = torch.from_numpy(np.asarray(columns["dense"][start:stop], dtype=np.float32))
        yield batch, torch.from_numpy(labels[start:stop].astype(np.float32))
