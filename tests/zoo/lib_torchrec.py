"""torchrec models (https://github.com/meta-pytorch/torchrec, import torchrec), unsharded, on CPU.

torchrec models take their sparse features as ONE `KeyedJaggedTensor` (KJT): `keys` (feature names),
`values` (every id of every feature, key-major: all ids of feature 0 for samples 0..B-1, then feature 1, ...)
and `lengths` (F*B bag sizes, key-major), optionally `weights` (one float per id). The embedding modules are
`EmbeddingBagCollection` (pooled: one `nn.EmbeddingBag(include_last_offset=True)` per table, called once
per feature with `input=ids, offsets=B+1 offsets[, per_sample_weights=]`; returns a `KeyedTensor`) and
`EmbeddingCollection` (unpooled: one `nn.Embedding` per table, called once per feature; returns
`Dict[str, JaggedTensor]`). A table serves several features when its config lists several `feature_names`.

Structure worth knowing when converting these:
- forward's inputs are `(dense [B, 4] float, kjt)`; the KJT flattens (torchrec's pytree registration) to
  `_values, _weights, _lengths, _offsets, _stride_per_key_per_rank, _inverse_indices`, `None` where unset.
  The KJTs built here set values + lengths (+ weights for the weighted case) only, so the graph inputs
  are `[0][0]` (dense), `[0][1]._values`, (`[0][1]._weights`), `[0][1]._lengths`.
- Keys: "user" (1 id per sample), "item" (1 id), "item_hist" (0..6 ids: the user's history, shares the item
  table), "cat" (0 or 1 id: ~20 % of samples have none). So there are empty bags in every batch.
- torch.export needs a dynamic_shapes spec that gives a KJT the list of its six children's specs (see
  shark_export/torchrec_compat.py); lengths has F*B entries, values one per id.
- DLRM / DLRM_DCN output logits [B, 1]; the custom models output logits [B].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from zoo_data import make_tabular, N_ROWS, TabularData, trained_case, ZooCase

LIBRARY = "torchrec"


N_DENSE = 4
HIST_LEN = 6
# Vocabularies of the id fields of make_tabular: user, item (also the history's items), cat.
VOCABS = [2000, 500, 10]
KEYS = ["user", "item", "item_hist", "cat"]
CAT_MISSING = 0.2


# ---- data --------------------------------------------------------------------------------------------


def _data(seed: int) -> tuple[TabularData, np.ndarray]:
    data = make_tabular(N_ROWS, VOCABS, n_dense=N_DENSE, history_field=1, history_len=HIST_LEN, seed=seed)
    cat_present = np.random.default_rng(seed + 1).random(len(data.labels)) >= CAT_MISSING
    return data, cat_present


def _kjt(data: TabularData, cat_present: np.ndarray, rows: slice, weighted: bool) -> KeyedJaggedTensor:
    """The KJT of samples `rows`: keys KEYS, key-major values and lengths (int64); weights when `weighted`
    (1 for user / item / cat, 1 / (1 + position) for the history: recent items weigh more)."""
    user, item, cat = data.sparse[rows, 0], data.sparse[rows, 1], data.sparse[rows, 2]
    B = len(user)
    hist_len = data.history_len[rows]
    in_hist = np.arange(HIST_LEN)[None, :] < hist_len[:, None]
    present = cat_present[rows]
    values = np.concatenate([user, item, data.history[rows][in_hist], cat[present]]).astype(np.int64)
    lengths = np.concatenate([np.ones(B), np.ones(B), hist_len, present]).astype(np.int64)
    weights = None
    if weighted:
        recency = 1.0 / (1.0 + np.broadcast_to(np.arange(HIST_LEN), in_hist.shape)[in_hist])
        weights = torch.from_numpy(np.concatenate([np.ones(2 * B), recency, np.ones(int(present.sum()))]).astype(np.float32))
    return KeyedJaggedTensor(keys=list(KEYS), values=torch.from_numpy(values), lengths=torch.from_numpy(lengths), weights=weights)


def _case(name, seed, make_model, *, weighted=False, kind="ctr", notes="") -> ZooCase:
    """The model from `make_model()`, trained on (dense, kjt) batches with BCE on logits."""
    data, cat_present = _data(seed)
    torch.manual_seed(seed)
    model = make_model()
    dense = torch.from_numpy(data.dense)
    y = torch.from_numpy(np.asarray(data.labels, dtype=np.float32))
    return trained_case(name, LIBRARY, model, lambda s: (dense[s], _kjt(data, cat_present, s, weighted)), lambda s: y[s],
                        loss="bce_logit", seed=seed, kind=kind, notes=notes,
                        extra={"keys": list(KEYS), "weighted": weighted})


# ---- models ------------------------------------------------------------------------------------------


def _bag_tables(dims=(8, 8, 8), item_pooling=PoolingType.MEAN) -> list[EmbeddingBagConfig]:
    """user (2000 rows), item (500 rows, features item + item_hist), cat (10 rows). Fresh configs per model:
    torchrec's modules keep (and may fill in) the config objects."""
    return [
        EmbeddingBagConfig(name="t_user", embedding_dim=dims[0], num_embeddings=VOCABS[0], feature_names=["user"]),
        EmbeddingBagConfig(name="t_item", embedding_dim=dims[1], num_embeddings=VOCABS[1],
                           feature_names=["item", "item_hist"], pooling=item_pooling),
        EmbeddingBagConfig(name="t_cat", embedding_dim=dims[2], num_embeddings=VOCABS[2], feature_names=["cat"]),
    ]


