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

from .errors import IndexOutOfRangeError, UnsupportedModelError

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


def has_stock_forward(module: nn.Module) -> bool:
    """Whether the module's forward is nn.Embedding's / nn.EmbeddingBag's own: its output is the lookup itself
    (a subclass may scale or mix it, as a `ScaledEmbedding` does)."""
    return type(module).forward in (nn.Embedding.forward, nn.EmbeddingBag.forward)


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
    """One lookup: which module, which call(s) of it, which table.

    Calls of one table whose inputs are equal (same ids, offsets and weights on every batch seen) are one
    field: the exporter merges such lookups into one, so they are scored, pruned and served together.
    `name` is the first call's name, `names` every call's name (either one selects the field), `calls`
    the (module path, call index) of each. A *functional* field is a lookup that no embedding module
    made (`F.embedding(ids, some_module.weight)`): it exists only in the exported graph, `calls` is empty.
    """

    name: str
    module_path: str
    call_index: int
    table: str
    pruned: bool = False  # pruned in the model itself (pruning.prune_fields): its lookup output is a constant
    calls: tuple[tuple[str, int], ...] = ()
    names: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.names:
            object.__setattr__(self, "names", (self.name,))
        if not self.calls and self.module_path:
            object.__setattr__(self, "calls", ((self.module_path, self.call_index),))

    @property
    def functional(self) -> bool:
        return not self.calls


