"""The converter's steps, each a function from what the previous ones returned to what it makes: the plan (tables,
fields, pruning, output names), the row priorities, the export with its lookups found, the stored tables, the graph
passes, the report, and the checked file. shark_export.converter runs them in order."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree

from .convert_options import ConvertOptions, Dense
from .dense_int8 import quantize_dense
from .errors import ParityError, SharkExportError, UnsupportedModelError
from .export import ExampleInputs, export_to_ir
from .faithfulness import check_converted
from .fields import find_fields, find_tables, has_stock_forward
from .integrity import CHECKSUMS_KEY, LOOKUPS_KEY, checksums_of, lookup_checksums_of
from .lookup_spec import OUTPUT_DTYPE_NAMES
from .model_file import stage
from .model_io import FAITHFULNESS_KEY, INPUTS_KEY, OUTPUTS_KEY, REPORT_KEY
from .ops import DOMAIN, RUNTIME_KEY, RUNTIME_NOTE
from .output_formats import output_format
from .parity import check_parity
from .passes import (DenseOpsPass, ExporterPatternsPass, FinalizeVersionsPass, GroupLookupsPass, LookupCastsPass,
                     NameDimsPass, NameOutputsPass, PruneFieldsPass, RemoveDeadPass, ReplaceLookupsPass,
                     TidyExportPass, check_output_count, find_lookups, graph_interface, lower_computed_weight_gathers,
                     raise_table_gathers)
from .pruning import resolve_prune
from .quant_config import QuantConfig, assign_tiers, plan_storage
from .report import ConvertReport, table_reports
from .row_bounds import store_tables
from .row_priority import RowPriority, score_rows
from .streamed_tables import SegmentStore, external_payloads

PARITY_BATCHES = 8


@dataclass(frozen=True)
class Plan:
    """Step 1: what the torch model has and what is asked of it."""

    tables: dict
    fields: dict
    means: dict  # pruned field → its mean embedding
    output_names: list[str]


@dataclass(frozen=True)
class Exported:
    """Step 3: the graph, its inputs' torch paths, and every lookup tied to its field and table."""

    model: ir.Model
    input_map: list[tuple[str, str]]
    found: Any  # passes.LookupMap
    weights: dict[str, Any]


@dataclass(frozen=True)
class Stored:
    """Step 4: the tables as stored, and why each is stored as it is."""

    all_tables: dict
    quantized: dict
    notes: dict[str, str]
    pruned_means: dict
    looked_up: set


@dataclass(frozen=True)
class Rewritten:
    """Step 5: what the graph passes did."""

    removed_inputs: list[str]
    fused_lookups: list[list[str]]
    dense_rewrites: dict[str, int]
    float16_lookups: list[str]
    output: Any  # output_formats.CustomOpsOutput | StandardOpsOutput


def plan(model, example: ExampleInputs, calibration: list | None, prune: Any) -> Plan:
    tables = find_tables(model)
    fields = find_fields(model, example, more_batches=(calibration or [])[:PARITY_BATCHES], require_calls=False)
    means = resolve_prune(prune, fields, model, calibration)
    with torch.no_grad():
        output_names = output_names_of(model(*example.args, **example.kwargs))
    return Plan(tables, fields, means, output_names)


def row_priorities(model, config: QuantConfig, calibration, label_list) -> RowPriority | None:
    if not config.needs_priorities or calibration is None:
        return None
    # Labels given per output: the first output's weight the rows (score_rows' `head` picks a task column).
    by_batch = None if label_list is None else [next(iter(y.values())) if isinstance(y, dict) else y for y in label_list]
    return score_rows(model, calibration, by_batch)


def export(model, example: ExampleInputs, the_plan: Plan, streamed: dict) -> Exported:
    """The graph with staging lookups, tidied, and its lookups found; tables from a checkpoint (`streamed`) are read
    row block by row block when they are stored."""
    ir_model, origins = export_to_ir(model, example)
    tidy = TidyExportPass()
    tidy(ir_model)
    ExporterPatternsPass()(ir_model)
    node_origins = {node: [origin] for node, origin in origins.items() if node not in tidy.merged}
    for removed, survivor in tidy.merged.items():
        node_origins.setdefault(survivor, []).append(origins.get(removed))
    input_map = _record_inputs(ir_model, example)
    check_output_count(ir_model, the_plan.output_names)
    found, weights = _find_lookups(ir_model, model, the_plan.tables, the_plan.fields, node_origins)
    if streamed:
        _check_streamable(found, streamed)
        weights.update(streamed)
    return Exported(ir_model, input_map, found, weights)


