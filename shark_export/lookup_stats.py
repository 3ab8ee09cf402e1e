"""Statistics of what each field's lookups return, over batches: mergeable sums and counts.

`FieldStats` (sums and counts per field; shards merge, processes all-reduce) and the one-forward-per-batch
pass that fills them (`lookup_stats`), used for the fields' mean embeddings (pruning, taylor scores) and
their norms (the `norm` score).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .export import ExampleInputs
from .fields import Field, lookup_hooks


@dataclass
class FieldStats:
    """Per-field sums (scalars or vectors, float64) and sample counts; merge() adds shards."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, total: np.ndarray, count: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + np.asarray(total, dtype=np.float64)
        self.counts[name] = self.counts.get(name, 0.0) + float(count)

    def merge(self, other: "FieldStats") -> "FieldStats":
        merged = FieldStats(dict(self.sums), dict(self.counts))
        for name, total in other.sums.items():
            merged.add(name, total, other.counts[name])
        return merged

    def means(self) -> dict[str, np.ndarray]:
        return {name: self.sums[name] / self.counts[name] for name in self.sums if self.counts[name] > 0}

    def all_reduce(self, names: list[str]) -> "FieldStats":
        """Sum across torch.distributed processes (no-op when not initialized). Every process must pass the same names."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        reduced = FieldStats()
        for name in names:
            total = torch.as_tensor(np.atleast_1d(self.sums.get(name, 0.0)), dtype=torch.float64).clone()
            count = torch.tensor([self.counts.get(name, 0.0)], dtype=torch.float64)
            packed = torch.cat([total, count])
            torch.distributed.all_reduce(packed)
            value = packed[:-1].numpy()
            reduced.add(name, value if np.ndim(self.sums.get(name, 0.0)) else value[0], float(packed[-1]))
        return reduced



def by_call(fields: dict[str, Field]) -> dict[tuple[str, int], str]:
    """(module path, call index) → field name; a field whose calls have equal inputs has several calls."""
    return {call: f.name for f in fields.values() for call in f.calls}


def per_sample_vectors(output: torch.Tensor) -> torch.Tensor:
    """[B, ...] lookup output → [B, rest] (a sample's whole looked-up embedding as one vector)."""
    return output.reshape(output.shape[0], -1) if output.dim() >= 2 else output.reshape(1, -1)


def lookup_stats(model: nn.Module, fields: dict[str, Field], batches: Iterable, measure) -> FieldStats:
    """One no-grad forward per batch; `measure(output)` → (total, count) is added per looked-up field."""
    by_key = by_call(fields)
    stats = FieldStats()

    def record(path, index, module, args, kwargs, output):
        name = by_key.get((path, index))
        if name is not None:
            stats.add(name, *measure(output.detach().reshape(-1, output.shape[-1]).double()))

    with torch.no_grad(), lookup_hooks(model, record):
        for batch in batches:
            example = ExampleInputs.of(batch)
            model(*example.args, **example.kwargs)
    return stats


def mean_stats(model: nn.Module, fields: dict[str, Field], batches: Iterable) -> FieldStats:
    """Sums and counts of each field's looked-up embedding vectors ([D], over every lookup)."""
    return lookup_stats(model, fields, batches, lambda rows: (rows.sum(0).numpy(), rows.shape[0]))
