"""Converter targets, measured: sizes, ΔAUC and faithfulness on MovieLens; time and memory of a 10M-row model.

    python benchmarks/bench_convert.py                       # both sections (≈ 15 min on 2 busy cores)
    python benchmarks/bench_convert.py --section movielens   # a. sizes / ΔAUC / faithfulness, D = 16, 32, 64
    python benchmarks/bench_convert.py --section big         # b. 10M rows × 64: wall time and peak RSS

a. MovieLens-1M partial (samples/datasets.py, per-user time split, last 20% of each user held out),
   DeepFM-style model (samples/common.py: nn.Embedding per field, nn.EmbeddingBag(sum) for genres), trained
   once per (D, seed); each quantization is converted with calibration = the train split and checked on the
   held-out split. Targets at D = 64: int8 ≤ 27% of the fp32 embedding bytes with |ΔAUC| ≤ 0.0005;
   mixed ≤ 20% with |ΔAUC| ≤ 0.001; faithfulness max abs error ≤ 1e-5 everywhere. The byte report is
   checked against the stored tensors and the format formula (int8 row D+4, int4 D/2+4, fp16 2D; ≤ 1 B/row
   metadata) within 3%.
b. A DeepFM with 10M embedding rows × 64 (four big tables + two small), random weights, synthetic Zipf
   calibration (shark_export.synthetic), converted with int8 and with mixed, each in a fresh subprocess.
   Wall time of `convert` (target < 2 min) and peak RSS (target < 2× the fp32 table bytes), read from
   /proc/self/status VmHWM (whole process) and after resetting the high-water mark once the model is built
   (conversion phase), plus getrusage's ru_maxrss.

Results print as markdown tables; --json writes them too. The data is read from --data, never copied.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine  # noqa: E402  (benchmarks/ is the script's directory)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "samples"))

import torch  # noqa: E402

# MovieLens configurations: (quant spec, clip). The ones named in the issue first, then explorations.
ML_CONFIGS = {
    64: [("int8", "none"), ("mixed", "none"), ("mixed", "l2"), ("budget:0.18", "none"), ("mixed:0.05,0.30", "none"), ("int4", "none")],
    32: [("int8", "none"), ("mixed", "none"), ("budget:0.18", "none"), ("int4", "none")],
    16: [("int8", "none"), ("mixed", "none"), ("int4", "none")],
}
TARGETS = {  # (max ratio, max |ΔAUC|) checked at D = 64
    "int8": (0.27, 0.0005),
    "mixed": (0.20, 0.001),
}
FAITHFUL_ATOL = 1e-5


def machine() -> str:
    import onnxruntime

    return _machine.machine(f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


# --------------------------------------------------------------------------------------------------
# a. MovieLens
# --------------------------------------------------------------------------------------------------


def section_movielens(args) -> list[dict]:
    import common
    import datasets

    try:
        ds = datasets.load("movielens", args.data)
    except datasets.DataNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    print(ds.describe())
    print(f"training: {args.epochs} epochs, batch 1024, lr {args.lr}, SparseAdam + Adam, torch threads {torch.get_num_threads()}\n")
    rows = []
    out_dir = Path(args.out) / "movielens"
    for dim in args.dims:
        for seed in args.seeds:
            trained = common.train_model(ds, dim, epochs=args.epochs, batch_size=1024, lr=args.lr, seed=seed)
            print(f"D={dim} seed={seed}: trained in {trained.train_seconds:.0f} s", flush=True)
            for spec, clip in ML_CONFIGS.get(dim, ML_CONFIGS[16]):
                r = common.convert_and_check(trained, spec, out_dir, clip=clip)
                row = {**r.to_dict(), "seed": seed}
                rows.append(row)
                print(f"  {r.quant:<18} {r.ratio:7.2%}  ΔAUC {r.auc_delta:+.5f}  faithfulness {max(r.faithfulness_max_abs, r.heldout_faithfulness_max_abs):.1e}"
                      f"  ({r.convert_seconds:.0f} s)", flush=True)
                Path(r.path).unlink(missing_ok=True)
    print()
    print(movielens_table(rows))
    return rows


def verdict(row: dict) -> str:
    base = row["quant"].split("+")[0]
    if row["dim"] != 64 or base not in TARGETS:
        return ""
    max_ratio, max_dauc = TARGETS[base]
    ok = row["ratio"] <= max_ratio and abs(row["auc_delta"]) <= max_dauc
    return f"{'MET' if ok else 'MISSED'} (≤{max_ratio:.0%}, |ΔAUC|≤{max_dauc:g})"


def movielens_table(rows: list[dict]) -> str:
    head = ("| D | seed | quant | tiers (rows) | fp32 B | after B | of fp32 | size vs formula | AUC torch | ΔAUC | Δ log loss "
            "| faithfulness max abs (cal / held-out) | target |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        tiers = " ".join(f"{k}:{v}" for k, v in r["tiers"].items())
        size = f"{'ok' if r['size_ok'] else 'MISMATCH'} ({r['size_vs_formula']:+.2%}; meta {r['metadata_per_row']:.2f} B/row)"
        faithful = r["faithfulness_max_abs"] <= FAITHFUL_ATOL and r["heldout_faithfulness_max_abs"] <= FAITHFUL_ATOL
        lines.append(
            f"| {r['dim']} | {r['seed']} | {r['quant']} | {tiers} | {r['fp32_bytes']} | {r['bytes_after']} | {r['ratio']:.2%} | {size} "
            f"| {r['auc_torch']:.5f} | {r['auc_delta']:+.5f} | {r['logloss_delta']:+.5f} "
            f"| {r['faithfulness_max_abs']:.1e} / {r['heldout_faithfulness_max_abs']:.1e} {'ok' if faithful else 'FAIL'} | {verdict(r)} |"
        )
    # Summary per (D, quant) over seeds: worst |ΔAUC|.
    summary = {}
    for r in rows:
        key = (r["dim"], r["quant"])
        s = summary.setdefault(key, {"ratio": r["ratio"], "worst": 0.0, "n": 0, "faith": 0.0})
        s["worst"] = max(s["worst"], abs(r["auc_delta"]))
        s["n"] += 1
        s["faith"] = max(s["faith"], r["faithfulness_max_abs"], r["heldout_faithfulness_max_abs"])
    lines += ["", "| D | quant | of fp32 | worst \\|ΔAUC\\| over seeds | seeds | max faithfulness error |", "|---|---|---|---|---|---|"]
    for (dim, quant), s in summary.items():
        lines.append(f"| {dim} | {quant} | {s['ratio']:.2%} | {s['worst']:.5f} | {s['n']} | {s['faith']:.1e} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# b. 10M rows × 64: time and memory, one subprocess per quantization
# --------------------------------------------------------------------------------------------------


def _proc_status(key: str) -> int:
    """kB value of a /proc/self/status line (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux ≥ 4.0: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def big_fields(rows: int):
    from shark_export.example_models import FieldSpec
    from shark_export.synthetic import SyntheticField

    small = 4_000 + 1_000
    big = rows - small
    shares = [0.4, 0.3, 0.2]
    sizes = [int(big * s) for s in shares]
    sizes.append(big - sum(sizes))
    names = ["user", "item", "ad", "query"]
    fields = [SyntheticField(FieldSpec(n, c), signal=0.5) for n, c in zip(names, sizes)]
    fields.append(SyntheticField(FieldSpec("site", 4_000), signal=0.3))
    fields.append(SyntheticField(FieldSpec("tags", 1_000, multi_hot=True), signal=0.3, max_bag=6))
    return tuple(fields)


def faithful_reference_impl() -> str:
    """How this checkout's convert() builds its faithfulness reference (the memory peak depends on it)."""
    module = importlib.import_module("shark_export.converter")
    if hasattr(module, "_faithful_model"):
        return "deepcopy of the model + dequantized tables"
    return "lookups served from the stored tables (hooks)"


PHASES = [  # (module, attribute) of convert's steps whose peak RSS --phases reports
    ("shark_export.converter", "score_rows"), ("shark_export.converter", "export_to_ir"),
    ("shark_export.converter", "find_lookups"), ("shark_export.converter", "quantize_table"),
    ("onnx_ir", "save"), ("onnx.checker", "check_model"), ("shark_export.faithfulness", "check_parity"),
]


def _trace_phases(peaks: dict) -> None:
    """Wrap convert's steps: reset the RSS high-water mark on entry, record it on exit (max over calls)."""
    for module_name, attr in PHASES:
        module = importlib.import_module(module_name)
        fn = getattr(module, attr, None)
        if fn is None:
            continue

        def wrapped(*a, _fn=fn, _name=f"{module_name.split('.')[-1]}.{attr}", **k):
            _reset_hwm()
            try:
                return _fn(*a, **k)
            finally:
                peaks[_name] = max(peaks.get(_name, 0), _proc_status("VmHWM"))

        setattr(module, attr, wrapped)


def big_worker(args) -> None:
    """Runs in a fresh process: build the model and calibration data, then time/measure `convert` alone."""
    import shark_export
    from shark_export.example_models import DeepFM, split_batches
    from shark_export.synthetic import generate

    module = importlib.import_module("shark_export.model_file")
    if args.external_data_bytes is not None:
        # Writes the tables as external data above this many bytes instead of the shipped threshold.
        module.EXTERNAL_DATA_BYTES = args.external_data_bytes
    t0 = time.perf_counter()
    fields = big_fields(args.rows)
    columns, labels, specs = generate(args.cal_samples, fields, n_dense=0, seed=0)
    batches = list(split_batches(columns, labels, specs, 4096))
    del columns
    setup_data = time.perf_counter() - t0
    rss_start = _proc_status("VmRSS")
    torch.manual_seed(0)
    model = DeepFM(specs, dim=args.dim).eval()
    table_bytes = sum(m.weight.numel() * 4 for m in model.embeddings.values())
    rows = sum(m.weight.shape[0] for m in model.embeddings.values())
    rss_model = _proc_status("VmRSS")
    hwm_setup = _proc_status("VmHWM")
    reset = _reset_hwm()
    phase_peaks: dict[str, int] = {}
    if args.phases:
        _trace_phases(phase_peaks)  # resets the high-water mark per step: the overall peak is their max
    out = Path(args.out) / f"big_{args.quant_one}.onnx"
    started = time.perf_counter()
    report = shark_export.convert(
        model, (batches[0][0],), out, quant=args.quant_one,
        calibration=[(b,) for b, _ in batches], labels=[y for _, y in batches],
    )
    wall = time.perf_counter() - started
    hwm_convert = max([_proc_status("VmHWM"), *phase_peaks.values()])
    result = {
        "phase_peaks": phase_peaks,
        "quant": args.quant_one,
        "faithful": faithful_reference_impl(),
        "external_data_bytes": getattr(module, "EXTERNAL_DATA_BYTES", None),
        "patched": args.external_data_bytes is not None,
        "external_file": any(out.parent.glob("*.onnx.data")),
        "rows": rows, "dim": args.dim, "fp32_table_bytes": table_bytes,
        "calibration_batches": len(batches), "setup_data_s": setup_data, "convert_s": wall,
        "rss_before_model": rss_start, "rss_after_model": rss_model, "hwm_setup": hwm_setup,
        "hwm_reset_ok": reset, "hwm_convert": hwm_convert,
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ratio": report.ratio, "bytes_after": report.bytes_after, "file_bytes": out.stat().st_size
        + sum(p.stat().st_size for p in out.parent.glob(out.name + ".data")),
        "faithfulness_max_abs": report.faithfulness.outputs[0].max_abs, "faithfulness_passed": report.faithfulness.passed,
    }
    tiers: dict[str, int] = {}
    for t in report.tables:
        for k, v in t.tiers.items():
            tiers[k] = tiers.get(k, 0) + v
    result["tiers"] = tiers
    print("RESULT " + json.dumps(result))


def section_big(args) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_convert_big_", dir=args.tmp) as tmp:
        for quant in args.quant:
            cmd = [sys.executable, __file__, "--big-worker", "--quant-one", quant, "--rows", str(args.rows),
                   "--dim", str(args.dim), "--cal-samples", str(args.cal_samples), "--threads", str(args.threads), "--out", tmp]
            if args.external_data_bytes is not None:
                cmd += ["--external-data-bytes", str(args.external_data_bytes)]
            if args.phases:
                cmd += ["--phases"]
            print(f"$ {' '.join(cmd[1:])}", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"big worker for {quant} failed with exit code {proc.returncode}")
            r = json.loads(lines[-1][len("RESULT "):])
            results.append(r)
            for f in Path(tmp).iterdir():
                f.unlink()
            print(f"  convert {r['convert_s']:.1f} s, peak RSS {r['hwm_convert'] / 1e9:.2f} GB "
                  f"({r['hwm_convert'] / r['fp32_table_bytes']:.2f}x fp32 tables)", flush=True)
            if r["phase_peaks"]:
                print("  peak RSS per step (GB): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in r["phase_peaks"].items())
                      + f"; after building the model {r['rss_after_model'] / 1e9:.2f}", flush=True)
    print()
    print(big_table(results))
    return results


def written_as(r: dict) -> str:
    external = r.get("external_data_bytes")
    where = f"external data (threshold {external / 1e6:.0f} MB)" if r.get("external_file") else "inline protobuf"
    return where + (" — bench patch, not shipped" if r.get("patched") else "")


def big_table(results: list[dict]) -> str:
    gb = 1e9
    lines = [
        "| quant | tables written as | rows × D | fp32 tables | after (of fp32) | convert wall | target < 120 s | RSS after building model | "
        "peak RSS during convert | peak / fp32 tables | target < 2× | ru_maxrss (whole process) | faithfulness |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = r["hwm_convert"] if r["hwm_reset_ok"] else r["ru_maxrss"]
        lines.append(
            f"| {r['quant']} | {written_as(r)} | {r['rows']:,} × {r['dim']} | {r['fp32_table_bytes'] / gb:.2f} GB | {r['bytes_after'] / gb:.3f} GB ({r['ratio']:.1%}) "
            f"| {r['convert_s']:.1f} s | {'MET' if r['convert_s'] < 120 else 'MISSED'} | {r['rss_after_model'] / gb:.2f} GB "
            f"| {peak / gb:.2f} GB | {peak / r['fp32_table_bytes']:.2f}× | {'MET' if peak < 2 * r['fp32_table_bytes'] else 'MISSED'} "
            f"| {r['ru_maxrss'] / gb:.2f} GB | {'passed' if r['faithfulness_passed'] else 'FAILED'} ({r['faithfulness_max_abs']:.1e}) |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--section", choices=["movielens", "big", "all"], default="all")
    p.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data", help="folder holding movielens-1m-partial/")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 32, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (1: fastest on a shared 2-core box)")
    p.add_argument("--rows", type=int, default=10_000_000, help="big model: total embedding rows")
    p.add_argument("--dim", type=int, default=64, help="big model: D")
    p.add_argument("--cal-samples", type=int, default=40_960, help="big model: synthetic calibration samples")
    p.add_argument("--quant", nargs="+", default=["int8", "mixed"], help="big model: quantizations")
    p.add_argument("--out", type=Path, default=REPO / "out" / "bench_convert")
    p.add_argument("--tmp", default=None, help="big model: where the converted files go (deleted after)")
    p.add_argument("--external-data-bytes", type=int, default=None,
                   help="big model: patch shark_export.model_file.EXTERNAL_DATA_BYTES (shipped: 1.8 GB) to measure "
                        "writing the tables as external data (a proposed change)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--phases", action="store_true",
                   help="big model: also report the peak RSS of each conversion step (ir.save, check_model, …)")
    p.add_argument("--big-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quant-one", default="int8", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.big_worker:
        big_worker(args)
        return 0
    print(machine(), flush=True)
    results = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if args.section in ("movielens", "all"):
        results["movielens"] = section_movielens(args)
    if args.section in ("big", "all"):
        Path(args.out).mkdir(parents=True, exist_ok=True)
        results["big"] = section_big(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
