"""The converter: a trained torch recommender in, a compact ONNX model with our lookup ops out. `convert` checks its
options once (ConvertOptions), puts the model in eval mode, opens the checkpoint and the workers when asked, and
runs the steps of shark_export.convert_steps in order."""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from . import convert_steps as steps
from .checkpoint_tables import tables_from_checkpoint
from .convert_options import ConvertOptions, Dense, Ops
from .errors import OptionError, UnsupportedModelError
from .export import ExampleInputs
from .fields import find_tables
from .model_file import make_stage_dir, require_output_dir
from .parallel_store import WorkerError, WorkerGroup, serve
from .parity import batch_size_of, labels_per_batch
from .progress import progress
from .quant_config import QuantConfig
from .report import ConvertReport
from .streamed_tables import DEFAULT_SHARD_BYTES, SegmentStore


def convert(
    model: torch.nn.Module,
    example_inputs: Any,
    output_path,
    *,
    quant: str | QuantConfig = "int8",
    prune: Any = None,
    calibration: Iterable | None = None,
    labels: Iterable | None = None,
    example_kwargs: dict | None = None,
    impact_atol: float | None = None,
    impact_rtol: float | None = None,
    max_dauc: float | None = None,
    max_dlogloss: float | None = None,
    show_progress: bool = False,
    keep_unfaithful: bool = False,
    fuse_lookups: bool = True,
    optimize_dense: bool = True,
    dense: str = "fp32",
    ops: str = "custom",
    weights: Any = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    workers: int | str = 1,
) -> ConvertReport:
    """Convert `model` to an ONNX model at `output_path` whose embedding lookups run our ops.

    See the README and docs/GUIDE.md for the arguments. The model is not modified: a model in training mode is
    converted in eval mode (as `torch.onnx.export` does) and switched back afterwards; the report says so. Nothing
    is written unless every step succeeds: the file is staged next to `output_path`, checked with onnx's full
    checker and, with `calibration`, against torch (faithfulness), then moved into place. A failed faithfulness
    check raises `ParityError` (its `.report` is the ConvertReport) and leaves no file, unless
    `keep_unfaithful=True`. `fuse_lookups`: one multi-table lookup per concatenation of lookups;
    `optimize_dense`: DenseOpsPass; `dense="int8"`: ORT's dynamic quantization of the MatMul/Gemm after the
    faithfulness check, its impact reported as `report.dense_impact` (shark_export.dense_int8).
    `ops="standard"`: a portable model, every table in standard ONNX tensors read by ai.onnx ops only (no
    custom-op library needed to run it; docs/PORTABLE.md); lookups are not fused.
    `weights`: a checkpoint to take the model's tensors from, a `torch.save` file or a torch.distributed.checkpoint
    directory (or a mapping name → array); the model may then be built on the meta device. Its tables are read row
    range by row range, never whole (shark_export.checkpoint_tables; docs/SCALE.md), and the stored tables are
    written straight to the data files, at most `shard_bytes` each (shark_export.streamed_tables).
    `workers`: N processes quantize the rows of the tables read from `weights`, each its share, under
    torch.distributed (gloo); or "distributed": every rank of the group torch.distributed has initialized
    (torchrun) calls convert with the same arguments, rank 0 writes the model and the others return its report
    (shark_export.parallel_store). The output is the same, byte for byte, whatever the number of workers.
    """
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if _worker_rank(workers) > 0:
        outcome = serve()  # rank 0 converts; this rank quantizes the rows it is given, then ends with rank 0
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    options = ConvertOptions.of(quant=quant, prune=prune, impact_atol=impact_atol, impact_rtol=impact_rtol,
                                max_dauc=max_dauc, max_dlogloss=max_dlogloss, show_progress=show_progress,
                                keep_unfaithful=keep_unfaithful, fuse_lookups=fuse_lookups,
                                optimize_dense=optimize_dense, dense=dense, ops=ops, shard_bytes=shard_bytes)
    group = _worker_group(workers, weights)
    try:
        report = _convert_in_eval_mode(model, example_inputs, Path(output_path), options, weights=weights,
                                       calibration=calibration, labels=labels, example_kwargs=example_kwargs,
                                       workers=group)
    except BaseException as exc:
        if group is not None:
            group.close(exc)  # the other ranks end too, raising the same error
        raise
    if group is not None:
        if group.jobs_run:
            report = _noted(report, f"the rows of the tables read from the checkpoint were quantized by {group.world} "
                                    "workers (torch.distributed, gloo)")
        group.close(report)
    elif workers != 1:
        report = _noted(report, f"workers={workers}: only tables read from a checkpoint (weights=) are split among "
                                "workers; these were quantized in this process")
    return report


def _noted(report: ConvertReport, note: str) -> ConvertReport:
    return replace(report, notes=[*report.notes, note])


