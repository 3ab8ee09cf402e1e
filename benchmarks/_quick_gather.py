"""Quick timing of the int8 uniform RowwiseDequantGather against the anchors of FIELD_NOTES.md:
torch quantized byte-rowwise embedding bag with bag size 1, and ORT's fp32 Gather.

    python benchmarks/_quick_gather.py [--rows 2000000] [--dim 64] [--lookups 106496] [--threads 1 2]

Table R x D int8 (random codes, fp16 scale/bias), Zipf(1.1) lookups over randomly permuted row ids.
ORT sessions run without thread spinning. All cases run round-robin (--repeats rounds, after warm-up) so that machine noise hits them alike;
min and median per case. ORT runs use IO binding with a preallocated output, so they time the kernel
plus ORT's per-run overhead, not an output copy."""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from shark_export import ops


def zipf_indices(n_rows: int, n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    ranks = np.arange(1, n_rows + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -a)
    cdf /= cdf[-1]
    r = np.searchsorted(cdf, rng.random(n), side="right").clip(0, n_rows - 1)
    return rng.permutation(n_rows)[r].astype(np.int64)


def int8_table(n_rows: int, dim: int, rng: np.random.Generator):
    stride = (4 + dim + 3) // 4 * 4
    rows = np.zeros((n_rows, stride), np.uint8)
    rows[:, 4 : 4 + dim] = rng.integers(0, 256, size=(n_rows, dim), dtype=np.uint8)
    scale = rng.uniform(0.001, 0.02, n_rows).astype(np.float16)
    bias = rng.uniform(-1, 0, n_rows).astype(np.float16)
    rows[:, 0:4] = np.stack([scale, bias], axis=1).view(np.uint8).reshape(n_rows, 4)
    return rows.reshape(-1), scale.astype(np.float32), bias.astype(np.float32), rows[:, 4 : 4 + dim]


def model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    return helper.make_model(g, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                              helper.make_opsetid(ops.DOMAIN, 1)])


def shark_session(blob: bytes, threads: int) -> ort.InferenceSession:
    so = ops.session_options(threads)
    # No spinning: idle pool threads of the other (interleaved) sessions would otherwise steal the CPU.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def ort_runner(sess, idx: np.ndarray, out_shape, out_dtype):
    binding = sess.io_binding()
    binding.bind_cpu_input("indices", idx)
    out = np.empty(out_shape, out_dtype)
    binding.bind_output("out", "cpu", 0, out_dtype, out.shape, out.ctypes.data)

    def run():
        sess.run_with_iobinding(binding)

    run._keep = (binding, out, sess)  # keep alive
    return run


