"""The main job, end to end, on generated data: train a DeepFM-style model, convert it, check parity.

    shark-export demo [--out DIR] [--samples N] [--quant mixed]

Generates Criteo-like data (Zipf ids, planted signal; single-hot Embedding fields and multi-hot
EmbeddingBag fields), trains the model, converts it with row priorities from a calibration split, runs the
converted model in ONNX Runtime with our ops, and prints the size report and both parity budgets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from .converter import convert
from .example_models import DeepFM, split_batches, train
from .parity import check_parity
from .synthetic import generate

# The quantized model's logits may move this much from the float model's (the impact budget of the demo);
# faithfulness to the stored weights is always checked at 1e-5.


def _subset(columns: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in columns.items()}


def run(out_dir: Path, samples: int = 120_000, quant: str = "mixed", dim: int = 16, epochs: int = 2, seed: int = 0) -> int:
    started = time.perf_counter()
    columns, labels, fields = generate(samples, seed=seed)
    n_train = int(samples * 0.8)
    n_cal = int(samples * 0.1)
    train_set = list(split_batches(_subset(columns, 0, n_train), labels[:n_train], fields, 1024))
    cal_set = list(split_batches(_subset(columns, n_train, n_train + n_cal), labels[n_train : n_train + n_cal], fields, 2048))
    test_set = list(split_batches(_subset(columns, n_train + n_cal, samples), labels[n_train + n_cal :], fields, 2048))
    print(f"data: {samples} samples, {len(fields)} fields ({sum(f.multi_hot for f in fields)} multi-hot), "
          f"positive rate {labels.mean():.3f}")

    model = DeepFM(fields, dim=dim, n_dense=4)
    train(model, [b for b, _ in train_set], [y for _, y in train_set], epochs=epochs, seed=seed)
    print(f"trained DeepFM (dim {dim}) in {time.perf_counter() - started:.1f} s")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"deepfm_{quant}.onnx"
    report = convert(
        model,
        (cal_set[0][0],),
        path,
        quant=quant,
        calibration=[(b,) for b, _ in cal_set],
        labels=[y for _, y in cal_set],
    )
    print(report)
    # Held-out rows include ids the calibration never saw (stored at the lowest tier): their logits may move
    # further than the calibration budget, so here the verdict is the held-out AUC, as in samples/.
    held_out = check_parity(
        model,
        path,
        [(b,) for b, _ in test_set],
        labels=[y for _, y in test_set],
    )
    print("held-out impact (ONNX vs the original float model; ids the calibration never saw move further):")
    print("\n".join("  " + line for line in str(held_out).splitlines()))
    print(f"model file: {path} ({path.stat().st_size / 1e6:.2f} MB); total {time.perf_counter() - started:.1f} s")
    return 0 if report.faithfulness else 1


def main(argv: list[str] | None = None) -> int:
    from .cli_parser import demo_arguments  # (the CLI parser defines them: it must not import this module)

    parser = argparse.ArgumentParser(prog="shark-export demo", description=__doc__.splitlines()[0])
    demo_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:  # never into the current directory unasked
        out = Path(tempfile.mkdtemp(prefix="shark_export_demo_"))
    print(f"writing to {out}")
    return run(out, samples=args.samples, quant=args.quant, dim=args.dim, epochs=args.epochs)


if __name__ == "__main__":
    raise SystemExit(main())
