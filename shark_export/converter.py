"""The converter: a trained torch recommender in, a compact ONNX model with our lookup ops out."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree

from .errors import ParityError, SharkExportError, UnsupportedModelError
from .export import ExampleInputs, export_to_ir
from .fields import find_fields, find_tables
from .format import Tier
from .quantize import quantize_table
from .integrity import CHECKSUMS_KEY, checksums_of
from .model_file import stage
from .model_io import INPUTS_KEY, OUTPUTS_KEY, REPORT_KEY
from .faithfulness import check_converted
from .report import ConvertReport, TableReport
from .passes import (
    FinalizeVersionsPass,
    PruneFieldsPass,
    RemoveDeadPass,
    ReplaceLookupsPass,
    TidyExportPass,
    find_lookups,
    lower_computed_weight_gathers,
    raise_table_gathers,
)
from .progress import progress
from .pruning import resolve_prune
from .quant_config import QuantConfig, assign_tiers, plan_storage
from .row_priority import RowPriority, score_rows

_PARITY_BATCHES = 8


def _output_names(output: Any) -> list[str]:
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


def _rename_outputs(model: ir.Model, names: list[str]) -> None:
    graph = model.graph
    if len(graph.outputs) != len(names):
        raise SharkExportError(f"exported graph has {len(graph.outputs)} outputs, torch returned {len(names)} tensors")
    taken = {v.name for v in graph.inputs} | set(graph.initializers)
    for k, (value, name) in enumerate(zip(list(graph.outputs), names)):
        if value.is_graph_input() or value.is_initializer() or name in taken:
            identity = ir.node("Identity", [value], name=f"output/{name}")
            graph.append(identity)
            graph.outputs[k] = value = identity.outputs[0]
            value.type, value.shape = value.type or identity.inputs[0].type, identity.inputs[0].shape
        value.name = name


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


def _default_row(weight: np.ndarray, tiers) -> np.ndarray | None:
    """Dropped rows read as the mean of the dropped rows (the value closest to all of them in L2)."""
    if isinstance(tiers, np.ndarray) and (tiers == Tier.DROPPED).any():
        return weight[tiers == Tier.DROPPED].mean(axis=0, dtype=np.float64).astype(np.float32)
    return None


def _dense_use_names(uses) -> list[str]:
    return sorted({f"{user.op_type} {user.name!r}" for user, _ in uses})


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
    impact_atol: float = 1e-2,
    impact_rtol: float = 1e-2,
    show_progress: bool = False,
    keep_unfaithful: bool = False,
) -> ConvertReport:
    """Convert `model` to an ONNX model at `output_path` whose embedding lookups run our ops.

    See the README for the arguments. The model is not modified: a model in training mode is converted in
    eval mode (as `torch.onnx.export` does) and switched back afterwards; the report says so. Nothing is
    written unless every step succeeds: the file is staged next to `output_path`, checked with onnx's full
    checker and, with `calibration`, against torch (faithfulness, atol 1e-5), then moved into place. A failed
    faithfulness check raises `ParityError` (its `.report` is the ConvertReport) and leaves no file, unless
    `keep_unfaithful=True`.
    """
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        with _export_context(model, example_inputs) as adapt:
            report = _convert(
                model, adapt(example_inputs), output_path, quant=quant, prune=prune,
                calibration=None if calibration is None else [adapt(b) for b in calibration],
                labels=labels, example_kwargs=example_kwargs, impact_atol=impact_atol, impact_rtol=impact_rtol,
                show_progress=show_progress, keep_unfaithful=keep_unfaithful,
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


def _convert(
    model, example_inputs, output_path, *, quant, prune, calibration, labels, example_kwargs, impact_atol,
    impact_rtol, show_progress, keep_unfaithful,
) -> ConvertReport:
    config = QuantConfig.of(quant)
    example = ExampleInputs.of(example_inputs, example_kwargs)
    label_list = list(labels) if labels is not None else None
    output_path = Path(output_path)
    steps = progress(total=6, desc="convert", enabled=show_progress)

    tables = find_tables(model)
    fields = find_fields(model, example, more_batches=(calibration or [])[:_PARITY_BATCHES], require_calls=False)
    means = resolve_prune(prune, fields, model, calibration)
    prune_names = list(means)
    with torch.no_grad():
        output_names = _output_names(model(*example.args, **example.kwargs))
    steps.update()

    priorities: RowPriority | None = None
    if config.needs_priorities and calibration is not None:
        # Labels given per output: the first output's weight the rows (score_rows' `head` picks a task column).
        by_batch = None if label_list is None else [next(iter(y.values())) if isinstance(y, dict) else y for y in label_list]
        priorities = score_rows(model, calibration, by_batch)
    steps.update()

    embedding_paths = {path for t in tables.values() for path in t.module_paths}
    ir_model, origins = export_to_ir(model, example, embedding_paths)
    tidy = TidyExportPass()
    tidy(ir_model)
    node_origins = {node: [origin] for node, origin in origins.items() if node not in tidy.merged}
    for removed, survivor in tidy.merged.items():
        node_origins.setdefault(survivor, []).append(origins.get(removed))
    input_map = _record_inputs(ir_model, example)
    weights = _weights(model, tables)
    table_params = {alias for t in tables.values() for alias in (t.name, *t.aliases)}
    parameters = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()
                  if n not in table_params and p.dim() == 2 and p.dtype == torch.float32}
    lower_computed_weight_gathers(ir_model, set(parameters) | table_params, node_origins)
    raise_table_gathers(ir_model, table_params)
    found = find_lookups(ir_model, fields, tables, weights, node_origins, parameters)
    lookups = found.lookups
    all_tables = {**tables, **found.functional_tables}
    weights.update({n: parameters[n] for n in found.functional_tables})
    all_fields = {**fields, **found.functional_fields}
    looked_up = {lookup.field for lookup in lookups}
    if not lookups and not found.dense_uses:
        raise UnsupportedModelError(
            f"{type(model).__name__} has embedding tables but its exported graph reads none of them on the example "
            "inputs: nothing to convert"
        )
    steps.update()

    prune_live = {n: means[n] for n in prune_names if n in looked_up}
    PruneFieldsPass(lookups, prune_live)(ir_model)
    # sorted: the same tiers, and the same bytes, in every process (string sets iterate in a per-process order)
    live_tables = sorted({lookup.table for lookup in lookups if lookup.field not in prune_names} | set(found.dense_uses))
    tiers = assign_tiers(config, {n: all_tables[n] for n in live_tables}, priorities.scores if priorities else None)
    quantized, storage_notes = {}, {}
    for name in progress(sorted(live_tables), desc="quantize", enabled=show_progress):
        table = all_tables[name]
        stored, storage_notes[name] = plan_storage(tiers[name], table.num_rows, table.dim)
        quantized[name] = quantize_table(
            weights[name], stored, name=name, default_row=_default_row(weights[name], stored), clip=config.clip
        )
    steps.update()

    ReplaceLookupsPass(lookups, quantized, config.output_onnx_dtype, found.dense_uses)(ir_model)
    cleanup = RemoveDeadPass()
    cleanup(ir_model)
    FinalizeVersionsPass()(ir_model)
    _rename_outputs(ir_model, output_names)
    removed = set(cleanup.removed_inputs)
    ir_model.metadata_props[INPUTS_KEY] = json.dumps([(path, None if name in removed else name) for path, name in input_map])
    ir_model.metadata_props[OUTPUTS_KEY] = json.dumps(output_names)

    table_reports = []
    for name, table in all_tables.items():
        if name in quantized:
            q = quantized[name]
            b = q.byte_report()
            counts = {str(Tier(t)): int(c) for t, c in q.tier_counts.items() if c}
            table_reports.append(TableReport(
                name, q.num_rows, q.dim, counts, b.fp32, b.payload, b.scales, b.metadata,
                storage=storage_notes[name], dense_uses=_dense_use_names(found.dense_uses.get(name, [])),
            ))
        else:
            table_reports.append(TableReport(name, table.num_rows, table.dim, {}, table.num_rows * table.dim * 4, 0, 0, 0, pruned=True))
    storage_names = {f"{n}.{part}" for n in quantized for part in ("payload", "row_meta", "default_row")}
    dense_bytes = sum(
        v.const_value.nbytes for v in ir_model.graph.initializers.values()
        if v.const_value is not None and v.name not in storage_names
    )
    pruned_in_model = [f.name for f in fields.values() if f.pruned]
    quant_name = config.preset if config.target_ratio is None else f"budget {config.target_ratio}"
    report = ConvertReport(
        output_path.name, table_reports, pruned_in_model + list(prune_names), sorted(removed), quant_name,
        fields=list(all_fields), dense_bytes=int(dense_bytes),
        merged_fields={f.name: list(f.names[1:]) for f in fields.values() if len(f.names) > 1},
        unused_fields=[f.name for f in fields.values() if f.name not in looked_up and not f.pruned],
    )
    ir_model.metadata_props[CHECKSUMS_KEY] = checksums_of(quantized)
    # Nothing in the file depends on where or when it was written: the path is not stored.
    ir_model.metadata_props[REPORT_KEY] = json.dumps({k: v for k, v in report.to_dict().items() if k != "output_path"})
    with stage(ir_model, output_path) as staged:
        report.file_bytes = _file_bytes(staged.path, staged.data_name)
        steps.update()
        if calibration is None:
            report.notes.append("no calibration data: nothing was checked against torch (give calibration= to check the file)")
        else:
            report.faithfulness, report.impact = check_converted(
                model, staged.path, calibration[:_PARITY_BATCHES], fields=fields, tables=quantized,
                pruned_means=prune_live, labels=label_list, impact_atol=impact_atol, impact_rtol=impact_rtol,
                dequantized=set(found.dense_uses) | {l.table for l in lookups if l.field in found.functional_fields},
            )
            if not report.faithfulness and not keep_unfaithful:
                raise ParityError(
                    f"the converted model does not compute what torch computes with the same stored tables, so "
                    f"{str(output_path)!r} was not written (keep_unfaithful=True writes it anyway):\n{report.faithfulness}",
                    report=report,
                )
        staged.commit()
    report.output_path = str(output_path)
    steps.update()
    steps.close()
    return report


def _file_bytes(model_path: Path, data_name: str | None) -> int:
    return model_path.stat().st_size + ((model_path.parent / data_name).stat().st_size if data_name else 0)
