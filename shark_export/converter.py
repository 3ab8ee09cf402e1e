"""The converter: a trained torch recommender in, a compact ONNX model with our lookup ops out."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree

from .errors import ParityError, SharkExportError, UnsupportedModelError
from .export import ExampleInputs, export_to_ir
from .checkpoint_tables import tables_from_checkpoint
from .fields import find_fields, find_tables, has_stock_forward
from .row_bounds import store_tables
from .lookup_spec import OUTPUT_DTYPE_NAMES, storage_names
from .integrity import CHECKSUMS_KEY, LOOKUPS_KEY, checksums_of, lookup_checksums_of
from .model_file import make_stage_dir, require_output_dir, stage
from .parallel_store import WorkerError, WorkerGroup, serve
from .streamed_tables import DEFAULT_SHARD_BYTES, SegmentStore, external_payloads
from .model_io import FAITHFULNESS_KEY, INPUTS_KEY, OUTPUTS_KEY, REPORT_KEY
from .ops import DOMAIN, RUNTIME_KEY, RUNTIME_NOTE
from .dense_int8 import DENSE_CHOICES, quantize_dense
from .faithfulness import check_converted
from .parity import batch_size_of, check_parity, labels_per_batch
from .report import ConvertReport, table_reports, use_portable_bytes
from .passes import (
    DenseOpsPass,
    ExporterPatternsPass,
    FinalizeVersionsPass,
    GroupLookupsPass,
    LookupCastsPass,
    NameDimsPass,
    NameOutputsPass,
    graph_interface,
    PruneFieldsPass,
    RemoveDeadPass,
    ReplaceLookupsPass,
    StandardOpsPass,
    TidyExportPass,
    check_output_count,
    find_lookups,
    lower_computed_weight_gathers,
    raise_table_gathers,
)
from .progress import progress
from .pruning import resolve_prune
from .quant_config import QuantConfig, assign_tiers, plan_storage
from .row_priority import RowPriority, score_rows

_PARITY_BATCHES = 8


def output_names_of(output: Any) -> list[str]:
    """Graph output names from the pytree paths of the tensors torch returned ("output" for a single one)."""
    leaves, _ = pytree.tree_flatten_with_path(output)
    tensors = [path for path, leaf in leaves if isinstance(leaf, torch.Tensor)]
    if len(tensors) == 1 and not tensors[0]:
        return ["output"]
    names = []
    for path in tensors:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        name = re.sub(r"[^0-9A-Za-z_.]+", "_", "_".join(parts)) or "output"
        names.append(name if not name[0].isdigit() else f"output_{name}")
    return names


def _record_inputs(model: ir.Model, example: ExampleInputs) -> list[tuple[str, str]]:
    named = example.named_tensors()
    graph_inputs = list(model.graph.inputs)
    if len(named) != len(graph_inputs):
        raise SharkExportError(
            f"the exported graph has {len(graph_inputs)} inputs but forward got {len(named)} tensors; "
            "non-tensor arguments must not vary between calls"
        )
    return [(path, value.name) for (path, _), value in zip(named, graph_inputs)]


def _weights(model: torch.nn.Module, tables) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().cpu().numpy() for name in tables}


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

    See the README for the arguments. The model is not modified: a model in training mode is converted in
    eval mode (as `torch.onnx.export` does) and switched back afterwards; the report says so. Nothing is
    written unless every step succeeds: the file is staged next to `output_path`, checked with onnx's full
    checker and, with `calibration`, against torch (faithfulness, atol 1e-5), then moved into place. A failed
    faithfulness check raises `ParityError` (its `.report` is the ConvertReport) and leaves no file, unless
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
    options = dict(quant=quant, prune=prune, labels=labels, example_kwargs=example_kwargs, impact_atol=impact_atol,
                   impact_rtol=impact_rtol, max_dauc=max_dauc, max_dlogloss=max_dlogloss, show_progress=show_progress,
                   keep_unfaithful=keep_unfaithful, fuse_lookups=fuse_lookups, optimize_dense=optimize_dense,
                   dense=dense, ops=ops, shard_bytes=shard_bytes)
    group = _worker_group(workers, weights)
    try:
        report = _convert_in_eval_mode(model, example_inputs, output_path, weights=weights, calibration=calibration,
                                       workers=group, **options)
    except BaseException as exc:
        if group is not None:
            group.close(exc)  # the other ranks end too, raising the same error
        raise
    if group is not None:
        if group.jobs_run:
            report.notes.append(f"the rows of the tables read from the checkpoint were quantized by {group.world} "
                                "workers (torch.distributed, gloo)")
        group.close(report)
    elif workers != 1:
        report.notes.append(f"workers={workers}: only tables read from a checkpoint (weights=) are split among "
                            "workers; these were quantized in this process")
    return report


def _worker_group(workers: int | str, weights: Any) -> WorkerGroup | None:
    if workers == "distributed":
        return WorkerGroup.attach()
    if workers > 1 and weights is not None:  # started now: they import while this process exports the model
        return WorkerGroup.spawn(int(workers))
    return None


def _convert_in_eval_mode(model, example_inputs, output_path, *, weights, calibration, workers, quant, prune, labels,
                          example_kwargs, impact_atol, impact_rtol, max_dauc, max_dlogloss, show_progress,
                          keep_unfaithful, fuse_lookups, optimize_dense, dense, ops, shard_bytes) -> ConvertReport:
    was_training = model.training
    model.eval()
    try:
        with _export_context(model, example_inputs) as adapt, contextlib.ExitStack() as stack:
            streamed = {} if weights is None else stack.enter_context(tables_from_checkpoint(model, weights, find_tables(model)))
            report = _convert(
                model, adapt(example_inputs), output_path, quant=quant, prune=prune, streamed=streamed,
                shard_bytes=shard_bytes,
                calibration=None if calibration is None else [adapt(b) for b in calibration],
                labels=labels, example_kwargs=example_kwargs,
                impact_goals=dict(impact_atol=impact_atol, impact_rtol=impact_rtol, max_dauc=max_dauc, max_dlogloss=max_dlogloss),
                show_progress=show_progress, keep_unfaithful=keep_unfaithful, fuse_lookups=fuse_lookups,
                optimize_dense=optimize_dense, dense=dense, ops=ops, workers=workers,
            )
    finally:
        model.train(was_training)
    if was_training:
        report.notes.append(
            f"{type(model).__name__} was in training mode: converted in eval mode (dropout off, batch-norm running "
            "statistics), as torch.onnx.export does, and switched back to training mode"
        )
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


def _worker_rank(workers: int | str) -> int:
    """This process's rank among the workers (0: it converts); checks `workers`."""
    if workers == "distributed":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise WorkerError("workers='distributed' runs on every rank of a torch.distributed group: initialize it "
                              "first (torchrun, then torch.distributed.init_process_group('gloo')), or give workers=N")
        return dist.get_rank()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers={workers!r}: expected a number of processes >= 1 or 'distributed'")
    return 0


