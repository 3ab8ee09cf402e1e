"""F-Permutation: how much each field (one lookup of a table) matters to the loss.

Methods:
- ``taylor`` (SHARK): score_f = mean over samples of |g_f · (E[v_f] − v_f)|, the first-order Taylor estimate
  of the loss change when the sample's looked-up embedding v_f is replaced by the field's mean E[v_f].
  g_f = dLoss_sample/dv_f comes from one backward of the summed per-sample loss (a sample's loss depends
  only on its own lookups), so one forward+backward per batch scores every field. E[v_f] needs a first
  pass over the data (exact mean, not a streaming estimate): 2 forwards + 1 backward per batch in all.
- ``permutation`` (exact baseline): the mean loss increase when field f's looked-up embeddings are
  shuffled across the batch, averaged over ``repeats`` shuffles: fields × repeats extra forwards.
- ``norm``: the mean L2 norm of the field's looked-up embeddings (a cheap baseline).
- ``ablation`` (the default): the exact loss change that taylor linearizes, the mean loss increase when
  field f's looked-up embeddings are replaced by the field's mean E[v_f] (what pruning f does): one extra
  forward per field and batch, no shuffles. On MovieLens and Frappe it ranks fields as permutation does
  (Spearman 0.97 / 0.94, where taylor gets 0.73 / 0.66) at about a quarter of permutation's time with 5
  shuffles (benchmarks/RESULTS_scoring.md), so it is the default.

All statistics are sums and counts (`FieldStats`), so shards can be scored separately and merged; when
`torch.distributed` is initialized, `score_fields` all-reduces them across processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .errors import SharkExportError, UnknownFieldError
from .export import ExampleInputs
from .fields import Field, find_fields, lookup_hooks
from .lookup_stats import FieldStats, by_call, lookup_stats, mean_stats, per_sample_vectors
from .pruning import PrunePlan

METHODS = ("ablation", "taylor", "permutation", "norm")
DEFAULT_METHOD = "ablation"


# --- losses -------------------------------------------------------------------------------------------


def _first_output(output) -> torch.Tensor:
    leaves = [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise SharkExportError("the model returned no tensor")
    return leaves[0]


def per_sample_loss(loss: str | Callable, output, labels: torch.Tensor) -> torch.Tensor:
    """Loss of each sample, [B]. "bce" reads the first output as logits, or as probabilities when it is in [0, 1]
    ("bce_logits"/"bce_probs" to be explicit). A callable gets (output, labels) and returns [B] losses."""
    if callable(loss):
        result = loss(output, labels)
        if result.dim() != 1:
            raise SharkExportError(f"the loss callable must return one loss per sample ([B]), got shape {tuple(result.shape)}")
        return result
    first = _first_output(output)
    if first.dim() == 0 or first.shape[0] != labels.shape[0]:
        raise SharkExportError(
            f"labels have {labels.shape[0]} rows but the model's output has shape {tuple(first.shape)}: give one label per sample"
        )
    prediction = first.reshape(labels.shape[0], -1)[:, 0]
    target = labels.reshape(labels.shape[0], -1)[:, 0].to(prediction.dtype)
    if loss == "bce":
        detached = prediction.detach()
        loss = "bce_probs" if bool(((detached >= 0) & (detached <= 1)).all()) else "bce_logits"
    if loss == "bce_logits":
        return nn.functional.binary_cross_entropy_with_logits(prediction, target, reduction="none")
    if loss == "bce_probs":
        return nn.functional.binary_cross_entropy(prediction.clamp(1e-7, 1 - 1e-7), target, reduction="none")
    raise SharkExportError(f"unknown loss {loss!r}: use 'bce', 'bce_logits', 'bce_probs' or a callable")


# --- passes over the data ------------------------------------------------------------------------------


def taylor_stats(
    model: nn.Module, fields: dict[str, Field], batches: Iterable, labels: Iterable, means: dict[str, np.ndarray], loss="bce"
) -> FieldStats:
    """Sums over samples of |g_f · (E[v_f] − v_f)| and sample counts, one forward+backward per batch."""
    by_key = by_call(fields)
    stats = FieldStats()
    captured: dict[str, list[torch.Tensor]] = {}

    def capture(path, index, module, args, kwargs, output):
        name = by_key.get((path, index))
        if name is None:
            return None
        leaf = output.detach().requires_grad_(True)
        captured.setdefault(name, []).append(leaf)
        return leaf

    parameters = [p for p in model.parameters() if p.requires_grad]
    for p in parameters:  # gradients w.r.t. lookups only; the weights' gradients are not needed
        p.requires_grad_(False)
    try:
        with lookup_hooks(model, capture):
            for batch, y in _zip_labels(batches, labels):
                captured.clear()
                example = ExampleInputs.of(batch)
                losses = per_sample_loss(loss, model(*example.args, **example.kwargs), _as_tensor(y))
                leaves = [(name, leaf) for name, group in captured.items() for leaf in group]
                grads = torch.autograd.grad(losses.sum(), [leaf for _, leaf in leaves], allow_unused=True)
                # A field read by several calls (equal inputs) is replaced by its mean in all of them at
                # once: the first-order change is the sum of their terms, taken before the absolute value.
                terms: dict[str, torch.Tensor] = {}
                for (name, leaf), grad in zip(leaves, grads):
                    v = leaf.detach()
                    g = torch.zeros_like(v) if grad is None else grad
                    delta = torch.as_tensor(means[name], dtype=torch.float64) - v.double()  # broadcast over [B, ..., D]
                    term = (per_sample_vectors(g.double()) * per_sample_vectors(delta)).sum(1)
                    terms[name] = terms[name] + term if name in terms else term
                for name, term in terms.items():
                    per_sample = term.abs()
                    stats.add(name, per_sample.sum().item(), per_sample.shape[0])
    finally:
        for p in parameters:
            p.requires_grad_(True)
    return stats


def permutation_stats(
    model: nn.Module, fields: dict[str, Field], batches: Iterable, labels: Iterable, loss="bce", repeats: int = 3, seed: int = 0
) -> FieldStats:
    """Sums over samples of (loss with field f shuffled across the batch − loss), `repeats` shuffles per field."""
    generator = torch.Generator().manual_seed(seed)
    stats = FieldStats()
    state: dict = {"target": None, "perm": None}

    def shuffle(path, index, module, args, kwargs, output):
        if state["target"] is not None and (path, index) in state["target"]:
            return output[state["perm"]]  # every call of the field, with the same permutation
        return None

    with torch.no_grad(), lookup_hooks(model, shuffle):
        for batch, y in _zip_labels(batches, labels):
            example = ExampleInputs.of(batch)
            y = _as_tensor(y)
            state["target"] = None
            base = per_sample_loss(loss, model(*example.args, **example.kwargs), y)
            for f in fields.values():
                state["target"] = set(f.calls)
                for _ in range(repeats):
                    state["perm"] = torch.randperm(base.shape[0], generator=generator)
                    shuffled = per_sample_loss(loss, model(*example.args, **example.kwargs), y)
                    stats.add(f.name, (shuffled - base).double().sum().item(), base.shape[0])
    return stats


def ablation_stats(
    model: nn.Module, fields: dict[str, Field], batches: Iterable, labels: Iterable, means: dict[str, np.ndarray], loss="bce"
) -> FieldStats:
    """Sums over samples of (loss with field f's lookups replaced by the field's mean − loss)."""
    state: dict = {"target": None, "mean": None}

    def replace(path, index, module, args, kwargs, output):
        if state["target"] is not None and (path, index) in state["target"]:
            # every call of the field reads the mean row, broadcast as pruning broadcasts it
            return state["mean"].to(output.dtype).expand_as(output)
        return None

    stats = FieldStats()
    with torch.no_grad(), lookup_hooks(model, replace):
        for batch, y in _zip_labels(batches, labels):
            example = ExampleInputs.of(batch)
            y = _as_tensor(y)
            state["target"] = None
            base = per_sample_loss(loss, model(*example.args, **example.kwargs), y)
            for f in fields.values():
                state["target"], state["mean"] = set(f.calls), torch.as_tensor(means[f.name])
                ablated = per_sample_loss(loss, model(*example.args, **example.kwargs), y)
                stats.add(f.name, (ablated - base).double().sum().item(), base.shape[0])
    return stats


def norm_stats(model: nn.Module, fields: dict[str, Field], batches: Iterable) -> FieldStats:
    """Sums and counts of the L2 norms of each field's looked-up embedding vectors."""
    return lookup_stats(model, fields, batches, lambda rows: (rows.norm(dim=1).sum().item(), rows.shape[0]))


