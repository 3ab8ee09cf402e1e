"""GPU verification and benchmark of the CUDA lookup kernels (issue 5), through ctypes, without ORT.

The CUDA launchers (custom_ops/cuda/lookup_cuda.h) are called through the test library
(libshark_export_testlib.so, built with -DSHARK_BUILD_TESTS=ON -DSHARK_WITH_CUDA=ON) on torch CUDA tensors,
on torch's current stream.

1. Verify (before any timing): every tier (fp32, fp16, int8, int4, int2, dropped, uniform and mixed, and
   uniform tables stored as mixed), odd and even dims, int32/int64 indices, float32/float16 outputs:
   - gathers bit for bit against shark_export.reference;
   - bags (sum, mean, per_sample_weights, padding_idx, empty bags, 1-D offsets with/without
     include_last_offset, 2-D) bit for bit against the host emulation of the same kernel code (which
     tests/test_cuda.py proves equal to the CPU kernel) and within the float32 summation bound of
     shark_export.reference.embedding_bag;
   - out-of-range indices and bad offsets: the error slot names the lowest bad position, bad rows read as
     zeros, the run does not fault (run shark_cuda_selftest under compute-sanitizer for the memory proof).
2. Benchmark, R = 10M rows x D = 64, 4096 x 26 Zipf(1.1) ids (rank -> row through a fixed permutation):
   ours (int8, int4, fp16, mixed) gather -> float32 and pooled (4096 bags of 26, sum) against torch
   F.embedding / F.embedding_bag on fp32 and fp16 tables and torch's dequantize-after-gather on the same
   int8 / int4 payloads. Useful GB/s = (table bytes read + output bytes written + index bytes) / time,
   next to the device's measured copy bandwidth (a D2D copy of a 2 GiB buffer, bytes read + written).

Every check prints a grep-friendly PASSED/FAILED line; exit status 1 if any failed.
``--backend emu`` runs the same script on the host emulation and torch CPU (no GPU; timings meaningless):
a dry run of the harness itself (tests/test_cuda.py does that at toy size).

    python benchmarks/gpu/verify_and_bench.py --testlib build_gpu/libshark_export_testlib.so --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from cuda_testlib import NO_ERROR, TestLib  # noqa: E402

try:  # the whole package (needs onnx, onnx-ir, onnxscript, ...)
    from shark_export import reference as ref
    from shark_export.format import FORMAT_VERSION, QuantizedTable, Tier, row_stride
    from shark_export.quantize import quantize_table, row_meta_of
except Exception as exc:  # noqa: BLE001  -- only format.py/reference.py are needed: load them without __init__
    print(f"note: import shark_export failed ({type(exc).__name__}: {exc}); loading format/reference directly")
    for name in [m for m in sys.modules if m == "shark_export" or m.startswith("shark_export.")]:
        del sys.modules[name]
    pkg = types.ModuleType("shark_export")
    pkg.__path__ = [str(REPO / "shark_export")]
    sys.modules["shark_export"] = pkg
    from shark_export import reference as ref  # noqa: E402
    from shark_export.format import FORMAT_VERSION, QuantizedTable, Tier, row_stride  # noqa: E402
    from shark_export.quantize import quantize_table, row_meta_of  # noqa: E402

U = 2.0**-24
FAILURES: list[str] = []


def verdict(ok: bool, what: str, detail: str = "") -> bool:
    print(f"{'PASSED' if ok else 'FAILED'} {what}{(': ' + detail) if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(what)
    return ok


# --------------------------------------------------------------------------------------------------
# Backend: the CUDA launchers on torch CUDA tensors, or the host emulation on torch CPU tensors
# --------------------------------------------------------------------------------------------------
class Tab:
    """A table's tensors on the backend's device."""

    def __init__(self, payload: torch.Tensor, meta: torch.Tensor, dflt: torch.Tensor, R: int, D: int, tier: int,
                 version: int = 2):
        self.payload, self.meta, self.dflt, self.R, self.D, self.tier = payload, meta, dflt, int(R), int(D), int(tier)
        self.version = int(version)  # storage format version: the row strides

    @classmethod
    def from_numpy(cls, payload, meta, dflt, R, D, tier, device, version=2) -> "Tab":
        return cls(torch.from_numpy(np.ascontiguousarray(payload)).to(device),
                   torch.from_numpy(np.ascontiguousarray(meta).view(np.int64).copy()).to(device),
                   torch.from_numpy(np.ascontiguousarray(dflt, dtype=np.float32)).to(device), R, D, tier, version)

    @classmethod
    def from_table(cls, t: QuantizedTable, device) -> "Tab":
        return cls.from_numpy(t.payload, t.row_meta, t.default_row, t.num_rows, t.dim, t.uniform_tier, device,
                              t.format_version)

    def args(self) -> list[Any]:
        return [self.payload.data_ptr() if self.payload.numel() else None,
                self.meta.data_ptr() if (self.tier < 0 and self.meta.numel()) else None,
                self.dflt.data_ptr() if self.dflt.numel() else None, self.R, self.D, self.tier, self.version]


class Backend:
    def __init__(self, lib: TestLib, kind: str):
        self.lib, self.kind = lib, kind
        self.cuda = kind == "cuda"
        self.device = torch.device("cuda" if self.cuda else "cpu")
        if self.cuda and not lib.has_cuda:
            raise SystemExit(f"{lib.path} was built without CUDA (-DSHARK_WITH_CUDA=ON)")
        self.err = torch.empty(2, dtype=torch.int64, device=self.device)

    def _rc(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self.lib.lib.shark_cuda_error_string(rc).decode() if self.cuda else "bad tier"
            raise RuntimeError(f"{what}: error {rc}: {msg}")

    def gather(self, tab: Tab, idx: torch.Tensor, out: torch.Tensor) -> None:
        a = tab.args() + [idx.data_ptr() if idx.numel() else None, int(idx.dtype == torch.int64), idx.numel(),
                          out.data_ptr() if out.numel() else None, int(out.dtype == torch.float16),
                          self.err.data_ptr()]
        if self.cuda:
            self._rc(self.lib.lib.shark_cuda_gather(*a, torch.cuda.current_stream().cuda_stream), "gather")
        else:
            self._rc(self.lib.lib.shark_emu_gather(*a), "gather")

    def bag(self, tab: Tab, idx: torch.Tensor, out: torch.Tensor, offsets=None, weights=None, mode=0,
            include_last_offset=0, padding_idx=-1) -> None:
        if idx.dim() == 2:
            n_bags, bag_len, n_off = idx.shape[0], idx.shape[1], 0
        else:
            n_off = offsets.numel()
            n_bags, bag_len = (n_off - 1 if include_last_offset else n_off), 0
        ptr = (lambda t: None if t is None or t.numel() == 0 else t.data_ptr())
        a = tab.args() + [ptr(idx), int(idx.dtype == torch.int64), idx.numel(), ptr(offsets),
                          int(offsets is not None and offsets.dtype == torch.int64), n_off, int(include_last_offset),
                          bag_len, n_bags, ptr(weights), int(mode), int(padding_idx), ptr(out),
                          int(out.dtype == torch.float16), self.err.data_ptr()]
        if self.cuda:
            self._rc(self.lib.lib.shark_cuda_bag(*a, torch.cuda.current_stream().cuda_stream), "bag")
        else:
            self._rc(self.lib.lib.shark_emu_bag(*a), "bag")

    def errors(self) -> tuple[int, int]:
        e = self.err.cpu().numpy()
        return int(e[0]) & NO_ERROR, int(e[1]) & NO_ERROR

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], Any], iters: int, repeats: int) -> dict[str, float]:
        """Median and min over `repeats` of the mean time of `iters` back-to-back calls (CUDA events)."""
        fn()
        self.sync()
        samples = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / iters)
            else:
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                samples.append((time.perf_counter() - t0) * 1e3 / iters)
        return {"median_ms": statistics.median(samples), "min_ms": min(samples)}


# --------------------------------------------------------------------------------------------------
# 1. Verification
# --------------------------------------------------------------------------------------------------
def _weights(R: int, D: int, rng) -> np.ndarray:
    w = rng.standard_normal((R, D)) * 10.0 ** rng.uniform(-3, 2, size=(R, 1))
    w[1 % R] = 0.5  # constant rows: scale 0
    return w.astype(np.float32)


def verify_tables(D: int, rng):
    R = 700
    w = _weights(R, D, rng)
    dflt = rng.standard_normal(D).astype(np.float32)
    codes = rng.integers(0, 6, size=R)
    codes[:6] = np.arange(6)
    for spec in [t.name.lower() for t in Tier] + ["mixed"]:
        t = quantize_table(w, codes if spec == "mixed" else spec, name=f"{spec}_d{D}", default_row=dflt)
        yield spec, t
        if spec == "int4":
            yield "int4_as_mixed", _as_mixed(t)


def _as_mixed(table: QuantizedTable) -> QuantizedTable:
    """The same rows with row_meta blocks (uniform_tier = -1)."""
    codes = table.tiers().astype(np.int64)
    R, D = table.num_rows, table.dim
    meta = _meta_from_codes(codes, D)
    return QuantizedTable(name=table.name + "_mixed", num_rows=R, dim=D, payload=table.payload, row_meta=meta,
                          default_row=table.default_row, uniform_tier=-1,
                          tier_counts={t: int((codes == t.value).sum()) for t in Tier}).validate()


def _meta_from_codes(codes: np.ndarray, D: int) -> np.ndarray:
    """The row_meta of a mixed table with tier `codes` in the format these tables are built in (FORMAT_VERSION)."""
    return row_meta_of(codes.astype(np.uint8), D, FORMAT_VERSION)[0]


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def _first_diff(got: np.ndarray, want: np.ndarray) -> str:
    if got.shape != want.shape:
        return f"shape {got.shape} vs {want.shape}"
    bad = _bits(got) != _bits(want)
    if not bad.any():
        return ""
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{int(bad.sum())} of {bad.size} differ, first at {pos}: got {got[pos]!r} want {want[pos]!r}"


def _bag_bound(table, idx, offsets, psw, mode, include_last_offset, padding_idx) -> np.ndarray:
    dense = np.abs(ref.dequantize(table).astype(np.float64))
    flat = idx.reshape(-1).astype(np.int64)
    if idx.ndim == 2:
        starts = np.arange(idx.shape[0]) * idx.shape[1]
        ends = starts + idx.shape[1]
    else:
        off = offsets.astype(np.int64)
        starts, ends = (off[:-1], off[1:]) if include_last_offset else (off, np.append(off[1:], flat.size))
    w = np.ones(flat.size) if psw is None else np.abs(psw.reshape(-1).astype(np.float64))
    keep = flat != padding_idx
    out = np.zeros((starts.size, table.dim))
    for b, (s, e) in enumerate(zip(starts, ends)):
        k = keep[s:e]
        n = int(k.sum())
        if n:
            tot = (w[s:e][k, None] * dense[flat[s:e][k]]).sum(0)
            out[b] = (n + 2) * U * (tot / n if mode == 1 else tot)
    return out


def _bag_cases(rng, R):
    sizes = rng.integers(0, 30, size=150)
    sizes[[0, 75, 149]] = 0
    idx = rng.integers(0, R, size=int(sizes.sum()))
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    yield "sum", dict(indices=idx, offsets=off)
    yield "mean+padding", dict(indices=idx, offsets=off, mode=1, padding_idx=3)
    yield "weights+padding", dict(indices=idx, offsets=off, per_sample_weights=rng.standard_normal(idx.size).astype(np.float32),
                                  padding_idx=5)
    ilo = np.append(off[off <= idx.size - 3], idx.size - 3)
    yield "include_last_offset", dict(indices=idx, offsets=ilo, include_last_offset=1)
    yield "2d-mean", dict(indices=rng.integers(0, R, size=(64, 11)), mode=1)
    yield "2d-weights", dict(indices=rng.integers(0, R, size=(64, 11)),
                             per_sample_weights=rng.standard_normal((64, 11)).astype(np.float32))
    yield "2d-empty", dict(indices=np.zeros((4, 0), np.int64))


def verify(be: Backend, dims: list[int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    dev = be.device
    for D in dims:
        for spec, table in verify_tables(D, rng):
            tab = Tab.from_table(table, dev)
            R = table.num_rows
            idx = rng.integers(0, R, size=1537)
            idx[:2] = [0, R - 1]
            fails = []
            for it in (np.int32, np.int64):
                for ot, tt in ((np.float32, torch.float32), (np.float16, torch.float16)):
                    out = torch.full((idx.size, D), 7.0, dtype=tt, device=dev)
                    be.gather(tab, torch.from_numpy(idx.astype(it)).to(dev), out)
                    got, err = out.cpu().numpy(), be.errors()
                    d = _first_diff(got, ref.gather(table, idx, ot))
                    if d or err != (NO_ERROR, NO_ERROR):
                        fails.append(f"{np.dtype(it)}->{np.dtype(ot)}: {d} err={err}")
            verdict(not fails, f"gather {spec} D={D} (int32/int64 -> f32/f16, bit-exact vs reference)", "; ".join(fails))

            bad = idx.copy()
            bad[[100, 900, 901]] = [R, -1, R + 12345]
            out = torch.full((idx.size, D), 7.0, dtype=torch.float32, device=dev)
            be.gather(tab, torch.from_numpy(bad).to(dev), out)
            got, err = out.cpu().numpy(), be.errors()
            ok_rows = np.setdiff1d(np.arange(idx.size), [100, 900, 901])
            verdict(err == (100, NO_ERROR) and not got[[100, 900, 901]].any()
                    and not _first_diff(got[ok_rows], ref.gather(table, bad[ok_rows])),
                    f"gather {spec} D={D} out-of-range indices (slot = lowest bad position, zero rows)", f"err={err}")

            fails = []
            for name, case in _bag_cases(rng, R):
                for ot, tt in ((np.float32, torch.float32), (np.float16, torch.float16)):
                    want_emu, want_err = be.lib.emu_bag(table, out_dtype=ot, **case)
                    ti = torch.from_numpy(np.ascontiguousarray(case["indices"])).to(dev)
                    off = case.get("offsets")
                    psw = case.get("per_sample_weights")
                    out = torch.full(want_emu.shape, 7.0, dtype=tt, device=dev)
                    be.bag(tab, ti, out, offsets=None if off is None else torch.from_numpy(off).to(dev),
                           weights=None if psw is None else torch.from_numpy(psw).to(dev), mode=case.get("mode", 0),
                           include_last_offset=case.get("include_last_offset", 0), padding_idx=case.get("padding_idx", -1))
                    got, err = out.cpu().numpy(), be.errors()
                    d = _first_diff(got, want_emu)
                    if d or err != want_err or err != (NO_ERROR, NO_ERROR):
                        fails.append(f"{name} {np.dtype(ot)} vs emulation: {d} err={err}")
                        continue
                    if ot == np.float32:
                        want = ref.embedding_bag(table, case["indices"], offsets=off, per_sample_weights=psw,
                                                 mode=case.get("mode", 0),
                                                 include_last_offset=bool(case.get("include_last_offset", 0)),
                                                 padding_idx=case.get("padding_idx", -1))
                        tol = _bag_bound(table, np.asarray(case["indices"]), off, psw, case.get("mode", 0),
                                         case.get("include_last_offset", 0), case.get("padding_idx", -1))
                        excess = np.abs(got.astype(np.float64) - want) - tol
                        if (excess > 0).any():
                            fails.append(f"{name}: exceeds the float32 summation bound vs reference by {excess.max():.3g}")
            verdict(not fails, f"bags {spec} D={D} (sum/mean/weights/padding/empty/ilo/2-D, f32/f16)", "; ".join(fails))

            bad_i = rng.integers(0, R, size=200)
            bad_i[[40, 150]] = [-5, R]
            offs = np.array([0, 50, 100, 90, 250, 160])  # offsets[3] < offsets[2]; offsets[4] > 200
            out = torch.zeros((offs.size, D), dtype=torch.float32, device=dev)
            be.bag(tab, torch.from_numpy(bad_i).to(dev), out, offsets=torch.from_numpy(offs).to(dev))
            err = be.errors()
            ok = err == (40, 3)
            out2 = torch.zeros((4, D), dtype=torch.float32, device=dev)
            tail = bad_i.copy()
            tail[40] = 0
            be.bag(tab, torch.from_numpy(tail).to(dev), out2, offsets=torch.from_numpy(np.array([0, 10, 20, 30, 140])).to(dev),
                   include_last_offset=1)
            ok = ok and be.errors() == (150, NO_ERROR)  # index 150 is after the last bag: still checked
            verdict(ok, f"bags {spec} D={D} bad offsets / indices (slot names offsets[3] and index 40; trailing 150)",
                    f"err={err}, tail err={be.errors()}")
    be.sync()


# --------------------------------------------------------------------------------------------------
# 2. Benchmark
# --------------------------------------------------------------------------------------------------
class ZipfIds:
    """Truncated Zipf(a) over ranks 0..R-1, rank k -> row perm[k] (as benchmarks/bench_lookup.py)."""

    def __init__(self, n_rows: int, a: float, rng):
        cdf = np.cumsum(np.arange(1, n_rows + 1, dtype=np.float64) ** -a)
        self.cdf = cdf / cdf[-1]
        self.perm = rng.permutation(n_rows).astype(np.int64)

    def sample(self, n: int, rng) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), self.cdf.shape[0] - 1)
        return self.perm[ranks]


def random_payload(codes: np.ndarray, D: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(payload, row byte offsets) of a table with tier `codes`: random bytes with finite values (the top
    exponent bit of every fp32/fp16 value and scale/bias cleared: |x| < 2)."""
    lut = np.array([row_stride(t, D, FORMAT_VERSION) for t in Tier], dtype=np.int64)
    sizes = lut[codes]
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    payload = rng.integers(0, 256, size=int(sizes.sum()), dtype=np.uint8)
    for tier, step, hi in ((0, 4, 3), (1, 2, 1)):
        if np.all(codes == tier):  # uniform: a strided view, no index arrays
            payload.reshape(codes.size, -1)[:, hi:D * step:step] &= 0xBF
            continue
        rows = offs[codes == tier]
        for c in range(0, rows.size, 1 << 16):  # chunks keep the index arrays small
            pos = (rows[c:c + (1 << 16), None] + np.arange(0, D * step, step)[None, :] + hi).reshape(-1)
            payload[pos] &= 0xBF
    q = offs[(codes >= 2) & (codes <= 4)]
    if q.size:
        payload[q + 1] &= 0x3F  # scale: positive, < 2
        payload[q + 3] &= 0xBF  # bias: finite, |b| < 2
    return payload, offs


