"""Converting tables larger than memory: seconds per GB, peak memory and output bytes against table size.

    python benchmarks/bench_scale.py --sizes 0.25 1 4 16 --quant int8 mixed --workers 1 2 --dir /tmp/shark-scale [--memory-limit 1.5]

For each size, four nn.Embedding(R, 64) tables (R so that their fp32 bytes total the size) and an MLP are saved
as a torch.distributed.checkpoint directory; a model built on the meta device is converted from it by a fresh
child process (`convert(..., weights=DIR)`, 10 calibration batches of 4096), which reports its wall time, the
faithfulness check's share of it, its peak resident set (VmHWM: anonymous memory plus the file pages it has
mapped, which the kernel can drop) and its peak anonymous memory (sampled), and the output's bytes. Results go to
stdout as a markdown table and to --json. Disk: about twice the largest size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import memory_cgroup  # noqa: E402

CHILD = r'''
import json, sys, threading, time, torch
import shark_export
from shark_export import faithfulness

import os
rows, dim, tables, ckpt, quant, out, workers = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                                sys.argv[5], sys.argv[6], int(sys.argv[7]))
anon_peak = [0]
worker_peak = {"vm_hwm": 0, "anon": 0}  # the largest of any worker process

def status(pid):
    try:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("RssAnon:", "VmHWM:"))}
    except OSError:
        return {}

def sample():
    while True:
        anon_peak[0] = max(anon_peak[0], status("self").get("RssAnon", 0))
        for tid in os.listdir("/proc/self/task"):
            try:
                kids = open(f"/proc/self/task/{tid}/children").read().split()
            except OSError:
                kids = []
            for pid in kids:
                st = status(pid)
                worker_peak["vm_hwm"] = max(worker_peak["vm_hwm"], st.get("VmHWM", 0))
                worker_peak["anon"] = max(worker_peak["anon"], st.get("RssAnon", 0))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()

class Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.Embedding(rows, dim) for _ in range(tables))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(tables * dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    def forward(self, ids):
        return self.mlp(torch.cat([t(ids[:, k]) for k, t in enumerate(self.tables)], 1)).squeeze(-1)

import shark_export.converter as converter
spent = {"check_converted": 0.0, "store_tables": 0.0}
def timed(name):
    original = getattr(converter, name)
    def run(*a, **k):
        t = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            spent[name] += time.perf_counter() - t
    setattr(converter, name, run)
timed("check_converted")
timed("store_tables")
with torch.device("meta"):
    model = Big().eval()
g = torch.Generator().manual_seed(1)
cal = [torch.randint(0, rows, (4096, tables), generator=g) for _ in range(10)]
t = time.perf_counter()
report = shark_export.convert(model, cal[0], out, quant=quant, calibration=cal, weights=ckpt, workers=workers)
total = time.perf_counter() - t
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": total, "faithfulness_seconds": spent["check_converted"], "quantize_seconds": spent["store_tables"],
                  "vm_hwm": hwm, "anon_peak": anon_peak[0], "worker_vm_hwm": worker_peak["vm_hwm"],
                  "worker_anon_peak": worker_peak["anon"], "file_bytes": report.file_bytes, "ratio": report.ratio,
                  "faithful": bool(report.faithfulness)}))
'''


def make_checkpoint(directory: Path, rows: int, dim: int, tables: int) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    state = {}
    gen = torch.Generator().manual_seed(0)
    for k in range(tables):
        table = torch.empty(rows, dim)
        table.normal_(0, 0.1, generator=gen)
        state[f"tables.{k}.weight"] = table
    mlp = torch.nn.Sequential(torch.nn.Linear(tables * dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    state.update({f"mlp.{n}": p for n, p in mlp.state_dict().items()})
    dcp.save(state, checkpoint_id=str(directory))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1, 4, 16], help="fp32 table GB")
    parser.add_argument("--quant", nargs="+", default=["int8", "mixed"])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/shark-scale"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="worker counts to run each size with")
    parser.add_argument("--memory-limit", type=float, help="GiB: run each conversion in a memory cgroup of that size")
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        rows = int(size * 2**30 / (4 * args.dim * args.tables))
        ckpt = args.dir / f"ckpt-{size:g}"
        shutil.rmtree(ckpt, ignore_errors=True)
        t = time.perf_counter()
        make_checkpoint(ckpt, rows, args.dim, args.tables)
        made = time.perf_counter() - t
        for quant, workers in [(q, w) for q in args.quant for w in args.workers]:
            out = args.dir / f"out-{size:g}-{quant}-{workers}" / "m.onnx"
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir(parents=True)
            command = [sys.executable, "-c", CHILD, str(rows), str(args.dim), str(args.tables), str(ckpt), quant, str(out),
                       str(workers)]
            usage = {}
            if args.memory_limit:  # the child in a memory cgroup of that size (cgroup v1, tools/memory_cgroup.py)
                done, usage = memory_cgroup.run_limited(command, int(args.memory_limit * 2**30))
            else:
                done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            r = json.loads(done.stdout.strip().splitlines()[-1])
            r.update(size_gb=size, quant=quant, workers=workers, rows=rows, checkpoint_seconds=made, **usage)
            results.append(r)
            print(f"{size:g} GB {quant} x{workers}: {r['seconds']:.1f} s ({r['seconds'] / size:.1f} s/GB; quantize "
                  f"{r['quantize_seconds']:.1f} s), faithfulness "
                  f"{r['faithfulness_seconds'] / r['seconds']:.1%}, VmHWM {r['vm_hwm'] / 2**30:.2f} GiB, anon peak "
                  f"{r['anon_peak'] / 2**30:.2f} GiB, file {r['file_bytes'] / 2**30:.2f} GiB"
                  + (f", cgroup peak {usage['max_usage'] / 2**30:.2f} GiB (page cache included), limit hit and "
                     f"reclaimed {usage['failcnt']} times" if usage else ""), flush=True)
            shutil.rmtree(out.parent, ignore_errors=True)
            out.parent.mkdir(parents=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    print("\n| fp32 tables | quant | workers | s | s/GB | quantize s | faithfulness share | VmHWM GiB | anon peak GiB "
          "| worker VmHWM / anon GiB | output GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['size_gb']:g} GB | {r['quant']} | {r['workers']} | {r['seconds']:.1f} | {r['seconds'] / r['size_gb']:.1f} | "
              f"{r['quantize_seconds']:.1f} | {r['faithfulness_seconds'] / r['seconds']:.1%} | {r['vm_hwm'] / 2**30:.2f} | "
              f"{r['anon_peak'] / 2**30:.2f} | {r['worker_vm_hwm'] / 2**30:.2f} / {r['worker_anon_peak'] / 2**30:.2f} | "
              f"{r['file_bytes'] / 2**30:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
