"""pytorch-widedeep models (https://github.com/jrzaurin/pytorch-widedeep), built the way its README/examples do.

The data goes through the library's own preprocessors (`WidePreprocessor`, `TabPreprocessor`), and the models
get `column_idx` / `cat_embed_input` / `wide_dim` from them, as in examples/scripts/adult_census*.py. A
`WideDeep` model takes ONE dict `{"wide": int64 [B, n_wide], "deeptabular": float32 [B, n_cols]}` (the
Trainer's dataset casts float64 arrays to float32 and leaves int64 alone); `example` is that dict, so the
model is called `model(example)`. With the default `pred_dim=1` the output is a LOGIT [B, 1] (the Trainer
applies the sigmoid for objective="binary"), so we train with `loss="bce_logit"`.

Structure worth knowing when converting these:
- `Wide` is ONE nn.Embedding(wide_dim + 1, 1, padding_idx=0) over all wide columns (WidePreprocessor encodes
  every column, and the crossed columns, into one global id space 1..wide_dim), summed over columns + bias.
- `TabMlp` / `TabResnet` embed each categorical column in its own table (`DiffSizeCatEmbeddings`, ids per
  column 1..n, 0 = unseen, dims by the fastai rule of thumb: 2..~50), and the ids are the float columns of
  X_tab cast with `.long()` inside forward.
- `FTTransformer` and the rec models (`DeepFactorizationMachine`, `DeepInterestNetwork`) use
  `SameSizeCatEmbeddings`: ONE table of sum(n_c) + 1 rows for all categorical columns; the preprocessor
  (`for_transformer=True` / `for_mf=True`) already offsets each column's ids into that table.
- `DeepInterestNetwork` looks the target item up in the same table as the history columns
  (`user_behavior_embed.cat_embed.embed`), so one table is read by two different index tensors.

Import notes (see /tmp/zoo_notes_widedeep_recbole.md): `pytorch_widedeep/__init__` imports text/image
utilities whose dependencies (gensim, spacy, transformers, opencv, torchvision) are heavy and unused here;
`_import_widedeep` inserts placeholder modules for the ones that are not installed, imports the library, and
removes the placeholders again from sys.modules. `einops` and `torchmetrics` are real dependencies.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
import warnings

import numpy as np
import pandas as pd
import torch

from zoo_data import make_tabular, N_ROWS, trained_case, ZooCase

LIBRARY = "pytorch-widedeep"

# ---- import (with placeholders for the heavy, unused text/image dependencies) --------------------------

# module names imported at pytorch_widedeep import time by code we never call (text tokenizers, HF models,
# image transforms/backbones, opencv image utils)
_HEAVY_UNUSED = {
    "gensim": ["gensim.utils"],  # utils/text_utils.py: from gensim.utils import tokenize
    "spacy": ["spacy.symbols"],  # utils/fastai_transforms.py
    "transformers": [],  # utils/hf_utils.py: BertModel, ..., PreTrainedTokenizer
    "cv2": [],  # utils/image_utils.py, preprocessing/image_preprocessor.py
    "torchvision": ["torchvision.transforms", "torchvision.models", "torchvision.models._api"],  # wdtypes.py
}


class _Placeholder(types.ModuleType):
    """A stand-in for a package that is not installed: every attribute is a class that raises ImportError
    when called, so module-level `from X import Y` and type annotations work and any real use fails loudly."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def _fail(*args, **kwargs):
            raise ImportError(f"{self.__name__}.{name}: '{self.__name__}' is not installed (zoo placeholder)")

        cls = type(name, (), {"__init__": _fail, "__module__": self.__name__})
        setattr(self, name, cls)
        return cls


def _import_widedeep():
    import torchmetrics  # noqa: F401  (real dependency; imported first so it sees that torchvision is absent)

    inserted = []
    for top, subs in _HEAVY_UNUSED.items():
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue  # the real package is there: use it
        for name in [top, *subs]:
            mod = _Placeholder(name)
            mod.__path__ = []
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            sys.modules[name] = mod
            inserted.append(name)
    for name in inserted:  # make `import a.b` bind a.b on a
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        import pytorch_widedeep.models as models
        import pytorch_widedeep.models.rec as rec
        import pytorch_widedeep.initializers as initializers
        import pytorch_widedeep.preprocessing as preprocessing
    finally:
        for name in inserted:  # the placeholders must not leak into other libraries' imports
            sys.modules.pop(name, None)
    return models, rec, initializers, preprocessing