def bench(be: Backend, args) -> dict[str, Any]:
    dev = be.device
    R, D = args.rows, args.dim
    n = args.batch * args.fields
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    zipf = ZipfIds(R, args.zipf, rng)
    ids_np = zipf.sample(n, rng)
    ids = torch.from_numpy(ids_np).to(dev)
    ids2d = ids.view(args.batch, args.fields)
    results: dict[str, Any] = {"rows": R, "dim": D, "lookups": n, "distinct_ids": int(np.unique(ids_np).size),
                               "bags": args.batch, "bag_size": args.fields}
    print(f"ids: {n} Zipf({args.zipf}) lookups, {results['distinct_ids']} distinct ({time.time() - t0:.1f} s)")

    # copy bandwidth of the device (bytes read + written)
    nbytes = min(2 << 30, args.copy_bytes)
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    cp = be.time_ms(lambda: dst.copy_(src), iters=5, repeats=args.repeats)
    copy_gbs = 2 * nbytes / (cp["median_ms"] * 1e-3) / 1e9
    results["copy"] = dict(cp, bytes=nbytes, gb_per_s=copy_gbs)
    print(f"device copy: {nbytes / 2**30:.1f} GiB in {cp['median_ms']:.3f} ms = {copy_gbs:.0f} GB/s (read + write)")
    del src, dst

    tables: dict[str, tuple[Tab, np.ndarray, np.ndarray]] = {}
    dflt = rng.standard_normal(D).astype(np.float32)
    for name, tier in (("int8", 2), ("int4", 3), ("fp16", 1)):
        t1 = time.time()
        codes = np.full(R, tier, dtype=np.int64)
        payload, _ = random_payload(codes, D, rng)
        tables[name] = (Tab.from_numpy(payload, np.zeros((0, 4), np.uint64), dflt, R, D, tier, dev), payload, codes)
        print(f"table {name}: {payload.nbytes / 1e9:.2f} GB ({time.time() - t1:.1f} s)")
    if not args.no_mixed:
        t1 = time.time()
        codes = np.full(R, 3, dtype=np.int64)  # 2% fp16 / 20% int8 / 78% int4 by Zipf rank (hot rows wider)
        n16, n8 = int(0.02 * R), int(0.2 * R)
        codes[zipf.perm[:n16]] = 1
        codes[zipf.perm[n16:n16 + n8]] = 2
        payload, _ = random_payload(codes, D, rng)
        meta = _meta_from_codes(codes, D)
        tables["mixed"] = (Tab.from_numpy(payload, meta, dflt, R, D, -1, dev), payload, codes)
        print(f"table mixed: {payload.nbytes / 1e9:.2f} GB + row_meta {meta.nbytes / 1e6:.0f} MB ({time.time() - t1:.1f} s)")

    # Our outputs against the reference decoder on a sample of lookups, before timing.
    sample = rng.choice(n, size=min(n, 4096), replace=False)
    for name, (tab, payload, codes) in tables.items():
        uniform = int(codes[0]) if name != "mixed" else -1
        qt = QuantizedTable(name=name, num_rows=R, dim=D, payload=payload,
                            row_meta=np.zeros((0, 4), np.uint64) if uniform >= 0 else _meta_from_codes(codes, D),
                            default_row=dflt, uniform_tier=uniform,
                            tier_counts={t: int((codes == t.value).sum()) for t in Tier})
        out = torch.empty((n, D), dtype=torch.float32, device=dev)
        be.gather(tab, ids, out)
        got = out.cpu().numpy()[sample]
        err = be.errors()
        d = _first_diff(got, ref.gather(qt, ids_np[sample]))
        verdict(not d and err == (NO_ERROR, NO_ERROR), f"bench table {name}: sampled gather rows bit-exact vs reference", d)

    # torch baselines
    w32 = torch.randn(R, D, device=dev) * 0.1
    w16 = w32.half()
    p8 = tables["int8"][0].payload.view(R, row_stride(Tier.INT8, D, FORMAT_VERSION))
    p4 = tables["int4"][0].payload.view(R, row_stride(Tier.INT4, D, FORMAT_VERSION))

    def deq8(rows):
        sb = rows[:, :4].contiguous().view(torch.float16).float()
        return rows[:, 4:4 + D].float() * sb[:, :1] + sb[:, 1:2]

    def deq4(rows):
        sb = rows[:, :4].contiguous().view(torch.float16).float()
        c = rows[:, 4:4 + (D + 1) // 2]
        q = torch.stack([c & 15, c >> 4], dim=2).view(rows.shape[0], -1)[:, :D]
        return q.float() * sb[:, :1] + sb[:, 1:2]

    out32 = torch.empty((n, D), dtype=torch.float32, device=dev)
    pooled = torch.empty((args.batch, D), dtype=torch.float32, device=dev)
    torch_deq8 = deq8(p8[ids])
    be.gather(tables["int8"][0], ids, out32)
    verdict(torch.equal(out32.view(torch.int32), torch_deq8.view(torch.int32)),
            "bench int8: ours == torch dequantize-after-gather (bit-exact)")
    be.gather(tables["int4"][0], ids, out32)
    verdict(torch.equal(out32.view(torch.int32), deq4(p4[ids]).view(torch.int32)),
            "bench int4: ours == torch dequantize-after-gather (bit-exact)")
    be.bag(tables["int8"][0], ids2d, pooled)
    verdict(torch.allclose(pooled, torch_deq8.view(args.batch, args.fields, D).sum(1), rtol=1e-5, atol=1e-4),
            "bench int8 pooled: ours ~ torch dequantize-gather-sum")
    del torch_deq8

    out_bytes = n * D * 4
    idx_bytes = n * 8
    cases: list[tuple[str, str, Callable[[], Any], int]] = []
    for name, (tab, payload, codes) in tables.items():
        read = int(np.array([row_stride(t, D, FORMAT_VERSION) for t in Tier])[codes[ids_np]].sum())
        if name == "mixed":
            read += n * 32  # the row_meta block record of each lookup
        cases.append(("lookup", f"ours_{name}", (lambda tab=tab: be.gather(tab, ids, out32)), read + out_bytes + idx_bytes))
        cases.append(("pooled", f"ours_{name}",
                      (lambda tab=tab: be.bag(tab, ids2d, pooled)), read + args.batch * D * 4 + idx_bytes))
    out16 = torch.empty((n, D), dtype=torch.float16, device=dev)
    cases.append(("lookup", "ours_int8_to_f16", lambda: be.gather(tables["int8"][0], ids, out16),
                  n * row_stride(Tier.INT8, D, FORMAT_VERSION) + n * D * 2 + idx_bytes))
    F = torch.nn.functional
    cases += [
        ("lookup", "torch_embedding_fp32", lambda: F.embedding(ids, w32), n * D * 4 + out_bytes + idx_bytes),
        ("lookup", "torch_embedding_fp16", lambda: F.embedding(ids, w16), n * D * 2 + n * D * 2 + idx_bytes),
        ("lookup", "torch_deq_after_gather_int8", lambda: deq8(p8[ids]), n * row_stride(Tier.INT8, D, FORMAT_VERSION) + out_bytes + idx_bytes),
        ("lookup", "torch_deq_after_gather_int4", lambda: deq4(p4[ids]), n * row_stride(Tier.INT4, D, FORMAT_VERSION) + out_bytes + idx_bytes),
        ("pooled", "torch_embedding_bag_fp32", lambda: F.embedding_bag(ids2d, w32, mode="sum"),
         n * D * 4 + args.batch * D * 4 + idx_bytes),
        ("pooled", "torch_embedding_bag_fp16", lambda: F.embedding_bag(ids2d, w16, mode="sum"),
         n * D * 2 + args.batch * D * 2 + idx_bytes),
        ("pooled", "torch_deq_gather_sum_int8", lambda: deq8(p8[ids]).view(args.batch, args.fields, D).sum(1),
         n * (4 + D) + args.batch * D * 4 + idx_bytes),
    ]

    # The ORT path adds a 16-byte slot readback and a stream synchronize per call: measured separately.
    if be.cuda:
        host = torch.empty(2, dtype=torch.int64, pin_memory=True)

        def checked():
            be.gather(tables["int8"][0], ids, out32)
            host.copy_(be.err, non_blocking=True)
            torch.cuda.current_stream().synchronize()

        cases.append(("lookup", "ours_int8_with_error_readback_sync", checked,
                      n * row_stride(Tier.INT8, D, FORMAT_VERSION) + out_bytes + idx_bytes))

    results["cases"] = []
    print(f"\n{'case':7} {'contender':38} {'median ms':>10} {'min ms':>9} {'GB/s':>8} {'% of copy':>9}")
    for case, name, fn, useful in cases:
        tm = be.time_ms(fn, iters=args.iters, repeats=args.repeats)
        gbs = useful / (tm["median_ms"] * 1e-3) / 1e9
        row = dict(case=case, contender=name, useful_bytes=useful, gb_per_s=gbs, pct_of_copy=100 * gbs / copy_gbs, **tm)
        results["cases"].append(row)
        print(f"{case:7} {name:38} {tm['median_ms']:10.4f} {tm['min_ms']:9.4f} {gbs:8.0f} {row['pct_of_copy']:8.0f}%",
              flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--testlib", default=os.environ.get("SHARK_TESTLIB", str(REPO / "build_gpu" / "libshark_export_testlib.so")))
    ap.add_argument("--backend", choices=["cuda", "emu"], default="cuda")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--fields", type=int, default=26, help="ids per sample (lookup: batch*fields ids; pooled: bags of this size)")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--copy-bytes", type=int, default=2 << 30)
    ap.add_argument("--verify-dims", default="1,3,7,13,64,100,257")
    ap.add_argument("--verify-only", action="store_true")
    ap.add_argument("--bench-only", action="store_true")
    ap.add_argument("--no-mixed", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    lib = TestLib(args.testlib)
    be = Backend(lib, args.backend)
    info: dict[str, Any] = {"backend": args.backend, "python": platform.python_version(), "torch": torch.__version__,
                            "testlib": args.testlib}
    if be.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"sm_{p.major}{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1),
                    cuda_runtime=lib.lib.shark_cuda_runtime_version(), cuda_driver=lib.lib.shark_cuda_driver_version())
    print(json.dumps(info))
    out: dict[str, Any] = {"info": info}
    if not args.bench_only:
        t0 = time.time()
        verify(be, [int(d) for d in args.verify_dims.split(",") if d])
        out["verify_s"] = round(time.time() - t0, 1)
    if not args.verify_only:
        out["bench"] = bench(be, args)
    out["failures"] = FAILURES
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\n{'FAILED' if FAILURES else 'PASSED'}: {len(FAILURES)} failed check(s)" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
