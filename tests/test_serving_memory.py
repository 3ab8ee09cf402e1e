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


def test_will_need_asks_for_each_run_of_touching_pages_once(monkeypatch):
    import mmap

    from shark_export import page_hints

    calls = []
    monkeypatch.setattr(page_hints.os, "posix_fadvise", lambda fd, offset, length, advice: calls.append((offset, length)))
    page = mmap.PAGESIZE
    rng = np.random.default_rng(3)
    starts = rng.integers(0, 200 * page, 300)
    lengths = rng.integers(1, 3 * page, 300)
    page_hints.will_need(7, starts, lengths)
    wanted = np.zeros(210, dtype=bool)  # the pages a plain loop over the ranges would touch
    for s, n in zip(starts, lengths):
        wanted[s // page:(s + n - 1) // page + 1] = True
    got = np.zeros(210, dtype=bool)
    for offset, length in calls:
        assert offset % page == 0 and length % page == 0
        assert not got[offset // page:(offset + length) // page].any()  # no page asked twice
        got[offset // page:(offset + length) // page] = True
    assert np.array_equal(got, wanted)
    assert len(calls) == int(np.sum(wanted[1:] & ~wanted[:-1]) + wanted[0])  # one request per run
