"""`shark-export` command line: convert, check, inspect, demo.

Models are given as a Python factory `pkg.module:function` (called with `--factory-kwargs` JSON) plus an
optional `--state-dict` file, or as a whole saved module (`--module file.pt`, loaded with torch.load; only
load files you trust). Inputs are `.pt` files (a batch: tensor, dict or tuple of forward's positional
arguments; for `--calibration`, a list of batches) or `.npz` files (arrays `arg0`, `arg1`, … are positional
arguments; any other names make one dict argument).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from . import demo
from .errors import SharkExportError


def _load_model(args) -> torch.nn.Module:
    if bool(args.module) == bool(args.model):
        raise SharkExportError("give exactly one of --model pkg.module:function or --module saved_module.pt")
    if args.module:
        model = torch.load(args.module, weights_only=False, map_location="cpu")
        if not isinstance(model, torch.nn.Module):
            raise SharkExportError(f"{args.module} holds a {type(model).__name__}, not a torch.nn.Module")
    else:
        module_name, _, function_name = args.model.partition(":")
        if not function_name:
            raise SharkExportError(f"--model must look like pkg.module:function, got {args.model!r}")
        factory = getattr(importlib.import_module(module_name), function_name, None)
        if factory is None:
            raise SharkExportError(f"{module_name} has no attribute {function_name!r}")
        model = factory(**json.loads(args.factory_kwargs or "{}"))
        if args.state_dict:
            model.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
    return model.eval()


def load_batch_file(path: str):
    """One batch (or, for .pt, whatever object the file holds) from a .pt or .npz file."""
    file = Path(path)
    if not file.is_file():
        raise SharkExportError(f"input file {path!r} does not exist")
    if file.suffix == ".npz":
        try:
            with np.load(file) as arrays:
                tensors = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise SharkExportError(f"cannot read {path!r} as .npz: {exc}") from exc
        if tensors and all(re.fullmatch(r"arg\d+", k) for k in tensors):
            return tuple(tensors[f"arg{i}"] for i in range(len(tensors)))
        return (tensors,)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise SharkExportError(f"cannot read {path!r} as a torch file: {exc}") from exc


def _batches(path: str | None) -> list | None:
    if path is None:
        return None
    loaded = load_batch_file(path)
    return loaded if isinstance(loaded, list) else [loaded]


def _tolerances(values: list[str] | None, default: float) -> float | dict:
    if not values:
        return default
    per_output: dict[str, float] = {}
    base = default
    for value in values:
        name, sep, number = value.rpartition(":")
        if sep:
            per_output[name] = float(number)
        else:
            base = float(value)
    if not per_output:
        return base
    return {"*": base, **per_output}


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="factory pkg.module:function returning the nn.Module")
    parser.add_argument("--factory-kwargs", help="JSON keyword arguments for the factory")
    parser.add_argument("--state-dict", help="state_dict file loaded into the factory's model")
    parser.add_argument("--module", help="a whole saved nn.Module (torch.save(model)); trusted files only")


def _cmd_convert(args) -> int:
    from .convert import convert

    model = _load_model(args)
    example = load_batch_file(args.inputs)
    calibration = _batches(args.calibration)
    labels = _batches(args.labels)
    report = convert(
        model,
        example,
        args.out,
        quant=args.quant,
        prune=args.prune or None,
        calibration=calibration,
        labels=labels,
        show_progress=not args.quiet,
    )
    print(report)
    if args.report:
        Path(args.report).write_text(report.to_json())
    return 0 if report.faithfulness is None or report.faithfulness else 1


def _cmd_check(args) -> int:
    from .parity import check_parity

    model = _load_model(args)
    batches = _batches(args.inputs)
    labels = None
    if args.labels:
        labels = np.concatenate([np.asarray(torch.as_tensor(y)).reshape(-1) for y in _batches(args.labels)])
    report = check_parity(
        model, args.onnx, batches, labels=labels,
        atol=_tolerances(args.atol, 1e-5), rtol=_tolerances(args.rtol, 1e-4),
    )
    print(report)
    if args.report:
        Path(args.report).write_text(report.to_json())
    return 0 if report else 1


def _cmd_inspect(args) -> int:
    from .inspect_model import inspect_model

    print(inspect_model(args.onnx))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shark-export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("convert", help="convert a torch model to ONNX with row-wise quantized lookups")
    _model_arguments(p)
    p.add_argument("--inputs", required=True, help="example inputs (.pt or .npz)")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--quant", default="int8", help="fp32, fp16, int8, int4 or mixed")
    p.add_argument("--prune", nargs="*", help="field names to prune (need --calibration)")
    p.add_argument("--calibration", help=".pt file with a list of batches")
    p.add_argument("--labels", help=".pt file with a list of label tensors, one per calibration batch")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_convert)

    p = commands.add_parser("check", help="compare a converted model with the torch model (exit 1 on failure)")
    p.add_argument("onnx", help="converted .onnx model")
    _model_arguments(p)
    p.add_argument("--inputs", required=True, help=".pt/.npz batch, or .pt list of batches")
    p.add_argument("--labels", help=".pt labels (tensor or list, batches concatenated) for AUC/log loss")
    p.add_argument("--atol", action="append", help="absolute tolerance, or NAME:VALUE for one output (repeatable)")
    p.add_argument("--rtol", action="append", help="relative tolerance, or NAME:VALUE for one output (repeatable)")
    p.add_argument("--report", help="write the report as JSON here")
    p.set_defaults(run=_cmd_check)

    p = commands.add_parser("inspect", help="print the tables, tiers and bytes of a converted model")
    p.add_argument("onnx")
    p.set_defaults(run=_cmd_inspect)

    p = commands.add_parser("demo", help="train, convert and check a model on generated data")
    demo.add_arguments(p)
    p.set_defaults(run=demo.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SharkExportError as exc:
        print(f"shark-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
