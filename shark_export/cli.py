"""`shark-export` command line: convert, check, score, inspect, demo.

Models are given as a Python factory `pkg.module:function` (called with `--factory-kwargs` JSON) plus an
optional `--state-dict` file, or as a whole saved module (`--module file.pt`, loaded with torch.load; only
load files you trust). Inputs are `.pt` files (a batch: tensor, dict or tuple of forward's positional
arguments; for `--calibration`, a list of batches) or `.npz` files (arrays `arg0`, `arg1`, … are positional
arguments; any other names make one dict argument).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
from pathlib import Path

from .errors import SharkExportError

# torch, numpy and the converter are imported by the commands that use them: `shark-export --help` and a
# mistyped command answer without loading torch. (The literals are streamed_tables' ALIGNMENT and
# DEFAULT_SHARD_BYTES; tests/test_cli.py checks they agree.)
_ALIGNMENT = 1 << 16
_DEFAULT_SHARD_BYTES = 2 << 30


def _load_model(args, checkpoint: str | None = None):
    """The model of --model/--module. With `checkpoint` (convert's --checkpoint or --state-dict) the factory builds
    it on the meta device and convert reads its tensors from the checkpoint, tables row range by row range;
    otherwise --state-dict is memory-mapped and assigned (no second copy of the weights)."""
    import torch

    if bool(args.module) == bool(args.model):
        raise SharkExportError("give exactly one of --model pkg.module:function or --module saved_module.pt")
    if args.module:
        _require_file(args.module, "--module")
        model = torch.load(args.module, weights_only=False, map_location="cpu")
        if not isinstance(model, torch.nn.Module):
            raise SharkExportError(f"{args.module} holds a {type(model).__name__}, not a torch.nn.Module")
    else:
        module_name, _, function_name = args.model.partition(":")
        if not function_name:
            raise SharkExportError(f"--model must look like pkg.module:function, got {args.model!r}")
        factory = getattr(_import_factory_module(module_name), function_name, None)
        if factory is None:
            raise SharkExportError(f"--model {args.model}: module {module_name!r} has no attribute {function_name!r}")
        on_meta = checkpoint is not None or bool(args.state_dict)
        for given, flag in ((args.state_dict, "--state-dict"), (checkpoint, "--checkpoint")):
            if given:  # convert reads --state-dict as its checkpoint: that one is named first
                _require_file(given, flag, directory_ok=flag == "--checkpoint")
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = factory(**json.loads(args.factory_kwargs or "{}"))
        if args.state_dict and checkpoint is None:
            state = torch.load(args.state_dict, map_location="cpu", weights_only=True, mmap=True)
            model.load_state_dict(state, assign=True)
    return model.eval()


def _require_file(path: str, flag: str, directory_ok: bool = False) -> None:
    """A typed error naming the flag and the path (relative paths resolve against the current directory)."""
    file = Path(path)
    if not (file.is_file() or (directory_ok and file.is_dir())):
        raise SharkExportError(f"{flag} {path!r} does not exist (looked in {Path.cwd()})" if not file.exists()
                               else f"{flag} {path!r} is not a file")


def _import_factory_module(name: str):
    """The module of a --model factory; the current directory is importable, as with `python -m`."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.split(".")[0] == exc.name.split(".")[0]:
            raise SharkExportError(f"--model: no module named {name!r} in the current directory ({Path.cwd()}) or on "
                                   "sys.path; run from the directory that holds it or set PYTHONPATH") from exc
        raise


def load_batch_file(path: str):
    """One batch (or, for .pt, whatever object the file holds) from a .pt or .npz file."""
    import numpy as np
    import torch

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


def _tolerances(values: list[str] | None) -> float | dict | None:
    """None (no tolerance asked for), a number, or a dict output name → number with "*" for the others."""
    if not values:
        return None
    per_output: dict[str, float] = {}
    base = None
    for value in values:
        name, sep, number = value.rpartition(":")
        if sep:
            per_output[name] = float(number)
        else:
            base = float(value)
    if not per_output:
        return base
    return {"*": base, **per_output} if base is not None else per_output


def _impact_goal_arguments(parser: argparse.ArgumentParser, atol: str, rtol: str) -> None:
    """Goals on what compression may cost. Without any, the impact is a measurement and never fails."""
    parser.add_argument(atol, action="append", dest=atol.lstrip("-").replace("-", "_"),
                        help="goal: largest absolute output change vs the float model, or NAME:VALUE for one output "
                             "(repeatable); default: measured only")
    parser.add_argument(rtol, action="append", dest=rtol.lstrip("-").replace("-", "_"),
                        help="goal: relative output change, as --atol (|a - b| <= atol + rtol |b|)")
    parser.add_argument("--max-dauc", type=float, help="goal: largest AUC drop vs the float model (needs labels)")
    parser.add_argument("--max-dlogloss", type=float, help="goal: largest log-loss rise vs the float model (needs labels)")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="factory pkg.module:function returning the nn.Module")
    parser.add_argument("--factory-kwargs", help="JSON keyword arguments for the factory")
    parser.add_argument("--state-dict", help="state_dict file (torch.save) for the factory's model: memory-mapped and "
                        "assigned, never copied; for convert, read like --checkpoint")
    parser.add_argument("--module", help="a whole saved nn.Module (torch.save(model)); trusted files only")


