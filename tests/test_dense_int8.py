"""convert(dense="int8"): ONNX Runtime's dynamic quantization of the dense layers, tables untouched, impact
reported on its own; the int8 Gemm checked against a numpy implementation of the ONNX ops it becomes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import shark_export
import shark_export.model_file
from shark_export.model_io import OnnxModelRunner


class TwoFieldsLinear(nn.Module):
    """Two lookups concatenated, one Linear: the only dense layer is one Gemm."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Embedding(60, 8), nn.Embedding(40, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, a, b):
        return self.head(torch.cat([self.a(a), self.b(b)], dim=1))


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 60, (n,), generator=g), torch.randint(0, 40, (n,), generator=g)


def _convert(tmp_path, name, dense, **kw):
    torch.manual_seed(0)
    model = TwoFieldsLinear().eval()
    calibration = [_batch(64, s) for s in range(4)]
    labels = [torch.randint(0, 2, (64, 3), generator=torch.Generator().manual_seed(s + 10)).float() for s in range(4)]
    report = shark_export.convert(model, calibration[0], tmp_path / name, quant="int8", calibration=calibration,
                                  labels=labels, dense=dense, **kw)
    return model, report, calibration


def _round_half_even(x: np.ndarray) -> np.ndarray:
    return np.round(x)  # numpy rounds half to even, as the ONNX quantize ops do


def _dynamic_quantize_linear(x: np.ndarray):
    """ONNX DynamicQuantizeLinear (uint8), from the operator's specification."""
    x = x.astype(np.float32)
    scale = np.float32((np.float32(max(0.0, x.max())) - np.float32(min(0.0, x.min()))) / np.float32(255))
    zero_point = np.clip(_round_half_even(np.float32(0) - np.float32(x.min()) / scale), 0, 255)
    q = np.clip(_round_half_even(x / scale) + zero_point, 0, 255)
    return q.astype(np.int32), scale, int(zero_point)


def test_int8_gemm_computes_the_integer_product_of_its_quantized_operands(tmp_path):
    model, report, calibration = _convert(tmp_path, "int8.onnx", "int8")
    assert report.dense == "int8" and report.dense_int8_nodes == 1
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert "MatMulInteger" in ops and "Gemm" not in ops and "MatMul" not in ops
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    (w_name, w_q), = [(k, v) for k, v in weights.items() if v.dtype == np.int8 and v.ndim == 2]
    w_scale = weights[w_name.removesuffix("_quantized") + "_scale"]
    assert weights[w_name.removesuffix("_quantized") + "_zero_point"] == 0
    w = model.head.weight.detach().numpy()  # [3, 16]
    w_kn = w_q if w_q.shape == (16, 3) else w_q.T
    # weights: int8, symmetric, each within half a step of the float weight
    assert np.abs(w_kn.astype(np.float32) * w_scale - w.T).max() <= w_scale / 2 + 1e-7
    assert np.isclose(w_scale, np.abs(w).max() / 127, rtol=1e-6)

    runner = OnnxModelRunner(tmp_path / "int8.onnx")
    assert _convert(tmp_path, "fp32.onnx", "fp32")[1].dense == "fp32"
    for batch in calibration[:2]:
        with torch.no_grad():
            x = torch.cat([model.a(batch[0]), model.b(batch[1])], dim=1).numpy()
        # the lookups read int8 tables: start from the rows the fp32-dense file serves
        rows = _served_rows(tmp_path / "fp32.onnx", batch)
        assert np.abs(rows - x).max() < 0.05
        q, scale, zero_point = _dynamic_quantize_linear(rows)
        acc = ((q - zero_point) @ w_kn.astype(np.int32)).astype(np.float32)
        expected = acc * np.float32(scale * np.float32(w_scale)) + model.head.bias.detach().numpy()
        got = runner.run(batch)[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _served_rows(path, batch) -> np.ndarray:
    """The concatenated lookup rows the fp32-dense file computes (its Concat/Reshape input to the Gemm)."""
    proto = onnx.load(str(path))
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    proto.graph.output.insert(0, onnx.helper.make_tensor_value_info(gemm.input[0], onnx.TensorProto.FLOAT, None))
    patched = path.with_name("rows.onnx")
    onnx.save(proto, str(patched))
    return OnnxModelRunner(patched).run(batch)[0]


def test_tables_are_the_same_bytes_and_the_impact_is_reported_on_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(shark_export.model_file, "EXTERNAL_DATA_BYTES", 100)  # tables go to an external data file
    model, int8_report, calibration = _convert(tmp_path, "int8.onnx", "int8")
    _, fp32_report, _ = _convert(tmp_path, "fp32.onnx", "fp32")
    tables = lambda p: {t.name: numpy_helper.to_array(t, base_dir=str(tmp_path)).tobytes()  # noqa: E731
                        for t in onnx.load(str(p), load_external_data=False).graph.initializer if ".payload" in t.name}
    t8, t32 = tables(tmp_path / "int8.onnx"), tables(tmp_path / "fp32.onnx")
    assert set(t8) == {"a.weight.payload", "b.weight.payload"} and t8 == t32
    assert list(tmp_path.glob("*.onnx.data"))  # the int8 file's tables are external too
    # same faithfulness and table impact; the dense impact is measured on the written file
    assert fp32_report.dense_impact is None and int8_report.dense_impact is not None
    assert int8_report.impact.outputs[0].max_abs == pytest.approx(fp32_report.impact.outputs[0].max_abs)
    with torch.no_grad():
        ref = np.concatenate([model(*b).numpy() for b in calibration])
    got = np.concatenate([OnnxModelRunner(tmp_path / "int8.onnx").run(b)[0] for b in calibration])
    assert int8_report.dense_impact.outputs[0].max_abs == pytest.approx(float(np.abs(got - ref).max()), rel=1e-6)
    assert int8_report.dense_impact.metrics  # labels given: AUC / log loss of the written file
    text = str(int8_report)
    assert "dense int8" in text and "1 MatMul/Gemm quantized" in text
    assert int8_report.to_dict()["dense_impact"]["outputs"][0]["max_abs"] == int8_report.dense_impact.outputs[0].max_abs
    # the written file still carries our metadata: inspect reads its report
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "int8.onnx"), load_external_data=False).metadata_props}
    assert '"dense": "int8"' in meta["shark_export.report"]


def test_unknown_dense_choice_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="dense='int16'"):
        _convert(tmp_path, "x.onnx", "int16")
    assert not (tmp_path / "x.onnx").exists()
