"""Export support for torchrec models: `EmbeddingBagCollection` / `EmbeddingCollection` over `KeyedJaggedTensor`s.

What torch.export (non-strict, torch 2.13) needs for a torchrec model, and what this module provides:

1. **A dynamic_shapes spec that fits a KJT.** torchrec registers `KeyedJaggedTensor` with pytree: it flattens
   to the six leaves `_values, _weights, _lengths, _offsets, _stride_per_key_per_rank, _inverse_indices`
   (unset ones are `None`; the keys are the context). torch.export maps a *registered user class* to the
   list of its flattened children, so the spec of a KJT is e.g. `[{0: D}, None, {0: D}, None, None, None]`.
   Building the spec with `pytree.tree_map` instead rebuilds a `KeyedJaggedTensor` whose "tensors" are
   dicts, and its constructor fails with `'dict' object has no attribute 'numel'`. `dynamic_shapes()` builds
   the spec with `torch.export.ShapesCollection`, which handles any pytree (KJT, KeyedTensor, JaggedTensor,
   dicts, tuples); values, weights and lengths each get their own dynamic dimension (lengths has F*B
   entries; torch.export relates it to the dense batch itself where the model combines them).

2. **Deterministic, export-friendly lookups.** `export_friendly(model)` makes every EBC / EC of the model
   compute its per-feature lookups with plain aten ops while it is active: one `view`/`sum` for the
   per-key lengths, one `split` of `values` (and `weights`) with the per-key totals (unbacked SymInts from
   `.tolist()`, bounded with `torch._check`), one `cumsum` for the bag offsets, then **one call of the very
   nn.EmbeddingBag / nn.Embedding submodule per feature** (`module(input=ids, offsets=offsets,
   per_sample_weights=...)`), in the order torchrec uses (tables in config order, each table's
   `feature_names` in order). The exported program therefore has one `aten.embedding_bag.padding_idx`
   (1-D ids, B+1 offsets with include_last_offset=True, mode sum/mean, optional per_sample_weights) or
   `aten.embedding` per feature, reading the module's own Parameter, and the converter's forward hooks see
   exactly one call per feature in eager mode and in the export. Eager results are identical to torchrec's
   forward (the same ops in the same order). No translation beyond shark_export's own is needed: the ONNX
   exporter handles `item`, `split_with_sizes` with data-dependent sizes, `cumsum` etc.
   (torchrec 1.8's own forward also exports in non-strict mode through the same ops, but it goes through
   `KeyedJaggedTensor.to_dict`, logs "Trying to non-strict torch.export KJT to_dict, which is extremely slow
   and not recommended!", caches the split on the input KJT and, for inputs with inverse indices, calls
   fbgemm ops; the patched forward avoids all that and rejects what a converted model cannot serve.)

3. **Stable graph inputs.** The graph inputs are the KJT's *tensor* leaves in pytree order: `_values`,
   `_weights` (weighted KJTs only), `_lengths`, `_offsets` (only if set on the example). A KJT whose
   `offsets()` was called caches `_offsets` and so flattens to one more tensor than before;
   `canonical_inputs()` rebuilds every KJT of a batch as `(keys, values, weights?, lengths)` so the example,
   the calibration batches and serving batches all flatten alike (do it for every batch the converter
   feeds, or require users to pass lengths-only KJTs).

4. **Examples with a batch of 1 or 0 / 1 ids** make torch.export 0/1-specialize that dimension;
   `export_program()` then retries under `torch.fx.experimental._config.backed_size_oblivious`. Never fall
   back to `Dim.AUTO` for a KJT: it silently makes the number of ids static.

5. **An ExportedProgram with unbacked SymInts can go through `torch.onnx.export` once.** A second export of
   the same program (even of a deepcopy) fails in run_decompositions with `PendingUnbackedSymbolNotFound:
   Pending unbacked symbols {...} not in returned outputs`; export the model again instead.

Typical use by the converter::

    if torchrec_compat.has_kjt(example.tree()) or torchrec_compat.collections_of(model):
        example = ExampleInputs.of(torchrec_compat.canonical_inputs(example.args), ...)  # and every batch
        with torchrec_compat.export_friendly(model):
            fields = find_fields(model, example)                 # eager: hooks fire once per feature
            program = torchrec_compat.export_program(model, example.args, example.kwargs)
        onnx_program = torch.onnx.export(program, dynamo=True,
                                         custom_translation_table={**_TRANSLATIONS, **torchrec_compat.TRANSLATIONS})

Importing this module needs torchrec (ImportError otherwise): import it lazily, only for such models.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from .errors import UnsupportedModelError

__all__ = [
    "TRANSLATIONS",
    "canonical_inputs",
    "canonical_kjt",
    "collections_of",
    "dynamic_shapes",
    "export_friendly",
    "export_program",
    "has_kjt",
    "jagged_segments",
]

# Extra entries for torch.onnx.export's custom_translation_table. The patched forwards use aten ops only,
# which torch's exporter translates itself; kept so callers can merge it unconditionally.
TRANSLATIONS: dict = {}

_PATCHED_FLAG = "_shark_export_friendly"


# ---- inputs ------------------------------------------------------------------------------------------


def has_kjt(tree: Any) -> bool:
    """Whether a pytree of inputs contains a KeyedJaggedTensor."""
    found = []
    pytree.tree_map(
        lambda x: found.append(x) if isinstance(x, KeyedJaggedTensor) else None,
        tree,
        is_leaf=lambda x: isinstance(x, KeyedJaggedTensor),
    )
    return bool(found)


def _lengths_of(kjt: KeyedJaggedTensor) -> torch.Tensor:
    """The KJT's lengths without caching anything on it (`kjt.lengths()` would store them)."""
    if kjt._lengths is not None:
        return kjt._lengths
    if kjt._offsets is None:
        raise UnsupportedModelError("a KeyedJaggedTensor has neither lengths nor offsets")
    return torch.diff(kjt._offsets)


