"""Faithfulness judged against torch in float64 (issue 20.2): correct over-confident models pass, defects fail."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import shark_export
from shark_export import QuantConfig, check_faithfulness, convert
from shark_export.faithfulness import faithfulness_report
from shark_export.fields import find_fields
from shark_export.export import ExampleInputs
from shark_export.format import Tier
from shark_export.inspect_model import read_tables
from shark_export.model_io import OnnxModelRunner
from shark_export.quantize import quantize_table
from shark_export.reference import dequantize

FIELDS, ROWS, DIM = 12, 300, 16


class OverConfidentFM(torch.nn.Module):
    """DeepFM-like, tables at torch's default N(0, 1) init scaled up: the FM term is half the difference of two
    large sums, so float summation order alone moves the logit by more than 1e-5."""

    def __init__(self, seed: int = 0, cast_inside: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.fields = torch.nn.ModuleList(torch.nn.Embedding(ROWS, DIM) for _ in range(FIELDS))
        with torch.no_grad():
            for e in self.fields:
                e.weight.mul_(6.0)
        self.deep = torch.nn.Sequential(torch.nn.Linear(FIELDS * DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.cast_inside = cast_inside

    def forward(self, ids):
        v = torch.stack([e(ids[:, i]) for i, e in enumerate(self.fields)], 1)
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        flat = v.flatten(1)
        if self.cast_inside:  # a forward that fixes its own dtype: cannot run in float64
            flat = flat.float().to(torch.float32) + torch.zeros(1, dtype=torch.float32)
            return fm + self.deep[2](self.deep[1](torch.nn.functional.linear(flat, self.deep[0].weight.float(),
                                                                              self.deep[0].bias.float()))).squeeze(-1).float()
        return fm + self.deep(flat).squeeze(-1)


def batches(n=4, size=256):
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, ROWS, (size, FIELDS), generator=gen) for _ in range(n)]


def labels_for(bs):
    gen = torch.Generator().manual_seed(8)
    return [torch.randint(0, 2, (b.shape[0],), generator=gen).float() for b in bs]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = OverConfidentFM().eval()
    cal = batches()
    path = tmp_path_factory.mktemp("fm") / "m.onnx"
    report = convert(model, cal[0], path, quant=QuantConfig(target_ratio=0.1), calibration=cal, labels=labels_for(cal))
    return model, cal, path, report


def test_over_confident_model_is_faithful_though_float_order_moves_it(converted):
    model, cal, path, report = converted
    assert report.faithfulness, str(report.faithfulness)
    out = report.faithfulness.outputs[0]
    assert out.float64_reference and out.torch_max_abs > 0 and out.max_abs > 1e-5  # the old atol 1e-5 refused it
    assert "torch float32 max abs" in str(report.faithfulness) and "ONNX max abs" in str(report.faithfulness)
    # the float model's logits are in the tens: an over-confident model
    with torch.no_grad():
        assert float(model(cal[0]).abs().mean()) > 10


def _reference_side(model, cal, path):
    tables, _ = read_tables(path)
    fields = find_fields(model, ExampleInputs.of(cal[0]), more_batches=cal[1:], require_calls=False)
    return tables, fields


def _used_row(cal, field: int) -> int:
    return int(cal[0][0, field])


def test_one_wrong_row_fails(converted):
    model, cal, path, _ = converted
    tables, fields = _reference_side(model, cal, path)
    name = "fields.3.weight"
    row = _used_row(cal, 3)
    w = dequantize(tables[name])
    w[row] += np.float32(0.05) * np.sign(w[row] + 1e-9)  # one row served differently from what the file holds
    tables[name] = quantize_table(w, Tier.FP32, name=name)
    report = faithfulness_report(model, path, cal, fields=fields, tables=tables, pruned_means={}, dequantized=set())
    assert not report and "FAILED" in str(report)


def test_one_wrong_tier_fails(converted):
    model, cal, path, _ = converted
    tables, fields = _reference_side(model, cal, path)
    name = "fields.5.weight"
    w = dict(model.named_parameters())[name].detach().numpy()
    stored = dequantize(tables[name])
    row = _used_row(cal, 5)
    stored[row] = w[row].astype(np.float16).astype(np.float32)  # that row read at fp16 instead of its stored tier
    assert not np.array_equal(stored[row], dequantize(tables[name])[row])
    tables[name] = quantize_table(stored, Tier.FP32, name=name)
    report = faithfulness_report(model, path, cal, fields=fields, tables=tables, pruned_means={}, dequantized=set())
    assert not report


def test_wrong_pruning_mean_fails(tmp_path):
    model = OverConfidentFM().eval()
    cal = batches()
    path = tmp_path / "p.onnx"
    report = convert(model, cal[0], path, quant="int8", prune=["fields.2"], calibration=cal)
    assert report.faithfulness, str(report.faithfulness)
    assert check_faithfulness(model, path, cal)  # the same question, asked from the file
    tables, fields = _reference_side(model, cal, path)
    mean = dequantize(tables["fields.2.weight"]).mean(axis=0) if "fields.2.weight" in tables else None
    assert mean is None  # the pruned field's table is gone from the file
    true_mean = dict(model.named_parameters())["fields.2.weight"].detach().numpy().mean(axis=0)
    wrong = {"fields.2": true_mean + np.float32(0.01)}
    bad = faithfulness_report(model, path, cal, fields=fields, tables=tables, pruned_means=wrong, dequantized=set())
    assert not bad


def test_check_faithfulness_from_the_file_refuses_another_model(converted):
    _, cal, path, _ = converted
    assert check_faithfulness(OverConfidentFM().eval(), path, cal)
    other = OverConfidentFM(seed=1).eval()
    report = check_faithfulness(other, path, cal)
    assert not report and "FAILED" in str(report)


def test_a_forward_that_fixes_its_dtype_is_judged_in_float32(tmp_path):
    model = OverConfidentFM(cast_inside=True).eval()
    with torch.no_grad():
        model.fields.apply(lambda m: m.weight.mul_(1 / 6.0) if isinstance(m, torch.nn.Embedding) else None)
    cal = batches(2, 64)
    report = convert(model, cal[0], tmp_path / "c.onnx", quant="int8", calibration=cal)
    assert report.faithfulness, str(report.faithfulness)
    assert "float64" in report.faithfulness.note and not report.faithfulness.outputs[0].float64_reference


def test_onnx_error_is_measured_against_float64(converted):
    """The reported errors are the ones an independent float64 computation gives."""
    model, cal, path, report = converted
    tables, _ = read_tables(path)
    got = np.concatenate([OnnxModelRunner(path).run(ExampleInputs.of(b))[0] for b in cal[:4]]).astype(np.float64)
    w = {n: dequantize(t).astype(np.float64) for n, t in tables.items()}
    deep = [p.detach().double().numpy() for p in model.deep.parameters()]
    expected = []
    for b in cal[:4]:
        ids = b.numpy()
        v = np.stack([w[f"fields.{i}.weight"][ids[:, i]] for i in range(FIELDS)], 1)
        fm = 0.5 * (v.sum(1) ** 2 - (v ** 2).sum(1)).sum(1)
        h = np.maximum(v.reshape(v.shape[0], -1) @ deep[0].T + deep[1], 0)
        expected.append(fm + (h @ deep[2].T + deep[3])[:, 0])
    err = np.abs(got - np.concatenate(expected)).max()
    assert report.faithfulness.outputs[0].max_abs == pytest.approx(err, rel=1e-6, abs=1e-9)


def test_convert_takes_labels_per_batch_or_over_all_samples(tmp_path):
    model = OverConfidentFM().eval()
    cal = batches(3, 128)
    labels = labels_for(cal)
    per_batch = convert(model, cal[0], tmp_path / "a.onnx", quant="int8", calibration=cal, labels=labels)
    concatenated = convert(model, cal[0], tmp_path / "b.onnx", quant="int8", calibration=cal, labels=torch.cat(labels))
    assert per_batch.impact.metrics[0].auc_delta == concatenated.impact.metrics[0].auc_delta
    assert per_batch.impact.metrics[0].auc_reference == concatenated.impact.metrics[0].auc_reference
    with pytest.raises(shark_export.errors.SharkExportError, match="one label tensor per batch"):
        convert(model, cal[0], tmp_path / "c.onnx", quant="int8", calibration=cal, labels=torch.cat(labels)[:-1])


def test_a_runtime_error_on_another_element_than_torchs_is_allowed_a_quantization_step_is_not():
    """The rule itself (parity.compare_to_float64), on numbers shaped like recbole's SASRec under ORT's CPU wheel:
    torch float32 errs ~3e-8 on most of 4096 sigmoid outputs and up to 7e-7 on a few; ONNX matches it but for one
    element 6e-6 off, where torch happened to be exact. That file is faithful. Moving one element by an int8
    quantization step of a small table value (1e-3) is not, nor by 2e-5 (a float16 rounding of a row)."""
    from shark_export.parity import compare_to_float64

    rng = np.random.default_rng(0)
    ref = rng.uniform(0.0, 1.0, 4096)
    torch_err = rng.normal(0.0, 3e-8, 4096)
    torch_err[rng.choice(4096, 8, replace=False)] = 7e-7
    onnx_err = rng.normal(0.0, 3e-8, 4096)
    worst = int(np.argmin(np.abs(torch_err)))
    onnx_err[worst] = 6e-6

    def verdict(candidate_err):
        (result,) = compare_to_float64(["out"], [[ref]], [[ref + torch_err]], [[ref + candidate_err]])
        return result.passed

    assert verdict(onnx_err)
    for step in (1e-3, 2e-5):
        shifted = onnx_err.copy()
        shifted[17] += step
        assert not verdict(shifted), step