def _convert(model, example_inputs, output_path, *, streamed: dict, shard_bytes: int, ops: str, dense: str,
             workers: WorkerGroup | None, **kwargs) -> ConvertReport:
    with contextlib.ExitStack() as cleanup:  # a stage made for streamed tables goes, whatever happens
        store = _segment_store(cleanup, Path(output_path), ops, dense, shard_bytes) if streamed else None
        return _convert_steps(model, example_inputs, output_path, streamed=streamed, store=store, workers=workers,
                              ops=ops, dense=dense, **kwargs)


def _segment_store(cleanup: contextlib.ExitStack, output_path: Path, ops: str, dense: str, shard_bytes: int) -> SegmentStore:
    if ops != "custom" or dense != "fp32":
        raise UnsupportedModelError("a model whose tables are read from a checkpoint converts with ops='custom' and "
                                    "dense='fp32' (the portable lowering and the dense int8 step hold tables in memory)")
    store = SegmentStore(make_stage_dir(output_path), shard_bytes)
    cleanup.callback(shutil.rmtree, store.stage_dir, True)
    return store


def _convert_steps(
    model, example_inputs, output_path, *, quant, prune, calibration, labels, example_kwargs, impact_goals,
    show_progress, streamed: dict, store: SegmentStore | None, workers, keep_unfaithful, fuse_lookups, optimize_dense,
    dense, ops,
) -> ConvertReport:
    if dense not in DENSE_CHOICES:
        raise ValueError(f"dense={dense!r}: expected one of {', '.join(DENSE_CHOICES)}")
    if ops not in ("custom", "standard"):
        raise ValueError(f"ops={ops!r}: expected 'custom' (our lookup ops) or 'standard' (ai.onnx ops only)")
    config = QuantConfig.of(quant)
    example = ExampleInputs.of(example_inputs, example_kwargs)
    # one label tensor (or dict) per calibration batch, whichever form they were given in
    label_list = None if labels is None else (
        labels_per_batch(labels, [batch_size_of(b) for b in calibration]) if calibration else list(labels))
    output_path = Path(output_path)
    require_output_dir(output_path)  # before any work: a mistyped directory fails now, not after the export
    steps = progress(total=6, desc="convert", enabled=show_progress)

    # 1. tables, fields (the torch calls), pruning plan, output names
    tables = find_tables(model)
    fields = find_fields(model, example, more_batches=(calibration or [])[:_PARITY_BATCHES], require_calls=False)
    means = resolve_prune(prune, fields, model, calibration)
    with torch.no_grad():
        output_names = output_names_of(model(*example.args, **example.kwargs))
    steps.update()

    # 2. row priorities (F-Quantization), when the preset needs them
    priorities = _row_priorities(model, config, calibration, label_list)
    steps.update()

    # 3. export, and tie every lookup in the graph to its field and table
    ir_model, node_origins = _export(model, example, tables)
    input_map = _record_inputs(ir_model, example)
    check_output_count(ir_model, output_names)
    found, weights = _find_lookups(ir_model, model, tables, fields, node_origins)
    if streamed:
        _check_streamable(found, streamed)
        weights.update(streamed)  # quantized row block by row block from the checkpoint
    steps.update()

    # 4. tiers and storage per table, then quantize
    looked_up = {lookup.field for lookup in found.lookups}
    pruned_means = {n: mean for n, mean in means.items() if n in looked_up}
    all_tables = {**tables, **found.functional_tables}
    # sorted: the same tiers, and the same bytes, in every process (string sets iterate in a per-process order)
    live = sorted({l.table for l in found.lookups if l.field not in means} | set(found.dense_uses))
    tiers = assign_tiers(config, {n: all_tables[n] for n in live}, priorities.sparse if priorities else None)
    storage = {n: plan_storage(tiers[n], all_tables[n].num_rows, all_tables[n].dim,
                               config.group_rows_for(all_tables[n].dim)) for n in live}
    # scale_group="auto": groups only where every row keeps its own error bound (row_bounds), so the plan with a
    # header per row goes along as the fallback
    keep_bounds = config.scale_group == "auto"
    plans = {n: (t, g, plan_storage(tiers[n], all_tables[n].num_rows, all_tables[n].dim, 0)[0] if g and keep_bounds else None)
             for n, (t, _, g) in storage.items()}
    # Tables from a checkpoint are written straight to the stage's data files (streamed_tables), never held whole.
    quantized, stored_notes = store_tables(weights, plans, config.clip, show_progress, store=store, workers=workers)
    if store is not None:
        quantized = store.pack(quantized, workers)
    storage_notes = {n: "; ".join([part for part in note.split("; ") if part and not (stored_notes[n] and part.startswith("v3:"))]
                                  + ([stored_notes[n]] if stored_notes[n] else [])) for n, (_, note, _) in storage.items()}
    steps.update()

    # 5. the graph passes: prune → replace lookups → fuse the lookups of one Concat → float16 lookups for
    #    float16 readers → cheaper dense ops → remove dead code → versions → output names
    cleanup = RemoveDeadPass()
    grouping = GroupLookupsPass()
    dense_ops = DenseOpsPass()
    casts = LookupCastsPass()
    standard = StandardOpsPass(quantized) if ops == "standard" else None
    ir.passes.PassManager([
        PruneFieldsPass(found.lookups, pruned_means),
        ReplaceLookupsPass(found.lookups, quantized, config.output_onnx_dtype, found.dense_uses),
        *([grouping] if fuse_lookups and standard is None else []),
        casts,
        *([dense_ops] if optimize_dense else []),
        *([standard] if standard is not None else []),
        cleanup,
        FinalizeVersionsPass(),
        NameOutputsPass(output_names),
        NameDimsPass(),
    ])(ir_model)
    removed = set(cleanup.removed_inputs)
    report = ConvertReport(
        output_path.name, table_reports(all_tables, quantized, storage_notes, found.dense_uses),
        [f.name for f in fields.values() if f.pruned] + list(means), sorted(removed),
        config.preset if config.target_ratio is None else f"budget {config.target_ratio}",
        fields=list({**fields, **found.functional_fields}), dense_bytes=_dense_bytes(ir_model, quantized, standard),
        merged_fields={f.name: list(f.names[1:]) for f in fields.values() if len(f.names) > 1},
        unused_fields=[f.name for f in fields.values() if f.name not in looked_up and not f.pruned],
        fused_lookups=grouping.groups,
        dense_rewrites={k: v for k, v in dense_ops.rewritten.items() if v},
        float16_lookups=casts.folded,
        ops=ops,
        **graph_interface(ir_model.graph),
    )
    if standard is not None:
        use_portable_bytes(report, standard.tables_out)
    # Nothing in the file depends on where or when it was written: the path is not stored.
    ir_model.metadata_props.update({
        INPUTS_KEY: json.dumps([(path, None if name in removed else name) for path, name in input_map]),
        OUTPUTS_KEY: json.dumps(output_names),
        CHECKSUMS_KEY: checksums_of(quantized, store.digests if store is not None else None),
        LOOKUPS_KEY: lookup_checksums_of(ir_model.graph),
        REPORT_KEY: json.dumps({k: v for k, v in report.to_dict().items() if k != "output_path"}),
        FAITHFULNESS_KEY: json.dumps({"pruned_means": {n: np.asarray(m, np.float32).tolist() for n, m in pruned_means.items()},
                                      "lookup_dtype": OUTPUT_DTYPE_NAMES[config.output_onnx_dtype]}),
    })
    if DOMAIN in ir_model.opset_imports:  # a model that needs our library says which one, to any runtime user
        ir_model.metadata_props[RUNTIME_KEY] = ir_model.doc_string = RUNTIME_NOTE

    # 6. stage the file next to the output path, check it against torch, then move it into place
    if store is not None:
        external_payloads(ir_model.graph, store)
    with stage(ir_model, output_path, *((store.stage_dir, store.data_names) if store is not None else ())) as staged:
        report.file_bytes = _file_bytes(staged.path, staged.data_names)
        steps.update()
        if calibration is None:
            report.notes.append("no calibration data: nothing was checked against torch (give calibration= to check the file)")
        else:
            report.faithfulness, report.impact = check_converted(
                model, staged.path, calibration[:_PARITY_BATCHES], fields=fields, tables=quantized,
                pruned_means=pruned_means, labels=label_list, **impact_goals,
                dequantized=set(found.dense_uses) | {l.table for l in found.lookups if l.field in found.functional_fields}
                | _tables_of_custom_modules(model, tables),
                lookup_dtype=np.dtype(OUTPUT_DTYPE_NAMES[config.output_onnx_dtype]),
            )
            if not report.faithfulness and not keep_unfaithful:
                raise ParityError(
                    f"the converted model does not compute what torch computes with the same stored tables, so "
                    f"{str(output_path)!r} was not written (keep_unfaithful=True writes it anyway):\n{report.faithfulness}",
                    report=report,
                )
            if not report.impact:
                raise ParityError(
                    f"the converted model misses the impact goals given, so {str(output_path)!r} was not written:\n{report.impact}",
                    report=report,
                )
        if dense == "fp32":
            staged.commit()
    if dense == "int8":
        # 7. opt-in: the checked model's MatMul/Gemm through ORT's dynamic quantization, its own impact reported
        report.dense = "int8"
        portable = set() if standard is None else {n for t in standard.tables_out.values() for n in t.initializers()}
        dense_model, report.dense_int8_nodes = quantize_dense(ir_model, portable)
        dense_model.metadata_props[REPORT_KEY] = json.dumps({k: v for k, v in report.to_dict().items() if k != "output_path"})
        with stage(dense_model, output_path) as staged:
            report.file_bytes = _file_bytes(staged.path, staged.data_names)
            if calibration is not None:
                batches = calibration[:_PARITY_BATCHES]
                report.dense_impact = check_parity(model, staged.path, batches, labels=None if label_list is None else label_list[:len(batches)],
                                                   atol=impact_goals["impact_atol"], rtol=impact_goals["impact_rtol"],
                                                   max_dauc=impact_goals["max_dauc"], max_dlogloss=impact_goals["max_dlogloss"])
            staged.commit()
    report.output_path = str(output_path)
    steps.update()
    steps.close()
    return report