def _check_plain(kjt: KeyedJaggedTensor) -> None:
    if kjt._stride_per_key_per_rank is not None or kjt.variable_stride_per_key():
        raise UnsupportedModelError(
            "KeyedJaggedTensor with a variable stride per key (variable batch size per feature) is not supported: "
            "every feature must have one bag per sample"
        )
    if kjt._inverse_indices is not None:
        raise UnsupportedModelError(
            "KeyedJaggedTensor with inverse_indices (deduplicated batch) is not supported: pass the full batch"
        )


def canonical_kjt(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """The same KJT with only keys, values, weights (if any) and lengths set: a new object; tensors are shared.

    Its pytree leaves are `_values`, `_weights` (None when unweighted), `_lengths`, and `None` for the rest,
    whatever was cached on the original (offsets, jt_dict, length_per_key...).
    """
    _check_plain(kjt)
    return KeyedJaggedTensor(keys=list(kjt.keys()), values=kjt._values, weights=kjt._weights, lengths=_lengths_of(kjt))


def canonical_inputs(tree: Any) -> Any:
    """`tree` with every KeyedJaggedTensor replaced by `canonical_kjt(kjt)` (other leaves untouched)."""
    return pytree.tree_map(
        lambda x: canonical_kjt(x) if isinstance(x, KeyedJaggedTensor) else x,
        tree,
        is_leaf=lambda x: isinstance(x, KeyedJaggedTensor),
    )


def dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict | None = None, hint: Any = None) -> Any:
    """A dynamic_shapes spec for torch.export: dim 0 of every tensor leaf (of >= 1 dim) dynamic.

    Works for any input pytree, KJTs included (a KJT's spec is the list of its six flattened children).
    `hint` defaults to `torch.export.Dim.DYNAMIC` (AUTO works too). A tensor object that appears several
    times in the inputs gets one spec (ShapesCollection keys by tensor identity).
    """
    hint = torch.export.Dim.DYNAMIC if hint is None else hint
    collection = torch.export.ShapesCollection()
    for leaf in pytree.tree_leaves((args, kwargs or {})):
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            collection[leaf] = {0: hint}
    return collection.dynamic_shapes(model, tuple(args), kwargs or None)