_models, _rec, _initializers, _preprocessing = _import_widedeep()
Wide = _models.Wide
TabMlp = _models.TabMlp
TabResnet = _models.TabResnet
FTTransformer = _models.FTTransformer
WideDeep = _models.WideDeep
DeepFactorizationMachine = _rec.DeepFactorizationMachine
DeepInterestNetwork = _rec.DeepInterestNetwork
MultipleInitializer = _initializers.MultipleInitializer
XavierNormal = _initializers.XavierNormal
WidePreprocessor = _preprocessing.WidePreprocessor
TabPreprocessor = _preprocessing.TabPreprocessor

# ---- data ----------------------------------------------------------------------------------------------

LR = 0.01

# categorical columns: tiny (2-5 values), medium and ~3000-value vocabularies
VOCABS = [60, 3000, 5, 1200, 2, 300, 12, 3, 100]
CAT_COLS = [f"c{i}" for i in range(len(VOCABS))]
N_DENSE = 3
CONT_COLS = [f"x{i}" for i in range(N_DENSE)]


def _frames(seed: int, vocabs=VOCABS, **kw):
    """The generated data as a DataFrame, plus a 'vocabulary' frame holding every id of every column once:
    the encoders are fitted on both (as when the category lists are known up front), so every table has
    exactly n + 1 rows (0 = unseen/padding)."""
    data = make_tabular(N_ROWS, vocabs, n_dense=N_DENSE, seed=seed, **kw)
    df = pd.DataFrame({c: data.sparse[:, i] for i, c in enumerate(CAT_COLS)})
    for i, c in enumerate(CONT_COLS):
        df[c] = data.dense[:, i]
    m = max(vocabs)
    vocab_df = pd.DataFrame({c: np.arange(m) % v for c, v in zip(CAT_COLS, vocabs)})
    for c in CONT_COLS:
        vocab_df[c] = np.float32(0.0)
    return data, df, pd.concat([vocab_df, df], ignore_index=True)


def _fit_transform(prep, fit_df: pd.DataFrame, df: pd.DataFrame) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Continuous columns will not be normalised"
        prep.fit(fit_df)
        return prep.transform(df)


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """As WideDeepDataset does: float arrays become float32, integer arrays stay int64."""
    x = np.asarray(x)
    return torch.from_numpy(x.astype(np.float32) if x.dtype.kind == "f" else x.astype(np.int64))


def _case(name, model, X: dict, y: np.ndarray, *, kind="ctr", notes="", seed=0, extra=None) -> ZooCase:
    X = {k: _as_tensor(v) for k, v in X.items()}
    y = torch.from_numpy(np.asarray(y, dtype=np.float32))
    return trained_case(name, LIBRARY, model, lambda s: {k: v[s] for k, v in X.items()}, lambda s: y[s],
                        loss="bce_logit", lr=LR, seed=seed, kind=kind, notes=notes,
                        extra={"output": "logit [B, 1]", **(extra or {})})


# ---- cases ---------------------------------------------------------------------------------------------


