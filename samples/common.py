"""Shared code of the sample scripts: train a DeepFM-style model on a real dataset, convert it, check it.

Every sample does the same five steps:
1. load the dataset (`samples/datasets.py`; train split and held-out split, train-only vocabularies);
2. train `shark_export.example_models.DeepFM` (nn.Embedding per single-hot field, nn.EmbeddingBag(sum)
   per multi-hot field, dense features concatenated) on the train split;
3. convert with `shark_export.convert`, calibration (row priorities) = the train split with its labels;
4. check the converted model on the held-out split: AUC and log loss of torch and ONNX
   (`shark_export.check_parity(..., labels=...)`), plus faithfulness on the whole held-out split
   (ONNX against torch carrying the dequantized weights read back from the file, atol 1e-5);
5. print the size report, and check the reported bytes against the stored tensors and the format formula.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import shark_export
from shark_export.example_models import DeepFM, FieldSpec, split_batches, train
from shark_export.format import Tier
from shark_export.inspect_model import read_tables
from shark_export.metrics import auc
from shark_export.parity import check_parity
from shark_export.quant_config import QuantConfig
from shark_export.reference import dequantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

# Per-dataset training defaults (epochs, batch size, learning rate), tuned for ~1 minute on 2 cores.
TRAIN_DEFAULTS = {
    "movielens": dict(epochs=2, batch_size=1024, lr=3e-3),
    "frappe": dict(epochs=4, batch_size=512, lr=3e-3),
    "criteo": dict(epochs=2, batch_size=256, lr=2e-3),
    "avazu": dict(epochs=2, batch_size=256, lr=5e-3),
}
EVAL_BATCH = 4096


# --------------------------------------------------------------------------------------------------
# quantization specs
# --------------------------------------------------------------------------------------------------


def parse_quant(spec: str, clip: str = "none", scale_group: str = "auto") -> str | QuantConfig:
    """`fp32|fp16|int8|int4|mixed`, `mixed:HOT,WARM` (fractions of rows fp16 / int8, rest int4),
    `budget:RATIO` (target_ratio over the priority-ordered ladder int4 → int8 → fp16 → fp32), each
    optionally with per-row L2 clipping (`clip="l2"`) and a `scale_group` other than "auto"."""
    if spec.startswith("mixed:"):
        hot, warm = (float(x) for x in spec.split(":", 1)[1].split(","))
        return QuantConfig(preset="mixed", mixed_fractions=(hot, warm), clip=clip, scale_group=scale_group)
    if spec.startswith("budget:"):
        return QuantConfig(preset="int4", target_ratio=float(spec.split(":", 1)[1]), clip=clip, scale_group=scale_group)
    if clip != "none" or scale_group != "auto":
        return QuantConfig(preset=spec, clip=clip, scale_group=scale_group)
    return spec


def quant_label(spec: str, clip: str = "none", scale_group: str = "auto") -> str:
    return spec + ("+l2" if clip != "none" else "") + (f"+groups:{scale_group}" if scale_group != "auto" else "")


# --------------------------------------------------------------------------------------------------
# batches and training
# --------------------------------------------------------------------------------------------------


def batches_of(columns: dict, labels: np.ndarray, fields: list[FieldSpec], batch_size: int) -> tuple[list[dict], list[torch.Tensor]]:
    pairs = list(split_batches(columns, labels, fields, batch_size))
    return [b for b, _ in pairs], [y for _, y in pairs]


@dataclass
class Trained:
    dataset: datasets.Dataset
    model: DeepFM
    dim: int
    train_batches: list[dict]
    train_labels: list[torch.Tensor]
    test_batches: list[dict]
    test_labels: np.ndarray
    train_seconds: float


def train_model(
    ds: datasets.Dataset, dim: int, *, epochs: int, batch_size: int, lr: float, seed: int = 0,
    hidden: tuple[int, ...] = (64, 32), eval_batch: int = EVAL_BATCH,
) -> Trained:
    torch.manual_seed(seed)
    started = time.perf_counter()
    train_batches, train_labels = batches_of(ds.train_columns, ds.train_labels, ds.fields, batch_size)
    model = DeepFM(ds.fields, dim=dim, hidden=hidden, n_dense=ds.n_dense)
    train(model, train_batches, train_labels, epochs=epochs, lr=lr, seed=seed)
    elapsed = time.perf_counter() - started
    test_batches, _ = batches_of(ds.test_columns, ds.test_labels, ds.fields, eval_batch)
    return Trained(ds, model, dim, train_batches, train_labels, test_batches, ds.test_labels, elapsed)


def heldout_auc(model: torch.nn.Module, trained: Trained) -> float:
    with torch.no_grad():
        scores = np.concatenate([model(b).numpy().reshape(-1) for b in trained.test_batches])
    return auc(np.asarray(trained.test_labels), scores)


def prune_and_finetune(trained: Trained, keep: int, epochs: int, *, lr: float, seed: int = 0,
                       score_batches: int = 64) -> Trained:
    """SHARK's order: score the fields (shark_export.score_fields, ablation) on train batches, prune all but the
    `keep` best (shark_export.prune_fields: a copy whose pruned fields read their mean embedding), fine-tune
    that copy with the same training loop, and hand it on to be converted (the converter recognizes the
    pruned fields). Prints the held-out AUC before pruning, after pruning and after fine-tuning."""
    calib_b, calib_y = trained.train_batches[:score_batches], trained.train_labels[:score_batches]
    started = time.perf_counter()
    scores = shark_export.score_fields(trained.model, calib_b, calib_y)
    plan = scores.plan(keep=keep)
    pruned = shark_export.prune_fields(trained.model, plan, calib_b)
    before, after_prune = heldout_auc(trained.model, trained), heldout_auc(pruned, trained)
    train(pruned, trained.train_batches, trained.train_labels, epochs=epochs, lr=lr, seed=seed)
    after_ft = heldout_auc(pruned, trained)
    print(scores)
    print(f"pruned {len(plan.drop)} field(s) ({', '.join(plan.drop)}), kept {keep}: held-out AUC {before:.5f} (all fields) -> "
          f"{after_prune:.5f} (pruned) -> {after_ft:.5f} (fine-tuned {epochs} epoch(s)); {time.perf_counter() - started:.1f} s")
    return Trained(trained.dataset, pruned, trained.dim, trained.train_batches, trained.train_labels,
                   trained.test_batches, trained.test_labels, trained.train_seconds)


# --------------------------------------------------------------------------------------------------
# conversion and checks
# --------------------------------------------------------------------------------------------------


@dataclass
class SizeCheck:
    """Reported bytes vs the stored tensors vs the format formula: per row int8 D+4, int4 D/2+4, fp16 2D,
    fp32 4D bytes; 0.5 byte/row of row_meta for a table that mixes tiers; one fp32 default row per table.
    Passes when the report equals the stored tensors, the stored bytes are within 3% of the formula, and the
    metadata (stored minus row bytes) is at most 1 byte/row."""

    reported: int
    stored: int
    formula: int
    row_bytes: int  # Σ rows × nominal row bytes, no metadata
    metadata_per_row: float  # (stored − row_bytes) / rows
    ok: bool

    def line(self) -> str:
        return (
            f"size check: reported {self.reported} B, stored tensors {self.stored} B, formula {self.formula} B "
            f"({self.stored / self.formula - 1:+.2%}); metadata {self.metadata_per_row:.3f} B/row -> {'OK' if self.ok else 'MISMATCH'}"
        )


def nominal_row_bytes(tier: Tier, dim: int, grouped: bool = False) -> float:
    """Bytes of a row by FORMAT.md's table; `grouped` (v3): quantized rows without their 4-byte header."""
    header = 0 if grouped else 4
    return {Tier.FP32: 4 * dim, Tier.FP16: 2 * dim, Tier.INT8: dim + header, Tier.INT4: dim / 2 + header,
            Tier.INT2: dim / 4 + header, Tier.DROPPED: 0}[Tier(tier)]


