"""ctypes access to the test library ``libshark_export_testlib.so`` (custom_ops/testlib/testlib_api.h).

* ``emu_gather`` / ``emu_bag``: the CUDA kernels' per-group code (custom_ops/cuda/lookup_body.h) run on
  the host, on numpy arrays. Needs no GPU and no CUDA toolkit.
* ``cuda_gather`` / ``cuda_bag``: the CUDA launchers on torch CUDA tensors, enqueued on
  ``torch.cuda.current_stream()``; they return the two error-slot words. Need a testlib built with CUDA
  and a GPU.

``build_testlib(build_dir, cuda=...)`` configures and builds it with CMake (``-DSHARK_BUILD_LIBRARY=OFF
-DSHARK_BUILD_TESTS=ON``: no ONNX Runtime headers needed); ``$SHARK_TESTLIB`` names a prebuilt one.
Used by tests/test_cuda.py and benchmarks/gpu/verify_and_bench.py.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NO_ERROR = (1 << 64) - 1
TESTLIB_ENV = "SHARK_TESTLIB"
_LIB_NAME = "libshark_export_testlib.so"

_P, _U64, _U32, _I32, _I64, _I = (ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int32,
                                   ctypes.c_int64, ctypes.c_int)
_TABLE = [_P, _P, _P, _U64, _U32, _I32, _I32]  # ..., uniform_tier, format_version
_GATHER = [_P, _I, _U64, _P, _I]
_BAG = [_P, _I, _U64, _P, _I, _U64, _I, _U64, _U64, _P, _I, _I64, _P, _I]


def build_testlib(build_dir: str | os.PathLike, cuda: bool = False, cuda_archs: str | None = None,
                  jobs: int | None = None) -> str:
    """Configures and builds the test library under ``build_dir``; returns its path. Raises
    RuntimeError with CMake's output when that fails."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("cmake is not on PATH")
    build_dir = Path(build_dir)
    args = [cmake, "-S", str(REPO), "-B", str(build_dir), "-DSHARK_BUILD_LIBRARY=OFF", "-DSHARK_BUILD_TESTS=ON",
            f"-DSHARK_WITH_CUDA={'ON' if cuda else 'OFF'}", "-DCMAKE_BUILD_TYPE=Release"]
    if cuda and cuda_archs:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs}")
    for cmd in (args, [cmake, "--build", str(build_dir), "-j", str(jobs or os.cpu_count() or 2)]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    path = build_dir / _LIB_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} was not built")
    return str(path)


