"""Lookup-kernel benchmark (issue 2): shark_export's RowwiseDequantGather / RowwiseDequantEmbeddingBag
against ORT's standard Gather, ORT's com.microsoft GatherBlockQuantized and torch's quantized
byte-rowwise embedding bag, measured side by side in one process.

    python benchmarks/bench_lookup.py --rows 2000000 --dim 64 --batch 4096 --fields 26 --bag 20 \\
        --threads 1,2 --repeats 20 [--json out.json]

What is measured (R x D table, ``batch*fields`` lookups with ids drawn from a truncated Zipf(a) law over
row ranks, hot ranks mapped to random row ids by a fixed permutation):

* lookup (one row per id, output ``[batch*fields, D]`` float32):
  ours (int8, int4, fp16 and a mixed table tiered by Zipf rank) via ``RowwiseDequantGather`` in an ORT
  session; ORT ``Gather`` on the fp32 table; ORT ``com.microsoft.GatherBlockQuantized`` (uint8, bits=8,
  block_size=D, per-row scale and zero point); ``torch.ops.quantized.embedding_bag_byte_rowwise_offsets``
  with bags of size 1 on the ``embedding_bag_byte_prepack`` table.
* pooled (``batch*fields`` bags of ``bag`` ids, sum, output ``[batch*fields, D]``): ours int8
  ``RowwiseDequantEmbeddingBag`` vs torch ``F.embedding_bag`` (fp32) and torch byte-rowwise.

Fairness rules:
* every table is a numpy array (same allocator, same transparent-huge-page treatment -- numpy madvises
  large arrays; ``--no-hugepages`` turns that off for all of them), handed to ORT without a copy through
  ``SessionOptions.add_initializer`` and to torch through ``torch.from_numpy``;
* ORT contenders run through IO binding with pre-built input OrtValues; by default every ORT contender
  writes into the same pre-allocated output buffer of its shape (``--ort-output prebound``), or every
  ORT contender lets ORT allocate its output on each run (``--ort-output alloc``); torch allocates its
  own output on each call (its API has no ``out=``), and the previous result is released before the
  clock starts so its allocator can reuse the block;
* every (contender, thread count) pair runs in the same rounds: each round visits all pairs in a fresh
  random order and runs each pair ``1 + --inner`` times back to back (the first call untimed, so the
  hot rows are in cache and the previous contender's spinning threads have settled), timing the rest.
  Load from other processes therefore hits all contenders alike; we report the median and the min
  over all ``repeats * inner`` samples;
* before any timing each pair's output is checked against a numpy reference (exact for the gathers,
  float32 summation error for the bags; pooled bags are checked on a random sample of ``--check-bags``
  bags). A failed check stops the benchmark with exit status 1: it never compares wrong things.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:  # an installed shark-export, or a checkout on PYTHONPATH
    import shark_export  # noqa: F401
except ImportError:  # pragma: no cover - running from a checkout without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shark_export import ops, reference
from shark_export.format import QuantizedTable, Tier
from shark_export.quantize import quantize_table

EPS32 = float(np.finfo(np.float32).eps)
_INLINE_LIMIT = 1 << 16  # initializers up to this many bytes go into the model; larger ones are shared


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    vals = [int(v) for v in text.replace(" ", ",").split(",") if v]
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return vals


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="table rows R (default 2,000,000)")
    ap.add_argument("--dim", type=int, default=64, help="embedding dim D (default 64)")
    ap.add_argument("--batch", type=int, default=4096, help="samples per batch (default 4096)")
    ap.add_argument("--fields", type=int, default=26, help="lookups (or bags) per sample (default 26)")
    ap.add_argument("--bag", type=int, default=20, help="ids per bag in the pooled case (default 20)")
    ap.add_argument("--threads", type=_int_list, default=[1, 2], help="thread counts, e.g. 1,2 (default 1,2)")
    ap.add_argument("--repeats", type=int, default=20, help="timing rounds (default 20)")
    ap.add_argument("--inner", type=int, default=3, help="timed calls per contender per round (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per contender before the rounds (default 2)")
    ap.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the id law (default 1.1)")
    ap.add_argument("--mixed-fp16", type=float, default=0.02, help="share of hottest rows stored fp16 in the mixed table")
    ap.add_argument("--mixed-int8", type=float, default=0.20, help="share of next-hottest rows stored int8 (rest int4)")
    ap.add_argument("--check-bags", type=int, default=2048, help="pooled bags checked against the reference (0 = all)")
    ap.add_argument("--ort-output", choices=("prebound", "alloc"), default="prebound",
                    help="ORT outputs: one pre-allocated buffer shared by all ORT contenders, or allocated by ORT per run")
    ap.add_argument("--no-hugepages", action="store_true", help="do not let numpy madvise huge pages for the tables")
    ap.add_argument("--scale-group", type=int, default=0,
                    help="store our quantized tables in format v3 with this many rows per scale group (0: v2, a header per row)")
    ap.add_argument("--only", default="", help="comma-separated contender keys to run (default: all)")
    ap.add_argument("--no-settle", dest="settle", action="store_false",
                    help="do not wait for the previous contender's idle threads to stop spinning before a burst")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("rows", "dim", "batch", "fields", "bag", "repeats", "inner"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.check_bags < 0:
        ap.error("--warmup and --check-bags must be >= 0")
    if not (0 <= args.mixed_fp16 and 0 <= args.mixed_int8 and args.mixed_fp16 + args.mixed_int8 <= 1):
        ap.error("--mixed-fp16 and --mixed-int8 must be shares in [0, 1] summing to at most 1")
    return args


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
class ZipfIds:
    """Truncated Zipf(a) over ranks 0..R-1 (P(rank k) ~ (k+1)^-a), rank k -> row id ``perm[k]``."""

    def __init__(self, n_rows: int, a: float, rng: np.random.Generator):
        cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -a)
        cdf /= cdf[-1]
        self.cdf = cdf
        self.perm = rng.permutation(n_rows).astype(np.int64)  # rank -> row id

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ranks = np.searchsorted(self.cdf, rng.random(n), side="right")
        np.minimum(ranks, self.cdf.shape[0] - 1, out=ranks)
        return self.perm[ranks]


def _gbq_quantize(w: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 codes [R, D], float32 scales [R, 1], uint8 zero points [R, 1] for GatherBlockQuantized
    (bits=8, one block per row): x ~ (q - zp) * scale, the usual asymmetric scheme with an integer zero
    point (range widened to include 0)."""
    R, D = w.shape
    q = np.empty((R, D), np.uint8)
    scales = np.empty((R, 1), np.float32)
    zps = np.empty((R, 1), np.uint8)
    for r0 in range(0, R, chunk):
        x = w[r0: r0 + chunk].astype(np.float64)
        lo = np.minimum(x.min(axis=1), 0.0)
        hi = np.maximum(x.max(axis=1), 0.0)
        s = ((hi - lo) / 255.0).astype(np.float32).astype(np.float64)
        s[s == 0] = 1.0
        zp = np.clip(np.rint(-lo / s), 0, 255)
        q[r0: r0 + chunk] = np.clip(np.rint(x / s[:, None] + zp[:, None]), 0, 255)
        scales[r0: r0 + chunk, 0] = s
        zps[r0: r0 + chunk, 0] = zp
    return q, scales, zps


