"""Tables read from checkpoints row range by row range, never whole: `torch.save` files and
`torch.distributed.checkpoint` (DCP) directories.

Both hold each tensor's bytes uncompressed inside a zip archive written by `torch.save` (a DCP `.distcp` file is
a run of such archives, one per chunk, at the offsets its `.metadata` records). This module finds where every
tensor's first element is in which file, from the archive's directory and its pickle, read by a restricted
unpickler that builds no object but dicts and tensor records (no code from the file runs), and then reads rows
with `os.pread`: memory follows the rows read, and page-cache read-ahead does not pull megabytes per row as a
memory-mapped fp32 table read at random rows does.

- `open_weights(path)` → name → `TensorSource` (2-D float tensors, read by rows) or `WholeTensor` (any other)
  for a torch.save file (a state dict, nested dicts flattened with
  dots) or a DCP checkpoint directory (row- and column-sharded chunks joined; a hole is an error).
- `TensorSource.read(r0, r1)` → float32 rows; `take(ids)` → the rows `ids`, reading each run of neighbouring ids
  once; `source[...]` slices as a numpy array would (rows first).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SharkExportError
from .page_hints import will_need

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# `take`: the largest gap between wanted rows that is read through rather than split into two requests.
_MERGE_GAP_ROWS = 8
# `take`: from this many separate runs of rows on, their reads are announced to the kernel first (WILLNEED).
_PREFETCH_RUNS = 32


class CheckpointError(SharkExportError, ValueError):
    """A checkpoint that cannot serve the model's tables: unreadable, a missing key, a shape that differs from
    the model's, a sharded table with a hole, a layout this reader does not take."""


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: Any
    numel: int


@dataclass(frozen=True)
class TensorRecord:
    """Where a tensor's elements are: `file` at byte `offset` (element [0, 0, …]), `shape`, `strides` in
    elements, `dtype` (a numpy dtype, or "bfloat16")."""

    file: Path
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: Any


class _Loader(pickle.Unpickler):
    """Rebuilds only what a state dict of tensors is made of; any other global in the pickle is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *_: data
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("torch.serialization", "_get_layout") or (module, name) == ("torch", "strided"):
            return name
        raise pickle.UnpicklingError(f"the checkpoint's pickle names {module}.{name}, which a state dict of tensors "
                                     "does not need: refused")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return _StorageRef(str(pid[2]), _STORAGE_DTYPES[pid[1]], int(pid[4]))


def _rebuild_tensor(storage: _StorageRef, storage_offset, size, stride, *_):
    return ("tensor", storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _Slice(io.RawIOBase):
    """A read-only, seekable window [start, start + length) of a file: one archive inside a .distcp file."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.length - self.pos))
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _itemsize(dtype) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _archive_records(file: Path, start: int = 0, length: int | None = None) -> Any:
    """The unpickled object of the torch.save archive at [start, start + length) of `file`, tensors replaced by
    TensorRecords that point into `file`."""
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size if length is None else length
        window = io.BufferedReader(_Slice(f, start, size))
        try:
            archive = zipfile.ZipFile(window)
            names = archive.namelist()
            pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
            prefix = pkl[: -len("data.pkl")]
            obj = _Loader(io.BytesIO(archive.read(pkl))).load()
        except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error) as exc:
            raise CheckpointError(f"{file}: not a torch.save archive of tensors at byte {start}: {exc}") from exc

        def record(node):
            if isinstance(node, tuple) and len(node) == 5 and node[0] == "tensor":
                _, storage, offset, shape, strides = node
                info = archive.getinfo(f"{prefix}data/{storage.key}")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError(f"{file}: storage {storage.key} is compressed; tensors are read in place")
                f.seek(start + info.header_offset)
                header = f.read(30)
                if header[:4] != b"PK\x03\x04":
                    raise CheckpointError(f"{file}: no local header for storage {storage.key}")
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                data = start + info.header_offset + 30 + name_len + extra_len
                extent = (max(0, sum((d - 1) * s for d, s in zip(shape, strides))) + 1) if all(shape) else 0
                if offset < 0 or offset + extent > storage.numel or info.file_size < storage.numel * _itemsize(storage.dtype):
                    raise CheckpointError(f"{file}: a tensor reaches past its storage {storage.key}")
                return TensorRecord(file, data + offset * _itemsize(storage.dtype), shape, strides, storage.dtype)
            if isinstance(node, dict):
                return OrderedDict((k, record(v)) for k, v in node.items())
            return node

        return record(obj)