def time_interleaved(cases: dict, repeats: int) -> dict:
    """Runs the cases round-robin (so machine noise hits all alike); returns {name: (min, median) ms}."""
    for f in cases.values():
        for _ in range(3):
            f()
    ts = {k: [] for k in cases}
    for _ in range(repeats):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            ts[k].append((time.perf_counter() - t0) * 1e3)
    return {k: (min(v), statistics.median(v)) for k, v in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lookups", type=int, default=106_496)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--bag-size", type=int, default=0,
                    help="also time pooled bags: --lookups bags of this many Zipf lookups (sum), vs torch")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    R, D = args.rows, args.dim
    idx = zipf_indices(R, args.lookups, args.zipf, rng)
    payload, scale, bias, codes = int8_table(R, D, rng)
    print(f"table int8 {R} x {D} ({payload.nbytes / 2**20:.0f} MiB), {len(idx)} Zipf({args.zipf}) lookups, "
          f"{len(np.unique(idx))} distinct rows")

    inits = [numpy_helper.from_array(payload, "payload"), numpy_helper.from_array(np.zeros((0, 4), np.uint64), "row_meta"),
             numpy_helper.from_array(np.zeros(D, np.float32), "default_row")]
    cases = {}
    for out_dtype, np_out in ((1, np.float32), (10, np.float16)):
        node = helper.make_node("RowwiseDequantGather", ["payload", "row_meta", "default_row", "indices"], ["out"],
                                domain=ops.DOMAIN, format_version=1, num_rows=R, dim=D, uniform_tier=2,
                                output_dtype=out_dtype)
        m = model([node], [helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT16 if out_dtype == 10 else TensorProto.FLOAT,
                                                 ["n", D])], inits)
        blob = m.SerializeToString()
        for th in args.threads:
            cases[f"shark int8 gather -> {np.dtype(np_out).name}, {th} thread(s)"] = ort_runner(
                shark_session(blob, th), idx, (len(idx), D), np_out)
        if out_dtype == 1:  # exactness spot check
            got = ops.session(blob, threads=1).run(None, {"indices": idx[:1000]})[0]
            want = (codes[idx[:1000]].astype(np.float64) * scale[idx[:1000], None] + bias[idx[:1000], None]).astype(np.float32)
            assert np.array_equal(got, want), "result mismatch"
    if args.bag_size:
        L = args.bag_size
        bag_idx = zipf_indices(R, args.lookups * L, args.zipf, rng).reshape(args.lookups, L)
        node = helper.make_node("RowwiseDequantEmbeddingBag", ["payload", "row_meta", "default_row", "indices"],
                                ["out"], domain=ops.DOMAIN, format_version=1, num_rows=R, dim=D, uniform_tier=2,
                                output_dtype=1, mode=0)
        m = model([node], [helper.make_tensor_value_info("indices", TensorProto.INT64, ["b", L])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", D])], inits)
        blob = m.SerializeToString()
        for th in args.threads:
            cases[f"shark int8 bags of {L} -> float32, {th} thread(s)"] = ort_runner(
                shark_session(blob, th), bag_idx, (args.lookups, D), np.float32)
    del inits, blob, m

    if not args.no_baselines:
        import torch

        w = np.empty((R, D + 8), np.uint8)  # torch 8-bit prepack: [codes][fp32 scale][fp32 bias]
        w[:, :D] = codes
        w[:, D:] = np.stack([scale, bias], axis=1).astype(np.float32).view(np.uint8).reshape(R, 8)
        tw, ti, to = torch.from_numpy(w), torch.from_numpy(idx), torch.arange(len(idx), dtype=torch.int64)

        def torch_runner(th):
            def run():
                torch.set_num_threads(th)
                torch.ops.quantized.embedding_bag_byte_rowwise_offsets(tw, ti, to, False, 0, False, None, None, False)
            return run

        for th in args.threads:
            cases[f"torch byte-rowwise bag size 1, {th} thread(s)"] = torch_runner(th)
        if args.bag_size:
            tbi = torch.from_numpy(bag_idx.reshape(-1).copy())
            tbo = torch.arange(0, bag_idx.size, args.bag_size, dtype=torch.int64)

            def torch_bag_runner(th):
                def run():
                    torch.set_num_threads(th)
                    torch.ops.quantized.embedding_bag_byte_rowwise_offsets(tw, tbi, tbo, False, 0, False, None, None,
                                                                           False)
                return run

            for th in args.threads:
                cases[f"torch byte-rowwise bags of {args.bag_size}, {th} thread(s)"] = torch_bag_runner(th)

        table = (codes.astype(np.float32) * scale[:, None] + bias[:, None]).astype(np.float32)
        node = helper.make_node("Gather", ["table", "indices"], ["out"], axis=0)
        m = model([node], [helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", D])],
                  [numpy_helper.from_array(table, "table")])
        del table
        blob = m.SerializeToString()
        del m
        for th in args.threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = th, 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
            cases[f"ORT fp32 Gather, {th} thread(s)"] = ort_runner(sess, idx, (len(idx), D), np.float32)
        del blob

    results = time_interleaved(cases, args.repeats)
    width = max(len(k) for k in results)
    print(f"{'':<{width}}  {'min':>8}  {'median':>8}")
    for k, (mn, med) in results.items():
        print(f"{k:<{width}}  {mn:8.3f}  {med:8.3f} ms")
    ours = results.get("shark int8 gather -> float32, 1 thread(s)")
    for k in ("torch byte-rowwise bag size 1, 1 thread(s)", "ORT fp32 Gather, 1 thread(s)"):
        if ours and k in results:
            print(f"ratio shark int8 f32 (1 thread) / {k}: min {ours[0] / results[k][0]:.2f}, "
                  f"median {ours[1] / results[k][1]:.2f}")


if __name__ == "__main__":
    main()
