"""The x86 op tests' cases for a cross-built op library: generated here, run elsewhere, compared here.

  python tools/aarch64/cases.py generate CASE_DIR            models, inputs and expectations
  python tools/aarch64/cases.py compare CASE_DIR RESULT_DIR  one line per case; exit 1 on any failure

``generate`` builds the cases of tests/test_ops.py and the bad-index/offsets cases of tests/test_ops_errors.py
with the tests' own helpers (tables from their ``make_table`` / ``as_mixed`` / ``random_bags`` on
shark_export's quantizer, one-node models from tests/op_models.py) and writes CASE_DIR/manifest.txt for
tools/aarch64/ort_runner.cc (the models as .onnx, each input as raw little-endian bytes). For every case it
records what the x86 tests require, computed here:
  - gathers: ``shark_export.reference.gather``, bit for bit (float32 and float16 output);
  - bags: ``shark_export.reference.embedding_bag`` within test_ops.bag_tolerance (plus one fp16 ulp for
    fp16 output), the same bound as the x86 tests;
  - bad inputs: the run fails and its message contains the fragments the x86 tests look for (op, node,
    index value, position, row count);
and, in addition, the output (or error message) of the x86 library on the same model and inputs, with
``cpu_isa=generic`` (the portable loops, the ones an aarch64 build has). The aarch64 result must equal it
bit for bit (bags included: both sum in float32 in index order with -ffp-contract=off), and the error
messages must be identical.

``compare`` reads RESULT_DIR/results.txt (ort_runner's) and prints PASS/FAIL per case and a summary per
group.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

ELEM = {1: np.float32, 2: np.uint8, 6: np.int32, 7: np.int64, 10: np.float16, 13: np.uint64}
ELEM_OF = {np.dtype(v): k for k, v in ELEM.items()}


@dataclass
class Case:
    name: str
    group: str
    kind: str  # "exact" | "bag" | "error"
    want: Any = None  # exact / bag: the reference output
    tol: Any = None  # bag: per-element bound
    fragments: tuple = ()  # error: what the message must contain
    x86: Any = None  # the x86 library's output (ndarray) or error message (str); None: not run
    x86_is_want: bool = False  # the x86 output equals `want` bit for bit (then not stored twice)
    note: str = ""


@dataclass
class Writer:
    root: Path
    x86: bool = True
    cases: list = field(default_factory=list)
    models: dict = field(default_factory=dict)
    x86_sessions: dict = field(default_factory=dict)
    names: set = field(default_factory=set)
    lines: list = field(default_factory=list)
    n_inputs: int = 0

    def _model_file(self, model) -> str:
        data = model.SerializeToString()
        key = hashlib.sha1(data).hexdigest()[:16]
        rel = f"models/{key}.onnx"
        if rel not in self.models:
            (self.root / rel).write_bytes(data)
            self.models[rel] = data
        return rel

    def _x86_run(self, model_file: str, threads: int, feeds: dict) -> Any:
        import shark_export

        ort_errors = _ort_errors()
        key = (model_file, threads)
        try:
            sess = self.x86_sessions.get(key)
            if sess is None:
                sess = shark_export.session(self.models[model_file], threads=threads,
                                            config={"cpu_isa": "generic"})
                self.x86_sessions[key] = sess
            (out,) = sess.run(None, feeds)
            return out
        except ort_errors as e:
            return _ort_message(str(e))

    def add(self, case: Case, model, feeds: dict, threads: int = 1) -> None:
        if case.name in self.names or " " in case.name:
            raise ValueError(f"case name {case.name!r} is taken or has a space")
        self.names.add(case.name)
        model_file = self._model_file(model)
        self.lines.append(f"run {case.name} {model_file} {threads} {len(feeds)}")
        for name, arr in feeds.items():
            arr = np.asarray(arr, order="C")  # (np.ascontiguousarray would make a 0-d input 1-d)
            if arr.dtype not in ELEM_OF:
                raise TypeError(f"{case.name}: input {name} has unsupported dtype {arr.dtype}")
            fname = f"inputs/{self.n_inputs}.bin"
            self.n_inputs += 1
            (self.root / fname).write_bytes(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            dims = " ".join(str(d) for d in arr.shape)
            self.lines.append(f"in {name} {ELEM_OF[arr.dtype]} {arr.ndim} {dims} {fname}".replace("  ", " "))
        if self.x86:
            case.x86 = self._x86_run(model_file, threads, feeds)
            if isinstance(case.x86, np.ndarray) and case.kind == "exact" and not bits_differ(case.x86, case.want):
                case.x86, case.x86_is_want = None, True
        self.cases.append(case)

    def finish(self) -> None:
        (self.root / "manifest.txt").write_text("# generated by tools/aarch64/cases.py\n" + "\n".join(self.lines) + "\n")
        with open(self.root / "expected.pkl", "wb") as f:
            pickle.dump([asdict(c) for c in self.cases], f)


def _ort_message(s: str) -> str:
    """An ORT error as the C++ API's Ort::Exception::what() gives it: on one line (as ort_runner writes it),
    without the Python binding's '[ONNXRuntimeError] : 1 : FAIL : ' prefix."""
    s = s.replace("\r", " ").replace("\n", " ")
    m = re.match(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", s)
    return s[m.end():] if m else s


def _ort_errors():
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    return (st.Fail, st.InvalidArgument, st.RuntimeException, st.InvalidGraph)


# --------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------
def generate(root: Path, x86: bool) -> Writer:
    import test_ops as T  # noqa: N812  (the x86 op tests: their tables, bags and tolerance)
    import test_ops_errors as E  # noqa: N812
    from op_models import bag_model, gather_model, table_feeds

    from shark_export import reference as ref
    from shark_export.quantize import quantize_table

    import onnxruntime

    onnxruntime.set_default_logger_severity(4)  # the bad-input cases' errors are expected: no log lines
    for sub in ("models", "inputs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    w = Writer(root, x86=x86)

    def gather(group, name, table, idx, out_dtype=np.float32, threads=1, want=None):
        idx = np.asarray(idx)
        model = gather_model(table, index_dtype=idx.dtype, index_rank=idx.ndim, out_dtype=out_dtype)
        if want is None:
            want = ref.gather(table, idx, output_dtype=out_dtype)
        w.add(Case(f"{group}/{name}", group, "exact", want=want), model, {"indices": idx}, threads)

    def bag(group, name, table, idx, offsets=None, psw=None, mode=0, include_last_offset=0, padding_idx=-1,
            out_dtype=np.float32, threads=1):
        idx = np.asarray(idx)
        model = bag_model(table, index_dtype=idx.dtype, index_rank=idx.ndim, offsets=offsets is not None,
                          weights=psw is not None, mode=mode, include_last_offset=include_last_offset,
                          padding_idx=padding_idx, out_dtype=out_dtype)
        feeds = {"indices": idx}
        if offsets is not None:
            feeds["offsets"] = np.asarray(offsets, dtype=idx.dtype)
        if psw is not None:
            feeds["per_sample_weights"] = np.asarray(psw, dtype=np.float32)
        kw = dict(offsets=offsets, psw=psw, mode=mode, include_last_offset=include_last_offset, padding_idx=padding_idx)
        want = ref.embedding_bag(table, idx, offsets=offsets, per_sample_weights=psw, mode=mode,
                                 include_last_offset=bool(include_last_offset), padding_idx=padding_idx)
        tol = T.bag_tolerance(table, idx, **kw)
        if np.dtype(out_dtype) == np.float16:
            tol = tol + 2.0**-10 * np.abs(want) + 2.0**-24
        w.add(Case(f"{group}/{name}", group, "bag", want=want, tol=tol), model, feeds, threads)

    def error(group, name, model, feeds, fragments, threads=1):
        w.add(Case(f"{group}/{name}", group, "error", fragments=tuple(fragments)), model, feeds, threads)

    # ---- gathers (test_ops.py) -------------------------------------------------------------------
    for tier in T.TIERS:
        for D in T.DIMS:
            table, _ = T.make_table(150, D, tier.name.lower(), seed=D)
            rng = np.random.default_rng(D)
            idx = rng.integers(0, 150, size=300)
            idx[:3] = [0, 149, 0]
            gather("gather_uniform", f"{tier.name.lower()}_D{D}_i64_f32", table, idx)
            gather("gather_uniform", f"{tier.name.lower()}_D{D}_i32x2_f16", table,
                   idx.astype(np.int32).reshape(20, 15), np.float16)
    for R in T.ROWS:
        for mix in ("all6", "skewed", "two"):
            for D in (7, 64):
                table, _ = T.make_table(R, D, mix, seed=R)
                rng = np.random.default_rng(R + D)
                idx = np.concatenate([np.arange(R), rng.integers(0, R, size=R)])
                rng.shuffle(idx)
                gather("gather_mixed", f"{mix}_R{R}_D{D}_f32", table, idx)
                gather("gather_mixed", f"{mix}_R{R}_D{D}_f16", table, idx.astype(np.int32), np.float16)
    for tier in T.TIERS:
        for R in (1, 64, 65):
            mixed = T.as_mixed(T.make_table(R, 13, tier.name.lower(), seed=R)[0])
            idx = np.arange(R)[::-1].copy()
            gather("gather_one_tier_as_mixed", f"{tier.name.lower()}_R{R}_f32", mixed, idx)
            gather("gather_one_tier_as_mixed", f"{tier.name.lower()}_R{R}_f16", mixed, idx, np.float16)
    table, _ = T.make_table(200, 13, "all6")
    for shape in [(), (1,), (17,), (4, 5), (2, 3, 4), (0,), (2, 0), (0, 3), (3, 0, 2)]:
        for dt in (np.int32, np.int64):
            for out in (np.float32, np.float16):
                idx = np.random.default_rng(len(shape)).integers(0, 200, size=shape).astype(dt)
                label = "x".join(map(str, shape)) or "scalar"
                gather("gather_shapes", f"{label}_{np.dtype(dt).name}_{np.dtype(out).name}", table, idx, out)
    for tiers, D, out in [("all6", 64, np.float32), ("fp16", 64, np.float32), ("fp32", 128, np.float16),
                          ("int4", 128, np.float16)]:
        table, _ = T.make_table(1000, D, tiers, seed=D)
        n = (8 << 20) // (D * np.dtype(out).itemsize) + 77
        idx = np.random.default_rng(D).integers(0, 1000, size=n).astype(np.int32)
        gather("gather_large", f"{tiers}_D{D}_{np.dtype(out).name}_t2", table, idx, out, threads=2)
        gather("gather_large", f"{tiers}_D{D}_{np.dtype(out).name}_t1", table, idx[: n - 5].reshape(-1, 1), out)
    table, _ = T.make_table(1000, 100, "all6", seed=5)
    gather("gather_fp16_rounding", "all6_R1000_D100", table, np.arange(1000), np.float16,
           want=ref.gather(table, np.arange(1000)).astype(np.float16))

    # ---- bags (test_ops.py) ----------------------------------------------------------------------
    table, _ = T.make_table(200, 13, "all6", seed=1)
    for dt in (np.int32, np.int64):
        for ilo in (0, 1):
            for mode, weighted, label in ((0, False, "sum"), (0, True, "wsum"), (1, False, "mean")):
                rng = np.random.default_rng(mode * 4 + weighted * 2 + ilo)
                idx, offsets = T.random_bags(rng, 60, 200, dtype=dt)
                if ilo:
                    offsets = np.append(offsets, len(idx)).astype(dt)
                psw = rng.standard_normal(len(idx)).astype(np.float32) if weighted else None
                for out in (np.float32, np.float16):
                    bag("bag_offsets", f"{label}_ilo{ilo}_{np.dtype(dt).name}_{np.dtype(out).name}", table, idx,
                        offsets, psw, mode=mode, include_last_offset=ilo, out_dtype=out)
    idx = np.random.default_rng(3).integers(0, 200, size=30)
    bag("bag_offsets", "ilo_trailing_indices", table, idx, np.array([0, 5, 5, 20]), include_last_offset=1)
    bag("bag_offsets", "ilo_no_bags", table, idx, np.array([0]), include_last_offset=1)
    table, _ = T.make_table(200, 13, "skewed", seed=2)
    for shape in [(40, 7), (5, 1), (3, 0), (0, 4)]:
        for mode, weighted, label in ((0, False, "sum"), (0, True, "wsum"), (1, False, "mean")):
            rng = np.random.default_rng(shape[0])
            idx = rng.integers(0, 200, size=shape).astype(np.int32)
            psw = rng.standard_normal(shape).astype(np.float32) if weighted else None
            s = "x".join(map(str, shape))
            bag("bag_2d", f"{s}_{label}_i32_f32", table, idx, psw=psw, mode=mode)
            bag("bag_2d", f"{s}_{label}_i64_f16", table, idx.astype(np.int64), psw=psw, mode=mode,
                out_dtype=np.float16)
    table, _ = T.make_table(200, 13, "all6", seed=3)
    for padding_idx in (0, 7, 199):
        for mode, weighted, label in ((0, False, "sum"), (0, True, "wsum"), (1, False, "mean")):
            rng = np.random.default_rng(padding_idx)
            idx, offsets = T.random_bags(rng, 50, 200)
            idx[rng.random(len(idx)) < 0.3] = padding_idx
            idx = np.concatenate([[padding_idx, padding_idx], [padding_idx, 5, padding_idx], idx]).astype(np.int64)
            offsets = np.concatenate([[0, 0, 2], offsets + 5]).astype(np.int64)
            psw = rng.standard_normal(len(idx)).astype(np.float32) if weighted else None
            bag("bag_padding_idx", f"pad{padding_idx}_{label}", table, idx, offsets, psw, mode=mode,
                padding_idx=padding_idx)
            bag("bag_padding_idx", f"pad{padding_idx}_{label}_2d_f16", table, idx[: 24 * 5].reshape(24, 5), mode=mode,
                padding_idx=padding_idx, out_dtype=np.float16)
    table, _ = T.make_table(65, 8, "all6", seed=4)
    i64 = np.int64
    bag("bag_empty", "B0", table, np.zeros(0, i64), np.zeros(0, i64))
    bag("bag_empty", "B0_ilo", table, np.zeros(0, i64), np.zeros(1, i64), include_last_offset=1)
    bag("bag_empty", "3_empty", table, np.zeros(0, i64), np.zeros(3, i64))
    bag("bag_empty", "4_empty_ilo_mean", table, np.zeros(0, i64), np.zeros(4, i64), include_last_offset=1, mode=1)
    bag("bag_empty", "all_in_last_mean", table, np.arange(5, dtype=i64), np.array([0, 0, 0], i64), mode=1)
    bag("bag_empty", "2d_0x3_f16", table, np.zeros((0, 3), i64), out_dtype=np.float16)
    bag("bag_empty", "2d_65536x0", table, np.zeros((1 << 16, 0), i64))
    bag("bag_empty", "2d_1000x0_i32_f16", table, np.zeros((1000, 0), np.int32), out_dtype=np.float16)
    for tier in T.TIERS:
        for D in T.DIMS:
            table, _ = T.make_table(150, D, tier.name.lower(), seed=D)
            rng = np.random.default_rng(D + 100)
            idx, offsets = T.random_bags(rng, 25, 150, dtype=np.int32)
            psw = rng.standard_normal(len(idx)).astype(np.float32)
            bag("bag_uniform", f"{tier.name.lower()}_D{D}_wsum", table, idx, offsets, psw)
            bag("bag_uniform", f"{tier.name.lower()}_D{D}_mean_f16", table, idx, offsets, mode=1, out_dtype=np.float16)
    for version in (1, 2):
        for D in (1, 2, 3, 5, 6, 13):
            wt = T._weights(130, D, seed=D)
            rng = np.random.default_rng(D)
            idx = rng.integers(0, 130, size=257)
            bag_idx, offsets = T.random_bags(rng, 40, 130)
            for spec in (np.arange(130) % 5, "fp32", "fp16", "int8", "int4", "int2"):
                label = spec if isinstance(spec, str) else "mixed5"
                table = quantize_table(wt, spec, name=f"v{version}d{D}", format_version=version)
                g = "format_versions"
                gather(g, f"v{version}_D{D}_{label}_gather", table, idx)
                gather(g, f"v{version}_D{D}_{label}_gather_f16", table, idx.astype(np.int32).reshape(-1, 1), np.float16)
                bag(g, f"v{version}_D{D}_{label}_bag", table, bag_idx, offsets)
                bag(g, f"v{version}_D{D}_{label}_bag_mean_f16", table, bag_idx, offsets, mode=1, out_dtype=np.float16)
            mixed = T.as_mixed(quantize_table(wt, "int8", format_version=version))
            gather("format_versions", f"v{version}_D{D}_int8_as_mixed_gather", mixed, idx)
    # Format v3: quantized rows are codes, scale and bias from the row's group (1, 64 or 256 rows) and tier.
    for D in (1, 3, 5, 16, 64):
        for G in (1, 64, 256):
            wt = T._weights(300, D, seed=D + G)
            rng = np.random.default_rng(D * G)
            idx = rng.integers(0, 300, size=257)
            bag_idx, offsets = T.random_bags(rng, 40, 300)
            psw = rng.standard_normal(len(bag_idx)).astype(np.float32)
            for spec in (rng.integers(0, 6, 300), "int8", "int4", "int2"):
                label = spec if isinstance(spec, str) else "mixed6"
                table = quantize_table(wt, spec, name=f"v3d{D}g{G}", scale_group_rows=G)
                g = "format_v3"
                gather(g, f"v3_D{D}_G{G}_{label}_gather", table, idx)
                gather(g, f"v3_D{D}_G{G}_{label}_gather_f16", table, idx.astype(np.int32).reshape(-1, 1), np.float16)
                bag(g, f"v3_D{D}_G{G}_{label}_wsum", table, bag_idx, offsets, psw)
                bag(g, f"v3_D{D}_G{G}_{label}_bag_mean_f16", table, bag_idx, offsets, mode=1, out_dtype=np.float16)
                if table.is_uniform:
                    gather(g, f"v3_D{D}_G{G}_{label}_as_mixed_gather", T.as_mixed(table), idx)
    for R in T.ROWS:
        for D in (3, 64):
            table, _ = T.make_table(R, D, "all6", seed=R + 7)
            rng = np.random.default_rng(R + D)
            idx, offsets = T.random_bags(rng, 80, R)
            bag("bag_mixed", f"R{R}_D{D}_wsum", table, idx, offsets, rng.standard_normal(len(idx)).astype(np.float32))
            bag("bag_mixed", f"R{R}_D{D}_mean_f16", table, idx, offsets, mode=1, out_dtype=np.float16)
    table, _ = T.make_table(70, 2100, "all6", seed=3)
    idx, offsets = T.random_bags(np.random.default_rng(3), 1100, 70, max_len=3)
    for threads in (1, 2):
        bag("bag_wide", f"D2100_mean_f16_t{threads}", table, idx, offsets, mode=1, out_dtype=np.float16, threads=threads)
    table, _ = T.make_table(3, 65536, "all6", seed=3)
    idx = np.array([0, 1, 2, 2, 1, 0])
    gather("bag_wide", "D65536_gather_f32", table, idx)
    gather("bag_wide", "D65536_gather_f16", table, idx, np.float16)
    bag("bag_wide", "D65536_bag_f16", table, idx, np.array([0, 2, 2]), out_dtype=np.float16)
    table, _ = T.make_table(1000, 13, "all6", seed=8)
    idx = np.arange(1000, dtype=np.int64)
    one_row = ref.gather(table, idx)
    for mode in (0, 1):
        model = bag_model(table, mode=mode)
        w.add(Case(f"bag_single/mode{mode}", "bag_single", "exact", want=one_row), model,
              {"indices": idx, "offsets": np.arange(1000, dtype=np.int64)})
        model = bag_model(table, index_rank=2, offsets=False, mode=mode, out_dtype=np.float16)
        w.add(Case(f"bag_single/mode{mode}_2d_f16", "bag_single", "exact", want=one_row.astype(np.float16)), model,
              {"indices": idx.reshape(1000, 1)})

    # ---- threads, repeated runs, graph-input tables (test_ops.py) ----------------------------------
    table, _ = T.make_table(1000, 64, "all6", seed=9)
    idx = np.random.default_rng(9).integers(0, 1000, size=(5000,)).astype(np.int32)
    for threads in (1, 2):
        gather("threads", f"gather_f32_t{threads}", table, idx, threads=threads)
        gather("threads", f"gather_f16_t{threads}", table, idx, np.float16, threads=threads)
    table, _ = T.make_table(1000, 13, "all6", seed=10)
    for mode in (0, 1):
        rng = np.random.default_rng(10 + mode)
        idx, offsets = T.random_bags(rng, 1500, 1000, max_len=8)
        psw = rng.standard_normal(len(idx)).astype(np.float32) if mode == 0 else None
        idx2 = rng.integers(0, 1000, size=(2500, 3))
        for threads in (1, 2):
            bag("threads", f"bag_mode{mode}_t{threads}", table, idx, offsets, psw, mode=mode, threads=threads)
            bag("threads", f"bag2d_mode{mode}_f16_t{threads}", table, idx2, mode=mode, out_dtype=np.float16,
                threads=threads)
    table, _ = T.make_table(200, 13, "all6", seed=11)
    rng = np.random.default_rng(11)
    gmodel, bmodel = gather_model(table, index_rank=2), bag_model(table, weights=True)
    for n in [0, 1, 7, 3000, 2, 0, 64]:  # one session each, runs in this order
        idx = rng.integers(0, 200, size=(n, 3))
        w.add(Case(f"repeated_runs/gather_n{n}_{len(w.cases)}", "repeated_runs", "exact", want=ref.gather(table, idx)),
              gmodel, {"indices": idx}, 2)
        bidx, offsets = T.random_bags(rng, n, 200)
        psw = rng.standard_normal(len(bidx)).astype(np.float32)
        w.add(Case(f"repeated_runs/bag_n{n}_{len(w.cases)}", "repeated_runs", "bag",
                   want=ref.embedding_bag(table, bidx, offsets, psw), tol=T.bag_tolerance(table, bidx, offsets, psw)),
              bmodel, {"indices": bidx, "offsets": offsets, "per_sample_weights": psw}, 2)
    a, _ = T.make_table(200, 13, "all6", seed=13)
    b, _ = T.make_table(200, 13, "all6", seed=14)
    c = T.as_mixed(T.make_table(200, 13, "int4", seed=15)[0])
    idx = np.random.default_rng(13).integers(0, 200, size=500)
    model = gather_model(a, table_inputs=True)
    for k, t in enumerate((a, b, c, a)):
        w.add(Case(f"table_inputs/{k}_{t.name}", "table_inputs", "exact", want=ref.gather(t, idx)), model,
              {"indices": idx, **table_feeds(t)})

    # ---- bad indices and offsets (test_ops_errors.py) ------------------------------------------------
    R = E.R
    for kind, table in (("mixed", E.MIXED), ("uniform", E.UNIFORM)):
        for dt in (np.int32, np.int64):
            dn = np.dtype(dt).name
            gm = gather_model(table, index_dtype=dt, index_rank=2, name="user_lookup")
            bm = bag_model(table, index_dtype=dt, name="item_bags", padding_idx=3)
            b2 = bag_model(table, index_dtype=dt, index_rank=2, offsets=False, name="bags2d")
            good = np.random.default_rng(0).integers(0, R, size=(7, 9)).astype(dt)
            bidx = np.random.default_rng(1).integers(0, R, size=40).astype(dt)
            offsets = np.array([0, 10, 10, 25], dt)
            for value in E.BAD_VALUES[dt]:
                idx = good.copy()
                idx[3, 4] = value
                error("bad_index", f"gather_{kind}_{dn}_{value}", gm, {"indices": idx},
                      ["RowwiseDequantGather", "node 'user_lookup'", f"index {value} ", "position 31", f"{R} rows"])
                w.add(Case(f"bad_index/gather_{kind}_{dn}_{value}_then_ok", "bad_index", "exact",
                           want=ref.gather(table, good)), gm, {"indices": good})
                bad = bidx.copy()
                bad[27] = value
                error("bad_index", f"bag_{kind}_{dn}_{value}", bm, {"indices": bad, "offsets": offsets},
                      ["RowwiseDequantEmbeddingBag", "node 'item_bags'", f"index {value} ", "position 27", f"{R} rows"])
                bag("bad_index", f"bag_{kind}_{dn}_{value}_then_ok", table, bidx, offsets, padding_idx=3)
                error("bad_index", f"bag2d_{kind}_{dn}_{value}", b2, {"indices": bad.reshape(8, 5)},
                      ["RowwiseDequantEmbeddingBag", "node 'bags2d'", f"index {value} ", "position 27", f"{R} rows"])
    idx = np.random.default_rng(2).integers(0, R, size=6000).astype(np.int64)
    idx[[5900, 4100, 1500, 2600]] = [-7, R + 9, R, -1]
    error("bad_index", "gather_first_bad_position_t2", gather_model(E.MIXED), {"indices": idx},
          [f"index {R} at position 1500 ", f"{R} rows"], threads=2)
    error("bad_index", "bag_first_bad_position_t2", bag_model(E.MIXED),
          {"indices": idx, "offsets": np.arange(0, 6000, 3, dtype=np.int64)}, [f"index {R} at position 1500 ", f"{R} rows"],
          threads=2)
    error("bad_index", "bag_past_last_offset", bag_model(E.MIXED, include_last_offset=1, name="ilo"),
          {"indices": np.array([1, 2, 3, R + 5], np.int64), "offsets": np.array([0, 2, 3], np.int64)},
          ["node 'ilo'", f"index {R + 5} ", "position 3", f"{R} rows"])
    error("bad_index", "bag_padding_does_not_excuse", bag_model(E.MIXED, padding_idx=0, name="padded"),
          {"indices": np.array([0, 0, -1]), "offsets": np.array([0])}, ["index -1 ", "position 2"])
    for dt in (np.int32, np.int64):
        model = bag_model(E.MIXED, index_dtype=dt, name="offs")
        idx = np.arange(6, dtype=dt)
        for k, (offs, fragments) in enumerate([
            ([1, 3], ["offsets[0]", " 1,", "must be 0"]),
            ([-2, 3], ["offsets[0]", "-2"]),
            ([0, 4, 2], ["offsets[2] = 2", "offsets[1] = 4"]),
            ([0, 3, -1], ["offsets[2] = -1"]),
            ([0, 7], ["offsets[1] = 7", "number of indices 6"]),
            ([0, 2, 2**31 - 1], ["offsets[2] = 2147483647", "6"]),
        ]):
            error("bad_offsets", f"{np.dtype(dt).name}_{k}", model, {"indices": idx, "offsets": np.array(offs, dt)},
                  ["node 'offs'", *fragments])
    w.finish()
    return w


# --------------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------------
def read_results(result_dir: Path) -> dict:
    path = result_dir / "results.txt"
    if not path.is_file():
        return {}
    out: dict = {}
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        name, status, rest = (lines[i].split(" ", 2) + ["", ""])[:3]
        i += 1
        if status == "error":
            out[name] = rest
            continue
        arrays = []
        for _ in range(int(rest)):
            parts = lines[i].split()
            i += 1
            etype, rank = int(parts[1]), int(parts[2])
            shape = tuple(int(d) for d in parts[3:3 + rank])
            data = np.fromfile(result_dir / parts[3 + rank], dtype=np.dtype(ELEM[etype]).newbyteorder("<"))
            arrays.append(data.astype(ELEM[etype]).reshape(shape))
        out[name] = arrays[0] if len(arrays) == 1 else arrays
    return out


def bits_differ(got: np.ndarray, want: np.ndarray) -> str:
    """'' when dtype, shape and every bit agree, else what differs."""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} != {want.dtype}"
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    u = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    bad = got.view(u) != want.view(u)
    if not bad.any():
        return ""
    pos = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{int(bad.sum())} of {bad.size} elements differ, first at {pos}: got {got[pos]!r}, want {want[pos]!r}"


def check(case: Case, got: Any) -> tuple[bool, str]:
    if got is None:
        return False, "no result (the runner stopped before this case)"
    if case.kind == "error":
        if not isinstance(got, str):
            return False, "ran without error; the x86 tests require a failure"
        missing = [f for f in case.fragments if f not in got]
        if missing:
            return False, f"message lacks {missing}: {got}"
        if isinstance(case.x86, str) and got != case.x86:
            return False, f"message differs from x86's: {got!r} vs {case.x86!r}"
        shown = got.split("Status Message: ", 1)[-1]
        same = " (= x86)" if isinstance(case.x86, str) else ""
        return True, f"fails as required{same}: {shown}"
    if isinstance(got, str):
        return False, f"failed: {got}"
    if case.kind == "exact":
        diff = bits_differ(got, case.want)
        if diff:
            return False, f"not bit-exact vs reference: {diff}"
        detail = "bit-exact vs reference"
    else:
        if got.dtype != case.want.dtype and not (got.dtype == np.float16 and case.want.dtype == np.float32):
            return False, f"dtype {got.dtype}, want {case.want.dtype}"
        if got.shape != case.want.shape:
            return False, f"shape {got.shape} != {case.want.shape}"
        err = np.abs(got.astype(np.float64) - case.want.astype(np.float64))
        over = err > case.tol
        if over.any():
            pos = tuple(int(i) for i in np.argwhere(over)[0])
            return False, f"outside the x86 tests' bound at {pos}: got {got[pos]!r}, want {case.want[pos]!r}, tol {case.tol[pos]:.3g}"
        detail = f"within bag bound (max err {float(err.max()) if err.size else 0.0:.3g})"
    if case.x86_is_want:
        detail += " (= x86)"
    elif case.x86 is not None:
        if isinstance(case.x86, str):
            return False, f"x86 failed ({case.x86}) but aarch64 ran"
        diff = bits_differ(got, case.x86)
        if diff:
            return False, f"{detail}, but differs from x86 (generic loops): {diff}"
        detail += ", bit-identical to x86"
    return True, detail


def compare(case_dir: Path, result_dir: Path, quiet: bool) -> int:
    with open(case_dir / "expected.pkl", "rb") as f:
        cases = [Case(**d) for d in pickle.load(f)]
    results = read_results(result_dir)
    groups: dict = {}
    failed = []
    report = []
    for case in cases:
        ok, detail = check(case, results.get(case.name))
        g = groups.setdefault(case.group, [0, 0])
        g[0 if ok else 1] += 1
        if not ok:
            failed.append(case.name)
        line = f"{'PASS' if ok else 'FAIL'} {case.name}: {detail}"
        report.append(line)
        if not quiet or not ok:
            print(line)
    (result_dir / "report.txt").write_text("\n".join(report) + "\n")
    print("\nper group (pass / fail):")
    for name, (p, n) in groups.items():
        print(f"  {name:26s} {p:4d} / {n}")
    total = len(cases)
    print(f"aarch64: {total - len(failed)} of {total} cases pass (one line per case: {result_dir / 'report.txt'})")
    if failed:
        print(f"aarch64: {len(failed)} FAILED: {', '.join(failed[:20])}{' ...' if len(failed) > 20 else ''}")
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("case_dir", type=Path)
    g.add_argument("--no-x86", action="store_true", help="do not run the x86 library (no bit-identity check)")
    c = sub.add_parser("compare")
    c.add_argument("case_dir", type=Path)
    c.add_argument("result_dir", type=Path)
    c.add_argument("--quiet", action="store_true",
                   help="print failures and the summary only (every case still goes to RESULT_DIR/report.txt)")
    args = p.parse_args(argv)
    if args.cmd == "generate":
        x86 = not args.no_x86
        if x86:
            import shark_export

            try:
                lib = shark_export.library_path()
            except shark_export.errors.LibraryNotFoundError as e:
                sys.exit(f"cases.py: the x86 library is needed for the bit-identity check ({e}); "
                         f"pass --no-x86 to skip that check")
            print(f"cases.py: x86 library {lib}", file=sys.stderr)
        w = generate(args.case_dir, x86)
        print(f"cases.py: {len(w.cases)} cases, {len(w.models)} models in {args.case_dir}", file=sys.stderr)
        return 0
    return compare(args.case_dir, args.result_dir, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