def _as_tensor(y) -> torch.Tensor:
    return y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))


def _zip_labels(batches: Iterable, labels: Iterable):
    batches, labels = list(batches), list(labels)
    if len(batches) != len(labels):
        raise SharkExportError(f"got {len(batches)} batches but {len(labels)} label arrays: give one per batch")
    return zip(batches, labels)


# --- results --------------------------------------------------------------------------------------------


@dataclass
class FieldScores:
    scores: dict[str, float]
    method: str
    means: dict[str, np.ndarray] = field(default_factory=dict)
    samples: float = 0.0

    def sorted(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda item: item[1], reverse=True)

    def __str__(self) -> str:
        rows = self.sorted()
        width = max([len(n) for n, _ in rows] + [5])
        lines = [f"field scores ({self.method}, {int(self.samples)} samples)", f"{'rank':>4}  {'field':<{width}}  score"]
        lines += [f"{k + 1:>4}  {name:<{width}}  {score:.6g}" for k, (name, score) in enumerate(rows)]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "samples": self.samples, "scores": dict(self.sorted())}, indent=2)

    def plot(self, path) -> None:
        try:
            import matplotlib
        except ImportError as exc:
            raise SharkExportError("plot() needs matplotlib: pip install 'shark-export[plot]'") from exc

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.sorted()
        fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rows) + 2), 3.5))
        ax.bar([n for n, _ in rows], [s for _, s in rows], color="#3b6ea5")
        ax.set_ylabel(f"{self.method} score")
        ax.set_title(f"Field importance ({self.method})")
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def plan(self, *, drop: list[str] | None = None, keep: int | None = None, drop_fraction: float | None = None) -> PrunePlan:
        """Exactly one of: `drop` (names), `keep` (the k best fields stay), `drop_fraction` (the lowest share goes)."""
        given = [x is not None for x in (drop, keep, drop_fraction)]
        if sum(given) != 1:
            raise SharkExportError("plan() takes exactly one of drop=, keep=, drop_fraction=")
        ranked = [name for name, _ in self.sorted()]
        if drop is not None:
            unknown = [n for n in drop if n not in self.scores]
            if unknown:
                raise UnknownFieldError(f"unknown field(s) {unknown}; the scored fields are: {', '.join(ranked)}")
            names = list(drop)
        elif keep is not None:
            if not 0 <= keep <= len(ranked):
                raise SharkExportError(f"keep={keep} must be between 0 and the {len(ranked)} fields")
            names = ranked[keep:]
        else:
            if not 0.0 <= drop_fraction <= 1.0:
                raise SharkExportError(f"drop_fraction={drop_fraction} must be in [0, 1]")
            names = ranked[len(ranked) - int(round(drop_fraction * len(ranked))) :]
        return PrunePlan(names, {n: self.means[n] for n in names if n in self.means})


