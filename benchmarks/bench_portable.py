"""Portable models (ops="standard") against the custom-op models: speed and bytes on ORT, per model and per
lookup kind (issue 23).

    python benchmarks/bench_portable.py [--batch 1024] [--rounds 15] [--json out.json]

a. **Models**: the four recommenders of tests/portable_models.py (16 single-id fields with D = 1 tables; 1-D bags
   with offsets, weights and include_last_offset; 2-D mean/sum bags with padding, D = 13; a two-tower with a
   shared table) at fp16, int8, int4, mixed and an 8% budget, each converted twice (our ops / ops="standard").
   Per pair: file bytes and their ratio, nodes, and the time of one batch at 1 intra-op thread, with the
   model's fp32 portable file (quant="fp32": plain Gathers of float tables, no decode) as a third side. Times are
   taken in interleaved rounds (custom, portable, custom, ...) and the ratio reported is the median of the
   per-round ratios, so machine load moves both sides alike.
b. **Lookups alone**: one table of 200,000 × 16 (int8, int4, mixed: 10% fp16, 40% int8, 50% int4), Zipf ids,
   batch 1024: a gather of 26 ids per sample, a 1-D sum bag with offsets (20 ids per bag) and a 2-D mean bag
   with padding ([1024, 20]); the one-node custom-op model against its lowering, outputs checked first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the four models and the one-node op models live with the tests
try:
    import shark_export  # noqa: F401
except ImportError:  # pragma: no cover - a checkout without PYTHONPATH
    sys.path.insert(0, str(ROOT))


def paired(custom, portable, rounds: int, fp32=None) -> dict:
    """Median ms of each and the median of per-round ratios portable / custom (and portable / fp32 portable,
    when given), taken in interleaved rounds: load hits every side alike."""
    sides = {"custom": custom, "portable": portable, **({"fp32": fp32} if fp32 else {})}
    times = {k: [] for k in sides}
    for fn in sides.values():
        fn()
    for _ in range(rounds):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    out = {f"{k}_ms": statistics.median(v) for k, v in times.items()}
    out["ratio"] = statistics.median(y / x for x, y in zip(times["custom"], times["portable"]))
    if fp32:
        out["ratio_to_fp32"] = statistics.median(y / x for x, y in zip(times["fp32"], times["portable"]))
    return out


def models(batch: int, rounds: int, out: Path) -> list[dict]:
    import onnx
    import portable_models as pm

    from shark_export import ops

    from shark_export import convert
    from shark_export.export import ExampleInputs
    from shark_export.model_io import OnnxModelRunner, plain_session

    rows = []
    for name in pm.MODELS:
        fp32_path = out / f"{name}_fp32_standard.onnx"
        convert(pm.built(name), pm.batch(name, 8), fp32_path, quant="fp32", ops="standard")
        fp32 = plain_session(fp32_path, threads=1)
        for preset in pm.PRESETS:
            paths = pm.convert_pair(name, preset, out)
            custom = ops.session(str(paths["custom"]), threads=1)
            portable = plain_session(paths["standard"], threads=1)
            feeds = OnnxModelRunner(paths["custom"]).feeds(ExampleInputs.of(pm.batch(name, batch, seed=7)))
            want, got = custom.run(None, feeds), portable.run(None, feeds)
            err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
            sizes = {k: p.stat().st_size for k, p in paths.items()}
            row = {"model": name, "preset": preset, "max_abs_err": err, "custom_bytes": sizes["custom"],
                   "portable_bytes": sizes["standard"], "bytes_ratio": sizes["standard"] / sizes["custom"],
                   "portable_nodes": len(onnx.load(str(paths["standard"]), load_external_data=False).graph.node),
                   **paired(lambda: custom.run(None, feeds), lambda: portable.run(None, feeds), rounds,
                            lambda: fp32.run(None, feeds))}
            rows.append(row)
            print(f"{name:12s} {preset:8s} bytes x{row['bytes_ratio']:.3f}  custom {row['custom_ms']:.3f} / portable "
                  f"{row['portable_ms']:.3f} / fp32 portable {row['fp32_ms']:.3f} ms  x{row['ratio']:.2f} "
                  f"(x{row['ratio_to_fp32']:.2f} of fp32)  err {err:.1e}", flush=True)
    return rows


def lookups(batch: int, rounds: int, num_rows: int = 200_000) -> list[dict]:
    import onnx_ir as ir
    from op_models import bag_model, gather_model

    from shark_export import ops, reference
    from shark_export.format import Tier
    from shark_export.model_io import plain_session
    from shark_export.passes.cleanup import RemoveDeadPass
    from shark_export.passes.standard_ops import StandardOpsPass
    from shark_export.quantize import quantize_table

    R, D, L = num_rows, 16, 20
    rng = np.random.default_rng(0)
    weights = (rng.normal(size=(R, D)) * np.logspace(0, -2, R)[:, None]).astype(np.float32)
    tiers = {"int8": np.full(R, Tier.INT8.value, np.uint8), "int4": np.full(R, Tier.INT4.value, np.uint8),
             "mixed": rng.choice([Tier.FP16.value, Tier.INT8.value, Tier.INT4.value], R, p=[0.1, 0.4, 0.5]).astype(np.uint8)}

    def zipf(shape):
        return np.minimum((R ** rng.random(shape) - 1).astype(np.int64), R - 1)

    rows = []
    for label, codes in tiers.items():
        table = quantize_table(weights, codes, name="t")
        matrix = zipf((batch, L))
        matrix[:, 15:] = 0
        cases = {
            "gather": (gather_model(table, index_rank=2, check=False), {"indices": zipf((batch, 26))},
                       lambda f: reference.gather(table, f["indices"])),
            "bag 1-D sum": (bag_model(table, offsets=True, mode=0, check=False),
                            {"indices": zipf(batch * L), "offsets": np.arange(0, batch * L, L, dtype=np.int64)},
                            lambda f: reference.embedding_bag(table, f["indices"], f["offsets"])),
            "bag 2-D mean": (bag_model(table, index_rank=2, offsets=False, mode=1, padding_idx=0, check=False),
                             {"indices": matrix},
                             lambda f: reference.embedding_bag(table, f["indices"], None, mode=1, padding_idx=0)),
        }
        for kind, (model, feeds, want) in cases.items():
            lowered = ir.from_proto(model)
            StandardOpsPass()(lowered)
            RemoveDeadPass()(lowered)
            portable_model = ir.to_proto(lowered)
            custom = ops.session(model.SerializeToString(), threads=1)
            portable = plain_session(portable_model.SerializeToString(), threads=1)
            expected = want(feeds)
            for session in (custom, portable):
                np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)
            row = {"table": label, "kind": kind, "portable_nodes": len(portable_model.graph.node),
                   **paired(lambda: custom.run(None, feeds), lambda: portable.run(None, feeds), rounds)}
            rows.append(row)
            print(f"{label:6s} {kind:13s} {row['custom_ms']:.3f} / {row['portable_ms']:.3f} ms  x{row['ratio']:.2f}",
                  flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from _machine import machine, source_state

    import onnxruntime
    import torch

    print(machine(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"), source_state())
    with tempfile.TemporaryDirectory() as tmp:
        result = {"models": models(args.batch, args.rounds, Path(tmp)), "lookups": lookups(args.batch, args.rounds)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
