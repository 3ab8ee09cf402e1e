"""Compare a converted ONNX model with a torch reference: per-output errors, verdicts, and quality metrics."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import ParityError, SharkExportError
from .export import ExampleInputs
from .metrics import auc, log_loss, to_probabilities
from .model_io import OnnxModelRunner


@dataclass
class OutputParity:
    name: str
    shape_ok: bool
    reference_shape: tuple
    onnx_shape: tuple
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    nonfinite: int
    atol: float
    rtol: float
    passed: bool

    def line(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        if not self.shape_ok:
            return f"{verdict} {self.name}: shape {self.onnx_shape} != reference {self.reference_shape}"
        extra = f", {self.nonfinite} NaN/Inf" if self.nonfinite else ""
        return (
            f"{verdict} {self.name}: max abs {self.max_abs:.3e} (atol {self.atol:g}), max rel {self.max_rel:.3e} "
            f"(rtol {self.rtol:g}), mean abs {self.mean_abs:.3e}{extra}"
        )


@dataclass
class QualityMetrics:
    output: str
    auc_reference: float
    auc_onnx: float
    logloss_reference: float
    logloss_onnx: float

    @property
    def auc_delta(self) -> float:
        return self.auc_onnx - self.auc_reference

    @property
    def logloss_delta(self) -> float:
        return self.logloss_onnx - self.logloss_reference

    def line(self) -> str:
        return (
            f"{self.output}: AUC {self.auc_reference:.5f} → {self.auc_onnx:.5f} (Δ {self.auc_delta:+.5f}), "
            f"log loss {self.logloss_reference:.5f} → {self.logloss_onnx:.5f} (Δ {self.logloss_delta:+.5f})"
        )


@dataclass
class ParityReport:
    outputs: list[OutputParity]
    metrics: list[QualityMetrics] = field(default_factory=list)
    samples: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [o.line() for o in self.outputs] + [m.line() for m in self.metrics]
        lines.append(f"{'PASSED' if self.passed else 'FAILED'}: {len(self.outputs)} output(s), {self.samples} batch(es)")
        return "\n".join(lines)

    def to_json(self) -> str:
        data = {
            "passed": self.passed,
            "batches": self.samples,
            "outputs": [asdict(o) for o in self.outputs],
            "metrics": [{**asdict(m), "auc_delta": m.auc_delta, "logloss_delta": m.logloss_delta} for m in self.metrics],
        }
        return json.dumps(data, indent=2, default=float)


def _batches(inputs: Any) -> list:
    """A list is several batches; anything else (tensor, dict, tuple of args) is one batch."""
    return list(inputs) if isinstance(inputs, list) else [inputs]


def _flatten_outputs(output: Any) -> list[np.ndarray]:
    leaves = torch.utils._pytree.tree_leaves(output)
    return [leaf.detach().cpu().float().numpy() for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _per_output_tolerance(tolerance: float | dict[str, float], name: str, default: float) -> float:
    if isinstance(tolerance, dict):  # per output; "*" is the default of the others
        return float(tolerance.get(name, tolerance.get("*", default)))
    return float(tolerance)


def compare_outputs(
    names: list[str],
    reference: list[list[np.ndarray]],
    candidate: list[list[np.ndarray]],
    atol: float | dict[str, float],
    rtol: float | dict[str, float],
) -> list[OutputParity]:
    """Per-output verdicts over batches: passes when |a − b| ≤ atol + rtol·|b| everywhere and all finite."""
    results = []
    for k, name in enumerate(names):
        a_tol = _per_output_tolerance(atol, name, 1e-5)
        r_tol = _per_output_tolerance(rtol, name, 1e-4)
        ref_batches = [batch[k] for batch in reference]
        got_batches = [batch[k] for batch in candidate]
        shape_ok = all(r.shape == g.shape for r, g in zip(ref_batches, got_batches))
        if not shape_ok:
            bad = next((r.shape, g.shape) for r, g in zip(ref_batches, got_batches) if r.shape != g.shape)
            results.append(OutputParity(name, False, bad[0], bad[1], np.inf, np.inf, np.inf, np.inf, 0, a_tol, r_tol, False))
            continue
        ref = np.concatenate([r.reshape(-1) for r in ref_batches]).astype(np.float64)
        got = np.concatenate([g.reshape(-1) for g in got_batches]).astype(np.float64)
        nonfinite = int((~np.isfinite(got)).sum())
        diff = np.abs(got - ref)
        rel = diff / np.maximum(np.abs(ref), 1e-12)
        finite = np.isfinite(diff)
        within = bool(np.all(diff[finite] <= a_tol + r_tol * np.abs(ref[finite]))) if diff.size else True
        passed = within and nonfinite == 0 and bool(np.all(np.isfinite(ref)))
        max_abs = float(diff.max()) if diff.size else 0.0
        results.append(
            OutputParity(
                name, True, ref_batches[0].shape, got_batches[0].shape, max_abs,
                float(diff.mean()) if diff.size else 0.0, float(rel.max()) if rel.size else 0.0,
                float(rel.mean()) if rel.size else 0.0, nonfinite, a_tol, r_tol, passed,
            )
        )
    return results


# An output with more values per sample than this (a score for every item of a catalogue) gets one AUC over
# all its values instead of one per column.
MAX_TASK_COLUMNS = 16


def _as_label_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr.reshape(-1, 1)


def _labels_by_output(labels: Any, names: list[str], widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Output name → labels [N, columns]. `labels` is an array for the first output ([N], or [N, T] for an
    output with T values per sample, e.g. a multi-task head [B, T]; or, when the model returns T outputs of
    one value each, column t labels output t), or a dict output name → array."""
    if labels is None:
        return {}
    if isinstance(labels, dict):
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise SharkExportError(f"labels given for unknown output(s) {unknown}; outputs are {names}")
        return {k: _as_label_array(v) for k, v in labels.items()}
    arr = _as_label_array(labels)
    columns = arr.shape[1]
    if columns == 1 or widths[names[0]] == columns:
        return {names[0]: arr}
    single = [n for n in names if widths[n] == 1]
    if len(single) >= columns and names[:columns] == single[:columns]:
        return {names[t]: arr[:, t : t + 1] for t in range(columns)}
    raise SharkExportError(
        f"labels have {columns} columns but output {names[0]!r} has {widths[names[0]]} values per sample and the "
        f"outputs are {names}; give [N, {widths[names[0]]}] labels or a dict output name → labels"
    )


