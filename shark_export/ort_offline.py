"""ONNX Runtime's graph optimizations applied once and saved into the model (`shark-export optimize`).

ORT optimizes every graph when a session is created; saving the optimized graph moves that work from every
server start to one offline step. The saved graph contains ORT's own fused ops (com.microsoft FusedGemm,
...), so it is for ONNX Runtime only; level "extended" keeps it portable across CPUs, "all" adds layout
transformations that ORT documents as specific to the machine that ran them. Our lookups and tables pass
through unchanged (ORT does not rewrite custom ops), so the table checksums still verify.

The result is staged next to the destination, loaded back with ORT's optimizations off, and (given a batch)
checked to compute the same bits as the source model optimized online; only then does it replace the
destination.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SharkExportError
from .model_file import DATA_SUFFIX, commit_files, make_stage_dir

LEVELS = ("basic", "extended", "all")
# Initializers at least this big go to the external data file (protobuf caps a file at 2 GiB).
_EXTERNAL_MIN_BYTES = 1 << 20


@dataclass
class OfflineReport:
    source: str
    output: str
    level: str
    nodes_before: int
    nodes_after: int
    session_seconds_source: float  # creating a session on the source (ORT optimizes online)
    session_seconds_optimized: float  # on the saved model, optimizations off
    outputs_checked: int  # how many outputs were compared bit for bit (0: no batch given)

    def __str__(self) -> str:
        check = (f"{self.outputs_checked} output(s) bit-identical to the source optimized online" if self.outputs_checked
                 else "outputs not checked (no batch given)")
        return (f"{self.output}: ORT '{self.level}' optimizations saved; nodes {self.nodes_before} -> {self.nodes_after}; "
                f"session creation {self.session_seconds_source * 1e3:.0f} ms -> {self.session_seconds_optimized * 1e3:.0f} ms; {check}")


def _level(ort, level: str):
    return {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]


def _name_data_by_content(model_path: Path, data_path: Path) -> str | None:
    """Rename ORT's external data file after its content (as model_file does) and point the model at it, so
    that a crash between the two renames of the commit never pairs a model with another model's data."""
    import onnx

    if not data_path.is_file():
        return None
    digest = hashlib.blake2b(digest_size=12)
    with open(data_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    name = digest.hexdigest() + DATA_SUFFIX
    proto = onnx.load(str(model_path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == data_path.name:
                entry.value = name
    onnx.save(proto, str(model_path))
    os.replace(data_path, data_path.with_name(name))
    return name


def optimize_offline(source, output, *, level: str = "extended", inputs=None) -> OfflineReport:
    """Save ORT's `level` graph optimizations of the model at `source` into a model at `output`.

    `inputs`: a batch of the torch model's inputs (as for `shark_export.OnnxModelRunner.run`); when given, the
    saved model must compute the same bits as the source, else nothing is written."""
    import onnx
    import onnxruntime as ort

    from .model_io import OnnxModelRunner
    from .ops import library_path, missing_ops_error, session_options

    if level not in LEVELS:
        raise ValueError(f"level={level!r}: expected one of {', '.join(LEVELS)}")
    source, output = Path(source), Path(output)
    if not source.is_file():
        raise SharkExportError(f"ONNX model {str(source)!r} does not exist")
    if output.resolve() == source.resolve():
        raise SharkExportError(f"the optimized model must not overwrite its source {str(source)!r}")
    stage = make_stage_dir(output)
    try:
        staged = stage / output.name
        ort_data = "ort_initializers.bin"  # renamed by content below
        so = session_options()
        so.graph_optimization_level = _level(ort, level)
        so.optimized_model_filepath = str(staged)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", ort_data)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", str(_EXTERNAL_MIN_BYTES))
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types; name the step and the file
            raise (missing_ops_error(exc, repr(str(source)), library_path())
                   or SharkExportError(f"ONNX Runtime could not optimize {str(source)!r}: {exc}")) from exc
        source_seconds = time.perf_counter() - start
        if not staged.is_file():
            raise SharkExportError(f"ONNX Runtime wrote no optimized model for {str(source)!r}")

        plain = session_options()
        plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(staged), plain, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise (missing_ops_error(exc, f"the optimized model of {str(source)!r}", library_path())
                   or SharkExportError(f"the optimized model of {str(source)!r} does not load back: {exc}")) from exc
        optimized_seconds = time.perf_counter() - start

        checked = 0
        if inputs is not None:
            source_runner = OnnxModelRunner(source)
            want, got = source_runner.run(inputs), OnnxModelRunner(staged).run(inputs)
            for name, a, b in zip(source_runner.output_names, want, got):
                if a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
                    raise SharkExportError(f"the optimized model's output {name!r} differs from the source's "
                                           f"(max abs {float(np.abs(a - b).max()) if a.shape == b.shape else 'shape'}): not written")
                checked += 1

        nodes_before = len(onnx.load(str(source), load_external_data=False).graph.node)
        nodes_after = len(onnx.load(str(staged), load_external_data=False).graph.node)
        data_name = _name_data_by_content(staged, stage / ort_data)
        commit_files(stage, staged, data_name, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return OfflineReport(str(source), str(output), level, nodes_before, nodes_after, source_seconds, optimized_seconds, checked)
