"""A model whose tables stay in their checkpoint while it is converted.

`convert(model, …, weights=PATH)` takes a model built on the meta device (or anywhere) and a checkpoint (a
`torch.save` file or a `torch.distributed.checkpoint` directory, shark_export.checkpoint_reader). While the
conversion runs:
- every table (an embedding module's weight) is a zero-stride stand-in of its shape: one float, however many
  rows; the exporter and the graph passes see its shape only;
- every lookup of a module reads the rows it needs from the checkpoint (`TensorSource.take`) and computes with
  torch's own op on them, so field discovery, row priorities, pruning means and the checks see the real values;
- every other parameter and buffer is loaded whole from the checkpoint (dense layers are small).
Afterwards the model gets its own parameters back. A table read by a lookup that is not a module call
(`F.embedding(ids, emb.weight)`) or used as a dense weight cannot be served row by row: that is an error naming
it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from torch._subclasses.fake_tensor import is_fake

from .checkpoint_reader import CheckpointError, open_weights
from .fields import has_stock_forward, lookup_arguments, lookup_hooks


def is_stand_in(tensor: torch.Tensor) -> bool:
    """A table stand-in: a 2-D tensor whose every element is the same one float (all strides zero)."""
    return tensor.dim() == 2 and tensor.numel() > 1 and tuple(tensor.stride()) == (0, 0)


def _stand_in(shape) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(1, 1).expand(*shape), requires_grad=False)


def sources_of(weights: Any) -> Mapping[str, Any]:
    """name → TensorSource (or array): a path is opened with open_weights; a mapping is taken as it is."""
    if isinstance(weights, Mapping):
        return weights
    return open_weights(weights)


def _dense_value(name: str, source, like: torch.Tensor) -> torch.Tensor:
    if hasattr(source, "value"):  # a checkpoint's TensorSource or WholeTensor
        tensor = torch.from_numpy(np.ascontiguousarray(source.value())).reshape(source.shape)
    else:
        tensor = torch.as_tensor(np.asarray(source))
    if tuple(tensor.shape) != tuple(like.shape):
        raise CheckpointError(f"{name}: the checkpoint holds shape {tuple(tensor.shape)}, the model's is {tuple(like.shape)}")
    return tensor.to(like.dtype)


@contextlib.contextmanager
def tables_from_checkpoint(model: torch.nn.Module, weights: Any, tables: Mapping):
    """While active, `model` reads its tables (name → fields.Table) from `weights` row by row and its other
    tensors from it whole; yields name → row source of every table. The model's own tensors come back after."""
    sources = sources_of(weights)
    table_names = {alias: t.name for t in tables.values() for alias in (t.name, *t.aliases)}
    saved: list[tuple[torch.nn.Module, str, str, Any]] = []
    streamed: dict[str, Any] = {}
    stand_ins: dict[int, Any] = {}  # id(stand-in) → row source
    try:
        for module_name, module in model.named_modules():
            for kind, store in (("param", module._parameters), ("buffer", module._buffers)):
                for local, tensor in list(store.items()):
                    if tensor is None:
                        continue
                    name = f"{module_name}.{local}" if module_name else local
                    key = table_names.get(name, name)
                    source = sources.get(key, sources.get(name))
                    if source is None:
                        if tensor.is_meta:
                            raise CheckpointError(f"the checkpoint has no {name!r} (the model's {kind} of shape "
                                                  f"{tuple(tensor.shape)}), and the model has no value for it")
                        continue
                    saved.append((module, kind, local, tensor))
                    if key in table_names.values():
                        if not has_stock_forward(module):
                            raise CheckpointError(f"table {key!r} is read by {type(module).__name__}, whose own forward "
                                                  "cannot be served row by row from a checkpoint")
                        if tuple(source.shape) != tuple(tensor.shape):
                            raise CheckpointError(f"table {key!r}: the checkpoint holds shape {tuple(source.shape)}, "
                                                  f"the model's is {tuple(tensor.shape)}")
                        if key not in streamed:
                            streamed[key] = source
                            stand_ins[key] = _stand_in(tensor.shape)
                        store[local] = stand_ins[key]
                    else:
                        value = _dense_value(name, source, tensor)
                        store[local] = torch.nn.Parameter(value, requires_grad=False) if kind == "param" else value
        by_tensor = {id(stand_ins[k]): streamed[k] for k in stand_ins}
        with lookup_hooks(model, lambda path, index, module, args, kwargs, output: _serve(module, args, kwargs, by_tensor)):
            yield streamed
    finally:
        for module, kind, local, tensor in reversed(saved):
            (module._parameters if kind == "param" else module._buffers)[local] = tensor


def _serve(module: torch.nn.Module, args, kwargs, by_tensor: dict):
    """The module's output computed by torch's own op on the rows the lookup reads, from the checkpoint."""
    source = by_tensor.get(id(module.weight))
    if source is None or torch.compiler.is_compiling() or is_fake(args[0] if args else kwargs.get("input")):
        return None  # not a checkpoint table, or torch.export tracing the module (shapes only)
    if getattr(module, "max_norm", None) is not None:
        raise CheckpointError(f"an embedding with max_norm renormalizes its table in place: a table read from a "
                              f"checkpoint cannot be ({tuple(module.weight.shape)})")
    indices, offsets, per_sample_weights = lookup_arguments(args, kwargs)
    ids = indices.detach().cpu().numpy().astype(np.int64)
    unique, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    rows = torch.from_numpy(source.take(unique)) if unique.size else torch.zeros(0, module.weight.shape[1])
    remapped = torch.from_numpy(inverse.reshape(ids.shape)).to(indices.dtype)
    if isinstance(module, torch.nn.Embedding):
        return F.embedding(remapped, rows)
    pad = None
    if module.padding_idx is not None and unique.size:
        where = np.flatnonzero(unique == module.padding_idx)
        pad = int(where[0]) if where.size else None
    return F.embedding_bag(remapped, rows, offsets, mode=module.mode, per_sample_weights=per_sample_weights,
                           include_last_offset=module.include_last_offset, padding_idx=pad)