def check_parity(
    reference: torch.nn.Module,
    onnx_path,
    inputs: Any,
    *,
    labels: Any = None,
    atol: float | dict[str, float] = 1e-5,
    rtol: float | dict[str, float] = 1e-4,
    providers: list[str] | None = None,
    raise_on_failure: bool = False,
) -> ParityReport:
    """Run `reference` (torch) and the ONNX model on the same inputs and compare every output.

    `inputs`: one batch (tensor, dict, or tuple of forward's positional args) or a list of batches.
    `labels`: for AUC and log loss — an array over all samples (batches concatenated) for the first output:
    [N], or [N, T] for a multi-task output of T values per sample (one AUC per task, named `output[t]`), or
    column t for output t when the model returns T one-value outputs; or a dict output name → array. An
    output with more than 16 values per sample (scores over a catalogue) gets one AUC over all its values.
    Outputs that are not probabilities are passed through a sigmoid.
    `atol`/`rtol`: a number, or a dict output name → number (key "*" for the other outputs).
    """
    runner = OnnxModelRunner(onnx_path, providers=providers)
    batches = _batches(inputs)
    if not batches:
        raise SharkExportError("check_parity needs at least one input batch")
    ref_outputs, onnx_outputs = [], []
    with torch.no_grad():
        for batch in batches:
            example = ExampleInputs.of(batch)
            ref_outputs.append(_flatten_outputs(reference(*example.args, **example.kwargs)))
            onnx_outputs.append(runner.run(example))
    names = runner.output_names
    if len(ref_outputs[0]) != len(names):
        raise ParityError(f"the reference returns {len(ref_outputs[0])} tensors, the ONNX model {len(names)} outputs {names}")
    report = ParityReport(compare_outputs(names, ref_outputs, onnx_outputs, atol, rtol), samples=len(batches))
    samples = {n: sum(b[k].shape[0] if b[k].ndim else 1 for b in ref_outputs) for k, n in enumerate(names)}
    widths = {n: max(1, sum(b[k].size for b in ref_outputs) // max(1, samples[n])) for k, n in enumerate(names)}
    for name, y in _labels_by_output(labels, names, widths).items():
        k = names.index(name)
        ref = np.concatenate([b[k].reshape(b[k].shape[0] if b[k].ndim else 1, -1) for b in ref_outputs])
        got = np.concatenate([b[k].reshape(b[k].shape[0] if b[k].ndim else 1, -1) for b in onnx_outputs])
        if y.shape[0] != ref.shape[0]:
            raise SharkExportError(f"labels for {name!r} have {y.shape[0]} samples, the output has {ref.shape[0]}")
        if y.shape[1] != ref.shape[1]:
            raise SharkExportError(
                f"labels for {name!r} have {y.shape[1]} column(s), the output has {ref.shape[1]} per sample: give "
                f"[N, {ref.shape[1]}] labels (one column per task)"
            )
        if y.shape[1] > MAX_TASK_COLUMNS:  # scores over many items, not tasks: one AUC over every value
            columns = [(name, y.reshape(-1), ref.reshape(-1), got.reshape(-1))]
        else:  # one AUC per task
            columns = [(name if y.shape[1] == 1 else f"{name}[{c}]", y[:, c], ref[:, c], got[:, c]) for c in range(y.shape[1])]
        for label, yc, rc, gc in columns:
            r, g = to_probabilities(rc), to_probabilities(gc)
            report.metrics.append(QualityMetrics(label, auc(yc, r), auc(yc, g), log_loss(yc, r), log_loss(yc, g)))
    if raise_on_failure and not report.passed:
        raise ParityError(f"parity check of {onnx_path} failed:\n{report}", report=report)
    return report