# ---- the per-feature segments of a KJT ---------------------------------------------------------------


def jagged_segments(kjt: KeyedJaggedTensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor], list[torch.Tensor]]:
    """Per key, in `kjt.keys()` order: (ids, weights or None, lengths [B], bag offsets [B+1] starting at 0).

    Plain aten ops only; the per-key totals are data-dependent and become unbacked SymInts under
    torch.export, bounded with torch._check so that `split` needs no guard. Nothing is cached on `kjt`.
    """
    _check_plain(kjt)
    keys = kjt.keys()
    F = len(keys)
    values = kjt._values
    weights = kjt._weights
    lengths = _lengths_of(kjt)
    if F == 0:
        return [], [], [], []
    B = lengths.numel() // F
    per_key_lengths = lengths.view(F, B)
    totals = per_key_lengths.sum(dim=1).tolist()  # F ints (unbacked SymInts in the export)
    running = 0
    n = values.size(0)
    for total in totals:
        torch._check(total >= 0)
        running = running + total
        torch._check(running <= n)
    torch._check(running == n)
    ids = list(torch.split(values, totals))
    per_key_weights: list[torch.Tensor | None] = list(torch.split(weights, totals)) if weights is not None else [None] * F
    # Bag offsets exactly as torchrec's _batched_lengths_to_offsets computes them (lengths' dtype).
    offsets = torch.cat([per_key_lengths.new_zeros((F, 1)), torch.cumsum(per_key_lengths, dim=-1).to(per_key_lengths.dtype)], dim=-1)
    return ids, per_key_weights, list(torch.unbind(per_key_lengths, dim=0)), list(torch.unbind(offsets, dim=0))


def _feature_index(kjt: KeyedJaggedTensor, name: str, owner: str) -> int:
    try:
        return kjt.keys().index(name)
    except ValueError:
        raise UnsupportedModelError(f"{owner} looks up feature {name!r}, which the KeyedJaggedTensor does not have (keys: {kjt.keys()})") from None


def _to_kjt(features: Any) -> KeyedJaggedTensor:
    if isinstance(features, KeyedJaggedTensor):
        return features
    from torchrec.sparse.tensor_dict import maybe_td_to_kjt

    return maybe_td_to_kjt(features, None)


# ---- patched forwards --------------------------------------------------------------------------------


def _ebc_forward(self: EmbeddingBagCollection, features: KeyedJaggedTensor) -> KeyedTensor:
    """EmbeddingBagCollection.forward (torchrec 1.8) without to_dict: one submodule call per feature."""
    kjt = _to_kjt(features)
    ids, weights, _, offsets = jagged_segments(kjt)
    pooled: list[torch.Tensor] = []
    for i, embedding_bag in enumerate(self.embedding_bags.values()):
        for name in self._feature_names[i]:
            f = _feature_index(kjt, name, type(self).__name__)
            if self._is_weighted and weights[f] is None:
                raise UnsupportedModelError(f"weighted {type(self).__name__} got a KeyedJaggedTensor without weights")
            res = embedding_bag(
                input=ids[f],
                offsets=offsets[f],
                per_sample_weights=weights[f] if self._is_weighted else None,
            ).float()
            pooled.append(res)
    return KeyedTensor(
        keys=self._embedding_names,
        values=torch.cat(pooled, dim=1),
        length_per_key=self._lengths_per_embedding,
    )


