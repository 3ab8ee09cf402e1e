"""3 GB of fp32 tables convert inside a 1.5 GB memory cgroup (issue 22.5).

A model of four 3M x 64 tables (3.07 GB fp32), built on the meta device, is converted from a torch.save file
(int8, one process) and from a torch.distributed.checkpoint directory (mixed, two workers) by a child process
moved into a child memory cgroup (v1) of this process's own, limited to 1.5 GB. The result is then checked against an in-memory quantization
of the rows the calibration touched: each row, at the tier the file gave it, decodes to the same bits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shark_export.checkpoint_reader import open_weights
from shark_export.format import Tier
from shark_export.inspect_model import read_tables
from shark_export.quantize import quantize_table
from shark_export.reference import dequantize_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import memory_cgroup  # noqa: E402

pytestmark = pytest.mark.slow

ROWS, DIM, TABLES = 3_000_000, 64, 4
LIMIT = int(1.5 * 2**30)

MODEL = f'''
import torch

class Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.Embedding({ROWS}, {DIM}) for _ in range({TABLES}))
        self.mlp = torch.nn.Sequential(torch.nn.Linear({TABLES * DIM}, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def forward(self, ids):
        return self.mlp(torch.cat([t(ids[:, k]) for k, t in enumerate(self.tables)], 1)).squeeze(-1)
'''

CHILD = '''
import sys, torch
sys.path.insert(0, sys.argv[1])
import shark_export
from bigmodel import Big
with torch.device("meta"):
    model = Big().eval()
cal = torch.load(sys.argv[1] + "/cal.pt")
report = shark_export.convert(model, cal[0], sys.argv[4], quant=sys.argv[3], calibration=cal, weights=sys.argv[2],
                              workers=int(sys.argv[5]))
assert report.faithfulness, str(report.faithfulness)
print("ratio", report.ratio)
'''


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    if not memory_cgroup.usable():
        pytest.skip(f"no writable cgroup v1 memory controller here (own cgroup {memory_cgroup.own_memory_cgroup()}): "
                    "the bound cannot be enforced")
    import torch.distributed.checkpoint as dcp

    root = tmp_path_factory.mktemp("scale")
    (root / "bigmodel.py").write_text(MODEL)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for k in range(TABLES):
        table = torch.empty(ROWS, DIM)
        table.normal_(0, 0.1, generator=gen)
        state[f"tables.{k}.weight"] = table
    state.update({f"mlp.{n}": p for n, p in torch.nn.Sequential(torch.nn.Linear(TABLES * DIM, 64), torch.nn.ReLU(),
                                                                  torch.nn.Linear(64, 1)).state_dict().items()})
    torch.save(state, root / "w.pt")
    dcp.save(state, checkpoint_id=str(root / "dcp"))
    del state
    cal = [torch.randint(0, ROWS, (4096, TABLES), generator=gen) for _ in range(10)]
    torch.save(cal, root / "cal.pt")
    yield root, cal
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # 6 GB of checkpoints


@pytest.mark.parametrize("source,quant,workers", [("w.pt", "int8", 1), ("dcp", "mixed", 2)])
def test_3gb_of_tables_convert_in_a_1_5gb_cgroup(checkpoints, tmp_path, source, quant, workers):
    """With 2 workers, both processes are in the cgroup (children stay in their parent's): 1.5 GB for the two."""
    root, cal = checkpoints
    out = tmp_path / "m.onnx"
    done, usage = memory_cgroup.run_limited([sys.executable, "-c", CHILD, str(root), str(root / source), quant, str(out),
                                             str(workers)], LIMIT, cwd=tmp_path)
    peak = usage["max_usage"]
    print(f"{source} {quant} workers={workers}: peak {peak / 2**30:.2f} GiB in the cgroup (limit {LIMIT / 2**30:.2f} GiB)")
    assert done.returncode == 0, f"exit {done.returncode} (-9: killed at the memory limit), peak {peak / 2**30:.2f} GiB\n{done.stderr[-3000:]}"
    assert peak <= LIMIT
    tables, _ = read_tables(out)
    weights = open_weights(root / source)
    touched = np.unique(torch.cat([b[:, 0] for b in cal]).numpy())[:5000]
    for k in range(TABLES):
        name = f"tables.{k}.weight"
        stored = tables[name]
        rows = weights[name].take(touched)
        tiers = stored.tiers()[touched]
        assert (quant == "int8") == bool(np.all(tiers == Tier.INT8))
        for tier in np.unique(tiers):
            sel = tiers == tier
            small = quantize_table(rows[sel], int(tier), name=name)  # the same rows, in memory
            want = dequantize_rows(small, np.arange(int(sel.sum())))
            got = dequantize_rows(stored, touched[sel])
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{name} tier {tier}"
