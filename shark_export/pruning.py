"""Field pruning, all of it but the graph pass (passes/prune.py): what a plan names, the fields' mean
embeddings, and in torch a copy of the model whose pruned fields return their mean embedding.

Users fine-tune that copy with their own loop (as the paper retrains after pruning) and convert it; the
converter recognizes the pruned fields, so `convert(pruned_copy)` and `convert(model, prune=plan)` give the
same graph outputs as the copy. All state lives on the embedding modules (module-level hook functions, a
call counter and non-persistent buffers), so the copy survives `copy.deepcopy`, `torch.save` and `.to()`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .errors import SharkExportError, UnknownFieldError, UnsupportedModelError
from .lookup_stats import mean_stats
from .fields import PRUNED_CALLS_ATTRIBUTE as _CALLS
from .fields import Field, find_fields, has_stock_forward, resolve_field

_COUNT = "_shark_call_count"
_MEAN = "_shark_pruned_mean_{}"


@dataclass
class PrunePlan:
    """Fields to prune and, when known, their mean embeddings (used by `convert(prune=plan)`)."""

    drop: list[str]
    means: dict[str, np.ndarray] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.drop)


def field_means(model: nn.Module, fields: dict[str, Field], names, batches) -> dict[str, np.ndarray]:
    """E[v_f] of the named fields: the mean of their looked-up (pooled, for bags) embeddings, float64 [D]."""
    names = list(names)
    unknown = [n for n in names if n not in fields]
    if unknown:
        raise UnknownFieldError(f"unknown field(s) {unknown}; the model's fields are: {', '.join(fields)}")
    means = mean_stats(model, {n: fields[n] for n in names}, batches).means()
    missing = [n for n in names if n not in means]
    if missing:
        raise UnsupportedModelError(f"fields {missing} were never looked up in the calibration data: no mean embedding")
    return means


def prune_plan_of(prune: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """Field names and (when the plan carries them) mean embeddings from a PrunePlan, a list or one name."""
    if prune is None:
        return [], {}
    if isinstance(prune, str):
        return [prune], {}
    if hasattr(prune, "drop"):
        return list(prune.drop), dict(getattr(prune, "means", None) or {})
    return list(prune), {}


def _reset_counts(root: nn.Module, args) -> None:
    for module in root.modules():
        if hasattr(module, _CALLS):
            setattr(module, _COUNT, 0)


def _replace_pruned(module: nn.Module, args, output: torch.Tensor):
    index = getattr(module, _COUNT, 0)
    setattr(module, _COUNT, index + 1)
    if index in getattr(module, _CALLS):
        mean = getattr(module, _MEAN.format(index))
        return mean.to(output.dtype).expand_as(output)
    return None


def resolve_prune(prune: Any, fields: dict[str, Field], model: nn.Module, calibration: list | None) -> dict[str, np.ndarray]:
    """The fields a plan (a PrunePlan, a list of names or one name) prunes, by their own names (a call name of
    a merged field selects the field), with their mean embeddings: from the plan, else from `calibration`."""
    names, means = prune_plan_of(prune)
    resolved: dict[str, np.ndarray | None] = {}
    for name in names:
        f = resolve_field(fields, name)
        if f is None:
            raise UnknownFieldError(f"cannot prune unknown field {name!r}; the model's fields are: {', '.join(fields)}")
        if f.pruned:
            raise SharkExportError(f"field {name!r} is already pruned in the model (prune_fields); do not prune it again")
        custom = [p for p, _ in f.calls if not has_stock_forward(model.get_submodule(p))]
        if custom:
            raise UnsupportedModelError(
                f"field {name!r} is read through {type(model.get_submodule(custom[0])).__name__}.forward ({custom[0]!r}), "
                "which changes the lookup's output: pruning it in the graph is not supported; prune it in torch "
                "(prune_fields), fine-tune, and convert that copy"
            )
        resolved.setdefault(f.name, means.get(name, means.get(f.name)))
    missing = [n for n, mean in resolved.items() if mean is None]
    if missing:
        if not calibration:
            raise SharkExportError(f"pruning {missing} needs calibration data for their mean embeddings")
        resolved.update(field_means(model, fields, missing, calibration))
    return resolved


def prune_fields(model: nn.Module, plan: Any, calibration: Iterable) -> nn.Module:
    """A copy of `model` in which the plan's fields contribute their mean embedding E[v_f].

    Means come from the plan when it carries them (a PrunePlan from `FieldScores.plan`), else from the
    calibration batches. The original model is not modified.
    """
    calibration = list(calibration)
    if not calibration:
        raise SharkExportError("prune_fields needs calibration batches (to name the fields and compute means)")
    fields = find_fields(model, calibration[0], more_batches=calibration[1:8])
    means = resolve_prune(plan, fields, model, calibration)
    names = list(means)
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for name in names:
        f = fields[name]
        for path, index in f.calls:  # a field read by several calls with equal inputs: all of them
            module = modules[path]
            if not hasattr(module, _CALLS):
                setattr(module, _CALLS, set())
                module.register_forward_hook(_replace_pruned)
            getattr(module, _CALLS).add(index)
            mean = torch.as_tensor(np.asarray(means[name]), dtype=module.weight.dtype)
            module.register_buffer(_MEAN.format(index), mean, persistent=False)
    if names and not getattr(pruned, "_shark_pruning_root", False):
        pruned.register_forward_pre_hook(_reset_counts)
        pruned._shark_pruning_root = True
    return pruned

