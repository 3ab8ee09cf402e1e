"""Embedding tables and fields of a torch model.

A *table* is the weight of an `nn.Embedding` / `nn.EmbeddingBag` (two modules tied to one Parameter are one
table). A *field* is one lookup of a table per forward call: a module called once is the field named by
its module path (`"emb.user"`); a module called k > 1 times gives fields `"emb.user#0"`, `"emb.user#1"`, …
in call order. The same names are used by the converter, the pruning and the scoring.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import UnsupportedModelError

EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
# Set by pruning.prune_fields on an embedding module: the call indices whose output is the field's mean.
PRUNED_CALLS_ATTRIBUTE = "_shark_pruned_calls"


@dataclass(frozen=True)
class Table:
    """One embedding table: its parameter name (= ONNX initializer name) and the modules using it."""

    name: str
    module_paths: tuple[str, ...]
    num_rows: int
    dim: int
    aliases: tuple[str, ...] = ()  # every parameter name of the weight (tied modules have several)

    @property
    def module_path(self) -> str:
        return self.module_paths[0]


def find_tables(model: nn.Module) -> dict[str, Table]:
    """Tables by parameter name, found by module type. Raises when the model has none or one we cannot serve."""
    parameter_names = {id(p): name for name, p in model.named_parameters()}
    aliases: dict[int, list[str]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases[id(p)].append(name)
    modules_by_weight: dict[int, list[str]] = defaultdict(list)
    for path, module in model.named_modules():
        if not isinstance(module, EMBEDDING_TYPES):
            continue
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            raise UnsupportedModelError(
                f"nn.Embedding {path!r} has max_norm={module.max_norm}: it renormalizes the table during forward, "
                "which a stored table cannot do; bake the norm into the weights and set max_norm=None"
            )
        if isinstance(module, nn.EmbeddingBag) and module.mode == "max":
            raise UnsupportedModelError(f"nn.EmbeddingBag {path!r} uses mode='max'; only 'sum' and 'mean' are supported")
        if module.weight.dtype != torch.float32:
            raise UnsupportedModelError(
                f"embedding {path!r} has weight dtype {module.weight.dtype}; convert the model to float32 first"
            )
        modules_by_weight[id(module.weight)].append(path)
    if not modules_by_weight:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no nn.Embedding or nn.EmbeddingBag module: nothing to convert"
        )
    tables = {}
    modules = dict(model.named_modules())
    for weight_id, paths in modules_by_weight.items():
        name = parameter_names.get(weight_id)
        if name is None:
            raise UnsupportedModelError(f"the weight of embedding {paths[0]!r} is not a registered parameter of the model")
        rows, dim = modules[paths[0]].weight.shape
        tables[name] = Table(name, tuple(paths), int(rows), int(dim), tuple(aliases[weight_id]))
    return tables


@dataclass(frozen=True)
class Field:
    """One lookup: which module, which call of it, which table."""

    name: str
    module_path: str
    call_index: int
    table: str
    pruned: bool = False  # pruned in the model itself (pruning.prune_fields): its lookup output is a constant


@contextlib.contextmanager
def _hooks(model: nn.Module, on_lookup: Callable[[str, int, nn.Module, tuple, dict, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call on_lookup(module_path, call_index, module, args, kwargs, output) for every embedding call.

    Call indices restart at every forward of the root module. A non-None return replaces the output.
    """
    counters: dict[str, int] = defaultdict(int)
    handles = [model.register_forward_pre_hook(lambda module, args: counters.clear())]
    for path, module in model.named_modules():
        if isinstance(module, EMBEDDING_TYPES):

            def hook(module, args, kwargs, output, path=path):
                index = counters[path]
                counters[path] += 1
                return on_lookup(path, index, module, args, kwargs, output)

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _call(model: nn.Module, batch) -> object:
    from .export import ExampleInputs

    example = ExampleInputs.of(batch)
    return model(*example.args, **example.kwargs)


def find_fields(model: nn.Module, example_inputs) -> dict[str, Field]:
    """Fields in call order, found by running forward once on example_inputs under no_grad."""
    tables = find_tables(model)
    table_of_module = {path: table.name for table in tables.values() for path in table.module_paths}
    calls: list[tuple[str, int]] = []
    with torch.no_grad(), _hooks(model, lambda path, index, *_: calls.append((path, index))):
        _call(model, example_inputs)
    if not calls:
        raise UnsupportedModelError(
            f"{type(model).__name__} has embedding modules but forward never called them on the example inputs"
        )
    counts = defaultdict(int)
    for path, _ in calls:
        counts[path] += 1
    fields = {}
    modules = dict(model.named_modules())
    for path, index in calls:
        name = path if counts[path] == 1 else f"{path}#{index}"
        pruned = index in getattr(modules[path], PRUNED_CALLS_ATTRIBUTE, ())
        fields[name] = Field(name=name, module_path=path, call_index=index, table=table_of_module[path], pruned=pruned)
    return fields


def lookup_arguments(args: tuple, kwargs: dict) -> tuple:
    """(indices, offsets, per_sample_weights) of one nn.Embedding / nn.EmbeddingBag call, as forward got them."""
    indices = args[0] if args else kwargs["input"]
    offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
    weights = args[2] if len(args) > 2 else kwargs.get("per_sample_weights")
    return indices, offsets, weights
