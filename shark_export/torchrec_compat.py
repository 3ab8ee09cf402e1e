"""torchrec models for the converter: `EmbeddingBagCollection` / `EmbeddingCollection` over `KeyedJaggedTensor`s.

What a torchrec model needs to be exported (torch.export non-strict, torch 2.13), besides the KJT-aware
dynamic_shapes spec that `shark_export.export` builds for any input (torch.export.ShapesCollection):

1. **One lookup per feature, the same in eager mode and in the export.** `export_friendly(model)` makes
   every EBC / EC compute its per-feature lookups with plain aten ops while it is active: one `split` of the
   KJT's values (and weights) by the per-key totals (unbacked SymInts under torch.export, bounded with
   `torch._check`), one `cumsum` for the bag offsets, then one call of the collection's own
   nn.EmbeddingBag / nn.Embedding submodule per feature, in torchrec's order (tables in config order, each
   table's features in order). The exported program has one `aten.embedding_bag` (1-D ids, B+1 offsets,
   include_last_offset) or `aten.embedding` per feature, reading the module's own Parameter, and the
   converter's forward hooks see one call per feature. Eager results are identical to torchrec's forward.
   (torchrec 1.8's forward goes through `KeyedJaggedTensor.to_dict`, which caches the split on the input
   and, for inputs with inverse indices, calls fbgemm ops; the patched forward rejects what a converted
   model cannot serve: variable batch per feature, inverse indices.)
2. **Stable graph inputs.** The graph inputs are the KJT's tensor leaves in pytree order: values, weights
   (weighted KJTs only), lengths. A KJT whose `offsets()` was called caches them and flattens to one more
   tensor; `canonical_inputs()` rebuilds every KJT from values, weights and lengths, for the example, the
   calibration batches and every batch the runner feeds.
3. An ExportedProgram with unbacked SymInts goes through `torch.onnx.export` once; export again for a
   second file.

Importing this module needs torchrec: the converter imports it only when torchrec is already imported and
the model or its inputs use it.
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
    "canonical_inputs",
    "canonical_kjt",
    "collections_of",
    "export_friendly",
    "has_kjt",
    "jagged_segments",
]

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