def _row_priorities(model, config: QuantConfig, calibration, label_list) -> RowPriority | None:
    if not config.needs_priorities or calibration is None:
        return None
    # Labels given per output: the first output's weight the rows (score_rows' `head` picks a task column).
    by_batch = None if label_list is None else [next(iter(y.values())) if isinstance(y, dict) else y for y in label_list]
    return score_rows(model, calibration, by_batch)


def _export(model, example: ExampleInputs, tables: dict) -> tuple[ir.Model, dict]:
    """The graph with staging lookups, tidied; staging node → the exported lookups it stands for."""
    ir_model, origins = export_to_ir(model, example)
    tidy = TidyExportPass()
    tidy(ir_model)
    ExporterPatternsPass()(ir_model)
    node_origins = {node: [origin] for node, origin in origins.items() if node not in tidy.merged}
    for removed, survivor in tidy.merged.items():
        node_origins.setdefault(survivor, []).append(origins.get(removed))
    return ir_model, node_origins


def _find_lookups(ir_model: ir.Model, model, tables: dict, fields: dict, node_origins: dict):
    """(LookupMap, weights of every table it reads): module tables, and parameters read by F.embedding."""
    weights = _weights(model, tables)
    table_params = {alias for t in tables.values() for alias in (t.name, *t.aliases)}
    parameters = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()
                  if n not in table_params and p.dim() == 2 and p.dtype == torch.float32}
    lower_computed_weight_gathers(ir_model, set(parameters) | table_params, node_origins)
    raise_table_gathers(ir_model, table_params)
    found = find_lookups(ir_model, fields, tables, weights, node_origins, parameters)
    if not found.lookups and not found.dense_uses:
        raise UnsupportedModelError(
            f"{type(model).__name__} has embedding tables but its exported graph reads none of them on the example "
            "inputs: nothing to convert"
        )
    weights.update({n: parameters[n] for n in found.functional_tables})
    return found, weights


