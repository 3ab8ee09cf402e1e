"""F-Quantization row priorities: a time-decayed, label-weighted count of each row's occurrences.

priority(row) = Σ over occurrences o of the row in batch t of w(y_o) · decay^(T−1−t), where T is the
number of batches seen, w(1) = pos_weight, w(0) = neg_weight (soft labels interpolate), and y_o is the
label of the sample the occurrence belongs to. Later batches count more when decay < 1.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .errors import SharkExportError
from .fields import _call, _hooks, find_tables

# Decay is applied lazily: a batch's weights are scaled by decay^-t and the total by decay^(T-1) at the
# end, so a batch costs O(its ids), not O(rows). The scale is folded back in before it can overflow.
_RESCALE_AT = 1e30


@dataclass
class RowPriority:
    """Per-table row priorities, float32 [rows] each, keyed by table (parameter) name."""

    scores: dict[str, np.ndarray]
    method: str = "count"
    params: dict = field(default_factory=dict)

    def __getitem__(self, table: str) -> np.ndarray:
        return self.scores[table]

    def seen(self, table: str) -> np.ndarray:
        return self.scores[table] > 0


def _sample_ids(module: nn.Module, args: tuple, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, sample index of each id) of one embedding call, padding entries removed."""
    indices = args[0] if args else kwargs["input"]
    ids = indices.detach().cpu().numpy()
    if isinstance(module, nn.EmbeddingBag):
        offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
        if ids.ndim == 2:
            samples = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
            ids = ids.reshape(-1)
        else:
            starts = offsets.detach().cpu().numpy()
            if module.include_last_offset:
                starts = starts[:-1]
            samples = np.searchsorted(starts, np.arange(ids.shape[0]), side="right") - 1
        if module.padding_idx is not None:
            keep = ids != module.padding_idx
            ids, samples = ids[keep], samples[keep]
        return ids.astype(np.int64), samples
    if ids.ndim == 0:
        return ids.reshape(1).astype(np.int64), np.zeros(1, dtype=np.int64)
    samples = np.repeat(np.arange(ids.shape[0]), int(np.prod(ids.shape[1:], dtype=np.int64)))
    return ids.reshape(-1).astype(np.int64), samples


def _label_weights(labels, batch_index: int, head: int, pos_weight: float, neg_weight: float) -> np.ndarray | None:
    if labels is None:
        return None
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.astype(np.float64)
    if y.ndim == 2:
        y = y[:, head]
    elif y.ndim != 1:
        raise SharkExportError(f"labels of batch {batch_index} must be [B] or [B, heads], got shape {y.shape}")
    return y * pos_weight + (1.0 - y) * neg_weight


def score_rows(
    model: nn.Module,
    batches: Iterable,
    labels: Iterable | None = None,
    *,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    decay: float = 1.0,
    head: int = 0,
) -> RowPriority:
    """Row priorities of every table of `model` over `batches` (one forward per batch, no backward).

    `labels`: one label array per batch ([B], or [B, heads] with `head` choosing the task), or None to
    count every occurrence with weight 1.
    """
    if not 0.0 < decay <= 1.0:
        raise SharkExportError(f"decay must be in (0, 1], got {decay}")
    tables = find_tables(model)
    table_of_module = {path: t.name for t in tables.values() for path in t.module_paths}
    totals = {name: np.zeros(t.num_rows, dtype=np.float64) for name, t in tables.items()}
    state = {"scale": 1.0, "weights": None, "batch": 0}
    label_iter = iter(labels) if labels is not None else None

    def record(path, index, module, args, kwargs, output):
        ids, samples = _sample_ids(module, args, kwargs)
        if ids.size == 0:
            return None
        weights = state["weights"]
        if weights is None:
            w = np.full(ids.shape[0], state["scale"])
        elif samples.max() >= weights.shape[0]:
            raise SharkExportError(
                f"batch {state['batch']}: labels have {weights.shape[0]} rows but field {path!r} has "
                f"{samples.max() + 1} samples"
            )
        else:
            w = weights[samples] * state["scale"]
        unique, inverse = np.unique(ids, return_inverse=True)
        totals[table_of_module[path]][unique] += np.bincount(inverse, weights=w)
        return None

    with torch.no_grad(), _hooks(model, record):
        for t, batch in enumerate(batches):
            state["batch"] = t
            if label_iter is not None:
                try:
                    batch_labels = next(label_iter)
                except StopIteration:
                    raise SharkExportError(f"labels ran out at batch {t}: give one label array per batch") from None
                state["weights"] = _label_weights(batch_labels, t, head, pos_weight, neg_weight)
            if t > 0:
                state["scale"] /= decay
            if state["scale"] > _RESCALE_AT:
                for total in totals.values():
                    total /= state["scale"]
                state["scale"] = 1.0
            _call(model, batch)
    final = 1.0 / state["scale"]
    scores = {name: (total * final).astype(np.float32) for name, total in totals.items()}
    return RowPriority(scores, "count", dict(pos_weight=pos_weight, neg_weight=neg_weight, decay=decay, head=head))