def _prune_from_scores(args, model, calibration, labels):
    """--prune names, or a plan from F-Permutation scores on the calibration data (--prune-keep/--prune-drop-fraction)."""
    by_score = [x is not None for x in (args.prune_keep, args.prune_drop_fraction)]
    if sum(by_score) + bool(args.prune) > 1:
        raise SharkExportError("give only one of --prune, --prune-keep, --prune-drop-fraction")
    if not any(by_score):
        return args.prune or None
    if calibration is None or labels is None:
        raise SharkExportError("--prune-keep/--prune-drop-fraction score fields on --calibration with --labels: give both")
    from .field_scoring import score_fields

    scores = score_fields(model, calibration, labels, method=args.prune_method)
    print(scores)
    if args.prune_keep is not None:
        return scores.plan(keep=args.prune_keep)
    return scores.plan(drop_fraction=args.prune_drop_fraction)


def _scored_prune(args, model, calibration, labels, checkpoint):
    """The pruning plan; field scores run on the checkpoint's tables (served row by row) when there is one."""
    if not checkpoint:
        return _prune_from_scores(args, model, calibration, labels)
    from .checkpoint_tables import tables_from_checkpoint
    from .fields import find_tables

    with tables_from_checkpoint(model, checkpoint, find_tables(model)):
        return _prune_from_scores(args, model, calibration, labels)


def _cmd_convert(args) -> int:
    from .quant_config import QuantConfig

    if args.checkpoint and args.state_dict:
        raise SharkExportError("give one of --checkpoint and --state-dict")
    in_memory = args.ops != "custom" or args.dense != "fp32"  # these steps hold the tables in memory
    if args.checkpoint and in_memory:
        raise SharkExportError("--checkpoint streams the tables: it goes with --ops custom and --dense fp32; for "
                               "--ops standard or --dense int8 give the weights with --state-dict")
    checkpoint = args.checkpoint or (None if in_memory else args.state_dict)
    if checkpoint and args.module:
        raise SharkExportError("--checkpoint/--state-dict go with --model (a factory), not --module")
    model = _load_model(args, checkpoint)
    example = load_batch_file(args.inputs)
    calibration = _batches(args.calibration)
    labels = _batches(args.labels)
    quant = (QuantConfig(preset=args.quant, target_ratio=args.budget, clip=args.clip, scale_group=args.scale_group)
             if args.budget is not None or args.clip != "none" or args.scale_group != "auto" else args.quant)
    workers, joined, rank = _workers_of(args)
    try:
        report = _convert_with(args, model, example, calibration, labels, checkpoint, quant, workers)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return 0 if report.faithfulness is None or report.faithfulness else 1  # rank 0 prints and writes the report
    print(report)
    if args.report:
        Path(args.report).write_text(report.to_json())
    return 0 if report.faithfulness is None or report.faithfulness else 1


def _launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _workers_of(args) -> tuple[int | str, bool, int]:
    """(convert's `workers`, whether this call initialized torch.distributed, this process's rank): under torchrun
    with more than one process, every rank converts together ("distributed"); else --workers processes."""
    if not _launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return args.workers, False, 0
    if args.workers != 1:
        raise SharkExportError(f"--workers {args.workers} under torchrun: the workers are torchrun's "
                               f"{os.environ['WORLD_SIZE']} processes; leave --workers out")
    import torch.distributed as dist

    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo")  # from torchrun's environment (MASTER_ADDR, RANK, WORLD_SIZE)
    return "distributed", joined, dist.get_rank()


