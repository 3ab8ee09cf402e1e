"""F-Quantization row priorities: a time-decayed, label-weighted count of each row's occurrences.

priority(row) = Σ over occurrences o of the row in batch t of w(y_o) · decay^(T−1−t), where T is the
number of batches seen, w(1) = pos_weight, w(0) = neg_weight (soft labels interpolate), and y_o is the
label of the sample the occurrence belongs to. Later batches count more when decay < 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .errors import SharkExportError
from .field_scoring import per_sample_loss
from .fields import call_model, lookup_hooks, find_tables, lookup_arguments
from .row_ranking import SparseRows

# Decay is applied lazily: a batch's weights are scaled by decay^-t and the total by decay^(T-1) at the
# end, so a batch costs O(its ids), not O(rows). The scale is folded back in before it can overflow.
_RESCALE_AT = 1e30


@dataclass
class RowPriority:
    """Per-table row priorities keyed by table (parameter) name, held sparsely (`sparse`: the rows calibration
    saw; every other row's priority is 0). `priority[table]` and `scores` give float32 [rows] arrays."""

    sparse: dict[str, SparseRows]
    method: str = "count"
    params: dict = field(default_factory=dict)

    def __getitem__(self, table: str) -> np.ndarray:
        return self.sparse[table].dense()

    @property
    def scores(self) -> dict[str, np.ndarray]:
        """Every table's priorities as a dense float32 array (4 bytes per row: for small tables)."""
        return {name: rows.dense() for name, rows in self.sparse.items()}


class _SparseSum:
    """A table's running sums per row id, for the ids seen: batches are buffered and merged by one np.unique
    (each id's sum adds in batch order, as a dense `total[ids] += sums` would: the same float64 values)."""

    def __init__(self, num_rows: int):
        self.num_rows = num_rows
        self.ids = np.zeros(0, dtype=np.int64)
        self.values = np.zeros(0, dtype=np.float64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, ids: np.ndarray, sums: np.ndarray) -> None:
        self._pending.append((ids, sums))
        self._pending_size += ids.shape[0]
        if self._pending_size >= max(self.ids.shape[0], 1 << 16):  # amortized: merges cost O(ids seen) each
            self.merge()

    def merge(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate([self.ids] + [i for i, _ in self._pending])
        sums = np.concatenate([self.values] + [v for _, v in self._pending])
        self.ids, inverse = np.unique(ids, return_inverse=True)
        self.values = np.bincount(inverse, weights=sums, minlength=self.ids.shape[0])
        self._pending, self._pending_size = [], 0

    def scale(self, factor: float) -> None:
        self.merge()
        self.values /= factor


def _occurrences(module: nn.Module, args: tuple, kwargs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(row ids, sample index of each id, coefficient of each id in its bag or None) of one embedding call.

    Padding entries are removed. The coefficient is how the row enters the pooled output: its
    per_sample_weight (sum), 1 / bag size (mean) or 1; None for nn.Embedding (the output is the row).
    """
    indices, offsets, weights = lookup_arguments(args, kwargs)
    ids = indices.detach().cpu().numpy()
    if not isinstance(module, nn.EmbeddingBag):
        if ids.ndim == 0:
            return ids.reshape(1).astype(np.int64), np.zeros(1, dtype=np.int64), None
        samples = np.repeat(np.arange(ids.shape[0]), int(np.prod(ids.shape[1:], dtype=np.int64)))
        return ids.reshape(-1).astype(np.int64), samples, None
    if ids.ndim == 2:
        samples = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
        ids = ids.reshape(-1)
    else:
        starts = offsets.detach().cpu().numpy()
        if module.include_last_offset:
            starts = starts[:-1]
        samples = np.searchsorted(starts, np.arange(ids.shape[0]), side="right") - 1
    coef = np.ones(ids.shape[0]) if weights is None else weights.detach().cpu().numpy().reshape(-1).astype(np.float64)
    if module.padding_idx is not None:
        keep = ids != module.padding_idx
        ids, samples, coef = ids[keep], samples[keep], coef[keep]
    if module.mode == "mean" and samples.size:
        coef = coef / np.bincount(samples)[samples]
    return ids.astype(np.int64), samples, coef


def _taylor_factors(module: nn.Module, leaf: torch.Tensor, grad: torch.Tensor | None, ids, samples, coef) -> np.ndarray:
    """|g_row · v_row| of every occurrence: the gradient reaching the row times the row itself."""
    if grad is None:
        return np.zeros(ids.shape[0])
    if coef is None:  # nn.Embedding: each output vector is one occurrence of a row
        g = grad.detach().reshape(-1, grad.shape[-1]).double()
        v = leaf.detach().reshape(-1, leaf.shape[-1]).double()
        return (g * v).sum(1).abs().numpy()
    g_bag = grad.detach().double().numpy()[samples]  # [n, D]
    rows = module.weight.detach().double().numpy()[ids]
    return np.abs(coef * (g_bag * rows).sum(1))


def _leading_rows(output) -> int | None:
    """Samples in a batch: the first dimension of the model's first output tensor."""
    leaves = [x for x in torch.utils._pytree.tree_leaves(output) if isinstance(x, torch.Tensor)]
    return int(leaves[0].shape[0]) if leaves and leaves[0].dim() else None


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
    method: str = "count",
    loss="bce",
) -> RowPriority:
    """Row priorities of every table of `model` over `batches`.

    `labels`: one label array per batch ([B], or [B, heads] with `head` choosing the task), or None to
    count every occurrence with weight 1. `method="count"` (SHARK's F-Quantization priority: one forward
    per batch) or `"taylor"`: each occurrence adds |g_row · v_row| (the gradient of the loss reaching the
    row, dotted with the row) instead of 1, still scaled by the label weight and the decay (needs labels;
    one forward+backward per batch). A lookup that is not one row per sample of the batch (torchrec's
    jagged values: the model's output has B rows, the lookup another count) has no per-sample labels: its
    occurrences count with the batch's mean label weight.
    """
    if not 0.0 < decay <= 1.0:
        raise SharkExportError(f"decay must be in (0, 1], got {decay}")
    if method not in ("count", "taylor"):
        raise SharkExportError(f"unknown method {method!r}; choose 'count' or 'taylor'")
    if method == "taylor" and labels is None:
        raise SharkExportError("method='taylor' needs labels (it differentiates the loss)")
    counter = _RowCounter(model, method, loss, head, pos_weight, neg_weight)
    label_iter = iter(labels) if labels is not None else None
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # only the lookups' gradients are needed
        p.requires_grad_(False)
    try:
        with torch.set_grad_enabled(method == "taylor"), lookup_hooks(model, counter.record):
            for t, batch in enumerate(batches):
                batch_labels = None
                if label_iter is not None:
                    try:
                        batch_labels = next(label_iter)
                    except StopIteration:
                        raise SharkExportError(f"labels ran out at batch {t}: give one label array per batch") from None
                if t > 0:
                    counter.age(decay)
                counter.count_batch(t, batch, batch_labels)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return RowPriority(counter.priorities(), method, dict(pos_weight=pos_weight, neg_weight=neg_weight, decay=decay,
                                                          head=head))


class _RowCounter:
    """score_rows' running sums: each table's decayed, label-weighted occurrence counts (or Taylor terms).
    Older batches are divided down by multiplying the running `scale` instead, rescaled now and then."""

    def __init__(self, model: nn.Module, method: str, loss, head: int, pos_weight: float, neg_weight: float):
        self.model, self.method, self.loss, self.head = model, method, loss, head
        self.pos_weight, self.neg_weight = pos_weight, neg_weight
        tables = find_tables(model)
        self.table_of_module = {path: t.name for t in tables.values() for path in t.module_paths}
        self.totals = {name: _SparseSum(t.num_rows) for name, t in tables.items()}
        self.scale = 1.0
        self.pending: list = []  # the lookups of the batch being run: (path, module, ids, samples, coef, leaf, rows)

    def record(self, path, index, module, args, kwargs, output):
        ids, samples, coef = _occurrences(module, args, kwargs)
        leaf = output.detach().requires_grad_(True) if self.method == "taylor" else None
        self.pending.append((path, module, ids, samples, coef, leaf, int(output.shape[0]) if output.dim() >= 2 else 1))
        return leaf

    def age(self, decay: float) -> None:
        self.scale /= decay
        if self.scale > _RESCALE_AT:
            for total in self.totals.values():
                total.scale(self.scale)
            self.scale = 1.0

    def count_batch(self, t: int, batch, batch_labels) -> None:
        weights = None if batch_labels is None else _label_weights(batch_labels, t, self.head, self.pos_weight,
                                                                   self.neg_weight)
        self.pending.clear()
        output = call_model(self.model, batch)
        grads = [None] * len(self.pending)
        if self.method == "taylor":
            y = batch_labels if isinstance(batch_labels, torch.Tensor) else torch.as_tensor(np.asarray(batch_labels))
            y = y[:, self.head] if y.dim() == 2 else y
            losses = per_sample_loss(self.loss, output, y)
            grads = torch.autograd.grad(losses.sum(), [entry[5] for entry in self.pending], allow_unused=True)
        batch_rows = _leading_rows(output)
        for (path, module, ids, samples, coef, leaf, n_samples), grad in zip(self.pending, grads):
            if ids.size == 0:
                continue
            w = self._occurrence_weights(t, path, ids, samples, weights, batch_rows, n_samples)
            if self.method == "taylor":
                w = w * _taylor_factors(module, leaf, grad, ids, samples, coef)
            unique, inverse = np.unique(ids, return_inverse=True)
            self.totals[self.table_of_module[path]].add(unique, np.bincount(inverse, weights=w))

    def _occurrence_weights(self, t, path, ids, samples, weights, batch_rows, n_samples) -> np.ndarray:
        if weights is not None and weights.shape[0] == batch_rows and n_samples != batch_rows:
            # Not one lookup row per sample (torchrec's jagged values, say): which sample an id belongs to is
            # unknown here, so each occurrence counts with the batch's mean weight.
            return np.full(ids.shape[0], weights.mean() * self.scale)
        if weights is not None and samples.max() >= weights.shape[0]:
            raise SharkExportError(
                f"batch {t}: labels have {weights.shape[0]} rows but field {path!r} has {samples.max() + 1} samples")
        return np.full(ids.shape[0], self.scale) if weights is None else weights[samples] * self.scale

    def priorities(self) -> dict[str, SparseRows]:
        scores = {}
        for name, total in self.totals.items():
            total.merge()
            scores[name] = SparseRows(total.num_rows, total.ids, (total.values / self.scale).astype(np.float32))
        return scores
