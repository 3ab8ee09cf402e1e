"""Binary classification metrics in numpy (no sklearn dependency for two formulas)."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Scores already in [0, 1] are taken as probabilities; anything else as logits (sigmoid)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size and scores.min() >= 0.0 and scores.max() <= 1.0:
        return scores
    # the two halves of a sigmoid that never overflow: exp of a non-positive number only
    e = np.exp(-np.abs(scores))
    return np.where(scores >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula with tied scores sharing their average rank; NaN with one class."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.shape[0], dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.shape[0]]])
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
