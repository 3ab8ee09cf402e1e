"""Portable models (`convert(ops="standard")`, issue 14) against the custom-op models, side by side.

    python benchmarks/bench_standard_ops.py [--samples 60000] [--rows 500000] [--lookups 106496] [--json out.json]

a. **Whole model**: a DeepFM (shark_export.example_models) on the synthetic CTR data (shark_export.synthetic,
   8 fields, 154,824 rows) at D = 16 and D = 64, trained one epoch, converted with int8, int4 and mixed
   (calibration and labels given) once with our ops and once with ops="standard". Per pair: file bytes and
   their ratio, table bytes, the converter's own faithfulness check (max abs error against torch with the same
   stored tables; the portable model runs in a stock ORT session, the library is not loaded), held-out AUC of
   each file against the float model (ΔAUC), and the median latency of one batch of 2048 at 1 thread.
b. **Lookups alone**: one table of `--rows` rows (int8, int4, and a mixed table: 10% fp16, 40% int8, 50% int4),
   `--lookups` Zipf(1.1) ids, output [N, D] float32, 1 intra-op thread: our RowwiseDequantGather (library),
   the lowered portable subgraph (stock session), and ORT's Gather on the fp32 table. Outputs are checked
   bit for bit (ours = portable) before timing; median and min over `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import shark_export  # noqa: F401
except ImportError:  # pragma: no cover - a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() + " (+ uncommitted)"
    except OSError:
        return "?"


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def whole_model(samples: int, dims: list[int], quants: list[str], repeats: int, out: Path) -> list[dict]:
    import onnxruntime as ort
    import torch

    from shark_export import ops
    from shark_export.converter import convert
    from shark_export.example_models import DeepFM, split_batches, train
    from shark_export.export import ExampleInputs
    from shark_export.model_io import OnnxModelRunner
    from shark_export.parity import check_parity
    from shark_export.synthetic import generate

    columns, labels, fields = generate(samples, seed=0)
    n_train, n_cal = int(samples * 0.7), int(samples * 0.1)
    sub = lambda a, b: {k: v[a:b] for k, v in columns.items()}  # noqa: E731
    train_set = list(split_batches(sub(0, n_train), labels[:n_train], fields, 1024))
    cal_set = list(split_batches(sub(n_train, n_train + n_cal), labels[n_train:n_train + n_cal], fields, 2048))
    test_set = list(split_batches(sub(n_train + n_cal, samples), labels[n_train + n_cal:], fields, 2048))
    rows = []
    for dim in dims:
        torch.manual_seed(0)
        model = DeepFM(fields, dim=dim, n_dense=4)
        train(model, [b for b, _ in train_set], [y for _, y in train_set], epochs=1, seed=0)
        for quant in quants:
            row = {"dim": dim, "quant": quant}
            for kind in ("custom", "standard"):
                path = out / f"deepfm_d{dim}_{quant}_{kind}.onnx"
                t0 = time.perf_counter()
                report = convert(model, (cal_set[0][0],), path, quant=quant, calibration=[(b,) for b, _ in cal_set],
                                 labels=[y for _, y in cal_set], impact_atol=1.0, impact_rtol=0.0, ops=kind)
                convert_s = time.perf_counter() - t0
                held = check_parity(model, path, [(b,) for b, _ in test_set],
                                    labels=np.concatenate([y.numpy() for _, y in test_set]), atol=1.0, rtol=0.0)
                runner = OnnxModelRunner(path)
                if kind == "custom":
                    session = ops.session(str(path), threads=1)
                else:
                    so = ort.SessionOptions()
                    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
                    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                feeds = runner.feeds(ExampleInputs.of((test_set[0][0],)))
                p50, best = _median_ms(lambda: session.run(None, feeds), repeats)
                row[kind] = {
                    "file_bytes": report.file_bytes, "table_bytes": report.bytes_after, "fp32_table_bytes": report.fp32_bytes,
                    "faithful": bool(report.faithfulness), "faithfulness_max_abs": report.faithfulness.outputs[0].max_abs,
                    "auc_float": held.metrics[0].auc_reference, "auc": held.metrics[0].auc_onnx,
                    "dauc": held.metrics[0].auc_delta, "latency_ms_p50": p50, "latency_ms_min": best,
                    "convert_s": convert_s,
                }
            row["file_ratio"] = row["standard"]["file_bytes"] / row["custom"]["file_bytes"]
            row["table_ratio"] = row["standard"]["table_bytes"] / row["custom"]["table_bytes"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def lookups(num_rows: int, dims: list[int], n: int, repeats: int) -> list[dict]:
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from shark_export import ops, reference
    from shark_export.passes.standard_ops import StandardOpsPass
    from shark_export.quantize import quantize_table
    from shark_export.synthetic import zipf_ids

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from op_models import gather_model

    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, num_rows, n)
    plain = ort.SessionOptions()
    plain.intra_op_num_threads, plain.inter_op_num_threads = 1, 1
    rows = []
    for dim in dims:
        weight = rng.normal(size=(num_rows, dim)).astype(np.float32)
        fp32 = helper.make_model(helper.make_graph(
            [helper.make_node("Gather", ["w", "indices"], ["output"], axis=0)], "g",
            [helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", dim])], [numpy_helper.from_array(weight, "w")]),
            ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
        fp32_session = ort.InferenceSession(fp32.SerializeToString(), plain, providers=["CPUExecutionProvider"])
        fp32_ms = _median_ms(lambda: fp32_session.run(None, {"indices": ids}), repeats)
        mixed = rng.choice([1, 2, 3], num_rows, p=[0.1, 0.4, 0.5])
        for name, tiers in (("int8", "int8"), ("int4", "int4"), ("mixed", mixed)):
            table = quantize_table(weight, tiers, name="t", scale_group_rows=256 if dim <= 32 else 0)
            custom = gather_model(table, check=False)
            lowered = ir.from_proto(custom)
            StandardOpsPass()(lowered)
            standard = ir.to_proto(lowered)
            custom_session = ops.session(custom.SerializeToString(), threads=1)
            standard_session = ort.InferenceSession(standard.SerializeToString(), plain, providers=["CPUExecutionProvider"])
            a = custom_session.run(None, {"indices": ids})[0]
            b = standard_session.run(None, {"indices": ids})[0]
            if not (np.array_equal(a.view(np.uint32), b.view(np.uint32))
                    and np.array_equal(b[:1000].view(np.uint32), reference.gather(table, ids[:1000]).view(np.uint32))):
                raise SystemExit(f"portable lookup of {name} D={dim} differs from our op: not timing wrong things")
            row = {"dim": dim, "table": name, "format_version": table.format_version, "rows": num_rows, "lookups": n,
                   "custom_ms": _median_ms(lambda: custom_session.run(None, {"indices": ids}), repeats),
                   "standard_ms": _median_ms(lambda: standard_session.run(None, {"indices": ids}), repeats),
                   "fp32_gather_ms": fp32_ms,
                   "standard_nodes": len(standard.graph.node)}
            row["standard_vs_custom"] = row["standard_ms"][0] / row["custom_ms"][0]
            row["standard_vs_fp32"] = row["standard_ms"][0] / fp32_ms[0]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=60_000)
    p.add_argument("--dims", default="16,64")
    p.add_argument("--quants", default="int8,int4,mixed")
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--lookups", type=int, default=4096 * 26)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--section", choices=["all", "model", "lookup"], default="all")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import onnxruntime
    import torch

    print(f"commit {_commit()}, {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}", flush=True)
    dims = [int(d) for d in args.dims.split(",")]
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.section in ("all", "model"):
            result["model"] = whole_model(args.samples, dims, args.quants.split(","), args.repeats, Path(tmp))
    if args.section in ("all", "lookup"):
        result["lookup"] = lookups(args.rows, dims, args.lookups, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
