"""Stored tables written straight to files, never held whole in memory (issue 22: tables larger than a machine).

While a conversion quantizes, each table's payload is a zero-filled file in the stage directory, mapped and
filled row block by row block (`SegmentStore.allocate`). Tables the storage rules reject (a grouped try that
is not kept) are deleted at once. Then `pack` copies the payloads, in bounded chunks, into the model's data
files: tables in name order, each at a 64 KiB-aligned offset, a new file once `shard_bytes` would be passed (a
table larger than that gets a file of its own); each file is named by the digest of its content, so the same
tables give the same files, and each payload is mapped read-only from its place there for the checks. The graph
then names them as external data (`external_payloads`), and the model file is saved around them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .format import QuantizedTable
from .integrity import TableDigest
from .lookup_spec import storage_names
from .page_hints import advise_mapping, drop_cached

ALIGNMENT = 1 << 16  # payload offsets in a data file: page- and allocation-granularity aligned (mappable)
DEFAULT_SHARD_BYTES = 2 << 30
_COPY_BYTES = 1 << 24
DATA_SUFFIX = ".onnx.data"


class SegmentStore:
    """Zero-filled, writable file-backed buffers in `stage_dir`, and their packing into data files."""

    def __init__(self, stage_dir: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        if shard_bytes < ALIGNMENT:
            raise ValueError(f"shard_bytes must be at least {ALIGNMENT}, got {shard_bytes}")
        self.stage_dir = Path(stage_dir).absolute()  # its files' paths travel to worker processes
        self.shard_bytes = int(shard_bytes)
        self._files: dict[int, Path] = {}  # id(buffer) → its segment file
        self._count = 0
        self.locations: dict[str, tuple[str, int, int]] = {}  # table → (data file, offset, length)
        self.data_names: list[str] = []
        self.digests: dict[str, str] = {}  # table → integrity digest (integrity.table_digest), taken while packing

    def allocate(self, nbytes: int) -> np.ndarray:
        """A zero-filled uint8 buffer of `nbytes` backed by a new file (an empty array for 0 bytes)."""
        if nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        path = self.stage_dir / f"segment-{self._count}.bin"
        self._count += 1
        with open(path, "wb") as f:
            f.truncate(nbytes)  # a sparse file: reads as zeros, costs no memory
        buffer = np.memmap(path, dtype=np.uint8, mode="r+", shape=(nbytes,))
        self._files[id(buffer)] = path
        return buffer

    def path_of(self, buffer: np.ndarray) -> Path:
        """The segment file behind a buffer `allocate` returned."""
        return self._files[id(buffer)]

    def release(self, table: QuantizedTable) -> None:
        """A table that will not be stored: its segment goes."""
        path = self._files.pop(id(table.payload), None)
        if path is not None:  # unlinked, not unmapped: a view still alive stays valid until it is dropped
            path.unlink(missing_ok=True)

    def pack(self, tables: dict[str, QuantizedTable], workers=None) -> dict[str, QuantizedTable]:
        """Copy every table's payload into the content-named data files; the tables returned read their payload
        from there (read-only mappings). Each table's integrity digest is taken as it is copied (`digests`).
        `workers` (parallel_store.WorkerGroup): the data files are written by all the ranks, a file each."""
        plan: list[list[tuple[str, int, int]]] = []  # per data file: (table, offset, length)
        size = 0
        for name in sorted(tables):
            length = int(tables[name].payload.shape[0])
            if length == 0:
                continue
            offset = -(-size // ALIGNMENT) * ALIGNMENT
            if not plan or (size and offset + length > self.shard_bytes):
                plan.append([])
                offset = 0
            plan[-1].append((name, offset, length))
            size = offset + length
        jobs = [PackJob(str(self.stage_dir), k, [(name, str(self._files[id(tables[name].payload)]), offset, length,
                                                  tables[name].op_attributes(), tables[name].row_meta,
                                                  tables[name].default_row) for name, offset, length in entries])
                for k, entries in enumerate(plan)]
        if workers is None:
            results = [job.run() for job in jobs]
        else:
            results = workers.spread(jobs, [entries[-1][1] + entries[-1][2] for entries in plan])
        out = dict(tables)
        for entries, (data_name, digests) in zip(plan, results):
            self.data_names.append(data_name)
            self.digests.update(digests)
            for name, offset, length in entries:
                self.release(tables[name])
                mapped = np.memmap(self.stage_dir / data_name, dtype=np.uint8, mode="r", offset=offset, shape=(length,))
                advise_mapping(mapped, "MADV_RANDOM")  # the checks read rows at random: no read-around
                out[name] = replace(tables[name], payload=mapped)
                self.locations[name] = (data_name, offset, length)
        return out

    def discard(self) -> None:
        for path in list(self._files.values()):
            path.unlink(missing_ok=True)
        self._files.clear()


@dataclass
class PackJob:
    """One data file: the payloads of its tables copied, in bounded chunks read from their segment files (no page
    of them mapped), hashed as they go (the file's content name and each table's integrity digest)."""

    stage_dir: str
    index: int
    entries: list  # (table, segment file, offset in the data file, length, op attributes, row_meta, default_row)

    def run(self) -> tuple[str, dict[str, str]]:
        stage = Path(self.stage_dir)
        staging = stage / f"data-{self.index}.tmp"
        digest = hashlib.blake2b(digest_size=12)
        tables = {}
        with open(staging, "wb") as f:
            for name, segment_path, offset, length, attributes, row_meta, default_row in self.entries:
                pad = offset - f.tell()
                if pad:
                    f.write(b"\0" * pad)
                    digest.update(b"\0" * pad)
                table = TableDigest(attributes, length)
                with open(segment_path, "rb", buffering=0) as segment:
                    for start in range(0, length, _COPY_BYTES):
                        chunk = os.pread(segment.fileno(), min(_COPY_BYTES, length - start), start)
                        f.write(chunk)
                        digest.update(chunk)
                        table.update(chunk)
                tables[name] = table.finish(row_meta, default_row)
            f.flush()
            os.fsync(f.fileno())
            # Written and synced: out of the page cache. Otherwise the checks' sessions, reading rows at random,
            # map the file's large cached folios whole (the whole file, resident) instead of the rows they read.
            drop_cached(f.fileno())
        data_name = digest.hexdigest() + DATA_SUFFIX
        os.replace(staging, stage / data_name)
        return data_name, tables


def external_payloads(graph: ir.Graph, store: SegmentStore) -> None:
    """The payload initializers of the packed tables become references into their data files."""
    for table, (data_name, offset, length) in store.locations.items():
        value = graph.initializers.get(storage_names(table)[0])
        if value is None:
            continue
        value.const_value = ir.ExternalTensor(data_name, offset, length, ir.DataType.UINT8, shape=ir.Shape([length]),
                                              name=value.name, base_dir=str(store.stage_dir))