def _to_numpy_backed(t) -> np.ndarray:
    """A numpy-allocated copy of a torch tensor (same allocator as every other table)."""
    out = np.empty(tuple(t.shape), dtype=t.numpy().dtype)
    out[...] = t.numpy()
    return out


@dataclass
class Data:
    R: int
    D: int
    ids: np.ndarray  # int64 [batch*fields], lookup ids
    bag_ids: np.ndarray  # int64 [batch*fields*bag], pooled ids, bag by bag
    offsets: np.ndarray  # int64 [batch*fields], bag starts
    weights: np.ndarray  # float32 [R, D]
    tables: dict[str, QuantizedTable]  # int8, int4, fp16, mixed
    gbq: tuple[np.ndarray, np.ndarray, np.ndarray]  # codes, scales, zero points
    prepacked: np.ndarray  # uint8 [R, D+8], torch 8-bit prepack (numpy-backed)
    mixed_label: str


def build_data(args: argparse.Namespace, log: Callable[[str], None], need: set[str]) -> Data:
    if args.no_hugepages:
        _set_hugepages(False)
    rng = np.random.default_rng(args.seed)
    R, D = args.rows, args.dim
    zipf = ZipfIds(R, args.zipf, rng)
    n = args.batch * args.fields
    ids = zipf.sample(n, rng)
    bag_ids = zipf.sample(n * args.bag, rng)
    offsets = np.arange(n, dtype=np.int64) * args.bag
    log(f"ids: {n:,} lookups ({np.unique(ids).shape[0]:,} distinct rows), {n:,} bags x {args.bag} "
        f"({np.unique(bag_ids).shape[0]:,} distinct rows)")

    weights = np.empty((R, D), np.float32)
    for r0 in range(0, R, 1 << 18):  # N(0, 0.1^2), generated in pieces to bound temporaries
        piece = weights[r0: r0 + (1 << 18)]
        rng.standard_normal(out=piece, dtype=np.float32)
        piece *= 0.1

    tables: dict[str, QuantizedTable] = {}
    n16 = int(round(args.mixed_fp16 * R))
    n8 = int(round(args.mixed_int8 * R))
    for tier in ("int8", "int4", "fp16"):
        if need & {f"lookup.shark_{tier}", f"pooled.shark_{tier}"}:
            t0 = time.perf_counter()
            tables[tier] = quantize_table(weights, tier, name=f"bench_{tier}", scale_group_rows=args.scale_group)
            log(f"quantized {tier} table in {time.perf_counter() - t0:.1f} s")
    if "lookup.shark_mixed" in need:
        codes = np.full(R, int(Tier.INT4), np.uint8)  # by Zipf rank: hottest fp16, next int8, rest int4
        codes[zipf.perm[:n16]] = int(Tier.FP16)
        codes[zipf.perm[n16: n16 + n8]] = int(Tier.INT8)
        tables["mixed"] = quantize_table(weights, codes, name="bench_mixed", scale_group_rows=args.scale_group)
    mixed_label = f"{100 * n16 / R:.3g}% fp16 / {100 * n8 / R:.3g}% int8 / {100 * (R - n16 - n8) / R:.3g}% int4"

    gbq = _gbq_quantize(weights) if "lookup.ort_gbq_u8" in need else (None, None, None)
    prepacked = None
    if need & {"lookup.torch_byte", "pooled.torch_byte"}:
        import torch

        prepacked = _to_numpy_backed(torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(weights)))
    return Data(R=R, D=D, ids=ids, bag_ids=bag_ids, offsets=offsets, weights=weights, tables=tables, gbq=gbq,
                prepacked=prepacked, mixed_label=mixed_label)


