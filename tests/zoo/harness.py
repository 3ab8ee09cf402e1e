"""Build, convert and check the zoo's cases: shared by the compatibility tests and the table generator.

For every case and preset: convert with calibration data, then check
- faithfulness (ONNX vs torch with the same dequantized weights): passes at atol 1e-5;
- size: the tables' stored bytes against Σ rows·(min(D + 4, 2·D) + 1) (what int8 may cost: the cheaper of an
  int8 row and an fp16 row, plus a byte of metadata): int8 ≤ 1.03×, mixed ≤ 0.8×, fp32 ≤ the fp32 tables;
- ΔAUC on held-out batches (a batch size the export never saw): int8 ≤ 5e-4, mixed ≤ 1e-3, fp32 ≤ 1e-4
  (exact tables: only ORT-vs-torch float noise, which can reorder near-tied scores).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LIBRARY_MODULES = ["lib_deepctr", "lib_rechub", "lib_torchfm", "lib_widedeep", "lib_recbole", "lib_torchrec"]
PRESETS = ["fp32", "int8", "mixed"]
SIZE_BOUND = {"fp32": None, "int8": 1.03, "mixed": 0.8}
AUC_BOUND = {"fp32": 1e-4, "int8": 5e-4, "mixed": 1e-3}  # fp32: float noise of ORT vs torch only


@functools.lru_cache(maxsize=None)
def load_library(module: str):
    """(module, None) or (None, why it is missing); the first answer holds (a failed import can leave a
    half-imported package behind that a second import would wrongly accept)."""
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, f"{module}: {type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=None)
def build(module: str, case: str, seed: int = 0):
    import torch

    lib, why = load_library(module)
    if lib is None:
        raise ImportError(why)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread trains them fastest, and never oversubscribes
    try:
        return lib.CASES[case](seed)
    finally:
        torch.set_num_threads(threads)


def int8_budget(report) -> float:
    """Σ rows·(min(D + 4, 2·D) + 1) over the stored tables."""
    return sum(t.rows * (min(t.dim + 4, 2 * t.dim) + 1) for t in report.tables if not t.pruned)


@dataclass
class Outcome:
    case: str
    library: str
    preset: str
    converted: bool = False
    error: str = ""
    ratio: float = float("nan")  # stored table bytes / fp32 table bytes
    size_limit_ratio: float = float("nan")  # the bound, as a fraction of the fp32 tables
    size_ok: bool = False
    faithful: bool = False
    max_abs: float = float("nan")
    auc_deltas: dict = field(default_factory=dict)
    auc_ok: bool = False
    file_vs_plain: float = float("nan")  # file bytes / the same file with fp32 tables
    report_text: str = ""

    @property
    def passed(self) -> bool:
        return self.converted and self.size_ok and self.faithful and self.auc_ok


def run(case, preset: str, out_dir: Path) -> Outcome:
    import shark_export

    outcome = Outcome(case.name, case.library, preset)
    path = Path(out_dir) / f"{case.name.replace('/', '_')}.{preset}.onnx"
    try:
        report = shark_export.convert(case.model, case.example, path, quant=preset, calibration=case.calibration,
                                      labels=case.labels)
    except Exception as exc:  # noqa: BLE001 - recorded for the table; the test re-raises
        outcome.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return outcome
    outcome.converted = True
    outcome.report_text = str(report)
    fp32 = report.fp32_bytes - sum(t.fp32_bytes for t in report.tables if t.pruned)
    outcome.ratio = report.bytes_after / fp32
    bound = SIZE_BOUND[preset]
    if bound is None:
        outcome.size_limit_ratio = 1.0
        outcome.size_ok = all(t.bytes_after <= t.fp32_bytes for t in report.tables)
    else:
        outcome.size_limit_ratio = bound * int8_budget(report) / fp32
        outcome.size_ok = report.bytes_after <= bound * int8_budget(report)
    # the same file with fp32 tables: everything else (other weights, graph, metadata) as it is
    outcome.file_vs_plain = report.file_bytes / (report.file_bytes - report.bytes_after + fp32)
    outcome.faithful = bool(report.faithfulness)
    outcome.max_abs = max(o.max_abs for o in report.faithfulness.outputs)
    held_out = shark_export.check_parity(case.model, path, case.test, labels=_labels(case.test_labels), atol=1.0, rtol=1.0)
    outcome.auc_deltas = {m.output: m.auc_delta for m in held_out.metrics}
    outcome.auc_ok = bool(outcome.auc_deltas) and all(abs(d) <= AUC_BOUND[preset] for d in outcome.auc_deltas.values())
    for suffix in ("", ".data"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return outcome


def _labels(per_batch: list):
    if per_batch and isinstance(per_batch[0], dict):
        return {k: np.concatenate([np.asarray(y[k]).reshape(len(y[k]), -1) for y in per_batch]) for k in per_batch[0]}
    return np.concatenate([np.asarray(y).reshape(len(y), -1) for y in per_batch])


def required() -> bool:
    """CI sets SHARK_ZOO_REQUIRE=1: a library that does not import is then a failure, not a skip."""
    return os.environ.get("SHARK_ZOO_REQUIRE") == "1"
