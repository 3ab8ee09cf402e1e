"""pytorch-fm models (https://github.com/rixwew/pytorch-fm, import torchfm), built as its examples/main.py does.

A torchfm model takes `field_dims` (vocabulary size per field) and a LongTensor x [B, F] of per-field ids.

Structure worth knowing when converting these:
- All fields share ONE table: `FeaturesEmbedding.embedding` has sum(field_dims) rows, and forward adds the
  per-field offsets (`x + x.new_tensor(self.offsets)`, a numpy constant) to the ids inside forward, so the
  table sees computed ids, not an input.
- `FeaturesLinear.fc` is a second shared table with dim 1 (plus a bias), looked up with the same offset ids.
- FFM (`FieldAwareFactorizationMachine`) holds F tables of sum(field_dims) rows (one per field), each looked
  up with the full [B, F] offset ids.
- The MLPs have BatchNorm1d and Dropout; outputs are sigmoid probabilities [B].
"""

from __future__ import annotations

import numpy as np
import torch
from torchfm.model.dcn import DeepCrossNetworkModel
from torchfm.model.dfm import DeepFactorizationMachineModel
from torchfm.model.ffm import FieldAwareFactorizationMachineModel
from torchfm.model.fm import FactorizationMachineModel
from torchfm.model.nfm import NeuralFactorizationMachineModel
from torchfm.model.wd import WideAndDeepModel
from torchfm.model.xdfm import ExtremeDeepFactorizationMachineModel

from zoo_data import make_tabular, N_ROWS, trained_case, ZooCase

LIBRARY = "pytorch-fm"


FIELD_DIMS = [60, 3000, 5, 1200, 2, 300, 12, 3, 100]


def _case(name, seed, make_model, *, notes="") -> ZooCase:
    """Data as torchfm's datasets give it (LongTensor [N, F] of per-field ids starting at 0), the model from
    `make_model(field_dims)`."""
    data = make_tabular(N_ROWS, FIELD_DIMS, seed=seed)
    field_dims = np.array(FIELD_DIMS, dtype=np.int64)  # torchfm datasets expose field_dims as a numpy array
    torch.manual_seed(seed)
    model = make_model(field_dims)
    X = torch.from_numpy(data.sparse)
    y = torch.from_numpy(np.asarray(data.labels, dtype=np.float32))
    return trained_case(name, LIBRARY, model, lambda s: X[s], lambda s: y[s], seed=seed, notes=notes,
                        extra={"field_dims": list(FIELD_DIMS)})


# The hyper-parameters are those of torchfm's examples/main.py get_model().


def fm(seed: int = 0) -> ZooCase:
    return _case("torchfm.FM", seed, lambda fd: FactorizationMachineModel(fd, embed_dim=16),
                 notes="one shared D=16 table + one shared D=1 linear table, offsets added in forward")


def ffm(seed: int = 0) -> ZooCase:
    return _case("torchfm.FFM", seed, lambda fd: FieldAwareFactorizationMachineModel(fd, embed_dim=4),
                 notes=f"{len(FIELD_DIMS)} field-aware D=4 tables of sum(field_dims) rows, each read with all fields' ids")


def deepfm(seed: int = 0) -> ZooCase:
    return _case("torchfm.DeepFM", seed,
                 lambda fd: DeepFactorizationMachineModel(fd, embed_dim=16, mlp_dims=(16, 16), dropout=0.2),
                 notes="shared D=16 table feeds FM and MLP (one lookup), D=1 linear table")


def xdeepfm(seed: int = 0) -> ZooCase:
    return _case("torchfm.xDeepFM", seed,
                 lambda fd: ExtremeDeepFactorizationMachineModel(fd, embed_dim=16, cross_layer_sizes=(16, 16),
                                                                 split_half=False, mlp_dims=(16, 16), dropout=0.2),
                 notes="CIN (Conv1d) + MLP + D=1 linear")


def nfm(seed: int = 0) -> ZooCase:
    return _case("torchfm.NFM", seed,
                 lambda fd: NeuralFactorizationMachineModel(fd, embed_dim=64, mlp_dims=(64,), dropouts=(0.2, 0.2)),
                 notes="bi-interaction + BatchNorm1d + MLP, D=64 shared table")


def wide_and_deep(seed: int = 0) -> ZooCase:
    return _case("torchfm.WideAndDeep", seed,
                 lambda fd: WideAndDeepModel(fd, embed_dim=16, mlp_dims=(16, 16), dropout=0.2),
                 notes="wide = D=1 linear table, deep = D=16 shared table")


def dcn(seed: int = 0) -> ZooCase:
    return _case("torchfm.DCN", seed,
                 lambda fd: DeepCrossNetworkModel(fd, embed_dim=16, num_layers=3, mlp_dims=(16, 16), dropout=0.2),
                 notes="cross network + MLP over the shared D=16 table; no linear table")


CASES = {
    "torchfm.FM": fm,
    "torchfm.FFM": ffm,
    "torchfm.DeepFM": deepfm,
    "torchfm.xDeepFM": xdeepfm,
    "torchfm.NFM": nfm,
    "torchfm.WideAndDeep": wide_and_deep,
    "torchfm.DCN": dcn,
}