def dlrm(seed: int = 0) -> ZooCase:
    def make():
        ebc = EmbeddingBagCollection(tables=_bag_tables())
        return DLRM(embedding_bag_collection=ebc, dense_in_features=N_DENSE, dense_arch_layer_sizes=[16, 8],
                    over_arch_layer_sizes=[16, 1])

    return _case("torchrec.DLRM", seed, make,
                 notes="EBC of 3 D=8 tables, t_item (mean) serves item + item_hist; dot interaction; logits [B, 1]")


def dlrm_dcn(seed: int = 0) -> ZooCase:
    def make():
        ebc = EmbeddingBagCollection(tables=_bag_tables())
        return DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=N_DENSE, dense_arch_layer_sizes=[16, 8],
                        over_arch_layer_sizes=[16, 1], dcn_num_layers=2, dcn_low_rank_dim=4)

    return _case("torchrec.DLRM_DCN", seed, make,
                 notes="as DLRM with a 2-layer low-rank (4) cross network as the interaction; logits [B, 1]")


class WeightedEBCModel(nn.Module):
    """A weighted EBC (per-id weights, sum pooling) with mixed dims (16, 16, 8) and an MLP over the
    KeyedTensor's values and the dense features."""

    def __init__(self):
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=_bag_tables(dims=(16, 16, 8), item_pooling=PoolingType.SUM), is_weighted=True)
        width = 16 + 16 + 16 + 8 + N_DENSE
        self.mlp = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features)  # KeyedTensor: user(16) | item(16) | item_hist(16) | cat(8)
        return self.mlp(torch.cat([pooled.values(), dense], dim=1)).squeeze(1)


def weighted_ebc(seed: int = 0) -> ZooCase:
    return _case("torchrec.EBC_weighted", seed, WeightedEBCModel, weighted=True,
                 notes="is_weighted EBC (per_sample_weights, sum), D=16/16/8, KJT with weights; logits [B]")


def _jagged_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of each bag of a jagged [N, D] tensor ([B, D]; 0 for an empty bag), with ops that export to
    ONNX (scatter_add + cumsum, no repeat_interleave / fbgemm)."""
    n = values.shape[0]
    ends = torch.cumsum(lengths, 0)
    marks = torch.zeros(n + 1, dtype=lengths.dtype, device=lengths.device).scatter_add(0, ends, torch.ones_like(ends))
    bag = torch.cumsum(marks, 0)[:n]  # bag index of each value
    index = bag.unsqueeze(1).expand(-1, values.shape[1])
    total = torch.zeros(lengths.shape[0], values.shape[1], dtype=values.dtype, device=values.device).scatter_add(0, index, values)
    return total / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


class ECPoolingModel(nn.Module):
    """An EmbeddingCollection (unpooled, D=8) whose per-feature JaggedTensors are mean-pooled by the model
    itself, plus an item x history interaction and the dense features."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.ec = EmbeddingCollection(tables=[
            EmbeddingConfig(name="t_user", embedding_dim=dim, num_embeddings=VOCABS[0], feature_names=["user"]),
            EmbeddingConfig(name="t_item", embedding_dim=dim, num_embeddings=VOCABS[1], feature_names=["item", "item_hist"]),
            EmbeddingConfig(name="t_cat", embedding_dim=dim, num_embeddings=VOCABS[2], feature_names=["cat"]),
        ])
        self.mlp = nn.Sequential(nn.Linear(5 * dim + N_DENSE, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor) -> torch.Tensor:
        jagged = self.ec(features)
        pooled = {key: _jagged_mean(jt.values(), jt.lengths()) for key, jt in jagged.items()}
        interaction = pooled["item"] * pooled["item_hist"]
        x = torch.cat([pooled["user"], pooled["item"], pooled["item_hist"], pooled["cat"], interaction, dense], dim=1)
        return self.mlp(x).squeeze(1)


def ec_pooling(seed: int = 0) -> ZooCase:
    return _case("torchrec.EC_pooling", seed, ECPoolingModel, kind="sequence",
                 notes="EmbeddingCollection (nn.Embedding per table, unpooled), mean-pooled in the model; logits [B]")


CASES = {
    "torchrec.DLRM": dlrm,
    "torchrec.DLRM_DCN": dlrm_dcn,
    "torchrec.EBC_weighted": weighted_ebc,
    "torchrec.EC_pooling": ec_pooling,
}
