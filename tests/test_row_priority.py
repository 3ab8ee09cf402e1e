"""Row priorities equal a hand count; label weights, decay, bags and padding as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shark_export import score_rows
from shark_export.errors import SharkExportError, UnsupportedModelError


class TwoFields(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(6, 2)
        self.tags = nn.EmbeddingBag(5, 2, mode="sum", padding_idx=0)

    def forward(self, user, tags, offsets):
        return (self.user(user) + self.tags(tags, offsets)).sum(1)


BATCHES = [
    (torch.tensor([1, 1, 3]), torch.tensor([2, 0, 4, 4, 2]), torch.tensor([0, 2, 2])),  # bags [2,0] [] [4,4,2]
    (torch.tensor([5, 1]), torch.tensor([3]), torch.tensor([0, 1])),  # bags [3] []
]
LABELS = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0])]


def _hand_count(pos: float, neg: float, decay: float) -> tuple[np.ndarray, np.ndarray]:
    user = np.zeros(6)
    tags = np.zeros(5)
    age = {0: decay, 1: 1.0}  # batch 0 is one batch older than the last one
    w = lambda t, y: age[t] * (pos if y == 1 else neg)  # noqa: E731
    # batch 0: samples (user, bag, label): (1,[2,0],1) (1,[],0) (3,[4,4,2],1); row 0 is padding
    user[1] += w(0, 1) + w(0, 0)
    user[3] += w(0, 1)
    tags[2] += w(0, 1) + w(0, 1)
    tags[4] += 2 * w(0, 1)
    # batch 1: (5,[3],0) (1,[],1)
    user[5] += w(1, 0)
    user[1] += w(1, 1)
    tags[3] += w(1, 0)
    return user, tags


@pytest.mark.parametrize("pos,neg,decay", [(1.0, 1.0, 1.0), (3.0, 0.5, 1.0), (2.0, 1.0, 0.5)])
def test_priorities_equal_a_hand_count(pos, neg, decay):
    model = TwoFields().eval()
    priority = score_rows(model, BATCHES, LABELS, pos_weight=pos, neg_weight=neg, decay=decay)
    user, tags = _hand_count(pos, neg, decay)
    np.testing.assert_allclose(priority["user.weight"], user, rtol=1e-6)
    np.testing.assert_allclose(priority["tags.weight"], tags, rtol=1e-6)
    assert priority["user.weight"].dtype == np.float32  # one float per row


def test_without_labels_every_occurrence_counts_once():
    priority = score_rows(TwoFields().eval(), BATCHES)
    np.testing.assert_array_equal(priority["user.weight"], [0, 3, 0, 1, 0, 1])
    np.testing.assert_array_equal(priority["tags.weight"], [0, 0, 2, 1, 2])


def test_long_streams_with_decay_do_not_overflow():
    model = TwoFields().eval()
    batch = (torch.tensor([2]), torch.tensor([1]), torch.tensor([0]))
    priority = score_rows(model, [batch] * 400, decay=0.5)
    # geometric series: 1 + 0.5 + 0.25 + … → 2
    np.testing.assert_allclose(priority["user.weight"][2], 2.0, rtol=1e-6)


def test_multitask_labels_choose_a_head():
    model = TwoFields().eval()
    labels = [torch.stack([torch.zeros(3), torch.ones(3)], 1), torch.stack([torch.zeros(2), torch.ones(2)], 1)]
    head1 = score_rows(model, BATCHES, labels, pos_weight=2.0, neg_weight=0.0, head=1)
    head0 = score_rows(model, BATCHES, labels, pos_weight=2.0, neg_weight=0.0, head=0)
    np.testing.assert_array_equal(head1["user.weight"], [0, 6, 0, 2, 0, 2])
    assert not head0["user.weight"].any()


def test_errors():
    model = TwoFields().eval()
    with pytest.raises(SharkExportError, match="labels have 2 rows but field 'user' has 3 samples"):
        score_rows(model, BATCHES[:1], [torch.tensor([1.0, 0.0])])
    with pytest.raises(SharkExportError, match="labels ran out at batch 1"):
        score_rows(model, BATCHES, LABELS[:1])
    with pytest.raises(SharkExportError, match="decay must be in"):
        score_rows(model, BATCHES, decay=0.0)
    with pytest.raises(UnsupportedModelError, match="no nn.Embedding"):
        score_rows(nn.Linear(2, 2), [torch.zeros(1, 2)])


def test_taylor_priority_equals_gradient_times_row():
    torch.manual_seed(0)
    model = TwoFields().eval()
    priority = score_rows(model, BATCHES, LABELS, method="taylor")
    user = np.zeros(6)
    tags = np.zeros(5)
    for (u, t, o), y in zip(BATCHES, LABELS):
        for i in range(u.shape[0]):  # one sample at a time, by hand
            stop = int(o[i + 1]) if i + 1 < u.shape[0] else t.shape[0]
            bag = t[int(o[i]) : stop]
            v_user = model.user.weight[u[i]].detach().requires_grad_(True)
            rows = [model.tags.weight[r].detach().requires_grad_(True) for r in bag.tolist() if r != 0]
            pooled = sum(rows) if rows else torch.zeros(2)
            logit = (v_user + pooled).sum()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[i])
            grads = torch.autograd.grad(loss, [v_user, *rows])
            user[u[i]] += abs(float(grads[0] @ v_user.detach()))
            for r, g, v in zip([r for r in bag.tolist() if r != 0], grads[1:], rows):
                tags[r] += abs(float(g @ v.detach()))
    np.testing.assert_allclose(priority["user.weight"], user, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(priority["tags.weight"], tags, rtol=1e-5, atol=1e-7)
    with pytest.raises(SharkExportError, match="needs labels"):
        score_rows(model, BATCHES, method="taylor")


def test_lookup_not_aligned_with_the_batch_counts_with_the_mean_label_weight():
    """A jagged lookup (flat values of every sample, as torchrec's EmbeddingCollection makes) cannot be tied to
    samples: each occurrence counts with the batch's mean label weight."""

    class Jagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.items = nn.Embedding(4, 2)
            self.user = nn.Embedding(3, 2)

        def forward(self, values, lengths, user):
            pooled = torch.zeros(lengths.shape[0], 2).index_add(0, torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths), self.items(values))
            return (pooled + self.user(user)).sum(1)

    batch = (torch.tensor([0, 1, 1, 3, 2]), torch.tensor([2, 0, 3]), torch.tensor([0, 1, 2]))  # 5 ids, 3 samples
    labels = [torch.tensor([1.0, 0.0, 1.0])]
    got = score_rows(Jagged().eval(), [batch], labels, pos_weight=3.0, neg_weight=0.0)
    mean = (3.0 + 0.0 + 3.0) / 3
    np.testing.assert_allclose(got["items.weight"], [mean, 2 * mean, mean, mean])
    np.testing.assert_allclose(got["user.weight"], [3.0, 0.0, 3.0])  # aligned: per-sample labels
