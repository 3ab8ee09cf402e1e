"""torch-rechub models (https://github.com/datawhalechina/torch-rechub), built the way its examples do.

torch-rechub describes inputs with `torch_rechub.basic.features` (`SparseFeature`, `DenseFeature`,
`SequenceFeature`); a model takes ONE dict {feature name: tensor} (sparse ids [B], dense values [B], sequences
[B, L]) and each model's `EmbeddingLayer` looks features up by name from an `nn.ModuleDict` keyed by feature
name (`shared_with` reads another feature's table).

Structure worth knowing when converting these:
- A feature object creates and caches its `nn.Embedding` on first use (`get_embedding_layer`), so the table
  belongs to the feature object: reusing a feature in two roles of one model reuses the table.
- DeepFM: the deep and FM parts call the same `EmbeddingLayer` with the same sparse features, so every sparse
  field is looked up twice with the same ids in the same table (once flattened for the MLP, once [B, F, D] for
  the FM and the LR on the flattened FM embeddings).
- DIN (as in run_amazon_electronics.py): `target_features` IS the `features` list, so the target item/cate are
  looked up twice; the history `SequenceFeature`s (pooling="concat", shared_with the target) read the target
  tables and the attention has no padding mask.
- DSSM (as in run_ml_dssm.py): the user tower mean-pools the history (`shared_with` the item tower's item
  table): sum(mask * emb) / (mask.sum() + 1e-16), mask = ids != padding_idx (we set padding_idx=0; without it
  rechub's mask is ids != -1, i.e. padding counts). Rows with an EMPTY history divide 0 by 1e-16.
- Outputs: sigmoid probabilities, [B] (MMOE: [B, n_task]).
"""

from __future__ import annotations

import numpy as np
import torch
from torch_rechub.basic.features import DenseFeature, SequenceFeature, SparseFeature
from torch_rechub.models.matching import DSSM
from torch_rechub.models.multi_task import MMOE
from torch_rechub.models.ranking import DCN, DIN, DeepFM, WideDeep

from zoo_data import make_tabular, N_ROWS, split_rows, TRAIN_BATCH, trained_case, ZooCase

LIBRARY = "torch-rechub"


VOCABS = [60, 3000, 5, 1200, 2, 300, 12, 3, 100]
N_DENSE = 3


def _batch(x: dict, sl: slice) -> dict:
    """A batch as rechub's DataGenerator/DataLoader gives it: a dict of tensors."""
    return {k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in x.items()}


def _case(name, model, x: dict, y: np.ndarray, *, kind="ctr", notes="", seed=0, train_batch=TRAIN_BATCH) -> ZooCase:
    y = torch.from_numpy(np.asarray(y, dtype=np.float32))
    return trained_case(name, LIBRARY, model, lambda s: _batch(x, s), lambda s: y[s], split=split_rows(train_batch),
                        seed=seed, kind=kind, notes=notes, extra={"feature_names": list(x)})


def _criteo_style(seed: int, embed_dim: int = 16, tasks: int = 1):
    """As run_criteo.py / run_avazu.py: DenseFeature(name) and SparseFeature(name, vocab_size, embed_dim=16);
    dense values float32, sparse ids int64."""
    data = make_tabular(N_ROWS, VOCABS, n_dense=N_DENSE, tasks=tasks, seed=seed)
    sparse_names = [f"C{i}" for i in range(len(VOCABS))]
    dense_names = [f"I{i}" for i in range(N_DENSE)]
    dense_feas = [DenseFeature(n) for n in dense_names]
    sparse_feas = [SparseFeature(n, vocab_size=v, embed_dim=embed_dim) for n, v in zip(sparse_names, VOCABS)]
    x = {n: data.sparse[:, i] for i, n in enumerate(sparse_names)} | {n: data.dense[:, i] for i, n in enumerate(dense_names)}
    return dense_feas, sparse_feas, x, data.labels


def deepfm(seed: int = 0) -> ZooCase:
    torch.manual_seed(seed)
    dense_feas, sparse_feas, x, y = _criteo_style(seed)
    model = DeepFM(deep_features=dense_feas + sparse_feas, fm_features=sparse_feas,
                   mlp_params={"dims": [256, 128], "dropout": 0.2, "activation": "relu"})
    return _case("rechub.DeepFM", model, x, y, seed=seed,
                 notes="deep = dense + sparse, fm = sparse: each sparse field looked up twice (same table, same ids)")


def widedeep(seed: int = 0) -> ZooCase:
    torch.manual_seed(seed)
    dense_feas, sparse_feas, x, y = _criteo_style(seed)
    model = WideDeep(wide_features=dense_feas, deep_features=sparse_feas,
                     mlp_params={"dims": [256, 128], "dropout": 0.2, "activation": "relu"})
    return _case("rechub.WideDeep", model, x, y, seed=seed, notes="wide = dense features (LR), deep = sparse embeddings")


