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
    """One output's errors over the batches. `atol`/`rtol` are None when no tolerance was asked for: the line is
    then a measurement, and the output fails only on a shape mismatch or a NaN/Inf. With a float64 reference
    (`float64_reference`), the errors are against torch run in float64 and `torch_max_abs` is torch float32's own
    error against it."""

    name: str
    shape_ok: bool
    reference_shape: tuple
    onnx_shape: tuple
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    nonfinite: int
    atol: float | None
    rtol: float | None
    passed: bool
    float64_reference: bool = False
    torch_max_abs: float | None = None
    factor: float | None = None

    def line(self) -> str:
        gated = self.atol is not None or self.rtol is not None or self.float64_reference
        verdict = ("PASSED" if self.passed else "FAILED") if gated or not self.passed else "measured"
        if not self.shape_ok:
            return f"{verdict} {self.name}: shape {self.onnx_shape} != reference {self.reference_shape}"
        extra = f", {self.nonfinite} NaN/Inf" if self.nonfinite else ""
        if self.float64_reference:
            return (
                f"{verdict} {self.name}: against torch in float64, ONNX max abs {self.max_abs:.3e}, torch float32 max abs "
                f"{self.torch_max_abs:.3e} (allowed per element: {self.factor:g}x torch's error + {self.atol:g}), "
                f"mean abs {self.mean_abs:.3e}{extra}"
            )
        goal = "" if not gated else f" (atol {self.atol or 0:g}, rtol {self.rtol or 0:g})"
        return (f"{verdict} {self.name}: max abs {self.max_abs:.3e}, max rel {self.max_rel:.3e}, mean abs "
                f"{self.mean_abs:.3e}{goal}{extra}")


@dataclass
class QualityMetrics:
    """AUC and log loss of the reference and the ONNX model on one output (or task). `max_dauc`: the largest AUC
    drop allowed, `max_dlogloss`: the largest log-loss rise allowed; None: measured only."""

    output: str
    auc_reference: float
    auc_onnx: float
    logloss_reference: float
    logloss_onnx: float
    max_dauc: float | None = None
    max_dlogloss: float | None = None

    @property
    def auc_delta(self) -> float:
        return self.auc_onnx - self.auc_reference

    @property
    def logloss_delta(self) -> float:
        return self.logloss_onnx - self.logloss_reference

    @property
    def passed(self) -> bool:
        auc_ok = self.max_dauc is None or not self.auc_delta < -self.max_dauc
        loss_ok = self.max_dlogloss is None or not self.logloss_delta > self.max_dlogloss
        return auc_ok and loss_ok

    def line(self) -> str:
        goals = [f"max AUC drop {self.max_dauc:g}" for _ in [0] if self.max_dauc is not None]
        goals += [f"max log-loss rise {self.max_dlogloss:g}" for _ in [0] if self.max_dlogloss is not None]
        verdict = ("PASSED " if self.passed else "FAILED ") if goals else ""
        return (
            f"{verdict}{self.output}: AUC {self.auc_reference:.5f} → {self.auc_onnx:.5f} (Δ {self.auc_delta:+.5f}), "
            f"log loss {self.logloss_reference:.5f} → {self.logloss_onnx:.5f} (Δ {self.logloss_delta:+.5f})"
            + (f" [goal: {', '.join(goals)}]" if goals else "")
        )