def _ec_forward(self: EmbeddingCollection, features: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
    """EmbeddingCollection.forward (torchrec 1.8) without to_dict: one submodule call per feature."""
    kjt = _to_kjt(features)
    ids, _, lengths, _ = jagged_segments(kjt)
    out: dict[str, JaggedTensor] = {}
    for i, module in enumerate(self.embeddings.values()):
        feature_names = self._feature_names[i]
        for j, embedding_name in enumerate(self._embedding_names_by_table[i]):
            f = _feature_index(kjt, feature_names[j], type(self).__name__)
            lookup = module(input=ids[f]).float()
            out[embedding_name] = JaggedTensor(
                values=lookup,
                lengths=lengths[f],
                weights=ids[f] if self._need_indices else None,
            )
    return out


_FORWARDS = {EmbeddingBagCollection: _ebc_forward, EmbeddingCollection: _ec_forward}


def collections_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every torchrec EmbeddingBagCollection / EmbeddingCollection in `model`."""
    return [(path, m) for path, m in model.named_modules() if isinstance(m, tuple(_FORWARDS))]


def _replacement(path: str, module: nn.Module):
    for cls, forward in _FORWARDS.items():
        if isinstance(module, cls):
            if type(module).forward is not cls.forward:
                warnings.warn(
                    f"{path or 'model'} ({type(module).__name__}) subclasses torchrec's {cls.__name__} and overrides "
                    "forward; it is left as it is (its own forward is exported)",
                    stacklevel=3,
                )
                return None
            return forward
    return None


@contextlib.contextmanager
def export_friendly(model: nn.Module) -> Iterator[list[str]]:
    """While active, every EBC / EC of `model` computes its lookups with `jagged_segments` and one call of its
    own nn.EmbeddingBag / nn.Embedding submodule per feature (see the module docstring). Yields the paths of
    the patched collections ("" for the model itself). Restores the original forwards on exit, also on
    error; re-entrant (an inner use patches nothing more). Subclasses that override forward are left
    alone, with a warning. Only instance attributes are set (`forward`, a flag); classes are untouched.
    """
    patched: list[tuple[nn.Module, bool, Any]] = []
    paths = []
    try:
        for path, module in collections_of(model):
            forward = _replacement(path, module)
            if forward is None or getattr(module, _PATCHED_FLAG, False):
                continue
            had_own = "forward" in module.__dict__
            patched.append((module, had_own, module.__dict__.get("forward")))
            module.forward = types.MethodType(forward, module)
            object.__setattr__(module, _PATCHED_FLAG, True)
            paths.append(path)
        yield paths
    finally:
        for module, had_own, previous in reversed(patched):
            if had_own:
                module.forward = previous
            else:
                module.__dict__.pop("forward", None)
            module.__dict__.pop(_PATCHED_FLAG, None)


def export_program(model: nn.Module, args: tuple, kwargs: dict | None = None, hint: Any = None) -> torch.export.ExportedProgram:
    """torch.export (non-strict) of a torchrec model with dynamic dim 0 on every input tensor, under
    `export_friendly`. Give canonical inputs (`canonical_inputs`) so that the graph inputs are predictable.

    An example with a batch of 1 or with 0 / 1 ids in a KJT makes torch.export specialize that dimension
    ("export 0/1 specialized due to hint of 1 ..."); the export is then retried with
    `torch.fx.experimental._config.backed_size_oblivious`, which keeps such dimensions dynamic. (Never fall
    back to Dim.AUTO for a KJT: it would silently make the number of ids static.)
    """
    from torch.fx.experimental import _config as fx_config

    def attempt():
        with export_friendly(model):
            return torch.export.export(
                model, tuple(args), kwargs or None, dynamic_shapes=dynamic_shapes(model, args, kwargs, hint), strict=False
            )

    try:
        return attempt()
    except ValueError as exc:
        if "0/1 specialized" not in str(exc):
            raise
    with fx_config.patch(backed_size_oblivious=True):
        return attempt()