def _worker_group(workers: int | str, weights: Any) -> WorkerGroup | None:
    if workers == "distributed":
        return WorkerGroup.attach()
    if workers > 1 and weights is not None:  # started now: they import while this process exports the model
        return WorkerGroup.spawn(int(workers))
    return None


def _worker_rank(workers: int | str) -> int:
    """This process's rank among the workers (0: it converts); checks `workers`."""
    if workers == "distributed":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise WorkerError("workers='distributed' runs on every rank of a torch.distributed group: initialize it "
                              "first (torchrun, then torch.distributed.init_process_group('gloo')), or give workers=N")
        return dist.get_rank()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise OptionError(f"workers={workers!r}: expected a number of processes >= 1 or 'distributed'")
    return 0


def _convert_in_eval_mode(model, example_inputs, output_path: Path, options: ConvertOptions, *, weights, calibration,
                          labels, example_kwargs, workers) -> ConvertReport:
    was_training = model.training
    model.eval()
    try:
        with _export_context(model, example_inputs) as adapt, contextlib.ExitStack() as stack:
            streamed = {} if weights is None else stack.enter_context(tables_from_checkpoint(model, weights, find_tables(model)))
            # a stage made for streamed tables goes, whatever happens
            segments = _segment_store(stack, output_path, options) if streamed else None
            report = _convert(model, ExampleInputs.of(adapt(example_inputs), example_kwargs), output_path, options,
                              calibration=None if calibration is None else [adapt(b) for b in calibration],
                              labels=labels, streamed=streamed, segments=segments, workers=workers)
    finally:
        model.train(was_training)
    if was_training:
        report = _noted(report, f"{type(model).__name__} was in training mode: converted in eval mode (dropout off, "
                                "batch-norm running statistics), as torch.onnx.export does, and switched back to "
                                "training mode")
    return report


@contextlib.contextmanager
def _export_context(model: torch.nn.Module, example_inputs: Any):
    """torchrec models (KeyedJaggedTensor inputs, EmbeddingBagCollection): export-friendly collections and
    canonical KJTs for every batch; any other model: nothing changes."""
    compat = _torchrec_compat(model, example_inputs)
    if compat is None:
        yield lambda batch: batch
        return
    with compat.export_friendly(model):
        yield compat.canonical_inputs


def _torchrec_compat(model: torch.nn.Module, example_inputs: Any):
    if "torchrec" not in sys.modules:
        return None  # a model or an input of torchrec's means torchrec was imported
    from . import torchrec_compat

    if torchrec_compat.has_kjt(example_inputs) or torchrec_compat.collections_of(model):
        return torchrec_compat
    return None


def _segment_store(cleanup: contextlib.ExitStack, output_path: Path, options: ConvertOptions) -> SegmentStore:
    if options.ops is not Ops.CUSTOM or options.dense is not Dense.FP32:
        raise UnsupportedModelError("a model whose tables are read from a checkpoint converts with ops='custom' and "
                                    "dense='fp32' (the portable lowering and the dense int8 step hold tables in memory)")
    store = SegmentStore(make_stage_dir(output_path), options.shard_bytes)
    cleanup.callback(shutil.rmtree, store.stage_dir, True)
    return store


def _convert(model, example: ExampleInputs, output_path: Path, options: ConvertOptions, *, calibration, labels,
             streamed: dict, segments: SegmentStore | None, workers) -> ConvertReport:
    # one label tensor (or dict) per calibration batch, whichever form they were given in
    label_list = None if labels is None else (
        labels_per_batch(labels, [batch_size_of(b) for b in calibration]) if calibration else list(labels))
    require_output_dir(output_path)  # before any work: a mistyped directory fails now, not after the export
    bar = progress(total=6, desc="convert", enabled=options.show_progress)
    the_plan = steps.plan(model, example, calibration, options.prune)
    bar.update()
    priorities = steps.row_priorities(model, options.quant, calibration, label_list)  # F-Quantization
    bar.update()
    exported = steps.export(model, example, the_plan, streamed)
    bar.update()
    stored = steps.store(the_plan, exported, priorities, options, segments, workers)
    bar.update()
    rewritten = steps.rewrite(exported, stored, the_plan, options)
    report = steps.report_of(output_path, the_plan, exported, stored, rewritten, options)
    steps.add_metadata(exported, stored, the_plan, report, options.quant, segments)
    bar.update()
    report = steps.write_checked(model, output_path, exported, stored, the_plan, report, options, calibration,
                                 label_list, segments)
    if options.dense is Dense.INT8:
        report = steps.write_dense_int8(model, output_path, exported, rewritten, report, options, calibration, label_list)
    bar.update()
    bar.close()
    return replace(report, output_path=str(output_path))