@contextlib.contextmanager
def lookup_hooks(model: nn.Module, on_lookup: Callable[[str, int, nn.Module, tuple, dict, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
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


def call_model(model: nn.Module, batch) -> object:
    from .export import ExampleInputs

    example = ExampleInputs.of(batch)
    return model(*example.args, **example.kwargs)


def _same_lookup(a: tuple, b: tuple) -> bool:
    """Whether two recorded calls read the same table with equal ids, offsets, weights and bag settings."""
    if a[0] != b[0] or a[1] != b[1]:
        return False
    for x, y in zip(a[2], b[2]):
        if (x is None) != (y is None):
            return False
        if x is not None and (x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y)):
            return False
    return True


@contextlib.contextmanager
def checked_ids(model: nn.Module, what: str) -> Iterator[None]:
    """Every embedding call's ids checked before the module runs: integer, and in 0..R-1 of its table. A bad id
    is an error naming the module, the value, its position and R (torch's own would be `IndexError: index out
    of range in self`, naming nothing). `what` says which inputs these are ("the example inputs", ...)."""
    def check(path, module, args, kwargs):
        ids = lookup_arguments(args, kwargs)[0]
        if not isinstance(ids, torch.Tensor):
            return
        rows = module.num_embeddings
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise UnsupportedModelError(f"{what}: module {path!r} ({type(module).__name__}({rows}, {module.embedding_dim})) "
                                        f"got {str(ids.dtype).removeprefix('torch.')} ids; ids must be int64 or int32 "
                                        "(convert them with .long())")
        if ids.numel() == 0:
            return
        bad = ((ids < 0) | (ids >= rows)).nonzero()
        if bad.shape[0]:
            where = tuple(int(i) for i in bad[0])
            raise IndexOutOfRangeError(f"{what}: module {path!r} got id {int(ids[where])} at position {list(where)}, "
                                       f"outside its {rows} rows (0..{rows - 1})")

    handles = [module.register_forward_pre_hook(lambda module, args, kwargs, path=path: check(path, module, args, kwargs),
                                                with_kwargs=True)
               for path, module in model.named_modules() if isinstance(module, EMBEDDING_TYPES)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _record_calls(model: nn.Module, batch, table_of_module: dict[str, str], what: str = "the example inputs") -> list[tuple[str, int, tuple]]:
    """(module path, call index, signature) of every embedding call of one no-grad forward."""
    calls: list[tuple[str, int, tuple]] = []

    def record(path, index, module, args, kwargs, output):
        settings = (type(module).__name__,)
        if isinstance(module, nn.EmbeddingBag):
            settings += (module.mode, module.include_last_offset, module.padding_idx)
        tensors = tuple(None if t is None else t.detach() for t in lookup_arguments(args, kwargs))
        calls.append((path, index, (table_of_module[path], settings, tensors)))

    with torch.no_grad(), checked_ids(model, what), lookup_hooks(model, record):
        call_model(model, batch)
    return calls


def find_fields(model: nn.Module, example_inputs, more_batches=(), require_calls: bool = True) -> dict[str, Field]:
    """Fields in call order, found by running forward under no_grad on example_inputs (and `more_batches`).

    Calls of one table with equal inputs on the example and on every further batch form one field. With
    `require_calls=False` a model whose forward calls no embedding module gives no fields instead of an
    error (the converter still finds lookups made with F.embedding in the exported graph).
    """
    tables = find_tables(model)
    table_of_module = {path: table.name for table in tables.values() for path in table.module_paths}
    calls = _record_calls(model, example_inputs, table_of_module)
    if not calls and not require_calls:
        return {}
    if not calls:
        raise UnsupportedModelError(
            f"{type(model).__name__} has embedding modules but forward never called them on the example inputs"
        )
    # group[k] = index of the first call k is merged with; refined by every batch (equal on all of them)
    group = list(range(len(calls)))
    for k in range(len(calls)):
        for j in range(k):
            if group[j] == j and _same_lookup(calls[j][2], calls[k][2]):
                group[k] = j
                break
    for number, batch in enumerate(more_batches):
        again = _record_calls(model, batch, table_of_module, f"calibration batch {number}")
        if [c[:2] for c in again] != [c[:2] for c in calls]:
            continue  # data-dependent control flow: this batch's calls do not line up with the example's
        refined = list(range(len(calls)))
        for k in range(len(calls)):
            for j in range(k):
                if group[j] == group[k] and refined[j] == j and _same_lookup(again[j][2], again[k][2]):
                    refined[k] = j
                    break
        group = refined
    counts = defaultdict(int)
    for path, _, _ in calls:
        counts[path] += 1
    modules = dict(model.named_modules())

    def call_name(path: str, index: int) -> str:
        return path if counts[path] == 1 else f"{path}#{index}"

    fields = {}
    for k, (path, index, _) in enumerate(calls):
        if group[k] != k:
            continue
        members = [(p, i) for j, (p, i, _) in enumerate(calls) if group[j] == k]
        name = call_name(path, index)
        pruned = [i in getattr(modules[p], PRUNED_CALLS_ATTRIBUTE, ()) for p, i in members]
        if any(pruned) and not all(pruned):
            raise UnsupportedModelError(
                f"field {name!r} is read by {len(members)} calls with equal inputs, but only some of them are pruned "
                f"in the model; prune all of {[call_name(p, i) for p, i in members]} or none"
            )
        fields[name] = Field(
            name=name, module_path=path, call_index=index, table=table_of_module[path], pruned=all(pruned),
            calls=tuple(members), names=tuple(call_name(p, i) for p, i in members),
        )
    return fields


def resolve_field(fields: dict[str, Field], name: str) -> Field | None:
    """The field called `name`, by its own name or the name of any of its calls."""
    if name in fields:
        return fields[name]
    return next((f for f in fields.values() if name in f.names), None)


def fields_by_call(fields: dict[str, Field]) -> dict[tuple[str, int], Field]:
    """(module path, call index) → field, for hooks."""
    return {call: f for f in fields.values() for call in f.calls}


def lookup_arguments(args: tuple, kwargs: dict) -> tuple:
    """(indices, offsets, per_sample_weights) of one nn.Embedding / nn.EmbeddingBag call, as forward got them."""
    indices = args[0] if args else kwargs["input"]
    offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
    weights = args[2] if len(args) > 2 else kwargs.get("per_sample_weights")
    return indices, offsets, weights
