"""Smoke tests of the samples on the real datasets (small subsets, 1 epoch, D = 8, int8).

Each test loads the real data from ../shared/data (or $SHARK_EXPORT_DATA), trains a DeepFM-style model,
converts it with int8 and checks: faithfulness passes (atol 1e-5, convert's check and the whole held-out
subset), the byte report matches the stored tensors, and the converted model's held-out AUC is within
0.01 of torch's. Skipped, with the path in the reason, when the data folder is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # the slow tier: the fast one is `pytest -m "not slow"`

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
if str(SAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(SAMPLES_DIR))
# `datasets` is a common top-level name (e.g. Hugging Face): make sure ours is the one imported.
_cached = sys.modules.get("datasets")
if _cached is not None and Path(getattr(_cached, "__file__", "") or "").resolve().parent != SAMPLES_DIR:
    del sys.modules["datasets"]

import common  # noqa: E402
import datasets  # noqa: E402

DATA_ROOT = Path(os.environ.get("SHARK_EXPORT_DATA", datasets.DEFAULT_DATA_ROOT))

# (dataset, rows kept from the train split, rows kept from the held-out split, batch size); lr 1e-2 so
# that one epoch on a few thousand rows learns something (held-out AUC 0.70-0.85).
CASES = [
    ("movielens", 20_000, 5_000, 512),
    ("frappe", 10_000, 4_000, 512),
    ("criteo", 4_000, 2_000, 256),
    ("avazu", None, None, 256),
]


@pytest.mark.parametrize("name,max_train,max_test,batch_size", CASES, ids=[c[0] for c in CASES])
def test_sample_int8_smoke(tmp_path, name, max_train, max_test, batch_size):
    try:
        ds = datasets.load(name, DATA_ROOT, max_train=max_train, max_test=max_test)
    except datasets.DataNotFound as exc:
        pytest.skip(str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = common.train_model(ds, 8, epochs=1, batch_size=batch_size, lr=1e-2, seed=0)
        result = common.convert_and_check(trained, "int8", tmp_path)
    finally:
        torch.set_num_threads(threads)

    assert all(f.cardinality >= 2 for f in ds.fields)  # every field has its OOV row 0 plus train values
    assert result.faithfulness_passed, result.report_text
    assert result.faithfulness_max_abs <= 1e-5
    assert result.heldout_faithfulness_passed, result.report_text
    assert result.size_ok, result.report_text
    assert result.tiers == {"int8": sum(f.cardinality for f in ds.fields)}
    assert result.auc_torch > 0.6, f"{name}: the smoke model did not learn anything (AUC {result.auc_torch:.4f})"
    assert abs(result.auc_delta) <= 0.01, result.report_text


def test_missing_data_folder_is_reported(tmp_path):
    with pytest.raises(datasets.DataNotFound, match="not found at"):
        datasets.load("criteo", tmp_path)


@pytest.mark.parametrize("name", list(datasets.LOADERS))
def test_splits_are_deterministic_and_ids_dense(name):
    try:
        a = datasets.load(name, DATA_ROOT, max_train=3_000, max_test=1_000)
        b = datasets.load(name, DATA_ROOT, max_train=3_000, max_test=1_000)
    except datasets.DataNotFound as exc:
        pytest.skip(str(exc))
    assert (a.train_labels == b.train_labels).all() and (a.test_labels == b.test_labels).all()
    for f in a.fields:
        for cols in (a.train_columns, a.test_columns):
            values = cols[f.name]
            flat = np.concatenate(values) if f.multi_hot else values
            assert flat.min() >= 0 and flat.max() < f.cardinality, f.name
        train_flat = np.concatenate(a.train_columns[f.name]) if f.multi_hot else a.train_columns[f.name]
        # the vocabulary is built on train: every row 1..n is used by train, row 0 (OOV) never is
        assert set(train_flat.tolist()) == set(range(1, f.cardinality)), f.name


def test_prune_finetune_convert_on_movielens(tmp_path, capsys):
    """The samples' prune -> fine-tune -> convert path: the pruned fields leave the converted graph, the
    fine-tuned copy converts faithfully, and the AUC before and after is printed."""
    try:
        ds = datasets.load("movielens", DATA_ROOT, max_train=20_000, max_test=5_000)
    except datasets.DataNotFound as exc:
        pytest.skip(str(exc))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = common.train_model(ds, 8, epochs=1, batch_size=512, lr=1e-2, seed=0)
        pruned = common.prune_and_finetune(trained, keep=5, epochs=1, lr=1e-2, score_batches=8)
        result = common.convert_and_check(pruned, "int8", tmp_path)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "pruned 4 field(s)" in out and "(fine-tuned 1 epoch(s))" in out
    assert result.faithfulness_passed and result.heldout_faithfulness_passed, result.report_text
    assert "pruned fields:" in result.report_text
    assert result.auc_torch == pytest.approx(common.heldout_auc(pruned.model, pruned), abs=1e-6)
