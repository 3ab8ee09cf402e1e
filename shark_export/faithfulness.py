"""The checks of a converted file against torch.

- **faithfulness**: the ONNX model against the torch model serving the very tables the file stores (module
  lookups read them through the numpy reference, functional lookups and dense uses read the dequantized
  weights) with the same pruning, judged against that torch model run in **float64**: per output element, ONNX
  may differ from float64 by a small factor of torch float32's own error (float summation order differs between
  runtimes; an over-confident model's logits are differences of large sums). A failure is a converter defect.
  Where the model cannot run in float64 (a forward that fixes its own dtypes), the float32 run is the reference
  at atol 1e-5, rtol 1e-4, and the report says so.
- **impact**: the ONNX model against the original float model, with AUC and log loss per task: a measurement,
  or a gate where the user sets goals (`impact_atol`, `max_dauc`, …).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils import _pytree as pytree

from . import reference
from .checkpoint_tables import is_stand_in
from .fields import fields_by_call, has_stock_forward, lookup_arguments, lookup_hooks
from .format import QuantizedTable
from .errors import ParityError, SharkExportError
from .export import ExampleInputs
from .model_io import OnnxModelRunner
from .page_hints import will_need
from .parity import ParityReport, check_parity, compare_outputs, compare_to_float64


@contextlib.contextmanager
def serving_lookups(model: torch.nn.Module, fields: dict, tables: dict[str, QuantizedTable], means: dict[str, np.ndarray],
                    lookup_dtype=np.float32):
    """While active, the model's lookups return what the converted graph computes: rows read from the stored
    tables by the numpy reference (rounded to `lookup_dtype`, the ops' output type, then read at the model's
    dtype as the graph's Cast does), and pruned fields' means. No copy of the model or its tables is made."""
    by_call = fields_by_call(fields)
    prefetch = _RowPrefetch()

    def serve(path, index, module, args, kwargs, output):
        f = by_call.get((path, index))
        if f is None or not has_stock_forward(module):
            return None  # a subclass's forward changes the lookup: its table is served dequantized instead
        if f.name in means:
            return torch.as_tensor(np.asarray(means[f.name]), dtype=output.dtype).expand_as(output).clone()
        if f.pruned or f.table not in tables:
            return None  # pruned in the model (its own hook returned the mean), or a call the graph does not keep
        table = tables[f.table]
        indices, offsets, weights = lookup_arguments(args, kwargs)
        ids = indices.detach().cpu().numpy()
        prefetch(table, ids)
        if isinstance(module, torch.nn.Embedding):
            return torch.from_numpy(reference.gather(table, ids, output_dtype=lookup_dtype)).to(output.dtype)
        pooled = reference.embedding_bag(
            table, ids,
            offsets=None if offsets is None else offsets.detach().cpu().numpy(),
            per_sample_weights=None if weights is None else weights.detach().cpu().numpy(),
            mode=module.mode, include_last_offset=module.include_last_offset,
            padding_idx=-1 if module.padding_idx is None else module.padding_idx,
        )
        return torch.from_numpy(pooled.astype(lookup_dtype)).to(output.dtype)

    with lookup_hooks(model, serve), prefetch:
        yield


class _RowPrefetch(contextlib.AbstractContextManager):
    """For a table in a data file (np.memmap): asks the kernel to read the pages of the rows about to be looked up,
    all at once (POSIX_FADV_WILLNEED, queued I/O), before they are read one fault at a time. A conversion leaves its
    data files out of the page cache, so that the checks' sessions map the rows they read rather than whole cached
    folios; these reads then cost one round of queued I/O instead of a disk wait per row."""

    def __init__(self):
        self._files: dict[str, int] = {}

    def __call__(self, table: QuantizedTable, ids: np.ndarray) -> None:
        payload = table.payload
        name = getattr(payload, "filename", None)
        if not isinstance(payload, np.memmap) or name is None:
            return
        try:
            starts, lengths = reference.row_spans(table, ids)
        except SharkExportError:
            return  # a table the lookups will reject anyway: they name the problem
        if name not in self._files:
            self._files[name] = os.open(name, os.O_RDONLY)
        will_need(self._files[name], int(payload.offset) + starts, lengths)

    def __exit__(self, *exc) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


class WithStoredWeights(torch.nn.Module):
    """`model` run with some parameters replaced (no copy of the model): the dequantized tables that a
    functional lookup or a dense use (tied projection) reads in the converted graph."""

    def __init__(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.weights = weights

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.model, self.weights, args, kwargs, tie_weights=True, strict=False)


def _to_float64(value):
    return pytree.tree_map(lambda x: x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x, value)


def _float64_state(model: torch.nn.Module, served: set[str], overrides: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers in float64. Tables served by the lookup hooks get a zero-stride NaN
    stand-in (the hook replaces what the module reads, so no table is copied; a lookup the hooks fail to serve
    turns the reference to NaN and fails the check instead of passing it)."""
    state = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name in overrides:
            state[name] = overrides[name].detach().double()
        elif (name in served and tensor.dim() == 2) or is_stand_in(tensor):
            state[name] = torch.full((1, 1), float("nan"), dtype=torch.float64).expand(*tensor.shape)
        elif tensor.is_floating_point():
            state[name] = tensor.detach().double()
    return state


def _run(model: torch.nn.Module, batches: list, state: dict | None = None) -> list[list[np.ndarray]]:
    outputs = []
    with torch.no_grad():
        for batch in batches:
            example = ExampleInputs.of(batch)
            if state is None:
                out = model(*example.args, **example.kwargs)
            else:
                out = torch.func.functional_call(model, state, _to_float64(example.args), _to_float64(example.kwargs),
                                                 tie_weights=True, strict=False)
            outputs.append([leaf.detach().cpu().numpy().astype(np.float64)
                            for leaf in pytree.tree_leaves(out) if isinstance(leaf, torch.Tensor)])
    return outputs


def faithfulness_report(model: torch.nn.Module, path: Path, batches: list, *, fields: dict, tables: dict[str, QuantizedTable],
                        pruned_means: dict[str, np.ndarray], dequantized: set[str], lookup_dtype=np.float32) -> ParityReport:
    """Does the file compute what torch computes with the same stored tables and pruning? ONNX and torch float32
    are both judged against torch float64 on the same weights (`compare_to_float64`)."""
    overrides = {n: torch.from_numpy(reference.dequantize(tables[n])) for n in sorted(dequantized) if n in tables}
    runner = OnnxModelRunner(path)
    names = runner.output_names
    reference32 = WithStoredWeights(model, overrides) if overrides else model
    with serving_lookups(model, fields, tables, pruned_means, lookup_dtype):
        torch32 = _run(reference32, batches)  # first: it reads the rows ahead (_RowPrefetch), ONNX Runtime then
        got = [runner.run(ExampleInputs.of(b)) for b in batches]  # finds them in the page cache
        if len(torch32[0]) != len(names):
            raise ParityError(f"the reference returns {len(torch32[0])} tensors, the ONNX model {len(names)} outputs {names}")
        served = {f.table for f in fields.values() if f.table in tables} - set(overrides)
        try:
            float64 = _run(model, batches, _float64_state(model, served, overrides))
        except (RuntimeError, TypeError, ValueError) as exc:  # a forward that fixes its own dtypes
            report = ParityReport(compare_outputs(names, torch32, [[np.asarray(o, np.float64) for o in b] for b in got],
                                                  1e-5, 1e-4), samples=len(batches))
            report.note = f"torch could not run the model in float64 ({type(exc).__name__}: {exc}); judged against float32"
            return report
    return ParityReport(compare_to_float64(names, float64, torch32, [[np.asarray(o, np.float64) for o in b] for b in got]),
                        samples=len(batches))


def check_converted(
    model: torch.nn.Module, path: Path, batches: list, *, fields: dict, tables: dict[str, QuantizedTable],
    pruned_means: dict[str, np.ndarray], dequantized: set[str], labels: list | None, impact_atol: float | None = None,
    impact_rtol: float | None = None, max_dauc: float | None = None, max_dlogloss: float | None = None,
    lookup_dtype=np.float32,
) -> tuple[ParityReport, ParityReport]:
    """(faithfulness, impact) of the model file at `path` on `batches`. `dequantized`: the tables read by
    functional lookups or dense uses, which torch then reads dequantized from the stored tables;
    `lookup_dtype`: the lookup ops' output type. The impact is measured, and judged only on the goals given."""
    faithfulness = faithfulness_report(model, path, batches, fields=fields, tables=tables, pruned_means=pruned_means,
                                       dequantized=dequantized, lookup_dtype=lookup_dtype)
    impact = check_parity(model, path, batches, labels=None if labels is None else labels[:len(batches)], atol=impact_atol,
                          rtol=impact_rtol, max_dauc=max_dauc, max_dlogloss=max_dlogloss)
    return faithfulness, impact


def check_faithfulness(model: torch.nn.Module, onnx_path, inputs, *, raise_on_failure: bool = False) -> ParityReport:
    """Is the file at `onnx_path` faithful to its stored tables? `model` is the torch model it was converted
    from (as given to `convert`); `inputs` one batch or a list of batches. torch runs with every lookup served
    from the tables the file stores (and the file's pruned fields at their means), and ONNX is judged against
    that model in float64 as `convert` judges it. The check holds for every preset: it does not measure what
    compression cost (that is `check_parity`). Reads every stored table dequantized (fp32 bytes of memory)."""
    from .fields import find_fields
    from .inspect_model import read_tables
    from .model_io import FAITHFULNESS_KEY, read_metadata

    batches = list(inputs) if isinstance(inputs, list) else [inputs]
    if not batches:
        raise SharkExportError("check_faithfulness needs at least one input batch")
    tables, _ = read_tables(onnx_path)
    recorded = json.loads(read_metadata(onnx_path).get(FAITHFULNESS_KEY, "{}"))
    means = {n: np.asarray(v, dtype=np.float32) for n, v in recorded.get("pruned_means", {}).items()}
    fields = find_fields(model, ExampleInputs.of(batches[0]), more_batches=batches[1:], require_calls=False)
    unknown = sorted(set(means) - {name for f in fields.values() for name in f.names})
    if unknown:
        raise SharkExportError(f"{onnx_path}: pruned field(s) {unknown} are not lookups of {type(model).__name__}: is "
                               "this the model the file was converted from?")
    was_training = model.training
    model.eval()
    try:
        state = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        report = faithfulness_report(model, Path(onnx_path), batches, fields=fields, tables=tables, pruned_means=means,
                                     dequantized={n for n in tables if n in state},
                                     lookup_dtype=np.float16 if recorded.get("lookup_dtype") == "float16" else np.float32)
    finally:
        model.train(was_training)
    if raise_on_failure and not report.passed:
        raise ParityError(f"{onnx_path} does not compute what its stored tables give in torch:\n{report}", report=report)
    return report