def _set_hugepages(enabled: bool) -> None:
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["_set_madvise_hugepage"])
            m._set_madvise_hugepage(enabled)
            return
        except (ImportError, AttributeError):
            continue


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
@dataclass
class Check:
    ok: bool
    detail: str


def check_exact(got: np.ndarray, want: np.ndarray) -> Check:
    if got.shape != want.shape or got.dtype != want.dtype:
        return Check(False, f"shape/dtype {got.shape} {got.dtype} != expected {want.shape} {want.dtype}")
    if np.array_equal(got, want):
        return Check(True, "bit-exact")
    bad = np.argwhere(got != want)
    i = tuple(bad[0])
    return Check(False, f"{bad.shape[0]} elements differ, first at {i}: {got[i]!r} != {want[i]!r}")


def check_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> Check:
    """|got - want| <= bound elementwise (want and bound float64)."""
    if got.shape != want.shape or got.dtype != np.float32:
        return Check(False, f"shape/dtype {got.shape} {got.dtype} != expected {want.shape} float32")
    err = np.abs(got.astype(np.float64) - want)
    over = ~(err <= bound)  # NaN counts as over
    if over.any():
        i = tuple(np.argwhere(over)[0])
        return Check(False, f"{int(over.sum())} elements off, first at {i}: {got[i]!r} vs {want[i]!r} "
                            f"(|err| {err[i]:.3g} > bound {bound[i]:.3g}, {what})")
    return Check(True, f"max |err| {err.max() if err.size else 0.0:.3g} within {what}")