def _check_streamable(found, streamed: dict) -> None:
    """Tables read from a checkpoint are served to torch by module lookups only."""
    functional = sorted({f for f, field in found.functional_fields.items() if field.table in streamed})
    dense = sorted(t for t in found.dense_uses if t in streamed)
    if functional or dense:
        raise UnsupportedModelError(
            f"tables read from a checkpoint row by row are looked up by module calls only: "
            f"{'functional lookups ' + str(functional) if functional else ''}{' and ' if functional and dense else ''}"
            f"{'dense uses of ' + str(dense) if dense else ''} would need the whole table in memory; load it into the "
            "model (weights=None) or call the embedding module")


def _tables_of_custom_modules(model, tables: dict) -> set[str]:
    """Tables read by an embedding subclass with its own forward: torch reads them dequantized in the check."""
    modules = dict(model.named_modules())
    return {t.name for t in tables.values() if any(not has_stock_forward(modules[p]) for p in t.module_paths)}


def _dense_bytes(ir_model: ir.Model, quantized: dict, standard=None) -> int:
    """Bytes of every initializer that is not a stored table: the model's other weights."""
    storage = {tensor for n in quantized for tensor in storage_names(n)}
    if standard is not None:
        storage |= {name for table in standard.tables_out.values() for name in table.initializers()}
    return int(sum(v.const_value.nbytes for v in ir_model.graph.initializers.values()
                   if v.const_value is not None and v.name not in storage))


def _file_bytes(model_path: Path, data_names: list[str]) -> int:
    return model_path.stat().st_size + sum((model_path.parent / name).stat().st_size for name in data_names)
