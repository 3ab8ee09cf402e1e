"""deepctr-torch models (https://github.com/shenweichen/DeepCTR-Torch), built the way its README/examples do.

deepctr-torch describes inputs with feature columns (`SparseFeat`, `DenseFeat`, `VarLenSparseFeat`); the model
takes ONE float matrix X whose columns are the features in `model.feature_index` order (a sparse id is one
column, a dense feature `dimension` columns, a history `maxlen` columns plus its length column). Every forward
slices its columns out of X and casts id columns with `.long()`, so the ids the tables see are computed inside
forward from a float input. Its `fit()` builds X exactly like `_matrix` below; we train with `train_briefly`.

Structure worth knowing when converting these:
- Models with a linear part (DeepFM, WDL, xDeepFM, DCN, NFM, AFM) hold a second set of tables, `linear_model.
  embedding_dict.*`, with embedding dim 1, looked up with the same ids as the embedding tables.
- Tables are keyed by `embedding_name`: DIN's history feature (`hist_item`, embedding_name="item") reads the
  target item's table, and DIN looks the target item up twice with the same ids (query and deep input).
- task="binary" ends in a sigmoid: outputs are probabilities [B, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from deepctr_torch.models import AFM, DCN, DIN, NFM, WDL, DeepFM, xDeepFM

from zoo_data import make_tabular, N_ROWS, trained_case, ZooCase

LIBRARY = "deepctr-torch"


# Sparse fields: a mix of tiny (2-5 rows), medium and ~3000-row vocabularies.
VOCABS = [60, 3000, 5, 1200, 2, 300, 12, 3, 100]
N_DENSE = 3


def _matrix(model, x: dict) -> np.ndarray:
    """X as deepctr's `BaseModel.fit`/`predict` build it: the features in `feature_index` order, 1-D arrays
    made columns, concatenated and cast to float32."""
    cols = []
    for name in model.feature_index:
        arr = np.asarray(x[name])
        cols.append(arr[:, None] if arr.ndim == 1 else arr)
    return np.concatenate(cols, axis=-1).astype(np.float32)


def _case(name, model, X: np.ndarray, y: np.ndarray, *, kind="ctr", notes="", seed=0) -> ZooCase:
    X = torch.from_numpy(X)
    y = torch.from_numpy(np.asarray(y, dtype=np.float32))
    return trained_case(name, LIBRARY, model, lambda s: X[s], lambda s: y[s], seed=seed, kind=kind, notes=notes,
                        extra={"feature_names": list(model.feature_index)})


def _criteo_style(seed: int):
    """Feature columns as in deepctr's run_classification_criteo.py: SparseFeat(name, vocabulary_size) (default
    embedding_dim=4) and DenseFeat(name, 1); the same columns for the linear and the dnn part."""
    data = make_tabular(N_ROWS, VOCABS, n_dense=N_DENSE, seed=seed)
    sparse = [f"C{i}" for i in range(len(VOCABS))]
    dense = [f"I{i}" for i in range(N_DENSE)]
    columns = [SparseFeat(f, v) for f, v in zip(sparse, VOCABS)] + [DenseFeat(f, 1) for f in dense]
    x = {f: data.sparse[:, i] for i, f in enumerate(sparse)} | {f: data.dense[:, i] for i, f in enumerate(dense)}
    return columns, x, data.labels


def _sparse_only(seed: int, dim: int = 8):
    """Sparse-only columns with one embedding dim (AFM/NFM pair up embeddings, so every field shares the dim)."""
    data = make_tabular(N_ROWS, VOCABS, seed=seed)
    sparse = [f"C{i}" for i in range(len(VOCABS))]
    columns = [SparseFeat(f, v, embedding_dim=dim) for f, v in zip(sparse, VOCABS)]
    x = {f: data.sparse[:, i] for i, f in enumerate(sparse)}
    return columns, x, data.labels


def deepfm(seed: int = 0) -> ZooCase:
    columns, x, y = _criteo_style(seed)
    model = DeepFM(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", l2_reg_embedding=1e-5, device="cpu")
    return _case("deepctr.DeepFM", model, _matrix(model, x), y, seed=seed,
                 notes="criteo-style columns (embedding_dim 4) for linear and dnn; D=1 linear tables beside the D=4 ones")


def wdl(seed: int = 0) -> ZooCase:
    columns, x, y = _criteo_style(seed)
    model = WDL(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", device="cpu")
    return _case("deepctr.WDL", model, _matrix(model, x), y, seed=seed, notes="wide = D=1 linear tables, deep = D=4 tables")


def xdeepfm(seed: int = 0) -> ZooCase:
    columns, x, y = _criteo_style(seed)
    model = xDeepFM(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", device="cpu")
    return _case("deepctr.xDeepFM", model, _matrix(model, x), y, seed=seed, notes="CIN + DNN + linear")


def dcn(seed: int = 0) -> ZooCase:
    columns, x, y = _criteo_style(seed)
    model = DCN(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", device="cpu")
    return _case("deepctr.DCN", model, _matrix(model, x), y, seed=seed, notes="cross_num=2 vector cross + DNN + linear")


def nfm(seed: int = 0) -> ZooCase:
    columns, x, y = _sparse_only(seed)
    model = NFM(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", device="cpu")
    return _case("deepctr.NFM", model, _matrix(model, x), y, seed=seed, notes="bi-interaction pooling, sparse only, dim 8")


def afm(seed: int = 0) -> ZooCase:
    columns, x, y = _sparse_only(seed)
    model = AFM(linear_feature_columns=columns, dnn_feature_columns=columns, task="binary", device="cpu")
    return _case("deepctr.AFM", model, _matrix(model, x), y, seed=seed, notes="attentional pairwise interactions, sparse only, dim 8")


HIST_LEN = 10


def din(seed: int = 0) -> ZooCase:
    """As deepctr's DIN example (run_din.py): user/gender/item/cate sparse features, a dense score and the item
    history as VarLenSparseFeat sharing the item table (embedding_name="item") with a length column; the
    behavior feature list is ["item"]. Some histories are empty (length 0)."""
    vocabs = [800, 2, 1500, 40, 5]  # user, gender, item, cate, context
    names = ["user", "gender", "item", "cate", "ctx"]
    data = make_tabular(N_ROWS, vocabs, n_dense=1, history_field=2, history_len=HIST_LEN, seed=seed)
    columns = [SparseFeat(n, v, embedding_dim=8) for n, v in zip(names, vocabs)] + [DenseFeat("score", 1)]
    columns += [
        VarLenSparseFeat(SparseFeat("hist_item", vocabs[2], embedding_dim=8, embedding_name="item"), HIST_LEN, length_name="seq_length")
    ]
    x = {n: data.sparse[:, i] for i, n in enumerate(names)}
    x |= {"score": data.dense[:, 0], "hist_item": data.history, "seq_length": data.history_len}
    assert set(get_feature_names(columns)) == set(x)
    model = DIN(columns, ["item"], device="cpu", att_weight_normalization=True)
    return _case("deepctr.DIN", model, _matrix(model, x), y=data.labels, kind="sequence", seed=seed,
                 notes="hist_item shares the item table; item looked up twice (query + deep input); length column in X")


def deepfm_multivalue(seed: int = 0) -> ZooCase:
    """As deepctr's run_multivalue_movielens.py: a multi-valued VarLenSparseFeat (combiner="mean", no length
    column, so id 0 is padding and the mean divides by the count of non-zero ids + eps) in both the linear and
    the dnn columns of a DeepFM. Some rows have no values at all."""
    vocabs = [800, 2, 1500, 40, 5]
    names = ["user", "gender", "item", "cate", "ctx"]
    data = make_tabular(N_ROWS, vocabs, history_field=2, history_len=HIST_LEN, seed=seed)
    columns = [SparseFeat(n, v, embedding_dim=4) for n, v in zip(names, vocabs)]
    columns += [VarLenSparseFeat(SparseFeat("hist_item", vocabs[2], embedding_dim=4), maxlen=HIST_LEN, combiner="mean")]
    x = {n: data.sparse[:, i] for i, n in enumerate(names)} | {"hist_item": data.history}
    model = DeepFM(columns, columns, task="binary", device="cpu")
    return _case("deepctr.DeepFM_multivalue", model, _matrix(model, x), data.labels, kind="sequence", seed=seed,
                 notes="mean-pooled multi-value field (own table, D=4 and D=1 linear), mask = ids != 0")


CASES = {
    "deepctr.DeepFM": deepfm,
    "deepctr.WDL": wdl,
    "deepctr.xDeepFM": xdeepfm,
    "deepctr.DCN": dcn,
    "deepctr.NFM": nfm,
    "deepctr.AFM": afm,
    "deepctr.DIN": din,
    "deepctr.DeepFM_multivalue": deepfm_multivalue,
}