def _convert_with(args, model, example, calibration, labels, checkpoint, quant, workers):
    """convert() with the command line's options."""
    from .converter import convert

    return convert(
        model,
        example,
        args.out,
        quant=quant,
        prune=_scored_prune(args, model, calibration, labels, checkpoint),
        calibration=calibration,
        labels=labels,
        show_progress=not args.quiet,
        keep_unfaithful=args.keep_unfaithful,
        weights=checkpoint,
        impact_atol=_tolerances(args.impact_atol),
        impact_rtol=_tolerances(args.impact_rtol),
        max_dauc=args.max_dauc,
        max_dlogloss=args.max_dlogloss,
        dense=args.dense,
        ops=args.ops,
        shard_bytes=args.shard_size,
        workers=workers,
    )


def _clean_next_to(model_path: str) -> None:
    """What killed conversions left next to the model (shark_export.model_file.clean_leftovers), said on stderr."""
    from .model_file import clean_leftovers

    removed = clean_leftovers(Path(model_path).parent)
    if removed:
        print(f"removed what interrupted conversions left next to {model_path}: {', '.join(sorted(removed))}", file=sys.stderr)


def _cmd_check(args) -> int:
    """Two questions: is the file faithful to its stored tables (always asked, tight), and what did compression
    cost (measured; judged only on the goals given). Exit 1 when the file is unfaithful or a goal is missed."""
    from .faithfulness import check_faithfulness
    from .integrity import verify_model
    from .parity import check_parity

    _clean_next_to(args.onnx)
    if verify_model(args.onnx, require=False) is None:  # the tables are the ones converted, before comparing
        print(f"{args.onnx}: no table checksums recorded: the tables were not verified", file=sys.stderr)
    model = _load_model(args)
    batches = _batches(args.inputs)
    labels = load_batch_file(args.labels) if args.labels else None
    faithful = None if args.no_faithfulness else check_faithfulness(model, args.onnx, batches)
    impact = check_parity(model, args.onnx, batches, labels=labels, atol=_tolerances(args.atol),
                          rtol=_tolerances(args.rtol), max_dauc=args.max_dauc, max_dlogloss=args.max_dlogloss)
    if faithful is not None:
        print("faithfulness (ONNX vs torch with the file's stored tables, judged against torch in float64):")
        print("\n".join("  " + line for line in str(faithful).splitlines()))
    print("impact (ONNX vs the torch model as given):")
    print("\n".join("  " + line for line in str(impact).splitlines()))
    if args.report:
        Path(args.report).write_text(json.dumps({
            "faithfulness": None if faithful is None else json.loads(faithful.to_json()),
            "impact": json.loads(impact.to_json()),
        }, indent=2))
    return 0 if (faithful is None or faithful) and impact else 1


def _cmd_score(args) -> int:
    import numpy as np

    from .field_scoring import score_fields
    from .row_priority import score_rows

    model = _load_model(args)
    batches = _batches(args.calibration)
    labels = _batches(args.labels)
    result: dict = {}
    if not args.rows_only:
        scores = score_fields(model, batches, labels, method=args.method, repeats=args.repeats)
        print(scores)
        result["fields"] = json.loads(scores.to_json())
        if args.plot:
            scores.plot(args.plot)
    if args.rows or args.rows_only:
        priority = score_rows(
            model, batches, labels, pos_weight=args.pos_weight, neg_weight=args.neg_weight, decay=args.decay,
            method=args.row_method,
        )
        result["rows"] = {}
        print(f"row priorities ({priority.method}):")
        for table, values in priority.scores.items():
            seen = int((values > 0).sum())
            order = np.argsort(-values)[:5]
            print(f"  {table}: {values.shape[0]} rows, {seen} seen ({seen / values.shape[0]:.1%}), top rows {order.tolist()}")
            result["rows"][table] = {"rows": int(values.shape[0]), "seen": seen, "top": order.tolist(),
                                     "priority": values.tolist() if args.json_rows else None}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _cmd_inspect(args) -> int:
    from .inspect_model import inspect_model
    from .integrity import verify_model

    _clean_next_to(args.onnx)
    print(inspect_model(args.onnx))
    verified = verify_model(args.onnx, require=False)
    print("checksums: none recorded (not verified)" if verified is None else
          f"checksums: all {len(verified)} table(s) match the ones recorded at conversion")
    return 0


