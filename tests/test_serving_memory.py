"""Serving a model whose tables are external data (docs/SCALE.md): the resident set follows the rows read.

ONNX Runtime maps the data files; the op library advises random reads on each table and gives no huge-page
advice to file mappings (a 2 MiB folio per fault, and a collapse, would make the whole file resident).
"""

from __future__ import annotations

import os

import numpy as np
import torch

import shark_export
from shark_export.ops import session

ROWS, DIM = 160_000, 64  # an int8 payload of 11 MB: over the 8 MiB where huge pages would be advised


class OneTable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(ROWS, DIM)

    def forward(self, ids):
        return self.emb(ids).sum(1)


def _mapped(suffix: str) -> tuple[int, list[str]]:
    """(resident bytes of this process's mappings of files ending in `suffix`, their VmFlags)."""
    rss, flags, current = 0, [], False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = len(head) > 5 and head[5].endswith(suffix)
            elif current and head[0] == "Rss:":
                rss += int(head[1]) * 1024
            elif current and head[0] == "VmFlags:":
                flags.append(" ".join(head[1:]))
    return rss, flags


def test_random_lookups_map_the_rows_they_read_not_the_file(tmp_path):
    torch.manual_seed(0)
    torch.save(OneTable().state_dict(), tmp_path / "w.pt")
    with torch.device("meta"):
        model = OneTable().eval()
    example = torch.randint(0, ROWS, (4, 2))
    shark_export.convert(model, example, tmp_path / "m.onnx", weights=tmp_path / "w.pt")  # tables in a data file
    (data,) = [p for p in tmp_path.iterdir() if p.name.endswith(".onnx.data")]
    fd = os.open(data, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # a cold cache, as on a fresh server
    finally:
        os.close(fd)
    sess = session(str(tmp_path / "m.onnx"))
    ids = np.random.default_rng(0).choice(ROWS, size=(8, 2), replace=False).astype(np.int64)
    out = sess.run(None, {sess.get_inputs()[0].name: ids})[0]
    rss, flags = _mapped(".onnx.data")
    assert flags and all(" hg" not in f" {f}" for f in flags), flags  # no huge-page advice on the file mapping
    assert any(" rr" in f" {f}" for f in flags), flags  # random reads advised (whole pages: a partial last one is not)
    assert rss <= 16 * 64 * 1024, f"{rss / 2**20:.1f} MiB resident after reading 16 rows of an 11 MB table"
    want = torch.load(tmp_path / "w.pt")["emb.weight"].numpy()[ids].sum(1)
    np.testing.assert_allclose(out, want, atol=0.02)
