"""Field pruning in torch: a copy of the model whose pruned fields return their mean embedding.

Users fine-tune that copy with their own loop (as the paper retrains after pruning) and convert it; the
converter recognizes the pruned fields, so `convert(pruned_copy)` and `convert(model, prune=plan)` give the
same graph outputs as the copy. All state lives on the embedding modules (module-level hook functions, a
call counter and non-persistent buffers), so the copy survives `copy.deepcopy`, `torch.save` and `.to()`.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from .errors import SharkExportError, UnknownFieldError
from .field_scoring import field_means
from .fields import PRUNED_CALLS_ATTRIBUTE as _CALLS
from .fields import find_fields, resolve_field

_COUNT = "_shark_call_count"
_MEAN = "_shark_pruned_mean_{}"


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


def pruned_calls(module: nn.Module) -> dict[int, np.ndarray]:
    """Call index → mean embedding of the pruned calls of an embedding module (empty when none)."""
    return {i: getattr(module, _MEAN.format(i)).detach().cpu().numpy() for i in sorted(getattr(module, _CALLS, ()))}


def prune_fields(model: nn.Module, plan: Any, calibration: Iterable) -> nn.Module:
    """A copy of `model` in which the plan's fields contribute their mean embedding E[v_f].

    Means come from the plan when it carries them (a PrunePlan from `FieldScores.plan`), else from the
    calibration batches. The original model is not modified.
    """
    calibration = list(calibration)
    if not calibration:
        raise SharkExportError("prune_fields needs calibration batches (to name the fields and compute means)")
    names, means = prune_plan_of(plan)
    fields = find_fields(model, calibration[0], more_batches=calibration[1:8])
    unknown = [n for n in names if resolve_field(fields, n) is None]
    if unknown:
        raise UnknownFieldError(f"unknown field(s) {unknown}; the model's fields are: {', '.join(fields)}")
    canonical = []
    for n in names:  # a call name of a merged field selects the whole field
        f = resolve_field(fields, n)
        if n in means and f.name not in means:
            means[f.name] = means[n]
        if f.name not in canonical:
            canonical.append(f.name)
    names = canonical
    already = [n for n in names if fields[n].pruned]
    if already:
        raise SharkExportError(f"field(s) {already} are already pruned in this model")
    missing = [n for n in names if n not in means]
    if missing:
        means.update(field_means(model, fields, missing, calibration))
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