def _cmd_prune(args) -> int:
    """SHARK's order, step 1: the pruned copy (a whole module) for the user's fine-tuning loop."""
    import os
    import tempfile

    import torch

    from .model_file import require_output_dir
    from .pruning import prune_fields

    model = _load_model(args)
    calibration, labels = _batches(args.calibration), _batches(args.labels)
    plan = _prune_from_scores(args, model, calibration, labels)
    if not plan:
        raise SharkExportError("name the fields to prune: --prune, --prune-keep or --prune-drop-fraction")
    pruned = prune_fields(model, plan, calibration)
    out = Path(args.out)
    require_output_dir(out)
    fd, staged = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        torch.save(pruned, staged)
        os.replace(staged, out)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    drop = list(getattr(plan, "drop", plan))
    print(f"pruned {', '.join(drop)}: wrote {out} (the whole module: fine-tune it with your own loop, save it with "
          f"torch.save(model, path), then `shark-export convert --module path ...` recognizes the pruned fields)")
    return 0


def _cmd_optimize(args) -> int:
    from .ort_offline import optimize_offline

    print(optimize_offline(args.onnx, args.out, level=args.level, inputs=load_batch_file(args.inputs) if args.inputs else None))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_size(text: str) -> int:
    """'2G', '512M', '65536': bytes (binary units; a trailing B or iB is allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a size such as 2G, 512M or 65536, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < _ALIGNMENT:
        raise argparse.ArgumentTypeError(f"a data file holds at least {_ALIGNMENT} bytes (one aligned payload), got {text!r}")
    return size


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: a new temporary directory, printed at the start)")
    parser.add_argument("--samples", type=int, default=120_000)
    parser.add_argument("--quant", default="mixed", help="fp32, fp16, int8, int4 or mixed")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)


def _cmd_demo(args) -> int:
    from . import demo

    return demo.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shark-export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("convert", help="convert a torch model to ONNX with row-wise quantized lookups")
    _model_arguments(p)
    p.add_argument("--inputs", required=True, help="example inputs (.pt or .npz)")
    p.add_argument("--checkpoint", help="the model's weights: a torch.distributed.checkpoint directory or a torch.save "
                   "file; the factory builds the model on the meta device and tables are read row range by row range")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="processes that quantize the checkpoint's tables, each a share of every table's rows "
                        "(torch.distributed, gloo; the same bytes as one). Under torchrun: its processes")
    p.add_argument("--shard-size", type=_byte_size, default=_DEFAULT_SHARD_BYTES, metavar="BYTES",
                   help="with --checkpoint: the largest data file (e.g. 2G, 512M; a larger table gets a file of its "
                        "own), default 2G")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--quant", default="int8", help="fp32, fp16, int8, int4 or mixed")
    p.add_argument("--prune", nargs="*", help="field names to prune (need --calibration)")
    p.add_argument("--prune-keep", type=int, help="score fields on the calibration data and keep the K best")
    p.add_argument("--prune-drop-fraction", type=float, help="score fields and prune the lowest-scored fraction")
    p.add_argument("--prune-method", default="ablation", choices=["ablation", "taylor", "permutation", "norm"])
    p.add_argument("--budget", type=float, help="byte budget as a fraction of fp32 (tiers by row priority, "
                   "down through int2 and dropped rows)")
    p.add_argument("--clip", default="none", choices=["none", "l2"],
                   help="l2: per-row clipping range minimizing the L2 error (pays off for int2/int4 rows)")
    p.add_argument("--scale-group", default="auto", metavar="auto|none|G",
                   help="where quantized rows keep scale and bias: auto (tables of dim <= 32 share them per group of "
                        "256 rows, format v3), none (a header per row, v2), or G rows per group (a power of two)")
    p.add_argument("--calibration", help=".pt file with a list of batches")
    p.add_argument("--labels", help=".pt file with a list of label tensors, one per calibration batch")
    p.add_argument("--keep-unfaithful", action="store_true",
                   help="write the model even when it fails the faithfulness check (exit status 1)")
    _impact_goal_arguments(p, "--impact-atol", "--impact-rtol")
    p.add_argument("--dense", default="fp32", choices=["fp32", "int8"],
                   help="int8: also quantize the MatMul/Gemm with ONNX Runtime's dynamic quantization (impact reported separately)")
    p.add_argument("--ops", default="custom", choices=["custom", "standard"],
                   help="standard: a portable model, ai.onnx ops only (runs in a stock onnxruntime, no custom-op library)")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_cmd_convert)

    p = commands.add_parser("check", help="is a converted model faithful to its tables, and what did compression "
                            "cost (exit 1 when unfaithful or a goal given is missed)")
    p.add_argument("onnx", help="converted .onnx model")
    _model_arguments(p)
    p.add_argument("--inputs", required=True, help=".pt/.npz batch, or .pt list of batches")
    p.add_argument("--labels", help=".pt labels: a list of label tensors, one per batch (as convert takes them), or one "
                   "tensor over all samples")
    _impact_goal_arguments(p, "--atol", "--rtol")
    p.add_argument("--no-faithfulness", action="store_true", help="only measure the impact (skip the faithfulness check)")
    p.add_argument("--report", help="write both reports as JSON here")
    p.set_defaults(run=_cmd_check)

    p = commands.add_parser("score", help="F-Permutation field scores and F-Quantization row priorities")
    _model_arguments(p)
    p.add_argument("--calibration", required=True, help=".pt file with a list of batches")
    p.add_argument("--labels", required=True, help=".pt file with a list of label tensors, one per batch")
    p.add_argument("--method", default="ablation", choices=["ablation", "taylor", "permutation", "norm"],
                   help="ablation: exact loss change with the field at its mean (default); taylor: SHARK's "
                        "first-order estimate of it (cheapest); permutation: shuffled field (exact, costliest)")
    p.add_argument("--repeats", type=int, default=3, help="shuffles per field (permutation)")
    p.add_argument("--rows", action="store_true", help="also compute row priorities")
    p.add_argument("--rows-only", action="store_true", help="only row priorities")
    p.add_argument("--row-method", default="count", choices=["count", "taylor"])
    p.add_argument("--pos-weight", type=float, default=1.0)
    p.add_argument("--neg-weight", type=float, default=1.0)
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--plot", help="write a PNG bar chart of the field scores here")
    p.add_argument("--json", help="write the scores (and row summaries) as JSON here")
    p.add_argument("--json-rows", action="store_true", help="include every row's priority in --json")
    p.set_defaults(run=_cmd_score)

    p = commands.add_parser("inspect", help="print the tables, tiers and bytes of a converted model")
    p.add_argument("onnx")
    p.set_defaults(run=_cmd_inspect)

    p = commands.add_parser("prune", help="write a copy of the model whose pruned fields read their mean embedding")
    _model_arguments(p)
    p.add_argument("--calibration", required=True, help=".pt file with a list of batches (field names and means)")
    p.add_argument("--labels", help=".pt file with a list of label tensors, one per batch (to score fields)")
    p.add_argument("--prune", nargs="*", help="field names to prune")
    p.add_argument("--prune-keep", type=int, help="score fields and keep the K best")
    p.add_argument("--prune-drop-fraction", type=float, help="score fields and prune the lowest-scored fraction")
    p.add_argument("--prune-method", default="ablation", choices=["ablation", "taylor", "permutation", "norm"])
    p.add_argument("--out", required=True, help="where the pruned module goes (torch.save of the whole module)")
    p.set_defaults(run=_cmd_prune)

    p = commands.add_parser("optimize", help="save ONNX Runtime's graph optimizations into a converted model")
    p.add_argument("onnx", help="converted .onnx model")
    p.add_argument("--out", required=True, help="output .onnx path (not the source)")
    p.add_argument("--level", default="extended", choices=["basic", "extended", "all"],
                   help="ORT optimization level; 'all' adds layout changes specific to this machine")
    p.add_argument("--inputs", help="a .pt/.npz batch: the saved model must compute the same bits as the source")
    p.set_defaults(run=_cmd_optimize)

    p = commands.add_parser("demo", help="train, convert and check a model on generated data")
    demo_arguments(p)
    p.set_defaults(run=_cmd_demo)
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