def store(the_plan: Plan, exported: Exported, priorities: RowPriority | None, options: ConvertOptions,
          segments: SegmentStore | None, workers) -> Stored:
    """Tiers and storage per table, then the tables quantized (from a checkpoint: straight into the stage's data
    files, never held whole)."""
    found, config = exported.found, options.quant
    looked_up = {lookup.field for lookup in found.lookups}
    all_tables = {**the_plan.tables, **found.functional_tables}
    # sorted: the same tiers, and the same bytes, in every process (string sets iterate in a per-process order)
    live = sorted({l.table for l in found.lookups if l.field not in the_plan.means} | set(found.dense_uses))
    tiers = assign_tiers(config, {n: all_tables[n] for n in live}, priorities.sparse if priorities else None)
    storage = {n: plan_storage(tiers[n], all_tables[n].num_rows, all_tables[n].dim,
                               config.group_rows_for(all_tables[n].dim)) for n in live}
    # scale_group="auto": groups only where every row keeps its own error bound (row_bounds), so the plan with a
    # header per row goes along as the fallback
    keep_bounds = config.scale_group == "auto"
    plans = {n: (t, g, plan_storage(tiers[n], all_tables[n].num_rows, all_tables[n].dim, 0)[0] if g and keep_bounds else None)
             for n, (t, _, g) in storage.items()}
    quantized, stored_notes = store_tables(exported.weights, plans, config.clip, options.show_progress,
                                           store=segments, workers=workers)
    if segments is not None:
        quantized = segments.pack(quantized, workers)
    notes = {n: "; ".join([part for part in note.split("; ") if part and not (stored_notes[n] and part.startswith("v3:"))]
                          + ([stored_notes[n]] if stored_notes[n] else [])) for n, (_, note, _) in storage.items()}
    pruned_means = {n: mean for n, mean in the_plan.means.items() if n in looked_up}
    return Stored(all_tables, quantized, notes, pruned_means, looked_up)


def rewrite(exported: Exported, stored: Stored, the_plan: Plan, options: ConvertOptions) -> Rewritten:
    """The graph passes: prune → replace lookups → fuse the lookups of one Concat → float16 lookups for float16
    readers → cheaper dense ops → the output format's lowering → remove dead code → versions → names."""
    cleanup, grouping, dense_ops, casts = RemoveDeadPass(), GroupLookupsPass(), DenseOpsPass(), LookupCastsPass()
    output = output_format(options.ops, stored.quantized)
    found = exported.found
    ir.passes.PassManager([
        PruneFieldsPass(found.lookups, stored.pruned_means),
        ReplaceLookupsPass(found.lookups, stored.quantized, options.quant.output_onnx_dtype, found.dense_uses),
        *([grouping] if options.fuse_lookups and output.fuses_lookups else []),
        casts,
        *([dense_ops] if options.optimize_dense else []),
        *output.lowering_passes(),
        cleanup,
        FinalizeVersionsPass(),
        NameOutputsPass(the_plan.output_names),
        NameDimsPass(),
    ])(exported.model)
    return Rewritten(sorted(set(cleanup.removed_inputs)), grouping.groups,
                     {k: v for k, v in dense_ops.rewritten.items() if v}, casts.folded, output)


def report_of(output_path: Path, the_plan: Plan, exported: Exported, stored: Stored, rewritten: Rewritten,
              options: ConvertOptions) -> ConvertReport:
    """Everything known before the file is written (the checks and the file's size come after)."""
    fields, found, config = the_plan.fields, exported.found, options.quant
    tables = table_reports(stored.all_tables, stored.quantized, stored.notes, found.dense_uses)
    return ConvertReport(
        output_path.name, rewritten.output.table_reports(tables),
        [f.name for f in fields.values() if f.pruned] + list(the_plan.means), rewritten.removed_inputs,
        config.preset if config.target_ratio is None else f"budget {config.target_ratio}",
        fields=list({**fields, **found.functional_fields}),
        dense_bytes=_dense_bytes(exported.model, rewritten.output.table_tensors()),
        merged_fields={f.name: list(f.names[1:]) for f in fields.values() if len(f.names) > 1},
        unused_fields=[f.name for f in fields.values() if f.name not in stored.looked_up and not f.pruned],
        fused_lookups=rewritten.fused_lookups,
        dense_rewrites=rewritten.dense_rewrites,
        float16_lookups=rewritten.float16_lookups,
        ops=options.ops.value,
        **graph_interface(exported.model.graph),
    )


def add_metadata(exported: Exported, stored: Stored, the_plan: Plan, report: ConvertReport, config: QuantConfig,
                 segments: SegmentStore | None) -> None:
    """What readers of the file need besides the graph. Nothing depends on where or when it is written."""
    ir_model, removed = exported.model, set(report.removed_inputs)
    ir_model.metadata_props.update({
        INPUTS_KEY: json.dumps([(path, None if name in removed else name) for path, name in exported.input_map]),
        OUTPUTS_KEY: json.dumps(the_plan.output_names),
        CHECKSUMS_KEY: checksums_of(stored.quantized, segments.digests if segments is not None else None),
        LOOKUPS_KEY: lookup_checksums_of(ir_model.graph),
        REPORT_KEY: _report_json(report),
        FAITHFULNESS_KEY: json.dumps({"pruned_means": {n: np.asarray(m, np.float32).tolist()
                                                       for n, m in stored.pruned_means.items()},
                                      "lookup_dtype": OUTPUT_DTYPE_NAMES[config.output_onnx_dtype]}),
    })
    if DOMAIN in ir_model.opset_imports:  # a model that needs our library says which one, to any runtime user
        ir_model.metadata_props[RUNTIME_KEY] = ir_model.doc_string = RUNTIME_NOTE
    if segments is not None:
        external_payloads(ir_model.graph, segments)


