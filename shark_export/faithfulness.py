"""The checks of a converted file against torch.

- **faithfulness**: the ONNX model against the torch model serving the very tables the file stores (module
  lookups read them through the numpy reference, functional lookups and dense uses read the dequantized
  weights) with the same pruning. Must pass at atol 1e-5: a failure is a converter defect.
- **impact**: the ONNX model against the original float model, with AUC and log loss per task.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from . import reference
from .fields import fields_by_call, has_stock_forward, lookup_arguments, lookup_hooks
from .format import QuantizedTable
from .parity import ParityReport, check_parity


@contextlib.contextmanager
def serving_lookups(model: torch.nn.Module, fields: dict, tables: dict[str, QuantizedTable], means: dict[str, np.ndarray],
                    lookup_dtype=np.float32):
    """While active, the model's lookups return what the converted graph computes: rows read from the stored
    tables by the numpy reference (rounded to `lookup_dtype`, the ops' output type, then read at the model's
    dtype as the graph's Cast does), and pruned fields' means. No copy of the model or its tables is made."""
    by_call = fields_by_call(fields)

    def serve(path, index, module, args, kwargs, output):
        f = by_call.get((path, index))
        if f is None or not has_stock_forward(module):
            return None  # a subclass's forward changes the lookup: its table is served dequantized instead
        if f.name in means:
            return torch.as_tensor(np.asarray(means[f.name]), dtype=output.dtype).expand_as(output).clone()
        if f.pruned or f.table not in tables:
            return None  # pruned in the model (its own hook returned the mean), or a call the graph does not keep
        table = tables[f.table]
        indices, offsets, weights = lookup_arguments(args, kwargs)
        ids = indices.detach().cpu().numpy()
        if isinstance(module, torch.nn.Embedding):
            return torch.from_numpy(reference.gather(table, ids, output_dtype=lookup_dtype)).to(output.dtype)
        pooled = reference.embedding_bag(
            table, ids,
            offsets=None if offsets is None else offsets.detach().cpu().numpy(),
            per_sample_weights=None if weights is None else weights.detach().cpu().numpy(),
            mode=module.mode, include_last_offset=module.include_last_offset,
            padding_idx=-1 if module.padding_idx is None else module.padding_idx,
        )
        return torch.from_numpy(pooled.astype(lookup_dtype)).to(output.dtype)

    with lookup_hooks(model, serve):
        yield


class WithStoredWeights(torch.nn.Module):
    """`model` run with some parameters replaced (no copy of the model): the dequantized tables that a
    functional lookup or a dense use (tied projection) reads in the converted graph."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.weights = weights

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.weights, args, kwargs, tie_weights=True, strict=False)


def labels_array(label_list: list | None, batches: int):
    """Per-batch labels → one array over the samples of the first `batches` batches ([N] or [N, T]), or a
    dict output name → array when the labels are given per output."""
    if label_list is None:
        return None
    chosen = label_list[:batches]
    if chosen and isinstance(chosen[0], dict):
        return {k: np.concatenate([np.asarray(torch.as_tensor(y[k])).reshape(len(y[k]), -1) for y in chosen]) for k in chosen[0]}
    return np.concatenate([np.asarray(torch.as_tensor(y)).reshape(len(y), -1) for y in chosen])


def check_converted(
    model: torch.nn.Module, path: Path, batches: list, *, fields: dict, tables: dict[str, QuantizedTable],
    pruned_means: dict[str, np.ndarray], dequantized: set[str], labels: list | None, impact_atol: float,
    impact_rtol: float, lookup_dtype=np.float32,
) -> tuple[ParityReport, ParityReport]:
    """(faithfulness, impact) of the model file at `path` on `batches`. `dequantized`: the tables read by
    functional lookups or dense uses, which torch then reads dequantized from the stored tables;
    `lookup_dtype`: the lookup ops' output type."""
    overrides = {n: torch.from_numpy(reference.dequantize(tables[n])) for n in sorted(dequantized) if n in tables}
    reference_model = WithStoredWeights(model, overrides) if overrides else model
    with serving_lookups(model, fields, tables, pruned_means, lookup_dtype):
        faithfulness = check_parity(reference_model, path, batches, atol=1e-5, rtol=1e-4)
    impact = check_parity(model, path, batches, labels=labels_array(labels, len(batches)), atol=impact_atol, rtol=impact_rtol)
    return faithfulness, impact