@dataclass
class ParityReport:
    outputs: list[OutputParity]
    metrics: list[QualityMetrics] = field(default_factory=list)
    samples: int = 0
    note: str = ""

    @property
    def passed(self) -> bool:
        """Every output passed (shapes, finite values, the tolerances asked for) and every metric goal was met."""
        return bool(self.outputs) and all(o.passed for o in self.outputs) and all(m.passed for m in self.metrics)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        lines = [o.line() for o in self.outputs] + [m.line() for m in self.metrics]
        goals = any(o.atol is not None or o.rtol is not None or o.float64_reference for o in self.outputs) or any(
            m.max_dauc is not None or m.max_dlogloss is not None for m in self.metrics)
        verdict = "PASSED" if self.passed else "FAILED"
        if self.passed and not goals:
            verdict = "measured (no goal given)"
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append(f"{verdict}: {len(self.outputs)} output(s), {self.samples} batch(es)")
        return "\n".join(lines)

    def to_json(self) -> str:
        data = {
            "passed": self.passed,
            "batches": self.samples,
            "note": self.note,
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


def _per_output_tolerance(tolerance: float | dict[str, float] | None, name: str) -> float | None:
    if isinstance(tolerance, dict):  # per output; "*" is the default of the others
        value = tolerance.get(name, tolerance.get("*"))
        return None if value is None else float(value)
    return None if tolerance is None else float(tolerance)


def _errors(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    diff = np.abs(got - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    return diff, rel, int((~np.isfinite(got)).sum())


def _flat(batches: list[list[np.ndarray]], k: int) -> np.ndarray:
    return np.concatenate([b[k].reshape(-1) for b in batches]).astype(np.float64)


def _shape_mismatch(reference, candidate, k: int):
    return next(((r[k].shape, g[k].shape) for r, g in zip(reference, candidate) if r[k].shape != g[k].shape), None)


def compare_outputs(
    names: list[str],
    reference: list[list[np.ndarray]],
    candidate: list[list[np.ndarray]],
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
) -> list[OutputParity]:
    """Per-output errors over batches. With a tolerance (`atol` and/or `rtol`: a number, or a dict output name →
    number with "*" for the others; a missing one counts as 0) an output passes when |a − b| ≤ atol + rtol·|b|
    everywhere; without one the errors are a measurement. Shapes must match and values be finite either way."""
    results = []
    for k, name in enumerate(names):
        a_tol, r_tol = _per_output_tolerance(atol, name), _per_output_tolerance(rtol, name)
        bad = _shape_mismatch(reference, candidate, k)
        if bad is not None:
            results.append(OutputParity(name, False, bad[0], bad[1], np.inf, np.inf, np.inf, np.inf, 0, a_tol, r_tol, False))
            continue
        ref, got = _flat(reference, k), _flat(candidate, k)
        diff, rel, nonfinite = _errors(ref, got)
        within = True
        if (a_tol is not None or r_tol is not None) and diff.size:
            finite = np.isfinite(diff)
            within = bool(np.all(diff[finite] <= (a_tol or 0.0) + (r_tol or 0.0) * np.abs(ref[finite])))
        passed = within and nonfinite == 0 and bool(np.all(np.isfinite(ref)))
        results.append(OutputParity(
            name, True, reference[0][k].shape, candidate[0][k].shape, float(diff.max()) if diff.size else 0.0,
            float(diff.mean()) if diff.size else 0.0, float(rel.max()) if rel.size else 0.0,
            float(rel.mean()) if rel.size else 0.0, nonfinite, a_tol, r_tol, passed,
        ))
    return results


# Faithfulness against float64: ONNX may differ from float64 by this many times torch float32's own error (per
# element, or where that is larger torch's error over the whole output, its 99.9th percentile: float reordering
# and a runtime's own approximations of exp, erf or tanh land on any element, not where torch's did), plus
# FLOAT64_ATOL. A wrong row, tier or pruning mean moves outputs by a quantization step: far more.
# (recbole's SASRec: ONNX Runtime's CPU wheel is 6.1e-6 off at one sigmoid output of 0.43 where torch is 7e-8
# off, torch's own error reaching 6.4e-7 at its 99.9th percentile; a per-element or mean floor refused it.)
FLOAT64_FACTOR = 16.0
FLOAT64_ATOL = 1e-6
TORCH_ERROR_QUANTILE = 0.999


def compare_to_float64(
    names: list[str], float64: list[list[np.ndarray]], torch32: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
    factor: float = FLOAT64_FACTOR, atol: float = FLOAT64_ATOL,
) -> list[OutputParity]:
    """Per-output verdicts of `candidate` (ONNX) against `float64` (torch in float64 on the same weights): every
    element within `factor` × max(torch float32's error there, the 99.9th percentile of its error over the
    output, one float32 ulp) + `atol` of the float64 value."""
    results = []
    for k, name in enumerate(names):
        bad = _shape_mismatch(float64, candidate, k) or _shape_mismatch(float64, torch32, k)
        if bad is not None:
            results.append(OutputParity(name, False, bad[0], bad[1], np.inf, np.inf, np.inf, np.inf, 0, atol, None, False,
                                        True, np.inf, factor))
            continue
        ref, t32, got = _flat(float64, k), _flat(torch32, k), _flat(candidate, k)
        diff, rel, nonfinite = _errors(ref, got)
        torch_err = np.abs(t32 - ref)
        scale = np.maximum(torch_err, np.ldexp(np.abs(ref), -23))
        finite_err = torch_err[np.isfinite(torch_err)]
        if finite_err.size:
            scale = np.maximum(scale, float(np.quantile(finite_err, TORCH_ERROR_QUANTILE)))
        finite = np.isfinite(diff)
        within = bool(np.all(diff[finite] <= factor * scale[finite] + atol)) if diff.size else True
        passed = within and nonfinite == 0 and bool(np.all(np.isfinite(ref)))
        results.append(OutputParity(
            name, True, float64[0][k].shape, candidate[0][k].shape, float(diff.max()) if diff.size else 0.0,
            float(diff.mean()) if diff.size else 0.0, float(rel.max()) if rel.size else 0.0,
            float(rel.mean()) if rel.size else 0.0, nonfinite, atol, None, passed, True,
            float(torch_err.max()) if torch_err.size else 0.0, factor,
        ))
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


def labels_over_samples(labels: Any, batch_sizes: list[int]) -> Any:
    """Labels in any of the accepted forms → one array over all samples (or a dict output name → array):
    one label tensor (or dict) per batch, as `convert` takes them, or one array over the concatenated batches."""
    if labels is None or isinstance(labels, (dict, np.ndarray, torch.Tensor)):
        return labels
    items = list(labels)
    if items and len(items) == len(batch_sizes) and all(isinstance(y, dict) for y in items):
        return {k: np.concatenate([_as_label_array(y[k]) for y in items]) for k in items[0]}
    per_batch = (len(items) == len(batch_sizes) and all(isinstance(y, (np.ndarray, torch.Tensor)) or
                                                        (isinstance(y, (list, tuple)) and len(y) == n)
                                                        for y, n in zip(items, batch_sizes)))
    if per_batch:
        sizes = [np.asarray(torch.as_tensor(y)).shape[0] if np.asarray(torch.as_tensor(y)).ndim else 1 for y in items]
        if sizes != list(batch_sizes):
            raise SharkExportError(f"labels: one tensor per batch with {sizes} samples, but the batches have {list(batch_sizes)}")
        return np.concatenate([_as_label_array(y) for y in items])
    return np.asarray(items)


def labels_per_batch(labels: Any, batch_sizes: list[int]) -> list | None:
    """Labels in any accepted form → one label array (or dict) per batch: as given when they are per batch, else
    an array over all samples (batches concatenated) split at the batches' sizes."""
    if labels is None:
        return None
    if isinstance(labels, (list, tuple)) and len(labels) == len(batch_sizes) and all(
            isinstance(y, (dict, np.ndarray, torch.Tensor)) for y in labels):
        return list(labels)
    if isinstance(labels, (list, tuple)) and len(labels) == 1 and len(batch_sizes) > 1:
        labels = labels[0]  # one tensor over all samples, as a .pt file holding a single tensor loads
    if isinstance(labels, dict):
        arrays = {k: _as_label_array(v) for k, v in labels.items()}
        total = {k: a.shape[0] for k, a in arrays.items()}
        if any(n != sum(batch_sizes) for n in total.values()):
            raise SharkExportError(f"labels have {total} samples, the batches {sum(batch_sizes)}")
        bounds = np.cumsum([0] + list(batch_sizes))
        return [{k: a[bounds[i]:bounds[i + 1]] for k, a in arrays.items()} for i in range(len(batch_sizes))]
    array = np.asarray(torch.as_tensor(labels) if isinstance(labels, torch.Tensor) else labels)
    if array.ndim == 0 or array.shape[0] != sum(batch_sizes):
        raise SharkExportError(f"labels: give one label tensor per batch ({len(batch_sizes)}), or one array over all "
                               f"{sum(batch_sizes)} samples; got {'a scalar' if array.ndim == 0 else array.shape[0]} entries")
    bounds = np.cumsum([0] + list(batch_sizes))
    return [torch.as_tensor(array[bounds[i]:bounds[i + 1]]) for i in range(len(batch_sizes))]


def batch_size_of(batch: Any) -> int:
    """Samples in one batch: the first dimension of its first tensor."""
    leaves = [x for x in torch.utils._pytree.tree_leaves(batch) if isinstance(x, torch.Tensor) and x.ndim]
    return int(leaves[0].shape[0]) if leaves else 1


def _batch_size(outputs: list[np.ndarray]) -> int:
    first = outputs[0] if outputs else None
    return int(first.shape[0]) if first is not None and first.ndim else 1


def check_parity(
    reference: torch.nn.Module,
    onnx_path,
    inputs: Any,
    *,
    labels: Any = None,
    atol: float | dict[str, float] | None = None,
    rtol: float | dict[str, float] | None = None,
    max_dauc: float | None = None,
    max_dlogloss: float | None = None,
    providers: list[str] | None = None,
    raise_on_failure: bool = False,
) -> ParityReport:
    """What did conversion change? Runs `reference` (torch) and the ONNX model on the same inputs and measures
    every output's difference and, with labels, AUC and log loss. It is a measurement unless you give goals:
    `atol`/`rtol` (a number, or a dict output name → number, key "*" for the others) on the outputs, `max_dauc`
    (largest AUC drop) and `max_dlogloss` (largest log-loss rise) on the metrics; the report passes when every
    goal given is met (and outputs have the reference's shapes and finite values). Whether the file computes
    what its stored tables say is `check_faithfulness`.

    `inputs`: one batch (tensor, dict, or tuple of forward's positional args) or a list of batches.
    `labels`: one label tensor per batch (as `convert` takes them), or one array over all samples (batches
    concatenated), for the first output: [N], or [N, T] for a multi-task output of T values per sample (one AUC
    per task, named `output[t]`), or column t for output t when the model returns T one-value outputs; or a dict
    output name → labels. An output with more than 16 values per sample (scores over a catalogue) gets one AUC
    over all its values. Outputs that are not probabilities are passed through a sigmoid.
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
    add_metrics(report, names, ref_outputs, onnx_outputs,
                labels_over_samples(labels, [_batch_size(b) for b in ref_outputs]), max_dauc, max_dlogloss)
    if raise_on_failure and not report.passed:
        raise ParityError(f"parity check of {onnx_path} failed:\n{report}", report=report)
    return report


def add_metrics(report: ParityReport, names: list[str], ref_outputs: list, onnx_outputs: list, labels: Any,
                max_dauc: float | None = None, max_dlogloss: float | None = None) -> None:
    """AUC and log loss of both runs per labelled output (task), appended to `report.metrics`."""
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
            report.metrics.append(QualityMetrics(label, auc(yc, r), auc(yc, g), log_loss(yc, r), log_loss(yc, g),
                                                 max_dauc, max_dlogloss))
