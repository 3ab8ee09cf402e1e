"""Shared pieces of the compatibility suite: the case record, generated data and a short training loop.

Every library module (`lib_<name>.py`) builds its models through the library's public API, trains each a
few steps on data generated here (a planted signal, so AUC means something) and returns `ZooCase`s.
Nothing in this package reads the datasets under ../shared/data: the suite generates its own data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


@dataclass
class ZooCase:
    """One public-library model, trained briefly, with the batches the suite converts and checks it on.

    - `example`: forward's inputs as `shark_export.convert` takes them (a tuple of positional args, or a
      single tensor / dict).
    - `calibration` / `labels`: batches like `example` and one label tensor per batch ([B] or [B, T] for
      T tasks); the converter's row priorities and parity read these.
    - `test` / `test_labels`: held-out batches for the ΔAUC check.
    - `kind`: "ctr", "sequence" (history / sequential model) or "multitask".
    """

    name: str
    library: str
    model: nn.Module
    example: Any
    calibration: list
    labels: list
    test: list
    test_labels: list
    kind: str = "ctr"
    notes: str = ""
    extra: dict = field(default_factory=dict)


# ---- generated data ----------------------------------------------------------------------------------


def zipf_ids(rng: np.random.Generator, n: int, vocab: int, a: float = 1.2) -> np.ndarray:
    """n ids in [0, vocab) with a Zipf-like head (what real categorical features look like)."""
    ranks = rng.zipf(a, size=n) - 1
    perm = rng.permutation(vocab)  # the hot ids are spread over the table
    return perm[np.minimum(ranks, vocab - 1)].astype(np.int64)


@dataclass
class TabularData:
    """Sparse id fields, dense features and labels with a planted signal.

    `sparse[:, f]` are ids of field f in [0, vocabs[f]); `dense` float32 [N, K]; `labels` float32 [N] or
    [N, T]; `history` int64 [N, L] of item ids (0 = padding, real ids 1..vocab-1), `history_len` int64 [N].
    """

    sparse: np.ndarray
    vocabs: list[int]
    dense: np.ndarray
    labels: np.ndarray
    history: np.ndarray | None = None
    history_len: np.ndarray | None = None


def make_tabular(
    n: int,
    vocabs: list[int],
    *,
    n_dense: int = 0,
    tasks: int = 1,
    history_field: int | None = None,
    history_len: int = 0,
    seed: int = 0,
) -> TabularData:
    """n samples; the label depends on per-id effects of every field (strongest on the first ones), on the
    dense features and, with a history, on whether the target item (field `history_field`) is in it."""
    rng = np.random.default_rng(seed)
    F = len(vocabs)
    sparse = np.stack([zipf_ids(rng, n, v) for v in vocabs], axis=1) if F else np.zeros((n, 0), np.int64)
    dense = rng.normal(size=(n, n_dense)).astype(np.float32)
    logits = np.zeros((n, tasks))
    for f, v in enumerate(vocabs):
        strength = 1.5 / (1 + f)
        effect = rng.normal(scale=strength, size=(v, tasks))
        logits += effect[sparse[:, f]]
    if n_dense:
        logits += dense @ rng.normal(scale=0.5, size=(n_dense, tasks))
    history = lengths = None
    if history_field is not None and history_len:
        vocab = vocabs[history_field]
        lengths = rng.integers(0, history_len + 1, size=n)
        history = np.zeros((n, history_len), dtype=np.int64)
        for i in range(n):
            k = int(lengths[i])
            if k:
                items = zipf_ids(rng, k, vocab - 1) + 1
                if rng.random() < 0.5:  # the target item is in the history: a strong signal
                    items[rng.integers(k)] = max(1, sparse[i, history_field])
                    logits[i] += 1.5
                history[i, :k] = items
        sparse[:, history_field] = np.maximum(sparse[:, history_field], 1)
    logits -= logits.mean(axis=0)
    labels = (rng.random((n, tasks)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return TabularData(sparse, list(vocabs), dense, labels[:, 0] if tasks == 1 else labels, history, lengths)


def split_batches(n: int, batch: int) -> list[slice]:
    return [slice(i, min(n, i + batch)) for i in range(0, n, batch)]


# Every case: rows [0, N_TRAIN) train, the next N_CAL calibrate, the last N_TEST are held out.
N_TRAIN, N_CAL, N_TEST = 4096, 2048, 4096
N_ROWS = N_TRAIN + N_CAL + N_TEST
TRAIN_BATCH, CAL_BATCH, TEST_BATCH = 512, 256, 512
STEPS = 60


@dataclass(frozen=True)
class Split:
    train: list[slice]
    calibration: list[slice]
    test: list[slice]


def split_rows(train_batch: int = TRAIN_BATCH) -> Split:
    def shifted(start, n, batch):
        return [slice(start + s.start, start + s.stop) for s in split_batches(n, batch)]

    return Split(shifted(0, N_TRAIN, train_batch), shifted(N_TRAIN, N_CAL, CAL_BATCH), shifted(N_TRAIN + N_CAL, N_TEST, TEST_BATCH))


def trained_case(
    name: str, library: str, model: nn.Module, batch_of: Callable[[slice], Any], label_of: Callable[[slice], Any], *,
    split: Split | None = None, loss: str = "bce_prob", steps: int = STEPS, lr: float = 0.01, seed: int = 0,
    kind: str = "ctr", notes: str = "", extra: dict | None = None,
) -> ZooCase:
    """Train `model` briefly on the split's training rows and return the case with its calibration and
    held-out batches (`batch_of(rows)` / `label_of(rows)` cut one batch of inputs / labels)."""
    split = split or split_rows()
    train_briefly(model, [batch_of(s) for s in split.train], [label_of(s) for s in split.train], loss=loss,
                  steps=steps, lr=lr, seed=seed)
    calibration = [batch_of(s) for s in split.calibration]
    return ZooCase(
        name=name, library=library, model=model, example=calibration[0], calibration=calibration,
        labels=[label_of(s) for s in split.calibration], test=[batch_of(s) for s in split.test],
        test_labels=[label_of(s) for s in split.test], kind=kind, notes=notes, extra=extra or {},
    )


# ---- training ----------------------------------------------------------------------------------------


def train_briefly(
    model: nn.Module,
    batches: list,
    labels: list,
    *,
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    loss: str = "bce_prob",
    steps: int = 60,
    lr: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """A few Adam steps of binary cross-entropy; returns the model in eval mode.

    `forward(model, batch)` gives the prediction (default: `model(*batch)` for a tuple, else `model(batch)`);
    `loss` is "bce_prob" when the model outputs probabilities, "bce_logit" when it outputs logits.
    """
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    criterion = nn.BCELoss() if loss == "bce_prob" else nn.BCEWithLogitsLoss()
    for step in range(steps):
        k = step % len(batches)
        batch, y = batches[k], labels[k]
        if forward is not None:
            pred = forward(model, batch)
        elif isinstance(batch, tuple):
            pred = model(*batch)
        else:
            pred = model(batch)
        target = torch.as_tensor(y, dtype=torch.float32).reshape(pred.shape)
        value = criterion(pred, target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return model.eval()