def wide_tabmlp(seed: int = 0) -> ZooCase:
    """README's wide & deep: WidePreprocessor(wide_cols, crossed_cols) -> Wide(input_dim=wide_dim),
    TabPreprocessor(cat_embed_cols, continuous_cols) -> TabMlp(column_idx, cat_embed_input, continuous_cols)."""
    data, df, fit_df = _frames(seed)
    wide_prep = WidePreprocessor(wide_cols=CAT_COLS, crossed_cols=[("c2", "c4"), ("c4", "c7")])
    X_wide = _fit_transform(wide_prep, fit_df, df)
    tab_prep = TabPreprocessor(cat_embed_cols=CAT_COLS, continuous_cols=CONT_COLS)
    X_tab = _fit_transform(tab_prep, fit_df, df)
    torch.manual_seed(seed)
    wide = Wide(input_dim=wide_prep.wide_dim, pred_dim=1)
    tab_mlp = TabMlp(
        column_idx=tab_prep.column_idx,
        cat_embed_input=tab_prep.cat_embed_input,
        continuous_cols=CONT_COLS,
    )  # default mlp_hidden_dims=[200, 100]
    model = WideDeep(wide=wide, deeptabular=tab_mlp)
    return _case(
        "widedeep.WideDeep(Wide+TabMlp)", model, {"wide": X_wide, "deeptabular": X_tab}, data.labels, seed=seed,
        notes=f"wide: one D=1 table of {wide_prep.wide_dim + 1} rows over 9 columns + 2 crossed; deep: one table per "
        f"column, dims {[d for _, _, d in tab_prep.cat_embed_input]}, ids = float columns .long()",
        extra={"cat_embed_input": tab_prep.cat_embed_input, "wide_dim": wide_prep.wide_dim},
    )


def wide_tabresnet(seed: int = 0) -> ZooCase:
    """Wide + TabResnet (dense residual blocks), same preprocessing as the README example."""
    data, df, fit_df = _frames(seed)
    wide_prep = WidePreprocessor(wide_cols=CAT_COLS, crossed_cols=[("c2", "c7")])
    X_wide = _fit_transform(wide_prep, fit_df, df)
    tab_prep = TabPreprocessor(cat_embed_cols=CAT_COLS, continuous_cols=CONT_COLS)
    X_tab = _fit_transform(tab_prep, fit_df, df)
    torch.manual_seed(seed)
    wide = Wide(input_dim=wide_prep.wide_dim, pred_dim=1)
    resnet = TabResnet(
        column_idx=tab_prep.column_idx,
        cat_embed_input=tab_prep.cat_embed_input,
        continuous_cols=CONT_COLS,
    )  # default blocks_dims=[200, 100, 100]
    model = WideDeep(wide=wide, deeptabular=resnet)
    return _case(
        "widedeep.WideDeep(Wide+TabResnet)", model, {"wide": X_wide, "deeptabular": X_tab}, data.labels, seed=seed,
        notes="wide D=1 table + per-column tables into dense resnet blocks (BatchNorm in eval mode)",
        extra={"cat_embed_input": tab_prep.cat_embed_input, "wide_dim": wide_prep.wide_dim},
    )


def fttransformer(seed: int = 0) -> ZooCase:
    """As examples/scripts/adult_census_transformers.py: TabPreprocessor(for_transformer=True) and
    FTTransformer(column_idx, cat_embed_input, continuous_cols) as the only component (no wide part).
    Fewer blocks than the default (4) to keep the build fast on CPU."""
    data, df, fit_df = _frames(seed)
    tab_prep = TabPreprocessor(cat_embed_cols=CAT_COLS, continuous_cols=CONT_COLS, for_transformer=True)
    X_tab = _fit_transform(tab_prep, fit_df, df)
    torch.manual_seed(seed)
    ft = FTTransformer(
        column_idx=tab_prep.column_idx,
        cat_embed_input=tab_prep.cat_embed_input,
        continuous_cols=CONT_COLS,
        input_dim=32,
        n_heads=4,
        n_blocks=2,
    )
    model = WideDeep(deeptabular=ft)
    n_rows = sum(n for _, n in tab_prep.cat_embed_input) + 1
    return _case(
        "widedeep.WideDeep(FTTransformer)", model, {"deeptabular": X_tab}, data.labels, seed=seed,
        notes=f"ONE shared table of {n_rows} rows x 32 for all 9 columns (ids pre-offset by the preprocessor); "
        "continuous columns embedded by per-column linear layers; Linformer-style kv compression",
        extra={"cat_embed_input": tab_prep.cat_embed_input},
    )