def score_fields(
    model: nn.Module,
    batches: Iterable,
    labels: Iterable,
    *,
    loss: str | Callable = "bce",
    method: str = DEFAULT_METHOD,
    repeats: int = 3,
    seed: int = 0,
) -> FieldScores:
    """Score every field of `model` on `batches` (with one label array per batch). See the module doc."""
    if method not in METHODS:
        raise SharkExportError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    batches = list(batches)
    labels = list(labels)
    if not batches:
        raise SharkExportError("score_fields needs at least one batch")
    if len(labels) != len(batches):
        raise SharkExportError(f"got {len(batches)} batches but {len(labels)} label arrays: give one per batch")
    fields = find_fields(model, batches[0], more_batches=batches[1:8])
    names = list(fields)
    was_training = model.training
    model.eval()
    try:
        means = mean_stats(model, fields, batches).all_reduce(names).means()
        if method == "ablation":
            stats = ablation_stats(model, fields, batches, labels, means, loss)
        elif method == "taylor":
            stats = taylor_stats(model, fields, batches, labels, means, loss)
        elif method == "permutation":
            stats = permutation_stats(model, fields, batches, labels, loss, repeats, seed)
        else:
            stats = norm_stats(model, fields, batches)
        stats = stats.all_reduce(names)
    finally:
        model.train(was_training)
    scores = {n: float(stats.sums[n] / stats.counts[n]) for n in names}
    samples = max(stats.counts.values()) if stats.counts else 0.0
    if method == "permutation":
        samples /= repeats
    return FieldScores(scores, method, means, samples)
