"""shark-export optimize: ORT's graph optimizations saved into a converted model, checked before it lands."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import shark_export
from shark_export.cli import main
from shark_export.errors import SharkExportError
from shark_export.example_models import DeepFM, FieldSpec
from shark_export.integrity import verify_model
from shark_export.model_io import OnnxModelRunner
from shark_export.ort_offline import optimize_offline

SPECS = [FieldSpec("user", 20_000), FieldSpec("item", 3_000), FieldSpec("hour", 24)]


def _batch(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f.name: torch.randint(0, f.cardinality, (n,), generator=g) for f in SPECS}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offline")
    torch.manual_seed(0)
    model = DeepFM(SPECS, dim=64).eval()  # user: 20k x 68 B int8 rows = 1.36 MB, to external data
    shark_export.convert(model, (_batch(8, 0),), folder / "model.onnx", quant="int8",
                         calibration=[(_batch(256, s),) for s in range(3)])
    return model, folder / "model.onnx"


def test_saved_graph_holds_ort_fusions_and_computes_the_same_bits(converted, tmp_path):
    model, source = converted
    report = optimize_offline(source, tmp_path / "opt.onnx", inputs=(_batch(300, 7),))
    assert report.outputs_checked == 1 and report.nodes_after < report.nodes_before
    proto = onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False)
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert ("com.microsoft", "FusedGemm") in ops and (shark_export.DOMAIN, "RowwiseDequantMultiLookup") in ops
    # the big table went to a data file named by its content; the metadata (input map, checksums) survived
    (data,) = list(tmp_path.glob("*.onnx.data"))
    assert len(data.name) == 24 + len(".onnx.data")
    assert verify_model(tmp_path / "opt.onnx") is not None
    optimized, plain = OnnxModelRunner(tmp_path / "opt.onnx"), OnnxModelRunner(source)
    for seed in (1, 2):
        batch = _batch(500, seed)
        np.testing.assert_array_equal(optimized.run((batch,))[0], plain.run((batch,))[0])
        with torch.no_grad():
            np.testing.assert_allclose(optimized.run((batch,))[0], model(batch).numpy(), atol=0.05)
    assert "bit-identical" in str(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([data.name, "opt.onnx"])  # no stage left


def test_optimizing_again_replaces_the_model_and_its_data(converted, tmp_path):
    _, source = converted
    optimize_offline(source, tmp_path / "opt.onnx", level="basic")
    first = {p.name for p in tmp_path.iterdir()}
    optimize_offline(source, tmp_path / "opt.onnx", level="extended")
    assert {p.name for p in tmp_path.iterdir()} == first  # same tables, same data file name; no stage left


def test_bad_requests_are_typed_errors_and_write_nothing(converted, tmp_path):
    _, source = converted
    with pytest.raises(SharkExportError, match="does not exist"):
        optimize_offline(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(SharkExportError, match="must not overwrite its source"):
        optimize_offline(source, source)
    with pytest.raises(ValueError, match="level='fastest'"):
        optimize_offline(source, tmp_path / "out.onnx", level="fastest")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(SharkExportError, match="could not optimize"):
        optimize_offline(tmp_path / "junk.onnx", tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_cli_optimize(converted, tmp_path, capsys):
    _, source = converted
    torch.save((_batch(64, 3),), tmp_path / "batch.pt")
    assert main(["optimize", str(source), "--out", str(tmp_path / "o.onnx"), "--inputs", str(tmp_path / "batch.pt")]) == 0
    assert "bit-identical" in capsys.readouterr().out
    assert main(["optimize", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