def deepfm(seed: int = 0) -> ZooCase:
    """As examples/scripts/adult_census_fm.py but with DeepFactorizationMachine (pytorch_widedeep.models.rec):
    TabPreprocessor(for_mf=True) so the ids index one shared table, num_factors=8, an MLP, and a Wide part for
    the first-order terms (WideDeep(wide=..., deeptabular=...)); Xavier-normal embeddings through the library's
    initializers, as the Trainer's `initializers=` argument applies them."""
    data, df, fit_df = _frames(seed)
    wide_prep = WidePreprocessor(wide_cols=CAT_COLS)
    X_wide = _fit_transform(wide_prep, fit_df, df)
    tab_prep = TabPreprocessor(cat_embed_cols=CAT_COLS, continuous_cols=CONT_COLS, for_mf=True)
    X_tab = _fit_transform(tab_prep, fit_df, df)
    torch.manual_seed(seed)
    wide = Wide(input_dim=wide_prep.wide_dim, pred_dim=1)
    fm = DeepFactorizationMachine(
        column_idx=tab_prep.column_idx,
        cat_embed_input=tab_prep.cat_embed_input,
        continuous_cols=CONT_COLS,
        num_factors=8,
        mlp_hidden_dims=[64, 32],
    )
    model = WideDeep(wide=wide, deeptabular=fm)
    # what Trainer(model, initializers={"deeptabular": XavierNormal(pattern="embed")}) does: with nn.Embedding's
    # N(0, 1) default the pairwise FM term starts at std ~7 and 60 steps do not get past it
    MultipleInitializer({"deeptabular": XavierNormal(pattern="embed")}, verbose=False).apply(model)
    return _case(
        "widedeep.WideDeep(Wide+DeepFM)", model, {"wide": X_wide, "deeptabular": X_tab}, data.labels, seed=seed,
        notes="first order: Wide D=1 table; second order + MLP: one shared D=8 table for all columns "
        "(continuous columns embedded too)",
        extra={"cat_embed_input": tab_prep.cat_embed_input, "wide_dim": wide_prep.wide_dim},
    )


HIST_LEN = 10


def din(seed: int = 0) -> ZooCase:
    """As DeepInterestNetwork's docstring example: X holds user/context columns, the target item and the history
    as columns item_1..item_L (0 = padding), `user_behavior_confiq=(history columns, n_items, dim)`. The target
    item and the history share one table. X is int64 (no continuous columns)."""
    vocabs = [800, 1500, 40, 5, 2]  # user, item (target), cate, ctx, gender
    names = ["user", "target_item", "cate", "ctx", "gender"]
    data = make_tabular(N_ROWS, vocabs, history_field=1, history_len=HIST_LEN, seed=seed)
    hist_cols = [f"item_{i + 1}" for i in range(HIST_LEN)]
    X = np.concatenate([data.sparse, data.history], axis=1).astype(np.int64)
    # the non-item columns get the padding/unseen id 0 reserved, as TabPreprocessor would (ids 1..n)
    X[:, [0, 2, 3, 4]] += 1
    column_idx = {c: i for i, c in enumerate(names + hist_cols)}
    n_items = vocabs[1]  # ids 1..n_items-1, 0 = padding
    torch.manual_seed(seed)
    model_din = DeepInterestNetwork(
        column_idx=column_idx,
        target_item_col="target_item",
        user_behavior_confiq=(hist_cols, n_items, 16),
        cat_embed_input=[
            ("user", vocabs[0], 16), ("cate", vocabs[2], 8), ("ctx", vocabs[3], 4), ("gender", vocabs[4], 2)
        ],
        mlp_hidden_dims=[64, 32],
    )
    model = WideDeep(deeptabular=model_din)
    return _case(
        "widedeep.WideDeep(DIN)", model, {"deeptabular": X}, data.labels, kind="sequence", seed=seed,
        notes=f"target item and {HIST_LEN} history columns share one table of {n_items + 1} rows x 16 (padding 0, "
        "empty histories included); other columns one table each (dims 16/8/4/2); int64 X",
        extra={"history_len": HIST_LEN},
    )


CASES = {
    "widedeep.WideDeep(Wide+TabMlp)": wide_tabmlp,
    "widedeep.WideDeep(Wide+TabResnet)": wide_tabresnet,
    "widedeep.WideDeep(FTTransformer)": fttransformer,
    "widedeep.WideDeep(Wide+DeepFM)": deepfm,
    "widedeep.WideDeep(DIN)": din,
}