class TestLib:
    """The loaded test library."""

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        self.lib = lib
        lib.shark_test_group_size.argtypes = [_U32]
        lib.shark_test_group_size.restype = _U32
        lib.shark_emu_gather.argtypes = _TABLE + _GATHER + [_P]
        lib.shark_emu_gather.restype = _I
        lib.shark_emu_bag.argtypes = _TABLE + _BAG + [_P]
        lib.shark_emu_bag.restype = _I
        lib.shark_emu_gather_strided.argtypes = _TABLE + _GATHER + [_U64, _U64, _P]
        lib.shark_emu_gather_strided.restype = _I
        lib.shark_emu_bag_strided.argtypes = _TABLE + _BAG + [_U64, _P]
        lib.shark_emu_bag_strided.restype = _I
        lib.shark_testlib_has_cuda.restype = _I
        lib.shark_emu_misaligned_loads.restype = _U64
        self.has_cuda = bool(lib.shark_testlib_has_cuda())
        if self.has_cuda:
            lib.shark_cuda_gather.argtypes = _TABLE + _GATHER + [_P, _P]
            lib.shark_cuda_gather.restype = _I
            lib.shark_cuda_bag.argtypes = _TABLE + _BAG + [_P, _P]
            lib.shark_cuda_bag.restype = _I
            lib.shark_cuda_gather_strided.argtypes = _TABLE + _GATHER + [_U64, _U64, _P, _P]
            lib.shark_cuda_gather_strided.restype = _I
            lib.shark_cuda_bag_strided.argtypes = _TABLE + _BAG + [_U64, _P, _P]
            lib.shark_cuda_bag_strided.restype = _I
            lib.shark_cuda_error_string.argtypes = [_I]
            lib.shark_cuda_error_string.restype = ctypes.c_char_p
            lib.shark_cuda_runtime_version.restype = _I
            lib.shark_cuda_driver_version.restype = _I

    def misaligned_loads(self) -> int:
        """Word loads the host emulation made (on this thread, so far) at addresses a GPU would reject."""
        return int(self.lib.shark_emu_misaligned_loads())

    def group_size(self, dim: int) -> int:
        return int(self.lib.shark_test_group_size(dim))

    # ---- host emulation (numpy) ---------------------------------------------------------------------
    @staticmethod
    def _table_args(table) -> tuple[list[Any], tuple]:
        payload = np.ascontiguousarray(table.payload)
        meta = np.ascontiguousarray(table.row_meta)
        dflt = np.ascontiguousarray(table.default_row, dtype=np.float32)
        keep = (payload, meta, dflt)
        return [_ptr(payload), _ptr(meta) if int(table.uniform_tier) < 0 else None, _ptr(dflt),
                int(table.num_rows), int(table.dim), int(table.uniform_tier), int(table.format_version)], keep

    def emu_gather(self, table, indices, out_dtype=np.float32, out=None, column=0,
                   out_stride=None) -> tuple[np.ndarray, tuple[int, int]]:
        """Gathers into a fresh [*indices.shape, D] array, or, with ``out`` (a C-contiguous [B, W] array
        of the output dtype), into columns [column, column + L * D) of its rows as a field of
        RowwiseDequantMultiLookup: indices [B, ...] give L = indices.size // B rows per sample, and
        ``out_stride`` (default W) is passed as the elements from one sample's row to the next."""
        idx = np.ascontiguousarray(indices)
        assert idx.dtype in (np.int32, np.int64), idx.dtype
        if out is None:
            out = np.full((*idx.shape, int(table.dim)), 0x7F, dtype=np.dtype(out_dtype))  # garbage: every element must be written
            target, per_sample, stride = _ptr(out), 1, 0
        else:
            per_sample = idx.size // idx.shape[0] if idx.shape[0] else 1
            target, stride = self._block(out, column, per_sample * int(table.dim), out_stride)
        err = np.zeros(2, np.uint64)
        targs, _keep = self._table_args(table)
        rc = self.lib.shark_emu_gather_strided(*targs, _ptr(idx), int(idx.dtype == np.int64), idx.size, target,
                                               int(out.dtype == np.float16), per_sample, stride, _ptr(err))
        assert rc == 0, rc
        return out, (int(err[0]), int(err[1]))

    def emu_bag(self, table, indices, offsets=None, per_sample_weights=None, mode=0, include_last_offset=0,
                padding_idx=-1, out_dtype=np.float32, offsets_dtype=None, out=None, column=0,
                out_stride=None) -> tuple[np.ndarray, tuple[int, int]]:
        """Bags into a fresh [B, D] array, or, with ``out`` (C-contiguous [B, W]), into its columns
        [column, column + D) (``out_stride`` default W), as a field of RowwiseDequantMultiLookup."""
        idx = np.ascontiguousarray(indices)
        n_bags, bag_len, off, n_off = _bag_shape(idx, offsets, include_last_offset, offsets_dtype)
        w = None if per_sample_weights is None else np.ascontiguousarray(per_sample_weights, dtype=np.float32)
        if out is None:
            out = np.full((n_bags, int(table.dim)), 0x7F, dtype=np.dtype(out_dtype))
            target, stride = _ptr(out), 0
        else:
            assert out.shape[0] == n_bags, (out.shape, n_bags)
            target, stride = self._block(out, column, int(table.dim), out_stride)
        err = np.zeros(2, np.uint64)
        targs, _keep = self._table_args(table)
        rc = self.lib.shark_emu_bag_strided(*targs, _ptr(idx), int(idx.dtype == np.int64), idx.size, _ptr(off),
                                            int(off is not None and off.dtype == np.int64), n_off,
                                            int(include_last_offset), bag_len, n_bags, _ptr(w), int(mode),
                                            int(padding_idx), target, int(out.dtype == np.float16), stride, _ptr(err))
        assert rc == 0, rc
        return out, (int(err[0]), int(err[1]))

    @staticmethod
    def _block(out: np.ndarray, column: int, block_width: int, out_stride) -> tuple[int | None, int]:
        """Address of column ``column`` of ``out``'s first row, and the row stride in elements."""
        assert out.ndim == 2 and out.flags.c_contiguous and out.dtype in (np.float32, np.float16), (out.shape, out.dtype)
        assert 0 <= column and column + block_width <= out.shape[1], (column, block_width, out.shape)
        stride = out.shape[1] if out_stride is None else int(out_stride)
        return (out.ctypes.data + column * out.itemsize if out.size else None), stride

    # ---- CUDA launchers (torch CUDA tensors) --------------------------------------------------------------
    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: CUDA error {rc}: {self.lib.shark_cuda_error_string(rc).decode()}")

    def cuda_gather(self, dev_table: "DeviceTable", idx, out, err_slot, stream: int | None = None) -> None:
        """Enqueues the gather of torch CUDA tensor ``idx`` into ``out`` (float32/float16, [*idx.shape, D]) on
        ``stream`` (default: torch's current stream). ``err_slot``: a CUDA int64/uint64 tensor of 2 elements."""
        import torch

        s = torch.cuda.current_stream().cuda_stream if stream is None else stream
        rc = self.lib.shark_cuda_gather(*dev_table.args(), idx.data_ptr(), int(idx.dtype == torch.int64), idx.numel(),
                                        out.data_ptr(), int(out.dtype == torch.float16), err_slot.data_ptr(), s)
        self._check(rc, "shark_cuda_gather")

    def cuda_bag(self, dev_table: "DeviceTable", idx, out, err_slot, offsets=None, per_sample_weights=None, mode=0,
                 include_last_offset=0, padding_idx=-1, stream: int | None = None, column: int | None = None) -> None:
        """With ``column``: a bag field of RowwiseDequantMultiLookup, into columns [column, column + D) of
        ``out`` (a contiguous CUDA [B, W] tensor)."""
        import torch

        s = torch.cuda.current_stream().cuda_stream if stream is None else stream
        if idx.dim() == 2:
            n_bags, bag_len, n_off = idx.shape[0], idx.shape[1], 0
        else:
            n_off = offsets.numel()
            n_bags, bag_len = (n_off - 1 if include_last_offset else n_off), 0
        target, stride = out.data_ptr(), 0
        if column is not None:
            target, stride = out.data_ptr() + column * out.element_size(), out.shape[1]
        rc = self.lib.shark_cuda_bag_strided(
            *dev_table.args(), idx.data_ptr(), int(idx.dtype == torch.int64), idx.numel(),
            None if offsets is None else offsets.data_ptr(), int(offsets is not None and offsets.dtype == torch.int64),
            n_off, int(include_last_offset), bag_len, n_bags,
            None if per_sample_weights is None else per_sample_weights.data_ptr(), int(mode), int(padding_idx),
            target, int(out.dtype == torch.float16), stride, err_slot.data_ptr(), s)
        self._check(rc, "shark_cuda_bag")

    def cuda_gather_block(self, dev_table: "DeviceTable", idx, out, column: int, err_slot,
                          stream: int | None = None) -> None:
        """A gather field of RowwiseDequantMultiLookup: torch CUDA ``idx`` [B, ...] into columns
        [column, column + L * D) of ``out`` (a contiguous CUDA [B, W] tensor)."""
        import torch

        s = torch.cuda.current_stream().cuda_stream if stream is None else stream
        per_sample = idx.numel() // idx.shape[0] if idx.shape[0] else 1
        rc = self.lib.shark_cuda_gather_strided(
            *dev_table.args(), idx.data_ptr(), int(idx.dtype == torch.int64), idx.numel(),
            out.data_ptr() + column * out.element_size(), int(out.dtype == torch.float16), per_sample, out.shape[1],
            err_slot.data_ptr(), s)
        self._check(rc, "shark_cuda_gather_strided")


