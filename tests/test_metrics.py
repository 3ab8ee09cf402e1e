"""AUC and log loss against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from shark_export.metrics import auc, log_loss, to_probabilities


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    s = np.round(rng.random(200), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auc(y, s) == pytest.approx(pairwise, abs=1e-12)


def test_auc_single_class_is_nan_and_log_loss_matches_formula():
    assert np.isnan(auc(np.ones(4), np.arange(4)))
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.4])
    assert log_loss(y, p) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.6, 0.6])))


def test_logits_are_turned_into_probabilities():
    np.testing.assert_allclose(to_probabilities(np.array([0.0, 2.0, -2.0])), 1 / (1 + np.exp(-np.array([0.0, 2.0, -2.0]))))
    np.testing.assert_array_equal(to_probabilities(np.array([0.1, 0.9])), [0.1, 0.9])