def size_check(path: Path, report) -> SizeCheck:
    tables, _ = read_tables(path)
    stored = sum(int(t.payload.nbytes + t.row_meta.nbytes + t.default_row.nbytes) for t in tables.values())
    row_bytes = sum(c * nominal_row_bytes(tier, t.dim, bool(t.scale_group_rows))
                    for t in tables.values() for tier, c in t.tier_counts.items())
    formula = row_bytes + sum(
        (0.5 * t.num_rows if sum(1 for c in t.tier_counts.values() if c) > 1 else 0) + 4 * t.dim
        + (12 * -(-t.num_rows // t.scale_group_rows) if t.scale_group_rows else 0) for t in tables.values()
    )
    rows = sum(t.num_rows for t in tables.values())
    meta = (stored - row_bytes) / rows
    ok = stored == report.bytes_after and abs(stored / formula - 1) <= 0.03 and 0 <= meta <= 1.0
    return SizeCheck(report.bytes_after, stored, int(round(formula)), int(round(row_bytes)), meta, ok)


def faithful_copy(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """The model with every converted table replaced by the dequantized values stored in the ONNX file."""
    tables, _ = read_tables(path)
    faithful = copy.deepcopy(model)
    params = dict(faithful.named_parameters())
    with torch.no_grad():
        for name, table in tables.items():
            params[name].copy_(torch.from_numpy(dequantize(table)))
    return faithful.eval()


@dataclass
class Result:
    dataset: str
    dim: int
    quant: str
    fp32_bytes: int
    bytes_after: int
    ratio: float
    tiers: dict
    faithfulness_max_abs: float  # convert's own check (first calibration batches)
    faithfulness_passed: bool
    heldout_faithfulness_max_abs: float  # whole held-out split vs dequantized torch
    heldout_faithfulness_passed: bool
    auc_torch: float
    auc_onnx: float
    logloss_torch: float
    logloss_onnx: float
    size_ok: bool
    metadata_per_row: float
    size_vs_formula: float  # stored / formula − 1
    convert_seconds: float
    path: str
    report_text: str = field(default="", repr=False)

    @property
    def auc_delta(self) -> float:
        return self.auc_onnx - self.auc_torch

    @property
    def logloss_delta(self) -> float:
        return self.logloss_onnx - self.logloss_torch

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("report_text")
        return {**d, "auc_delta": self.auc_delta, "logloss_delta": self.logloss_delta}


def convert_and_check(trained: Trained, quant_spec: str, out_dir: Path, *, clip: str = "none", heldout_faithfulness: bool = True,
                      scale_group: str = "auto") -> Result:
    """Convert `trained.model` with calibration = the train split, then check on the held-out split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = quant_label(quant_spec, clip, scale_group)
    path = out_dir / f"{trained.dataset.name}_d{trained.dim}_{label.replace(':', '-').replace(',', '_')}.onnx"
    model = trained.model
    started = time.perf_counter()
    report = shark_export.convert(
        model, (trained.train_batches[0],), path, quant=parse_quant(quant_spec, clip, scale_group),
        calibration=[(b,) for b in trained.train_batches], labels=trained.train_labels,
    )
    convert_seconds = time.perf_counter() - started
    test_inputs = [(b,) for b in trained.test_batches]
    impact = check_parity(model, path, test_inputs, labels=trained.test_labels, atol=1.0, rtol=1.0)
    m = impact.metrics[0]
    if heldout_faithfulness:
        faithful = check_parity(faithful_copy(model, path), path, test_inputs, atol=1e-5, rtol=1e-4)
        hf_max, hf_ok = faithful.outputs[0].max_abs, faithful.passed
    else:
        hf_max, hf_ok = float("nan"), True
    sizes = size_check(path, report)
    tiers: dict[str, int] = {}
    for t in report.tables:
        for k, v in t.tiers.items():
            tiers[k] = tiers.get(k, 0) + v
    text = "\n".join([
        str(report),
        "held-out (ONNX vs the original float model):",
        "  " + m.line(),
        f"held-out faithfulness (ONNX vs torch with the stored dequantized weights, {len(test_inputs)} batches): "
        + (f"max abs {hf_max:.3e} -> {'PASSED' if hf_ok else 'FAILED'}" if heldout_faithfulness else "skipped"),
        sizes.line(),
        f"conversion took {convert_seconds:.1f} s; model file {path} ({path.stat().st_size / 1e6:.2f} MB)",
    ])
    return Result(
        trained.dataset.name, trained.dim, label, report.fp32_bytes, report.bytes_after, report.ratio, tiers,
        report.faithfulness.outputs[0].max_abs, report.faithfulness.passed, hf_max, hf_ok,
        m.auc_reference, m.auc_onnx, m.logloss_reference, m.logloss_onnx, sizes.ok, sizes.metadata_per_row,
        sizes.stored / sizes.formula - 1,
        convert_seconds, str(path), text,
    )


# --------------------------------------------------------------------------------------------------
# command line of the thin sample scripts
# --------------------------------------------------------------------------------------------------


def parser_for(name: str, description: str) -> argparse.ArgumentParser:
    d = TRAIN_DEFAULTS[name]
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=datasets.DEFAULT_DATA_ROOT,
                   help=f"folder holding {datasets.FOLDERS[name]}/ (or that folder itself)")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension D")
    p.add_argument("--quant", default="int8",
                   help="fp32|fp16|int8|int4|mixed, mixed:HOT,WARM (row fractions fp16,int8; rest int4), budget:RATIO")
    p.add_argument("--clip", choices=["none", "l2"], default="none", help="per-row clipping search")
    p.add_argument("--scale-group", default="auto", metavar="auto|none|G",
                   help="scale groups (format v3): auto (dim <= 32 in groups of 256 rows), none, or G rows")
    p.add_argument("--out", type=Path, default=Path("out") / "samples", help="output directory for the .onnx and report")
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None, help="keep only the first N train rows")
    p.add_argument("--max-test", type=int, default=None, help="keep only the first N held-out rows")
    p.add_argument("--prune-keep", type=int, default=None,
                   help="prune -> fine-tune -> convert: score the fields (ablation), keep the K best, fine-tune the pruned "
                        "copy (--finetune-epochs) and convert it")
    p.add_argument("--finetune-epochs", type=int, default=1, help="epochs of fine-tuning after pruning")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for training (1 is fastest for these small batches on a shared machine)")
    return p


def main(name: str, description: str, argv: list[str] | None = None, **load_kwargs) -> int:
    args = parser_for(name, description).parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        ds = datasets.load(name, args.data, max_train=args.max_train, max_test=args.max_test, **load_kwargs)
    except datasets.DataNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ds.describe())
    trained = train_model(ds, args.dim, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"trained DeepFM (D={args.dim}, {args.epochs} epoch(s), batch {args.batch_size}) in {trained.train_seconds:.1f} s")
    if args.prune_keep is not None:
        trained = prune_and_finetune(trained, args.prune_keep, args.finetune_epochs, lr=args.lr, seed=args.seed)
    result = convert_and_check(trained, args.quant, args.out, clip=args.clip, scale_group=args.scale_group)
    print(result.report_text)
    (args.out / f"{Path(result.path).stem}.json").write_text(json.dumps(result.to_dict(), indent=2, default=float))
    ok = result.faithfulness_passed and result.heldout_faithfulness_passed and result.size_ok
    print(f"{'OK' if ok else 'FAILED'}: {ds.name} D={args.dim} quant={result.quant}: bytes {result.ratio:.2%} of fp32, "
          f"AUC {result.auc_torch:.5f} -> {result.auc_onnx:.5f} (Δ {result.auc_delta:+.5f}), "
          f"total {time.perf_counter() - started:.1f} s")
    return 0 if ok else 1
