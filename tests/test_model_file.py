"""A converted file is either right and checked or not there; the same model gives the same bytes anywhere;
a model and its external data are committed as one step."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from models import TupleInputs, built

from shark_export import convert
from shark_export.errors import ParityError
from shark_export.model_io import OnnxModelRunner

faithfulness = importlib.import_module("shark_export.faithfulness")
model_file = importlib.import_module("shark_export.model_file")


def _calibration():
    return [TupleInputs.batch(32, seed=s) for s in range(3)]


def test_failed_faithfulness_raises_and_leaves_no_file(tmp_path, monkeypatch):
    # A converter defect: the torch side of the check no longer serves the stored tables.
    monkeypatch.setattr(faithfulness, "serving_lookups", lambda *a, **k: contextlib.nullcontext())
    path = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="was not written") as info:
        convert(built(TupleInputs), TupleInputs.batch(4), path, quant="int4", calibration=_calibration())
    assert list(tmp_path.iterdir()) == []
    report = info.value.report
    assert report is not None and not report.faithfulness and "FAILED" in str(report.faithfulness)
    kept = convert(built(TupleInputs), TupleInputs.batch(4), path, quant="int4", calibration=_calibration(),
                   keep_unfaithful=True)
    assert path.is_file() and not kept.faithfulness


def test_a_failed_check_keeps_the_previous_model(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    convert(built(TupleInputs), TupleInputs.batch(4), path, quant="int8", calibration=_calibration())
    before = path.read_bytes()
    monkeypatch.setattr(faithfulness, "serving_lookups", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(ParityError):
        convert(built(TupleInputs), TupleInputs.batch(4), path, quant="int4", calibration=_calibration())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_without_calibration_the_report_says_nothing_was_checked(tmp_path):
    report = convert(built(TupleInputs), TupleInputs.batch(4), tmp_path / "m.onnx")
    assert report.faithfulness is None and any("nothing was checked" in n for n in report.notes)
    assert "nothing was checked" in str(report)


_CONVERT_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from models import TupleInputs, built
    from shark_export import convert
    convert(built(TupleInputs), TupleInputs.batch(4), sys.argv[1], quant="mixed",
            calibration=[TupleInputs.batch(32, seed=s) for s in range(3)])
""")


@pytest.mark.slow  # a second process converts too
def test_same_model_gives_the_same_bytes_in_two_places_and_two_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_BYTES", 1000)  # external data too
    script = _CONVERT_SCRIPT.format(tests=os.path.dirname(__file__))
    paths = [tmp_path / "a" / "model.onnx", tmp_path / "b" / "other_name.onnx"]
    for p in paths:
        p.parent.mkdir()
    convert(built(TupleInputs), TupleInputs.batch(4), paths[0], quant="mixed", calibration=_calibration())
    env = dict(os.environ, PYTHONHASHSEED="123")
    code = f"import shark_export.model_file as m; m.EXTERNAL_DATA_BYTES = 1000\n{script}"
    # cwd outside the checkout: the child imports the installed package, as a user would
    subprocess.run([sys.executable, "-c", code, str(paths[1])], check=True, env=env, capture_output=True, cwd=tmp_path)
    data = [sorted(p.parent.glob("*.onnx.data")) for p in paths]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert [d[0].name for d in data] == [data[0][0].name] * 2 and data[0][0].read_bytes() == data[1][0].read_bytes()
    text = paths[0].read_bytes()
    assert str(tmp_path).encode() not in text and b"model.onnx" not in text


def test_external_data_commit_never_mixes_two_models(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_BYTES", 1000)
    path = tmp_path / "m.onnx"
    old_model = built(TupleInputs)
    convert(old_model, TupleInputs.batch(4), path, quant="int8")
    batch = TupleInputs.batch(8, seed=5)
    old_out = OnnxModelRunner(path).run(batch)[0]
    new_model = built(TupleInputs)
    with torch.no_grad():
        for p in new_model.parameters():
            p.add_(1.0)  # other weights: other data
    real_replace = os.replace
    calls = []

    def crash_before_the_model(src, dst):
        calls.append(str(dst))
        if str(dst) == str(path):
            raise OSError("simulated crash between the data file and the model")
        return real_replace(src, dst)

    monkeypatch.setattr(model_file.os, "replace", crash_before_the_model)
    with pytest.raises(OSError, match="simulated crash"):
        convert(new_model, TupleInputs.batch(4), path, quant="int8")
    monkeypatch.setattr(model_file.os, "replace", real_replace)
    np.testing.assert_array_equal(OnnxModelRunner(path).run(batch)[0], old_out)  # old model, its own data
    placed = [c for c in calls if os.path.dirname(str(c)) == str(tmp_path)]
    assert placed[-2].endswith(".onnx.data") and placed[-1] == str(path)  # the data file went in first
    convert(new_model, TupleInputs.batch(4), path, quant="int8")
    new_out = OnnxModelRunner(path).run(batch)[0]
    assert not np.allclose(new_out, old_out)
    referenced = {e.value for i in onnx.load(str(path), load_external_data=False).graph.initializer
                  for e in i.external_data if e.key == "location"}
    on_disk = {p.name for p in tmp_path.glob("*.onnx.data")}
    assert referenced <= on_disk and len(referenced) == 1
    # the old model's data file is gone; the crashed run's orphan stays (nothing names it, nothing reads it)
    assert len(on_disk - referenced) <= 1


def test_stale_data_file_named_by_another_model_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "EXTERNAL_DATA_BYTES", 1000)
    model = built(TupleInputs)
    convert(model, TupleInputs.batch(4), tmp_path / "a.onnx", quant="int8")
    convert(model, TupleInputs.batch(4), tmp_path / "b.onnx", quant="int8")  # same content: same data file
    assert len(list(tmp_path.glob("*.onnx.data"))) == 1
    convert(model, TupleInputs.batch(4), tmp_path / "a.onnx", quant="int4")  # a moves on; b still names the file
    assert len(list(tmp_path.glob("*.onnx.data"))) == 2
    OnnxModelRunner(tmp_path / "b.onnx").run(TupleInputs.batch(3))