class DeviceTable:
    """A QuantizedTable's three tensors as torch CUDA tensors (or raw CUDA uint8/uint64/float32 tensors)."""

    def __init__(self, payload, row_meta, default_row, num_rows: int, dim: int, uniform_tier: int,
                 format_version: int = 2):
        self.payload, self.row_meta, self.default_row = payload, row_meta, default_row
        self.num_rows, self.dim, self.uniform_tier = int(num_rows), int(dim), int(uniform_tier)
        self.format_version = int(format_version)

    @classmethod
    def from_table(cls, table, device="cuda") -> "DeviceTable":
        import torch

        meta = np.ascontiguousarray(table.row_meta).view(np.int64)  # torch has no uint64 ops; bits are kept
        return cls(torch.from_numpy(np.ascontiguousarray(table.payload)).to(device),
                   torch.from_numpy(meta.copy()).to(device),
                   torch.from_numpy(np.ascontiguousarray(table.default_row, dtype=np.float32)).to(device),
                   table.num_rows, table.dim, table.uniform_tier, table.format_version)

    def args(self) -> list[Any]:
        meta = self.row_meta.data_ptr() if (self.uniform_tier < 0 and self.row_meta.numel()) else None
        payload = self.payload.data_ptr() if self.payload.numel() else None
        dflt = self.default_row.data_ptr() if self.default_row.numel() else None
        return [payload, meta, dflt, self.num_rows, self.dim, self.uniform_tier, self.format_version]


def _ptr(a) -> int | None:
    if a is None:
        return None
    return a.ctypes.data if a.size else None


def _bag_shape(idx: np.ndarray, offsets, include_last_offset, offsets_dtype):
    if idx.ndim == 2:
        assert offsets is None
        return idx.shape[0], idx.shape[1], None, 0
    assert idx.ndim == 1 and offsets is not None
    off = np.ascontiguousarray(offsets, dtype=offsets_dtype or idx.dtype)
    n_off = off.size
    return (n_off - 1 if include_last_offset else n_off), 0, off, n_off


def load(path: str | None = None) -> TestLib:
    return TestLib(path or os.environ[TESTLIB_ENV])
