"""The argument parser of `shark-export`: every command's options. It imports neither torch nor the converter, so
`shark-export --help` answers at once; shark_export.cli runs the commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable, Mapping

# streamed_tables' ALIGNMENT and DEFAULT_SHARD_BYTES as literals (importing it would load numpy); tests/test_cli.py
# checks they agree.
_ALIGNMENT = 1 << 16
_DEFAULT_SHARD_BYTES = 2 << 30


def build_parser(run: Mapping[str, Callable], description: str) -> argparse.ArgumentParser:
    """Every command's parser; the parsed namespace's `run` is `run[command]`."""
    parser = argparse.ArgumentParser(prog="shark-export", description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    for command, add in _COMMANDS.items():
        add(commands).set_defaults(run=run[command])
    return parser


def _convert_command(commands) -> argparse.ArgumentParser:
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
    return p


def _check_command(commands) -> argparse.ArgumentParser:
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
    return p


def _score_command(commands) -> argparse.ArgumentParser:
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
    return p


def _inspect_command(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("inspect", help="print the tables, tiers and bytes of a converted model")
    p.add_argument("onnx")
    return p


def _prune_command(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("prune", help="write a copy of the model whose pruned fields read their mean embedding")
    _model_arguments(p)
    p.add_argument("--calibration", required=True, help=".pt file with a list of batches (field names and means)")
    p.add_argument("--labels", help=".pt file with a list of label tensors, one per batch (to score fields)")
    p.add_argument("--prune", nargs="*", help="field names to prune")
    p.add_argument("--prune-keep", type=int, help="score fields and keep the K best")
    p.add_argument("--prune-drop-fraction", type=float, help="score fields and prune the lowest-scored fraction")
    p.add_argument("--prune-method", default="ablation", choices=["ablation", "taylor", "permutation", "norm"])
    p.add_argument("--out", required=True, help="where the pruned module goes (torch.save of the whole module)")
    return p


def _optimize_command(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("optimize", help="save ONNX Runtime's graph optimizations into a converted model")
    p.add_argument("onnx", help="converted .onnx model")
    p.add_argument("--out", required=True, help="output .onnx path (not the source)")
    p.add_argument("--level", default="extended", choices=["basic", "extended", "all"],
                   help="ORT optimization level; 'all' adds layout changes specific to this machine")
    p.add_argument("--inputs", help="a .pt/.npz batch: the saved model must compute the same bits as the source")
    return p


def _demo_command(commands) -> argparse.ArgumentParser:
    p = commands.add_parser("demo", help="train, convert and check a model on generated data")
    demo_arguments(p)
    return p


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


_COMMANDS = {"convert": _convert_command, "check": _check_command, "score": _score_command, "inspect": _inspect_command,
             "prune": _prune_command, "optimize": _optimize_command, "demo": _demo_command}