def _flatten(obj: Any, prefix: str = "") -> dict[str, TensorRecord]:
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(obj, TensorRecord):
        out[prefix[:-1]] = obj
    return out


@dataclass(frozen=True)
class _Chunk:
    rows: tuple[int, int]
    cols: tuple[int, int]
    record: TensorRecord


class TensorSource:
    """A 1-D or 2-D tensor of a checkpoint, read on demand as float32 (1-D: one row of `shape[0]` values)."""

    def __init__(self, name: str, shape: tuple[int, ...], chunks: list[_Chunk]):
        self.name, self.shape, self.chunks = name, tuple(shape), chunks
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)
        self._check_cover()

    def _check_cover(self) -> None:
        """Every element in exactly one chunk: no hole, no overlap (checked on the grid of chunk edges)."""
        rows, cols = (1, self.shape[0]) if self.ndim == 1 else self.shape
        cuts_r = sorted({0, rows, *(c.rows[0] for c in self.chunks), *(c.rows[1] for c in self.chunks)})
        cuts_c = sorted({0, cols, *(c.cols[0] for c in self.chunks), *(c.cols[1] for c in self.chunks)})
        for r0, r1 in zip(cuts_r, cuts_r[1:]):
            for c0, c1 in zip(cuts_c, cuts_c[1:]):
                n = sum(1 for c in self.chunks if c.rows[0] <= r0 and r1 <= c.rows[1] and c.cols[0] <= c0 and c1 <= c.cols[1])
                if n != 1:
                    what = "a hole" if n == 0 else "overlapping chunks"
                    raise CheckpointError(f"{self.name}: the checkpoint's chunks leave {what} at rows [{r0}, {r1}), "
                                          f"columns [{c0}, {c1}) of its {self.shape} tensor")

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, r0: int, r1: int) -> np.ndarray:
        """float32 rows [r0, r1) (a 1-D tensor: its values [r0, r1))."""
        if self.ndim == 1:
            return self._read_block(0, 1, r0, r1)[0]
        return self._read_block(r0, r1, 0, self.shape[1])

    def _read_block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), dtype=np.float32)
        for chunk in self.chunks:
            a0, a1 = max(r0, chunk.rows[0]), min(r1, chunk.rows[1])
            b0, b1 = max(c0, chunk.cols[0]), min(c1, chunk.cols[1])
            if a0 >= a1 or b0 >= b1:
                continue
            out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = _read_rows(chunk.record, a0 - chunk.rows[0], a1 - chunk.rows[0],
                                                                b0 - chunk.cols[0], b1 - chunk.cols[0])
        return out

    def take(self, ids) -> np.ndarray:
        """float32 [len(ids), D]: the rows `ids` (any order, repeats allowed), each run of nearby ids read once."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            bad = int(ids[(ids < 0) | (ids >= self.shape[0])][0])
            raise IndexError(f"{self.name}: row {bad} is out of range for {self.shape[0]} rows")
        unique, inverse = np.unique(ids, return_inverse=True)
        rows = np.empty((unique.shape[0],) + self.shape[1:], dtype=np.float32)
        if self.ndim == 2 and all(_whole_rows(c, self.shape[1]) for c in self.chunks):
            # the common layout (row-wise shards, or none): one descriptor and one pread per run of rows, per chunk
            for chunk in self.chunks:
                lo, hi = np.searchsorted(unique, chunk.rows)
                if hi > lo:
                    rows[lo:hi] = _take_rows(chunk.record, unique[lo:hi] - chunk.rows[0], self.shape[1])
            return rows[inverse]
        start = 0
        while start < unique.shape[0]:
            end = start + 1
            while end < unique.shape[0] and unique[end] - unique[end - 1] <= _MERGE_GAP_ROWS:
                end += 1
            block = self.read(int(unique[start]), int(unique[end - 1]) + 1)
            rows[start:end] = block[unique[start:end] - unique[start]]
            start = end
        return rows[inverse]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            rows = self[key[0]]
            return rows[(slice(None),) + key[1:]]
        if isinstance(key, slice):
            r0, r1, step = key.indices(self.shape[0])
            block = self.read(r0, max(r0, r1)) if step == 1 else self.take(np.arange(r0, r1, step))
            return block
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([int(key)]))[0]
        key = np.asarray(key)
        if key.dtype == np.bool_:
            key = np.flatnonzero(key)
        return self.take(key).reshape(key.shape + self.shape[1:])

    def value(self) -> np.ndarray:
        """The whole tensor as float32."""
        return self.read(0, self.shape[0]).reshape(self.shape)


def _read_rows(record: TensorRecord, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """float32 [r1 - r0, c1 - c0] of a 2-D (or 1-D: one row) tensor record, by pread of the byte span."""
    item = _itemsize(record.dtype)
    row_stride, col_stride = (0,) + record.strides if len(record.shape) == 1 else record.strides
    if col_stride != 1:
        raise CheckpointError(f"{record.file}: a tensor whose columns are not contiguous (strides {record.strides}) "
                              "cannot be read by rows")
    n = r1 - r0
    first = record.offset + (r0 * row_stride + c0) * item
    span = ((n - 1) * row_stride + (c1 - c0)) * item if n else 0
    with open(record.file, "rb", buffering=0) as f:
        raw = os.pread(f.fileno(), span, first) if span else b""
    if len(raw) != span:
        raise CheckpointError(f"{record.file}: ends before the tensor's bytes (needs {span} at {first})")
    values = _values(raw, record.dtype)
    if n == 0:
        return np.empty((0, c1 - c0), dtype=np.float32)
    if n == 1 or row_stride == c1 - c0:
        return values.reshape(n, c1 - c0).astype(np.float32)
    if row_stride < c1 - c0:
        raise CheckpointError(f"{record.file}: a tensor whose rows overlap (strides {record.strides}) is not read by rows")
    padded = np.concatenate([values, np.zeros((row_stride - (c1 - c0)), dtype=values.dtype)])
    return padded.reshape(n, row_stride)[:, : c1 - c0].astype(np.float32)


def _values(raw: bytes, dtype) -> np.ndarray:
    """The little-endian values of `raw` (bfloat16 widened to float32)."""
    if dtype == "bfloat16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


def _whole_rows(chunk: _Chunk, dim: int) -> bool:
    """A chunk holding every column of its rows, stored row after row."""
    return chunk.cols == (0, dim) and tuple(chunk.record.strides) == (dim, 1)


def _take_rows(record: TensorRecord, rows: np.ndarray, dim: int) -> np.ndarray:
    """float32 [len(rows), dim] of the sorted, distinct `rows` of a row-after-row record: runs of rows no more than
    _MERGE_GAP_ROWS apart are read as one span, all through one descriptor."""
    row_bytes = dim * _itemsize(record.dtype)
    cut = np.flatnonzero(np.diff(rows) > _MERGE_GAP_ROWS) + 1
    first = rows[np.concatenate([[0], cut])]
    last = rows[np.concatenate([cut - 1, [rows.shape[0] - 1]])]
    count = last - first + 1  # rows read per run
    with open(record.file, "rb", buffering=0) as f:
        fd = f.fileno()
        if first.shape[0] > _PREFETCH_RUNS:  # a calibration pass reads ~10^5 scattered rows: announced, then read
            will_need(fd, record.offset + first * row_bytes, count * row_bytes)
        raw = b"".join([os.pread(fd, int(n) * row_bytes, record.offset + int(r) * row_bytes) for r, n in zip(first, count)])
    if len(raw) != int(count.sum()) * row_bytes:
        raise CheckpointError(f"{record.file}: ends before the tensor's bytes (rows up to {int(last[-1])})")
    values = _values(raw, record.dtype).reshape(-1, dim)
    run = np.repeat(np.arange(first.shape[0]), np.diff(np.concatenate([[0], cut, [rows.shape[0]]])))
    base = np.cumsum(count) - count  # where each run starts in `values`
    return values[base[run] + rows - first[run]].astype(np.float32, copy=False)


class WholeTensor:
    """A tensor of any rank read whole, in its own dtype (dense parameters and buffers: small)."""

    def __init__(self, name: str, record: TensorRecord):
        self.name, self.record, self.shape, self.ndim = name, record, tuple(record.shape), len(record.shape)

    def value(self) -> np.ndarray:
        r = self.record
        item = _itemsize(r.dtype)
        if not all(self.shape):
            return np.zeros(self.shape, dtype=np.float32 if r.dtype == "bfloat16" else r.dtype)
        extent = sum((d - 1) * st for d, st in zip(self.shape, r.strides)) + 1
        with open(r.file, "rb", buffering=0) as f:
            raw = os.pread(f.fileno(), extent * item, r.offset)
        if len(raw) != extent * item:
            raise CheckpointError(f"{r.file}: ends before the bytes of {self.name!r}")
        flat = _values(raw, r.dtype)
        strided = np.lib.stride_tricks.as_strided(flat, self.shape, tuple(st * flat.itemsize for st in r.strides))
        return np.array(strided)


def _source_of_record(name: str, record: TensorRecord):
    if len(record.shape) != 2 or record.dtype not in (np.float32, np.float16, np.float64, "bfloat16"):
        return WholeTensor(name, record)  # not a table: read whole, in its own dtype
    rows, cols = (1, record.shape[0]) if len(record.shape) == 1 else record.shape
    return TensorSource(name, record.shape, [_Chunk((0, rows), (0, cols), record)])


def _torch_file_sources(path: Path) -> dict[str, TensorSource]:
    obj = _archive_records(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {name: _source_of_record(name, rec) for name, rec in _flatten(obj).items()}


def _dcp_sources(directory: Path) -> dict[str, TensorSource]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise CheckpointError(f"{directory}: not a readable torch.distributed.checkpoint directory: {exc}") from exc
    sources = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if not isinstance(meta, TensorStorageMetadata):
            continue
        if len(meta.size) not in (1, 2):  # a scalar or N-D tensor: one chunk, read whole
            if len(meta.chunks) != 1:
                raise CheckpointError(f"{directory}: {fqn}: a {len(meta.size)}-D tensor in {len(meta.chunks)} chunks is "
                                      "not supported (only tables and 1-D/2-D tensors are joined from shards)")
            info = metadata.storage_data.get(MetadataIndex(fqn, meta.chunks[0].offsets))
            if info is None:
                raise CheckpointError(f"{directory}: {fqn}: no storage for its chunk")
            record = _archive_records(directory / info.relative_path, int(info.offset), int(info.length))
            if not isinstance(record, TensorRecord) or tuple(record.shape) != tuple(meta.size):
                raise CheckpointError(f"{directory}: {fqn}: its chunk does not hold a {list(meta.size)} tensor")
            sources[fqn] = WholeTensor(fqn, record)
            continue
        chunks = []
        for chunk in meta.chunks:
            info = metadata.storage_data.get(MetadataIndex(fqn, chunk.offsets))
            if info is None:
                raise CheckpointError(f"{directory}: {fqn}: no storage for its chunk at {list(chunk.offsets)}")
            if getattr(info, "transform_descriptors", None):
                raise CheckpointError(f"{directory}: {fqn}: chunk stored through transforms {info.transform_descriptors}; "
                                      "only plain chunks are read in place")
            record = _archive_records(directory / info.relative_path, int(info.offset), int(info.length))
            if not isinstance(record, TensorRecord) or tuple(record.shape) != tuple(chunk.sizes):
                raise CheckpointError(f"{directory}: {fqn}: the chunk at {list(chunk.offsets)} does not hold a "
                                      f"{list(chunk.sizes)} tensor")
            offsets, sizes = list(chunk.offsets), list(chunk.sizes)
            if len(meta.size) == 1:
                chunks.append(_Chunk((0, 1), (offsets[0], offsets[0] + sizes[0]), record))
            else:
                chunks.append(_Chunk((offsets[0], offsets[0] + sizes[0]), (offsets[1], offsets[1] + sizes[1]), record))
        sources[fqn] = TensorSource(fqn, tuple(meta.size), chunks)
    return sources


def open_weights(path) -> dict[str, TensorSource]:
    """name → TensorSource of every 1-D and 2-D tensor of a torch.save file or a DCP checkpoint directory. The
    sources name their files by absolute path (they travel to worker processes, which run elsewhere)."""
    path = Path(path).absolute()
    if path.is_dir():
        return _dcp_sources(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return _torch_file_sources(path)