def _bag_sums(rows_of: Callable[[np.ndarray], np.ndarray], ids2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float64 sums, float64 sums of |x|) over the bags ``ids2d`` [B, L] of float32 rows ``rows_of(ids)``."""
    B, L = ids2d.shape
    vals = rows_of(ids2d.reshape(-1)).astype(np.float64).reshape(B, L, -1)
    return vals.sum(axis=1), np.abs(vals).sum(axis=1)


def _bag_bound(abs_sum: np.ndarray, L: int) -> np.ndarray:
    """float32 summation error bound of L terms in any order, with margin: 2 * L * eps * sum|x|."""
    return 2.0 * max(L, 1) * EPS32 * abs_sum + 1e-30


# --------------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------------
@dataclass
class Contender:
    key: str  # "lookup.shark_int8", ...
    case: str  # "lookup" | "pooled"
    label: str
    threads: int
    call: Callable[[], Any]  # one run; returns the torch result (or None for ORT)
    output: Callable[[Any], np.ndarray]  # the output of a run, from call()'s return value
    check: Callable[[np.ndarray], Check]
    prepare: Callable[[], None] = lambda: None  # before a burst of calls (torch: set the thread count)
    samples: list[float] = field(default_factory=list)  # wall seconds per call
    cpu_samples: list[float] = field(default_factory=list)  # CPU seconds of the calling thread per call
    verdict: Check | None = None


class _OrtModel:
    """A one-node ORT model whose large initializers are numpy arrays shared, without a copy, by every
    session made from it (the model file only holds placeholders for them)."""

    def __init__(self, tmpdir: str, name: str, node, inputs, output_type, inits: dict[str, np.ndarray], opsets):
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        self.shared: dict[str, Any] = {}
        protos = []
        for iname, arr in inits.items():
            if arr.nbytes <= _INLINE_LIMIT:
                protos.append(numpy_helper.from_array(arr, iname))
                continue
            t = TensorProto(name=iname, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=list(arr.shape))
            t.data_location = TensorProto.EXTERNAL
            fname = f"{name}.{iname}.bin"
            with open(os.path.join(tmpdir, fname), "wb") as f:  # sparse placeholder, never read
                f.truncate(arr.nbytes)
            for k, v in (("location", fname), ("offset", "0"), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            protos.append(t)
            self.shared[iname] = arr
        graph = helper.make_graph([node], name, inputs, [helper.make_tensor_value_info("out", output_type, None)], protos)
        model = helper.make_model(graph, ir_version=10, opset_imports=opsets)
        self.path = os.path.join(tmpdir, f"{name}.onnx")
        onnx.save(model, self.path)

    def session(self, threads: int):
        import onnxruntime as ort

        so = ops.session_options(threads)
        values = []
        for iname, arr in self.shared.items():
            v = ort.OrtValue.ortvalue_from_numpy(arr)
            so.add_initializer(iname, v)
            values.append(v)
        sess = ort.InferenceSession(self.path, sess_options=so, providers=["CPUExecutionProvider"])
        sess._bench_keepalive = (values, so, self.shared)  # ORT does not own the shared buffers
        return sess


def _settle(window_s: float = 0.004, busy: float = 0.1, max_s: float = 0.5) -> float:
    """Wait until this process's other threads stop burning CPU (ORT's idle workers spin for a while
    after a run, and so do torch's OpenMP workers; on a 2-core machine they would steal a core from
    the next contender): returns once a ``window_s`` sleep costs less than ``busy`` of a core, or after
    ``max_s``. Returns the seconds waited."""
    start = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(window_s)
        c1, w1 = time.process_time(), time.perf_counter()
        if c1 - c0 < busy * (w1 - w0) or w1 - start > max_s:
            return w1 - start


class Bench:
    """Data, ORT models and the (contender, threads) pairs of one benchmark run."""

    def __init__(self, args: argparse.Namespace, log: Callable[[str], None] = print):
        self.args = args
        self.log = log
        self.keys = ALL_KEYS if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = sorted(set(self.keys) - set(ALL_KEYS))
        if unknown:
            raise SystemExit(f"unknown contender keys {unknown}; known: {', '.join(ALL_KEYS)}")
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_lookup_")
        self.data = build_data(args, log, set(self.keys))
        self.contenders: list[Contender] = []
        self._out_buffers: dict[tuple, np.ndarray] = {}
        self._build()

    # ---- ORT plumbing ------------------------------------------------------------------------------
    def _ort_out(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape not in self._out_buffers:
            buf = np.empty(shape, np.float32)
            buf.fill(0)  # touch the pages once, outside any timing
            self._out_buffers[shape] = buf
        return self._out_buffers[shape]

    def _ort_contender(self, key, case, label, model: _OrtModel, threads, feeds: dict[str, np.ndarray], out_shape, check):
        import onnxruntime as ort

        sess = model.session(threads)
        binding = sess.io_binding()
        values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in feeds.items()}
        for k, v in values.items():
            binding.bind_ortvalue_input(k, v)
        if self.args.ort_output == "prebound":
            buf = self._ort_out(out_shape)
            binding.bind_output("out", "cpu", 0, np.float32, list(out_shape), buf.ctypes.data)

            def output(_, buf=buf):
                return buf
        else:
            binding.bind_output("out", "cpu")

            def output(_, binding=binding):
                return binding.get_outputs()[0].numpy()

        def call(sess=sess, binding=binding, _keep=(values, feeds)):
            sess.run_with_iobinding(binding)

        return Contender(key=key, case=case, label=label, threads=threads, call=call, output=output, check=check)

    def _torch_contender(self, key, case, label, threads, fn, check):
        import torch

        def prepare(threads=threads):
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)

        return Contender(key=key, case=case, label=label, threads=threads, call=fn,
                         output=lambda r: r.numpy(), check=check, prepare=prepare)

    # ---- references ----------------------------------------------------------------------------------
    def _check_bag_sample(self) -> np.ndarray:
        n_bags = self.data.offsets.shape[0]
        k = self.args.check_bags
        if k == 0 or k >= n_bags:
            return np.arange(n_bags)
        return np.sort(np.random.default_rng(self.args.seed + 1).choice(n_bags, k, replace=False))

    def _bag_checker(self, rows_of: Callable[[np.ndarray], np.ndarray], what: str):
        """A pooled-output check on the sampled bags: float64 reference sums of the float32 rows given by
        ``rows_of`` (the contender's own stored values), tolerance = float32 summation error."""
        sel = self._check_bag_sample()
        ids2d = self.data.bag_ids.reshape(-1, self.args.bag)[sel]
        want, abs_sum = _bag_sums(rows_of, ids2d)
        bound = _bag_bound(abs_sum, self.args.bag)

        def check(out: np.ndarray) -> Check:
            if out.shape != (self.data.offsets.shape[0], self.data.D):
                return Check(False, f"output shape {out.shape}, expected {(self.data.offsets.shape[0], self.data.D)}")
            res = check_within(out[sel], want, bound, f"float32 summation bound, {sel.shape[0]} bags, {what}")
            return res

        return check

    def _dequant_prepacked(self, rows: np.ndarray) -> np.ndarray:
        p, D = self.data.prepacked, self.data.D
        sb = p[rows, D: D + 8].copy().view(np.float32)  # [n, 2]: fp32 scale, fp32 bias
        q = p[rows, :D].astype(np.float64)
        return (q * sb[:, 0:1].astype(np.float64) + sb[:, 1:2].astype(np.float64)).astype(np.float32)

    # ---- the pairs ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        from onnx import TensorProto, helper

        d, args = self.data, self.args
        D, n = d.D, d.ids.shape[0]
        keys = set(self.keys)
        opsets = [helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, ops.DOMAIN_VERSION),
                  helper.make_opsetid("com.microsoft", 1)]
        idx_in = helper.make_tensor_value_info("indices", TensorProto.INT64, ["n"])
        off_in = helper.make_tensor_value_info("offsets", TensorProto.INT64, ["b"])
        tmp = self.tmp.name
        specs = []  # (key, case, label, model, feeds, out_shape, check)

        def table_inits(t: QuantizedTable) -> dict[str, np.ndarray]:
            return {"payload": t.payload, "row_meta": t.row_meta, "default_row": t.default_row}

        for tier in ("int8", "int4", "fp16", "mixed"):
            key = f"lookup.shark_{tier}"
            if key not in keys:
                continue
            t = d.tables[tier]
            node = helper.make_node("RowwiseDequantGather", ["payload", "row_meta", "default_row", "indices"], ["out"],
                                    domain=ops.DOMAIN, name=f"gather_{tier}", output_dtype=1, **t.op_attributes())
            model = _OrtModel(tmp, f"gather_{tier}", node, [idx_in], TensorProto.FLOAT, table_inits(t), opsets)
            want = reference.gather(t, d.ids)
            label = f"shark {tier} RowwiseDequantGather" + (f" ({d.mixed_label})" if tier == "mixed" else "")
            specs.append((key, "lookup", label, model, {"indices": d.ids}, (n, D),
                          lambda out, want=want: check_exact(out, want)))

        if "lookup.ort_gather_fp32" in keys:
            node = helper.make_node("Gather", ["table", "indices"], ["out"], axis=0, name="gather_fp32")
            model = _OrtModel(tmp, "gather_fp32", node, [idx_in], TensorProto.FLOAT, {"table": d.weights}, opsets)
            want = d.weights[d.ids]
            specs.append(("lookup.ort_gather_fp32", "lookup", "ORT Gather fp32", model, {"indices": d.ids}, (n, D),
                          lambda out, want=want: check_exact(out, want)))

        if "lookup.ort_gbq_u8" in keys:
            q, s, zp = d.gbq
            node = helper.make_node("GatherBlockQuantized", ["data", "indices", "scales", "zero_points"], ["out"],
                                    domain="com.microsoft", name="gbq_u8", bits=8, block_size=D, gather_axis=0,
                                    quantize_axis=1)
            model = _OrtModel(tmp, "gbq_u8", node, [idx_in], TensorProto.FLOAT,
                              {"data": q, "scales": s, "zero_points": zp}, opsets)
            qi, zi, si = q[d.ids].astype(np.float64), zp[d.ids].astype(np.float64), s[d.ids].astype(np.float64)
            want = (qi - zi) * si  # exact dequantized value; ORT rounds (q - zp) * s once to float32
            bound = EPS32 * (np.abs(want) + (qi + zi) * si)  # one rounding, or an fma/two-product variant
            del qi, zi, si
            specs.append(("lookup.ort_gbq_u8", "lookup", f"ORT GatherBlockQuantized u8 (block {D})", model,
                          {"indices": d.ids}, (n, D),
                          lambda out, want=want, bound=bound: check_within(out, want, bound, "one float32 rounding")))

        if "pooled.shark_int8" in keys:
            t = d.tables["int8"]
            node = helper.make_node("RowwiseDequantEmbeddingBag",
                                    ["payload", "row_meta", "default_row", "indices", "offsets"], ["out"],
                                    domain=ops.DOMAIN, name="bag_int8", output_dtype=1, mode=0,
                                    include_last_offset=0, padding_idx=-1, **t.op_attributes())
            model = _OrtModel(tmp, "bag_int8", node, [idx_in, off_in], TensorProto.FLOAT, table_inits(t), opsets)
            check = self._bag_checker(lambda r, t=t: reference.dequantize_rows(t, r), "stored int8 rows (reference.py)")
            specs.append(("pooled.shark_int8", "pooled", "shark int8 RowwiseDequantEmbeddingBag (sum)", model,
                          {"indices": d.bag_ids, "offsets": d.offsets}, (n, D), check))

        for th in args.threads:
            for key, case, label, model, feeds, out_shape, check in specs:
                self.contenders.append(self._ort_contender(key, case, label, model, th, feeds, out_shape, check))

        torch_specs = []
        if keys & {"lookup.torch_byte", "pooled.torch_byte", "pooled.torch_fp32"}:
            import torch

            tw = torch.from_numpy(d.prepacked) if d.prepacked is not None else None
            byte_op = torch.ops.quantized.embedding_bag_byte_rowwise_offsets
            if "lookup.torch_byte" in keys:
                ti, to = torch.from_numpy(d.ids), torch.arange(n, dtype=torch.int64)
                want = self._dequant_prepacked(d.ids)  # exact dequantized values, one rounding (= fma)
                sb = d.prepacked[d.ids, D: D + 8].copy().view(np.float32).astype(np.float64)
                bound = 2 * EPS32 * (np.abs(want.astype(np.float64)) + np.abs(sb[:, 1:2]))  # fma or mul+add
                torch_specs.append(("lookup.torch_byte", "lookup", "torch byte-rowwise (bag size 1)",
                                    lambda tw=tw, ti=ti, to=to: byte_op(tw, ti, to, False, 0, False, None, None, False),
                                    lambda out, want=want.astype(np.float64), bound=bound:
                                    check_within(out, want, bound, "fp32 dequantization of the prepacked row")))
            tbi, tbo = torch.from_numpy(d.bag_ids), torch.from_numpy(d.offsets)
            if "pooled.torch_fp32" in keys:
                tf = torch.from_numpy(d.weights)
                F = torch.nn.functional
                torch_specs.append(("pooled.torch_fp32", "pooled", "torch F.embedding_bag fp32 (sum)",
                                    lambda tf=tf: F.embedding_bag(tbi, tf, tbo, mode="sum"),
                                    self._bag_checker(lambda r: d.weights[r], "fp32 rows")))
            if "pooled.torch_byte" in keys:
                torch_specs.append(("pooled.torch_byte", "pooled", "torch byte-rowwise (sum)",
                                    lambda tw=tw: byte_op(tw, tbi, tbo, False, 0, False, None, None, False),
                                    self._bag_checker(self._dequant_prepacked, "prepacked rows")))
        for th in args.threads:
            for key, case, label, fn, check in torch_specs:
                self.contenders.append(self._torch_contender(key, case, label, th, fn, check))
        order = {k: i for i, k in enumerate(ALL_KEYS)}
        self.contenders.sort(key=lambda c: (order[c.key], c.threads))

    # ---- running ---------------------------------------------------------------------------------------
    def verify(self) -> list[Contender]:
        """Run every pair once and check its output; returns the failed pairs. Shared ORT output buffers
        are filled with NaN before each run, so a kernel that writes nothing cannot pass on the previous
        contender's result."""
        failed = []
        for c in self.contenders:
            for buf in self._out_buffers.values():
                buf.fill(np.nan)
            c.prepare()
            r = c.call()
            try:
                c.verdict = c.check(c.output(r))
            except Exception as e:  # a crash in a check is a failed check
                c.verdict = Check(False, f"check raised {type(e).__name__}: {e}")
            del r
            if not c.verdict.ok:
                failed.append(c)
        return failed

    def time(self) -> None:
        args = self.args
        cs = self.contenders
        for c in cs:
            c.samples.clear()
            c.cpu_samples.clear()
            c.prepare()
            for _ in range(args.warmup):
                c.call()
        rng = np.random.default_rng(args.seed + 2)
        clock, cpu_clock = time.perf_counter, time.thread_time
        settle_s = 0.0
        gc_was = gc.isenabled()
        gc.disable()
        try:
            for rnd in range(args.repeats):
                for i in rng.permutation(len(cs)):
                    c = cs[i]
                    if args.settle:
                        settle_s += _settle()
                    c.prepare()
                    last = c.call()  # untimed
                    for _ in range(args.inner):
                        last = None  # release torch's previous result before the clock starts
                        c0 = cpu_clock()
                        t0 = clock()
                        r = c.call()
                        t1 = clock()
                        c1 = cpu_clock()
                        last = r
                        c.samples.append(t1 - t0)
                        c.cpu_samples.append(c1 - c0)
                    del last
                if not args.quiet and (rnd + 1) % max(1, args.repeats // 5) == 0:
                    self.log(f"  round {rnd + 1}/{args.repeats}")
        finally:
            if gc_was:
                gc.enable()
        self.settle_s = settle_s

    def close(self) -> None:
        self.contenders.clear()
        self.tmp.cleanup()


ALL_KEYS = [
    "lookup.shark_int8", "lookup.shark_int4", "lookup.shark_fp16", "lookup.shark_mixed",
    "lookup.ort_gather_fp32", "lookup.ort_gbq_u8", "lookup.torch_byte",
    "pooled.shark_int8", "pooled.torch_fp32", "pooled.torch_byte",
]

# (name, numerator key, denominator key, target): ratios of medians (min in parentheses)
TARGETS = [
    ("our int8 lookup / torch byte-rowwise", "lookup.shark_int8", "lookup.torch_byte", 1.0),
    ("our int8 lookup / ORT fp32 Gather", "lookup.shark_int8", "lookup.ort_gather_fp32", 0.2),
    ("our pooled int8 / torch byte-rowwise pooled", "pooled.shark_int8", "pooled.torch_byte", 1.0),
    ("our mixed lookup / our int8 lookup", "lookup.shark_mixed", "lookup.shark_int8", 1.25),
]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}
    try:
        import onnxruntime as ort
        import torch

        info.update(onnxruntime=ort.__version__, torch=torch.__version__,
                    torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    except ImportError:
        pass
    try:  # which build of the custom-op library was timed (it changes while kernels are tuned)
        lib = Path(ops.library_path())
        st = lib.stat()
        info["library"] = str(lib)
        info["library_mtime"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
        info["library_sha256"] = hashlib.sha256(lib.read_bytes()).hexdigest()[:16]
    except Exception as e:  # noqa: BLE001 - informational only
        info["library"] = f"unavailable ({e})"
    return info


def table_bytes(data: Data) -> list[dict[str, Any]]:
    R, D = data.R, data.D
    rows = []
    for name, t in data.tables.items():
        b = t.byte_report()
        label = f"shark {name}" + (f" ({data.mixed_label})" if name == "mixed" else "")
        rows.append(dict(table=label, bytes=b.total, payload=b.payload, scales=b.scales, metadata=b.metadata))
    if data.gbq[0] is not None:
        q, s, zp = data.gbq
        rows.append(dict(table="ORT GatherBlockQuantized u8 (codes + fp32 scale + u8 zero point)",
                         bytes=int(q.nbytes + s.nbytes + zp.nbytes)))
    if data.prepacked is not None:
        rows.append(dict(table="torch byte-rowwise prepack (codes + fp32 scale + fp32 bias)",
                         bytes=int(data.prepacked.nbytes)))
    rows.append(dict(table="fp32 (ORT Gather, torch F.embedding_bag)", bytes=R * D * 4))
    for r in rows:
        r["bytes_per_row"] = r["bytes"] / R
        r["ratio_fp32"] = r["bytes"] / (R * D * 4)
    return rows


def summarize(bench: Bench) -> dict[str, Any]:
    res: dict[str, dict[str, Any]] = {}
    for c in bench.contenders:
        s = sorted(c.samples)
        entry = res.setdefault(c.key, {"case": c.case, "label": c.label, "threads": {}})
        entry["threads"][str(c.threads)] = {
            "median_ms": statistics.median(s) * 1e3 if s else None,
            "min_ms": s[0] * 1e3 if s else None,
            # 1 thread: the op runs on the calling thread, so its CPU time is the op's cost without the
            # time it spent preempted by other processes (a load-robust companion of the wall median)
            "cpu_median_ms": statistics.median(c.cpu_samples) * 1e3 if c.cpu_samples and c.threads == 1 else None,
            "samples": len(s),
            "check": c.verdict.detail if c.verdict else None,
        }
    ratios = []
    for name, num, den, target in TARGETS:
        if num not in res or den not in res:
            continue
        for th in bench.args.threads:
            a, b = res[num]["threads"][str(th)], res[den]["threads"][str(th)]
            if a["median_ms"] is None or b["median_ms"] is None:
                continue
            med = a["median_ms"] / b["median_ms"]
            mn = a["min_ms"] / b["min_ms"]
            cpu = a["cpu_median_ms"] / b["cpu_median_ms"] if a["cpu_median_ms"] and b["cpu_median_ms"] else None
            ratios.append(dict(name=name, threads=th, median_ratio=med, min_ratio=mn, cpu_median_ratio=cpu,
                               target=target, met=med <= target))
    return {"results": res, "ratios": ratios}


def format_report(bench: Bench, summary: dict[str, Any], info: dict[str, Any]) -> str:
    args, data = bench.args, bench.data
    th = args.threads
    lines = []
    n = data.ids.shape[0]
    lines.append(f"R={data.R:,} x D={data.D}; {args.batch}x{args.fields} = {n:,} Zipf({args.zipf}) lookups; pooled: "
                 f"{n:,} bags x {args.bag} (sum); {args.repeats} rounds x {args.inner} timed calls per contender; "
                 f"ORT output {args.ort_output}; huge pages {'off' if args.no_hugepages else 'numpy default (madvise)'}")
    lines.append(f"machine: {info.get('cpu')}, {info.get('cores')} cores; onnxruntime {info.get('onnxruntime')}, "
                 f"torch {info.get('torch')} ({info.get('torch_cpu_capability')}), numpy {info.get('numpy')}")
    lines.append(f"library: {info.get('library')} (built {info.get('library_mtime')}, sha256 {info.get('library_sha256')})")
    lines.append("")
    head = f"{'case':<7} {'contender':<52}"
    for t in th:
        head += f" | {t} thr: {'median':>7} {'min':>7}" + (f" {'cpu':>7}" if t == 1 else "")
    lines.append(head + "   (ms)")
    lines.append("-" * len(head))
    for key in ALL_KEYS:
        if key not in summary["results"]:
            continue
        e = summary["results"][key]
        row = f"{e['case']:<7} {e['label'][:52]:<52}"
        for t in th:
            r = e["threads"].get(str(t))
            width = len(f" | {t} thr: ") + 15 + (8 if t == 1 else 0)
            if r is None:
                row += " |" + " " * (width - 2)
                continue
            cell = f"{r['median_ms']:7.3f} {r['min_ms']:7.3f}" + (f" {r['cpu_median_ms']:7.3f}" if t == 1 else "")
            row += " |" + cell.rjust(width - 2)
        lines.append(row)
    lines.append(f"(median and min of {args.repeats * args.inner} wall-clock samples; 'cpu': median CPU time of the "
                 f"calling thread, which runs the whole op at 1 thread -- unaffected by preemption)")
    if summary["ratios"]:
        lines.append("")
        lines.append("target ratios (of medians; of mins in parentheses)")
        for r in summary["ratios"]:
            cpu = f"  cpu {r['cpu_median_ratio']:6.3f}" if r["cpu_median_ratio"] is not None else " " * 12
            lines.append(f"  {r['name']:<45} {r['threads']} thr: {r['median_ratio']:6.3f} ({r['min_ratio']:6.3f}){cpu}"
                         f"   target <= {r['target']:.2f}  {'MET' if r['met'] else 'NOT MET'}")
    lines.append("")
    lines.append(f"{'table bytes':<66} {'MB':>9} {'B/row':>8} {'vs fp32':>8}")
    for b in table_bytes(data):
        extra = ""
        if "payload" in b:
            extra = f"   (payload {b['payload']:,} + scales {b['scales']:,} + metadata {b['metadata']:,})"
        lines.append(f"{b['table'][:66]:<66} {b['bytes'] / 1e6:9.1f} {b['bytes_per_row']:8.2f} {b['ratio_fp32']:8.4f}{extra}")
    lines.append("")
    lines.append("checks (every contender and thread count, before timing):")
    for c in bench.contenders:
        v = c.verdict
        lines.append(f"  {'PASSED' if v and v.ok else 'FAILED'} {c.key} threads={c.threads}: {v.detail if v else 'not run'}")
    return "\n".join(lines)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, check, time and report; returns the JSON-able result. Raises SystemExit(1) on a failed check."""
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    info = machine_info()
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    bench = Bench(args, log)
    try:
        log(f"set up in {time.perf_counter() - t0:.1f} s; checking {len(bench.contenders)} contender/thread pairs")
        failed = bench.verify()
        if failed:
            print(format_report(bench, {"results": {}, "ratios": []}, info))
            raise SystemExit(f"{len(failed)} contender(s) FAILED their output check; no timing done")
        log(f"timing: {args.repeats} rounds")
        bench.time()
        summary = summarize(bench)
        load_end = os.getloadavg()
        text = format_report(bench, summary, info)
        rss = peak_rss_mb()
        text += f"\n\nload average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}; peak RSS {rss:,.0f} MB"
        print(text)
        out = {
            "command": " ".join(["python", "benchmarks/bench_lookup.py", *args.argv]),
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "argv")},
            "machine": info,
            "load_average": {"start": list(load_start), "end": list(load_end)},
            "peak_rss_mb": rss,
            "table_bytes": table_bytes(bench.data),
            **summary,
            "samples_ms": {f"{c.key}@{c.threads}": [round(s * 1e3, 4) for s in c.samples] for c in bench.contenders},
        }
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
            log(f"wrote {args.json}")
        return out
    finally:
        bench.close()


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
