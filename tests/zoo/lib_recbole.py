"""RecBole models (https://github.com/RUCAIBox/RecBole), built through their constructors `Model(config, dataset)`.

RecBole builds models from a `Config` (its YAML defaults: properties/overall.yaml, properties/model/<Model>.yaml,
properties/dataset/sample.yaml and the quick-start file of the model type) and a `Dataset` loaded from atomic
files. Neither is usable here as is (see the notes below), so we pass what the constructors read:
- `_ConfigLike`: RecBole's own YAML defaults for the model, loaded from the installed package in the same order
  and with the same float-aware YAML loader as `Config`, plus a few overrides (device=cpu, field names,
  MAX_ITEM_LIST_LENGTH, numerical_features); a missing key reads as None, as in `Config.__getitem__`.
- `_DatasetLike`: `num(field)`, `fields(ftype=, source=)` and `field2type` / `field2source`, with the values a
  remapped RecBole dataset has: token fields have id 0 = "[PAD]" and real tokens 1..n-1 (so `num` = n), numerical
  float fields are stored as (value, 1) pairs with 2 "buckets" (`field2bucketnum` = 2).

RecBole's `forward`/`predict` take an `Interaction`; the converted module is a small wrapper (`SeqScore`,
`SeqFullSort`, `ContextScore`) whose forward takes tensors, builds an `Interaction` and calls the library's own
`predict` / `full_sort_predict`:
- `SeqScore(item_seq, item_seq_len, item_id)`: sigmoid of `predict` (the dot product of the sequence output and
  the target item's embedding) -> probability [B].
- `SeqFullSort(item_seq, item_seq_len)`: `full_sort_predict` -> raw scores [B, n_items] =
  seq_output @ item_embedding.weight.T, i.e. the item table used a second time as the output projection (tied).
  Its labels are [B, n_items] (y_b at (b, target_b), 0 elsewhere) and it is trained with BCE-with-logits on them;
  extra["target_item"] / extra["row_labels"] hold the per-row form.
- `ContextScore(token_ids [B, F], float_values [B, K])`: `predict` (sigmoid of forward) -> probability [B].
Sequences are right-padded with 0 and `item_seq_len` >= 1 (RecBole never has an empty history: its
`gather_indexes(item_seq_len - 1)` would index -1).

Structure worth knowing when converting these:
- Context-aware models (FM, DeepFM, WideDeep, DCN) put ALL token fields in ONE table (`FMEmbedding`: sum of the
  fields' sizes, D=embedding_size, per-field offsets added inside forward) and the first-order part in a second
  such table with D=1 (`first_order_linear.token_embedding_table`); numerical float fields are `FLEmbedding`
  tables (2 rows per field) looked up with index 1, computed inside the wrapper, times the value.
- SASRec adds a position table (MAX_ITEM_LIST_LENGTH rows) looked up with arange(L) (no input ids at all).

Import/compat notes (see /tmp/zoo_notes_widedeep_recbole.md):
- recbole.utils imports `colorlog`, `texttable` and `torch.utils.tensorboard` (needs the `tensorboard` package)
  at import time. If `tensorboard` is not installed, `torch.utils.tensorboard` is replaced by a placeholder
  module for the import and removed again from sys.modules afterwards.
- RecBole 1.2.1 predates NumPy 2: `Config.__init__` runs `compatibility_settings()`, which reads `np.float_`,
  `np.complex_`, `np.unicode_` (removed in NumPy 2) -> AttributeError; `Interaction` built from lists/ndarrays
  reads `np.float` -> AttributeError. We never construct a `Config`, and build `Interaction`s from tensors
  only. (`Config` would also parse sys.argv and set CUDA_VISIBLE_DEVICES for the whole process.) The model code
  used here runs unchanged on NumPy 2 (`np.long` exists again in NumPy 2).
- Importing recbole.model.sequential_recommender turns on autograd anomaly detection for the whole process
  (sine.py: `torch.autograd.set_detect_anomaly(True)` at module level); `_import_recbole` restores the previous
  setting.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import sys
import types

import numpy as np
import torch
import yaml
from torch import nn

from zoo_data import make_tabular, N_ROWS, split_rows, TRAIN_BATCH, trained_case, ZooCase

LIBRARY = "recbole"

# ---- import --------------------------------------------------------------------------------------------


def _import_recbole():
    inserted = []
    if "torch.utils.tensorboard" not in sys.modules and importlib.util.find_spec("tensorboard") is None:
        # recbole/utils/utils.py: `from torch.utils.tensorboard import SummaryWriter` (only used by the trainer)
        name = "torch.utils.tensorboard"
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)

        class SummaryWriter:  # noqa: D401
            def __init__(self, *args, **kwargs):
                raise ImportError("torch.utils.tensorboard needs the 'tensorboard' package (zoo placeholder)")

        mod.SummaryWriter = SummaryWriter
        sys.modules[name] = mod
        inserted.append(name)
    anomaly = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
    try:
        import recbole
        from recbole.data.interaction import Interaction
        from recbole.model import context_aware_recommender as context
        from recbole.model import sequential_recommender as sequential
        from recbole.utils import FeatureSource, FeatureType
    finally:
        # recbole/model/sequential_recommender/sine.py runs torch.autograd.set_detect_anomaly(True) at import:
        # undo it (it slows every backward in the process ~5x and is not ours to change)
        torch.autograd.set_detect_anomaly(*anomaly)
        for name in inserted:
            sys.modules.pop(name, None)
    return recbole, Interaction, context, sequential, FeatureSource, FeatureType


_recbole, Interaction, _context, _sequential, FeatureSource, FeatureType = _import_recbole()
SASRec, GRU4Rec, NARM = _sequential.SASRec, _sequential.GRU4Rec, _sequential.NARM
FM, DeepFM, RecWideDeep, DCN = _context.FM, _context.DeepFM, _context.WideDeep, _context.DCN

# ---- Config-like and Dataset-like objects ----------------------------------------------------------------

_PROPERTIES = os.path.join(os.path.dirname(_recbole.__file__), "properties")


class _YamlLoader(yaml.FullLoader):
    """RecBole's `Config._build_yaml_loader` (floats such as `1e-12` parse as floats), on a subclass so the
    global yaml.FullLoader stays untouched."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        """^(?:
     [-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*
    |[-+]?\\.(?:inf|Inf|INF)
    |\\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _ConfigLike:
    """What `Model(config, dataset)` reads from a recbole `Config`: `config[key]`, None when missing."""

    def __init__(self, model_cls, overrides: dict):
        files = [
            os.path.join(_PROPERTIES, "overall.yaml"),
            os.path.join(_PROPERTIES, "model", model_cls.__name__ + ".yaml"),
            os.path.join(_PROPERTIES, "dataset", "sample.yaml"),
            os.path.join(
                _PROPERTIES,
                "quick_start_config",
                "sequential.yaml" if model_cls.type.name == "SEQUENTIAL" else "context-aware.yaml",
            ),
        ]
        self.final_config_dict: dict = {}
        for f in files:
            with open(f, encoding="utf-8") as fh:
                self.final_config_dict.update(yaml.load(fh.read(), Loader=_YamlLoader) or {})
        self.final_config_dict.update(
            {"model": model_cls.__name__, "dataset": "zoo", "MODEL_TYPE": model_cls.type, "gpu_id": "",
             "use_gpu": False, "device": torch.device("cpu"), "single_spec": True, "local_rank": 0}
        )
        self.final_config_dict.update(overrides)

    def __getitem__(self, key):
        return self.final_config_dict.get(key)

    def __setitem__(self, key, value):
        self.final_config_dict[key] = value

    def __contains__(self, key):
        return key in self.final_config_dict


class _DatasetLike:
    """What the model constructors read from a recbole `Dataset`: `num`, `fields`, `field2type`, `field2source`.
    `fields`: name -> (FeatureType, FeatureSource, size) in the dataset's field order."""

    def __init__(self, config: _ConfigLike, fields: dict):
        self.config = config
        self.field2type = {k: t for k, (t, _, _) in fields.items()}
        self.field2source = {k: s for k, (_, s, _) in fields.items()}
        self._size = {k: n for k, (_, _, n) in fields.items()}

    def num(self, field):
        if field not in self.field2type:
            raise ValueError(f"Field [{field}] not defined in dataset.")
        return self._size[field]

    def fields(self, ftype=None, source=None):
        ftype = set(ftype) if ftype is not None else set(FeatureType)
        source = set(source) if source is not None else set(FeatureSource)
        return [f for f in self.field2type if self.field2type[f] in ftype and self.field2source[f] in source]


# ---- wrappers: tensors in, the library's predict / full_sort_predict out ----------------------------------


class SeqScore(nn.Module):
    """forward(item_seq [B, L], item_seq_len [B], item_id [B]) -> sigmoid(model.predict(Interaction)) [B]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, item_seq, item_seq_len, item_id):
        m = self.model
        inter = Interaction({m.ITEM_SEQ: item_seq, m.ITEM_SEQ_LEN: item_seq_len, m.ITEM_ID: item_id})
        return torch.sigmoid(m.predict(inter))


class SeqFullSort(nn.Module):
    """forward(item_seq [B, L], item_seq_len [B]) -> model.full_sort_predict(Interaction): scores [B, n_items]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, item_seq, item_seq_len):
        m = self.model
        return m.full_sort_predict(Interaction({m.ITEM_SEQ: item_seq, m.ITEM_SEQ_LEN: item_seq_len}))


class ContextScore(nn.Module):
    """forward(token_ids [B, F] int64, float_values [B, K] float32) -> model.predict(Interaction) [B].
    Column f of token_ids is token field `token_fields[f]`; a numerical float field is given to the model as
    RecBole's dataset stores it, the pair (value, 1)."""

    def __init__(self, model, token_fields: list[str], float_fields: list[str]):
        super().__init__()
        self.model = model
        self.token_fields = list(token_fields)
        self.float_fields = list(float_fields)

    def forward(self, token_ids, float_values=None):
        data = {f: token_ids[:, i] for i, f in enumerate(self.token_fields)}
        for i, f in enumerate(self.float_fields):
            v = float_values[:, i]
            data[f] = torch.stack([v, torch.ones_like(v)], dim=-1)
        return self.model.predict(Interaction(data))


# ---- data / training -----------------------------------------------------------------------------------

SEQ_TRAIN_BATCH = 256  # the sequence models learn more in 60 steps of 256 rows than of 512 (and 2x faster)
LR = 0.01


def _case(name, model, X: tuple, labels, *, loss="bce_prob", kind="ctr", notes="", seed=0, extra=None,
          train_batch=None) -> ZooCase:
    """`labels` is a tensor indexed by row slices, or a function slice -> label tensor."""
    label_of = labels if callable(labels) else (lambda s: labels[s])
    return trained_case(name, LIBRARY, model, lambda s: tuple(t[s] for t in X), label_of,
                        split=split_rows(train_batch or TRAIN_BATCH), loss=loss, lr=LR, seed=seed, kind=kind,
                        notes=notes, extra=extra)


# -- sequential ---------------------------------------------------------------------------------------------

N_ITEMS = 2000  # item ids 1..1999, 0 = [PAD]; dataset.num("item_id") = 2000
HIST_LEN = 10  # = MAX_ITEM_LIST_LENGTH (RecBole default 50; sequences right-padded to it)


def _sequences(seed: int):
    """(item_seq [N, L], item_seq_len [N], item_id [N], labels [N]) in RecBole's layout: make_tabular's history
    (right-padded, 0 = padding) of the item field, its target item, and only rows with a non-empty history."""
    data = make_tabular(int(N_ROWS * 1.25), [N_ITEMS], history_field=0, history_len=HIST_LEN, seed=seed)
    keep = np.flatnonzero(data.history_len > 0)[:N_ROWS]
    assert len(keep) == N_ROWS
    item_seq = torch.from_numpy(data.history[keep].astype(np.int64))
    item_seq_len = torch.from_numpy(data.history_len[keep].astype(np.int64))
    item_id = torch.from_numpy(data.sparse[keep, 0].astype(np.int64))
    y = torch.from_numpy(data.labels[keep].astype(np.float32))
    return item_seq, item_seq_len, item_id, y


def _seq_model(model_cls, seed: int, **overrides):
    config = _ConfigLike(model_cls, {"MAX_ITEM_LIST_LENGTH": HIST_LEN, **overrides})
    item = config["ITEM_ID_FIELD"]
    user = config["USER_ID_FIELD"]
    dataset = _DatasetLike(config, {
        user: (FeatureType.TOKEN, FeatureSource.USER_ID, 1),
        item: (FeatureType.TOKEN, FeatureSource.ITEM_ID, N_ITEMS),
        item + config["LIST_SUFFIX"]: (FeatureType.TOKEN_SEQ, FeatureSource.INTERACTION, N_ITEMS),
        config["ITEM_LIST_LENGTH_FIELD"]: (FeatureType.TOKEN, FeatureSource.INTERACTION, HIST_LEN + 1),
    })
    torch.manual_seed(seed)
    return model_cls(config, dataset)


def _seq_ctr(name, model_cls, seed, notes, **overrides) -> ZooCase:
    item_seq, item_seq_len, item_id, y = _sequences(seed)
    model = SeqScore(_seq_model(model_cls, seed, **overrides))
    return _case(name, model, (item_seq, item_seq_len, item_id), y, kind="sequence", seed=seed, notes=notes,
                 train_batch=SEQ_TRAIN_BATCH,
                 extra={"inputs": ["item_seq", "item_seq_len", "item_id"], "output": "probability [B]",
                        "n_items": N_ITEMS})


def _seq_full(name, model_cls, seed, notes, **overrides) -> ZooCase:
    """SeqFullSort, trained on its own output: labels are [B, n_items], row b holding its label y_b at its target
    item's column and 0 elsewhere (implicit feedback: unobserved items count as negatives), loss = BCE with logits
    over all items. Their AUC (over all B x n_items entries) is mostly item popularity and the history signal,
    read through the tied item table. extra["target_item"] / extra["row_labels"] (and test_*) give the per-row
    form: scores[b, target_b] against y_b."""
    item_seq, item_seq_len, item_id, y = _sequences(seed)
    model = SeqFullSort(_seq_model(model_cls, seed, **overrides))

    def onehot(s):
        lab = torch.zeros(s.stop - s.start, N_ITEMS)
        lab[torch.arange(s.stop - s.start), item_id[s]] = y[s]
        return lab

    split = split_rows()
    cal, test = split.calibration, split.test
    return _case(
        name, model, (item_seq, item_seq_len), onehot, loss="bce_logit", kind="sequence", seed=seed, notes=notes,
        train_batch=SEQ_TRAIN_BATCH,
        extra={"inputs": ["item_seq", "item_seq_len"], "output": "raw scores (logits) [B, n_items]",
               "n_items": N_ITEMS, "labels": "[B, n_items]: y_b at (b, target_b), 0 elsewhere",
               "target_item": [item_id[s] for s in cal], "row_labels": [y[s] for s in cal],
               "test_target_item": [item_id[s] for s in test], "test_row_labels": [y[s] for s in test]},
    )


def sasrec(seed: int = 0) -> ZooCase:
    return _seq_ctr("recbole.SASRec", SASRec, seed,
                    notes="predict: sigmoid(seq_output . item_embedding(target)); item table 2000x64 (padding 0) read "
                    "by the history and the target; position table 10x64 read with arange(L); 2 transformer layers")


def sasrec_full(seed: int = 0) -> ZooCase:
    return _seq_full("recbole.SASRec(full_sort)", SASRec, seed,
                     notes="full_sort_predict: seq_output @ item_embedding.weight.T -> [B, 2000]: the item table is "
                     "both the history lookup and the (tied) output projection")


def gru4rec(seed: int = 0) -> ZooCase:
    return _seq_ctr("recbole.GRU4Rec", GRU4Rec, seed,
                    notes="predict: sigmoid(dense(GRU(item_embedding(seq)))[len-1] . item_embedding(target)); "
                    "item table 2000x64")


def gru4rec_full(seed: int = 0) -> ZooCase:
    return _seq_full("recbole.GRU4Rec(full_sort)", GRU4Rec, seed,
                     notes="full_sort_predict: seq_output @ item_embedding.weight.T -> [B, 2000] (tied item table)")


def narm(seed: int = 0) -> ZooCase:
    return _seq_ctr("recbole.NARM", NARM, seed,
                    notes="GRU + attention over the history masked by item_seq > 0; item table 2000x64 read by "
                    "history and target")


# -- context-aware -----------------------------------------------------------------------------------------

# token fields: user_id, item_id and interaction context fields (tiny 2-5, medium, ~3000)
CTX_VOCABS = [3000, 1200, 5, 60, 2, 300, 3, 12]
N_FLOAT = 2


def _context_case(name, model_cls, seed, *, with_floats: bool, notes: str, **overrides) -> ZooCase:
    data = make_tabular(N_ROWS, CTX_VOCABS, n_dense=N_FLOAT if with_floats else 0, seed=seed)
    token_fields = ["user_id", "item_id"] + [f"c{i}" for i in range(2, len(CTX_VOCABS))]
    float_fields = [f"f{i}" for i in range(N_FLOAT)] if with_floats else []
    config = _ConfigLike(model_cls, {"numerical_features": float_fields, **overrides})
    sources = [FeatureSource.USER_ID, FeatureSource.ITEM_ID] + [FeatureSource.INTERACTION] * (len(CTX_VOCABS) - 2)
    # remapped token fields: id 0 = [PAD], the raw ids become 1..n, so num = n + 1
    fields = {f: (FeatureType.TOKEN, s, v + 1) for f, s, v in zip(token_fields, sources, CTX_VOCABS)}
    fields |= {f: (FeatureType.FLOAT, FeatureSource.INTERACTION, 2) for f in float_fields}  # bucketnum = 2
    fields[config["LABEL_FIELD"]] = (FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
    dataset = _DatasetLike(config, fields)
    torch.manual_seed(seed)
    rec = model_cls(config, dataset)
    model = ContextScore(rec, token_fields, float_fields)
    ids = torch.from_numpy(data.sparse.astype(np.int64) + 1)
    X = (ids, torch.from_numpy(data.dense)) if with_floats else (ids,)
    y = torch.from_numpy(data.labels.astype(np.float32))
    rows = sum(v + 1 for v in CTX_VOCABS)
    return _case(name, model, X, y, seed=seed, notes=f"{notes}; token table {rows}x{config['embedding_size']} "
                 f"and first-order {rows}x1, per-field offsets added in forward",
                 extra={"inputs": ["token_ids"] + (["float_values"] if with_floats else []),
                        "token_fields": token_fields, "float_fields": float_fields, "output": "probability [B]"})


def fm(seed: int = 0) -> ZooCase:
    return _context_case("recbole.FM", FM, seed, with_floats=False,
                         notes="first order + pairwise FM, token fields only")


def deepfm(seed: int = 0) -> ZooCase:
    return _context_case("recbole.DeepFM", DeepFM, seed, with_floats=True,
                         notes="FM + MLP [128,128,128]; 2 numerical float fields as (value, 1) pairs into FLEmbedding "
                         "(4x10 and 4x1 tables read with a computed index 1)")


def widedeep(seed: int = 0) -> ZooCase:
    return _context_case("recbole.WideDeep", RecWideDeep, seed, with_floats=False,
                         notes="first-order (wide) + MLP [32,16,8] over the concatenated embeddings")


def dcn(seed: int = 0) -> ZooCase:
    return _context_case("recbole.DCN", DCN, seed, with_floats=True,
                         notes="6 cross layers + MLP [256,256,256]; 2 numerical float fields")


CASES = {
    "recbole.SASRec": sasrec,
    "recbole.SASRec(full_sort)": sasrec_full,
    "recbole.GRU4Rec": gru4rec,
    "recbole.GRU4Rec(full_sort)": gru4rec_full,
    "recbole.NARM": narm,
    "recbole.FM": fm,
    "recbole.DeepFM": deepfm,
    "recbole.WideDeep": widedeep,
    "recbole.DCN": dcn,
}