def write_checked(model, output_path: Path, exported: Exported, stored: Stored, the_plan: Plan, report: ConvertReport,
                  options: ConvertOptions, calibration: list | None, label_list, segments: SegmentStore | None,
                  ) -> ConvertReport:
    """Stage the file next to the output path, check it against torch, move it into place (with dense="fp32"),
    and return the report with the file's size and the checks."""
    staged_files = (segments.stage_dir, segments.data_names) if segments is not None else ()
    with stage(exported.model, output_path, *staged_files) as staged:
        report = replace(report, file_bytes=file_bytes(staged.path, staged.data_names))
        if calibration is None:
            report = replace(report, notes=[*report.notes, "no calibration data: nothing was checked against torch "
                                                           "(give calibration= to check the file)"])
        else:
            faithfulness, impact = check_converted(
                model, staged.path, calibration[:PARITY_BATCHES], fields=the_plan.fields, tables=stored.quantized,
                pruned_means=stored.pruned_means, labels=label_list, **options.goals.as_impact_kwargs(),
                dequantized=_dequantized_tables(model, the_plan, exported),
                lookup_dtype=np.dtype(OUTPUT_DTYPE_NAMES[options.quant.output_onnx_dtype]),
            )
            report = replace(report, faithfulness=faithfulness, impact=impact)
            _raise_on_failed_checks(report, output_path, options)
        if options.dense is Dense.FP32:
            staged.commit()
    return report


def write_dense_int8(model, output_path: Path, exported: Exported, rewritten: Rewritten, report: ConvertReport,
                     options: ConvertOptions, calibration: list | None, label_list) -> ConvertReport:
    """Opt-in: the checked model's MatMul/Gemm through ORT's dynamic quantization, written in its place, its own
    impact reported."""
    dense_model, nodes = quantize_dense(exported.model, rewritten.output.kept_from_dense_int8())
    report = replace(report, dense=Dense.INT8.value, dense_int8_nodes=nodes)
    dense_model.metadata_props[REPORT_KEY] = _report_json(report)
    with stage(dense_model, output_path) as staged:
        report = replace(report, file_bytes=file_bytes(staged.path, staged.data_names))
        if calibration is not None:
            batches = calibration[:PARITY_BATCHES]
            labels = None if label_list is None else label_list[:len(batches)]
            report = replace(report, dense_impact=check_parity(model, staged.path, batches, labels=labels,
                                                               **options.goals.as_parity_kwargs()))
        staged.commit()
    return report


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


def file_bytes(model_path: Path, data_names: list[str]) -> int:
    return model_path.stat().st_size + sum((model_path.parent / name).stat().st_size for name in data_names)


def _raise_on_failed_checks(report: ConvertReport, output_path: Path, options: ConvertOptions) -> None:
    if not report.faithfulness and not options.keep_unfaithful:
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


def _report_json(report: ConvertReport) -> str:
    return json.dumps({k: v for k, v in report.to_dict().items() if k != "output_path"})


def _record_inputs(model: ir.Model, example: ExampleInputs) -> list[tuple[str, str]]:
    named = example.named_tensors()
    graph_inputs = list(model.graph.inputs)
    if len(named) != len(graph_inputs):
        raise SharkExportError(
            f"the exported graph has {len(graph_inputs)} inputs but forward got {len(named)} tensors; "
            "non-tensor arguments must not vary between calls"
        )
    return [(path, value.name) for (path, _), value in zip(named, graph_inputs)]


def _find_lookups(ir_model: ir.Model, model, tables: dict, fields: dict, node_origins: dict):
    """(LookupMap, weights of every table it reads): module tables, and parameters read by F.embedding."""
    params = dict(model.named_parameters())
    weights = {name: params[name].detach().cpu().numpy() for name in tables}
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


def _dequantized_tables(model, the_plan: Plan, exported: Exported) -> set[str]:
    """Tables torch reads dequantized in the check: dense uses, functional lookups, and the tables of embedding
    subclasses with their own forward."""
    found = exported.found
    modules = dict(model.named_modules())
    custom = {t.name for t in the_plan.tables.values() if any(not has_stock_forward(modules[p]) for p in t.module_paths)}
    return set(found.dense_uses) | {l.table for l in found.lookups if l.field in found.functional_fields} | custom


def _dense_bytes(ir_model: ir.Model, table_tensors: set[str]) -> int:
    """Bytes of every initializer that is not a stored table: the model's other weights."""
    return int(sum(v.const_value.nbytes for v in ir_model.graph.initializers.values()
                   if v.const_value is not None and v.name not in table_tensors))
