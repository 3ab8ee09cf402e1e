"""Models whose tables stay in their checkpoint (issue 22): torch.save files and torch.distributed.checkpoint
directories (row- and column-sharded DTensors saved by two gloo ranks) read row range by row range; a meta-device
model converts to the same bytes as the model in memory; bad checkpoints are typed errors that write nothing."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

import shark_export
from shark_export.checkpoint_reader import CheckpointError, open_weights
from shark_export.export import ExampleInputs
from shark_export.inspect_model import read_tables
from shark_export.integrity import verify_model
from shark_export.model_file import data_files_of
from shark_export.model_io import OnnxModelRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_models import Ranker  # noqa: E402  (also the CLI factory's module)
from shark_export.errors import UnsupportedModelError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model = Ranker().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.num_batches_tracked.fill_(7)
    root = tmp_path_factory.mktemp("ckpt")
    torch.save(model.state_dict(), root / "w.pt")
    dcp.save(model.state_dict(), checkpoint_id=str(root / "dcp"))
    g = torch.Generator().manual_seed(1)
    cal = [(torch.randint(0, 3000, (256,), generator=g), torch.randint(0, 5000, (256, 6), generator=g)) for _ in range(3)]
    labels = [torch.randint(0, 2, (256,), generator=g).float() for _ in range(3)]
    return model, root, cal, labels


def test_torch_save_files_are_read_by_rows(tmp_path):
    big = torch.randn(1000, 16)
    state = {"emb.weight": big, "view": big[10:20], "nested": {"bias": torch.randn(5).half()},
             "bf": torch.randn(7, 4).bfloat16(), "count": torch.tensor(3), "t": torch.randn(5, 3).t()}
    torch.save(state, tmp_path / "w.pt")
    src = open_weights(tmp_path / "w.pt")
    assert np.array_equal(src["emb.weight"].read(0, 1000), big.numpy())
    assert np.array_equal(src["emb.weight"].take([5, 3, 999, 5]), big.numpy()[[5, 3, 999, 5]])
    assert np.array_equal(src["view"][2:5], big.numpy()[12:15])  # a view: its offset into the shared storage
    assert np.array_equal(src["nested.bias"].value(), state["nested"]["bias"].numpy())
    assert np.array_equal(src["bf"][:], state["bf"].float().numpy())
    assert int(src["count"].value()) == 3
    with pytest.raises(CheckpointError, match="columns are not contiguous"):
        src["t"][:]


def test_the_restricted_reader_refuses_other_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(CheckpointError, match="posix.system|os.system|refused"):
        open_weights(tmp_path / "evil.pt")


def test_sharded_dcp_checkpoints_are_joined(tmp_path):
    script = Path(__file__).resolve().parent / "dcp_sharded_save.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "sharded")], check=True, timeout=300)
    src = open_weights(tmp_path / "sharded")
    full = np.arange(1001 * 8, dtype=np.float32).reshape(1001, 8)
    assert len(src["rows"].chunks) == 2 and len(src["cols"].chunks) == 2
    assert np.array_equal(src["rows"][:], full) and np.array_equal(src["cols"][:], full * 2)
    assert np.array_equal(src["rows"].take([1000, 0, 501, 500]), full[[1000, 0, 501, 500]])
    # a shard lost: the hole is named
    metadata = tmp_path / "sharded" / ".metadata"
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(tmp_path / "sharded")).read_metadata()
    meta.state_dict_metadata["rows"].chunks.pop()
    metadata.write_bytes(pickle.dumps(meta))
    with pytest.raises(CheckpointError, match=r"rows: the checkpoint's chunks leave a hole at rows \[501, 1001\)"):
        open_weights(tmp_path / "sharded")


@pytest.mark.parametrize("quant", ["int8", "mixed"])
@pytest.mark.parametrize("kind", ["torch.save", "dcp"])
def test_a_meta_model_converts_to_the_same_bytes(trained, tmp_path, quant, kind):
    model, root, cal, labels = trained
    in_memory = shark_export.convert(model, cal[0], tmp_path / "mem.onnx", quant=quant, calibration=cal, labels=labels)
    with torch.device("meta"):
        meta = Ranker().eval()
    source = root / ("w.pt" if kind == "torch.save" else "dcp")
    report = shark_export.convert(meta, cal[0], tmp_path / "m.onnx", quant=quant, calibration=cal, labels=labels,
                                  weights=source)
    assert report.faithfulness and in_memory.faithfulness
    assert_same_model(tmp_path / "m.onnx", tmp_path / "mem.onnx", cal)
    data = [p for p in tmp_path.iterdir() if p.name.endswith(".onnx.data")]
    assert len(data) == 1 and data_files_of(tmp_path / "m.onnx") == {data[0].name}  # tables streamed to a data file
    assert all(p.is_meta for p in meta.parameters())  # the model gets its own tensors back
    assert report.impact.metrics[0].auc_delta == in_memory.impact.metrics[0].auc_delta


def assert_same_model(path, other, batches) -> None:
    """The same stored tables (every tensor, byte for byte), the same checksums, the same outputs bit for bit."""
    a, _ = read_tables(path)
    b, _ = read_tables(other)
    assert sorted(a) == sorted(b)
    for name in a:
        for part in ("payload", "row_meta", "default_row"):
            assert np.array_equal(np.asarray(getattr(a[name], part)), np.asarray(getattr(b[name], part))), (name, part)
    assert verify_model(path) == verify_model(other)
    runs = [OnnxModelRunner(p) for p in (path, other)]
    for batch in batches:
        got, want = (r.run(ExampleInputs.of(batch)) for r in runs)
        assert all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(got, want))


def test_tables_are_sharded_by_size(trained, tmp_path):
    model, root, cal, _ = trained
    with torch.device("meta"):
        meta = Ranker().eval()
    shark_export.convert(meta, cal[0], tmp_path / "m.onnx", quant="int8", calibration=cal, weights=root / "w.pt",
                         shard_bytes=1 << 16)
    names = data_files_of(tmp_path / "m.onnx")
    assert len(names) == 2 and names == {p.name for p in tmp_path.iterdir() if p.name.endswith(".onnx.data")}
    shark_export.convert(model, cal[0], tmp_path / "mem.onnx", quant="int8", calibration=cal)
    assert_same_model(tmp_path / "m.onnx", tmp_path / "mem.onnx", cal)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage left


def test_bad_checkpoints_name_the_table_and_write_nothing(trained, tmp_path):
    model, root, cal, _ = trained
    state = model.state_dict()
    with torch.device("meta"):
        meta = Ranker().eval()
    missing = {k: v for k, v in state.items() if k != "hist.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"no 'hist.weight'"):
        shark_export.convert(meta, cal[0], tmp_path / "m.onnx", weights=tmp_path / "missing.pt")
    wrong = {**state, "user.weight": torch.randn(2999, 16)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"table 'user.weight': the checkpoint holds shape \(2999, 16\), the model's is \(3000, 16\)"):
        shark_export.convert(meta, cal[0], tmp_path / "m.onnx", weights=tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        shark_export.convert(meta, cal[0], tmp_path / "m.onnx", weights=tmp_path / "nope.pt")
    assert not (tmp_path / "m.onnx").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m.onnx")]


def test_functional_lookups_of_checkpoint_tables_are_refused(tmp_path):
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(100, 4)

        def forward(self, ids):
            return torch.nn.functional.embedding(ids, self.emb.weight).sum(-1)

    model = Functional().eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with torch.device("meta"):
        meta = Functional().eval()
    with pytest.raises(UnsupportedModelError, match="functional lookups"):
        shark_export.convert(meta, torch.tensor([1, 2]), tmp_path / "m.onnx", weights=tmp_path / "w.pt")


FACTORY = "from checkpoint_models import Ranker\n\ndef build():\n    return Ranker()\n"


@pytest.mark.parametrize("flag", ["--checkpoint", "--state-dict"])
def test_cli_converts_from_a_checkpoint(trained, tmp_path, monkeypatch, flag):
    from shark_export.cli import main

    model, root, cal, labels = trained
    (tmp_path / "ranker_factory.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    torch.save(cal[0], tmp_path / "example.pt")
    torch.save(cal, tmp_path / "cal.pt")
    source = root / ("dcp" if flag == "--checkpoint" else "w.pt")
    assert main(["convert", "--model", "ranker_factory:build", flag, str(source), "--inputs", "example.pt",
                 "--calibration", "cal.pt", "--quant", "int8", "--out", "m.onnx", "--quiet"]) == 0
    shark_export.convert(model, cal[0], tmp_path / "mem.onnx", quant="int8", calibration=cal)
    assert_same_model(tmp_path / "m.onnx", tmp_path / "mem.onnx", cal)