def dcn(seed: int = 0) -> ZooCase:
    torch.manual_seed(seed)
    dense_feas, sparse_feas, x, y = _criteo_style(seed)
    model = DCN(features=dense_feas + sparse_feas, n_cross_layers=3, mlp_params={"dims": [256, 128]})
    return _case("rechub.DCN", model, x, y, seed=seed, notes="cross network over [sparse embeddings, dense]")


def mmoe(seed: int = 0) -> ZooCase:
    """As run_census.py: SparseFeature(embed_dim=4) + DenseFeature, 2 classification tasks, 8 experts."""
    torch.manual_seed(seed)
    dense_feas, sparse_feas, x, y = _criteo_style(seed, embed_dim=4, tasks=2)
    model = MMOE(sparse_feas + dense_feas, ["classification", "classification"], 8,
                 expert_params={"dims": [16]}, tower_params_list=[{"dims": [8]}, {"dims": [8]}])
    return _case("rechub.MMOE", model, x, y, kind="multitask", seed=seed, notes="output [B, 2] probabilities, labels [B, 2]")


HIST_LEN = 10


def dssm(seed: int = 0) -> ZooCase:
    """As run_ml_dssm.py: user tower = user sparse features + mean-pooled item history shared with the item
    tower's "movie_id"; item tower = item id + item category; output sigmoid(cosine(user, item))."""
    torch.manual_seed(seed)
    vocabs = [1000, 3, 7, 21, 1500, 30]  # user_id, gender, age, occupation | movie_id, cate_id
    names = ["user_id", "gender", "age", "occupation", "movie_id", "cate_id"]
    data = make_tabular(N_ROWS, vocabs, history_field=4, history_len=HIST_LEN, seed=seed)
    user_features = [SparseFeature(n, vocab_size=v, embed_dim=16) for n, v in zip(names[:4], vocabs[:4])]
    user_features += [SequenceFeature("hist_movie_id", vocab_size=vocabs[4], embed_dim=16, pooling="mean",
                                      shared_with="movie_id", padding_idx=0)]
    item_features = [SparseFeature(n, vocab_size=v, embed_dim=16) for n, v in zip(names[4:], vocabs[4:])]
    x = {n: data.sparse[:, i] for i, n in enumerate(names)} | {"hist_movie_id": data.history}
    model = DSSM(user_features, item_features, temperature=0.02,
                 user_params={"dims": [256, 128, 64], "activation": "prelu"},
                 item_params={"dims": [256, 128, 64], "activation": "prelu"})
    empty = int((data.history_len == 0).sum())
    return _case("rechub.DSSM", model, x, data.labels, kind="sequence", seed=seed,
                 notes=f"two towers; mean pooling / (count + 1e-16); {empty} rows with an empty history")


def din(seed: int = 0) -> ZooCase:
    """As run_amazon_electronics.py: features = target_features = [target item, target cate, user]; histories
    of items and of their categories (pooling="concat", shared_with the target features)."""
    torch.manual_seed(seed)
    n_items, n_cates, n_users = 1500, 40, 800
    data = make_tabular(N_ROWS, [n_items, n_users, 5], history_field=0, history_len=HIST_LEN, seed=seed)
    rng = np.random.default_rng(seed + 1)
    cate_of = np.concatenate([[0], rng.integers(1, n_cates, size=n_items - 1)]).astype(np.int64)  # item -> category
    features = [SparseFeature("target_item_id", vocab_size=n_items, embed_dim=8),
                SparseFeature("target_cate_id", vocab_size=n_cates, embed_dim=8),
                SparseFeature("user_id", vocab_size=n_users, embed_dim=8)]
    target_features = features
    history_features = [
        SequenceFeature("hist_item_id", vocab_size=n_items, embed_dim=8, pooling="concat", shared_with="target_item_id"),
        SequenceFeature("hist_cate_id", vocab_size=n_cates, embed_dim=8, pooling="concat", shared_with="target_cate_id"),
    ]
    item = data.sparse[:, 0]
    x = {"target_item_id": item, "target_cate_id": cate_of[item], "user_id": data.sparse[:, 1],
         "hist_item_id": data.history, "hist_cate_id": cate_of[data.history]}
    model = DIN(features=features, history_features=history_features, target_features=target_features,
                mlp_params={"dims": [256, 128]}, attention_mlp_params={"dims": [256, 128]})
    # batches of 256: the attention MLP runs on B * HIST_LEN rows (keeps the build under ~5 s on 2 cores)
    return _case("rechub.DIN", model, x, data.labels, kind="sequence", seed=seed, train_batch=256,
                 notes="target features looked up twice (features is target_features); histories share target tables")


CASES = {
    "rechub.DeepFM": deepfm,
    "rechub.WideDeep": widedeep,
    "rechub.DCN": dcn,
    "rechub.DSSM": dssm,
    "rechub.MMOE": mmoe,
    "rechub.DIN": din,
}
