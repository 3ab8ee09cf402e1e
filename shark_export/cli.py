"""`shark-export` command line: convert, check, score, inspect, prune, optimize, demo.

Models are given as a Python factory `pkg.module:function` (called with `--factory-kwargs` JSON) plus an
optional `--state-dict` file, or as a whole saved module (`--module file.pt`, loaded with torch.load; only
load files you trust). Inputs are `.pt` files (a batch: tensor, dict or tuple of forward's positional
arguments; for `--calibration`, a list of batches) or `.npz` files (arrays `arg0`, `arg1`, … are positional
arguments; any other names make one dict argument).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
from pathlib import Path

from . import cli_parser
from .errors import SharkExportError

# torch, numpy and the converter are imported by the commands that use them: `shark-export --help` and a
# mistyped command answer without loading torch.


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


def _cmd_demo(args) -> int:
    from . import demo

    return demo.run_from_args(args)


def build_parser():
    return cli_parser.build_parser({"convert": _cmd_convert, "check": _cmd_check, "score": _cmd_score,
                                    "inspect": _cmd_inspect, "prune": _cmd_prune, "optimize": _cmd_optimize,
                                    "demo": _cmd_demo}, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SharkExportError as exc:
        print(f"shark-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
