"""Build checks for the compiled custom-op library: it loads, exports only what it should, has no
CUDA dependency, and both ops run and match a numpy decoding of tables built here byte by byte from
docs/FORMAT.md (independently of shark_export.format). The exhaustive kernel-vs-reference suite lives
elsewhere; this file stays small and fast."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import shark_export
from shark_export import ops

onnxruntime = pytest.importorskip("onnxruntime")

# ----------------------------------------------------------------------------------------------
# Tables written byte by byte per docs/FORMAT.md
# ----------------------------------------------------------------------------------------------
FP32, FP16, INT8, INT4, INT2, DROPPED = range(6)
_BITS = {INT8: 8, INT4: 4, INT2: 2}


def _row_bytes(tier: int, d: int) -> int:
    return {FP32: 4 * d, FP16: 2 * d, INT8: 4 + d, INT4: 4 + (d + 1) // 2, INT2: 4 + (d + 3) // 4, DROPPED: 0}[tier]


def _stride(tier: int, d: int) -> int:
    return (_row_bytes(tier, d) + 3) // 4 * 4


def _encode_row(tier: int, d: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray | None]:
    """Random stored row of `tier` and its exact float32 decoding (None for dropped)."""
    if tier == FP32:
        x = rng.standard_normal(d).astype(np.float32) * 3
        raw, val = x.tobytes(), x
    elif tier == FP16:
        h = (rng.standard_normal(d) * 3).astype(np.float16)
        raw, val = h.tobytes(), h.astype(np.float32)
    elif tier in _BITS:
        bits = _BITS[tier]
        q = rng.integers(0, 2**bits, size=d)
        scale = np.float16(rng.uniform(0.001, 0.5))
        bias = np.float16(rng.uniform(-2, 2))
        per_byte = 8 // bits
        packed = np.zeros(-(-d // per_byte), dtype=np.uint8)
        for j, qj in enumerate(q):
            packed[j // per_byte] |= np.uint8(int(qj) << (bits * (j % per_byte)))
        raw = np.array([scale, bias], dtype=np.float16).tobytes() + packed.tobytes()
        val = (q.astype(np.float64) * float(scale) + float(bias)).astype(np.float32)  # one rounding
    else:
        return b"", None
    return raw + b"\0" * (_stride(tier, d) - len(raw)), val


def make_table(tiers, d: int, seed: int = 0, uniform: bool | None = None):
    """(payload u8, row_meta u64 [blocks,4] or [0,4], default_row f32, decoded rows f32 [R,d], uniform_tier)."""
    rng = np.random.default_rng(seed)
    tiers = np.asarray(tiers, dtype=np.int64)
    r = len(tiers)
    default_row = rng.standard_normal(d).astype(np.float32)
    chunks, rows, offsets = [], np.empty((r, d), np.float32), []
    pos = 0
    for i, t in enumerate(tiers):
        offsets.append(pos)
        raw, val = _encode_row(int(t), d, rng)
        chunks.append(raw)
        pos += len(raw)
        rows[i] = default_row if val is None else val
    payload = np.frombuffer(b"".join(chunks), dtype=np.uint8).copy()
    if uniform is None:
        uniform = bool(np.all(tiers == tiers[0]))
    if uniform:
        meta, ut = np.zeros((0, 4), np.uint64), int(tiers[0])
    else:
        blocks = -(-r // 64)
        meta = np.zeros((blocks, 4), np.uint64)
        for b in range(blocks):
            meta[b, 0] = offsets[64 * b]
            for j, t in enumerate(tiers[64 * b : 64 * b + 64]):
                for k in range(3):
                    if (int(t) >> k) & 1:
                        meta[b, 1 + k] |= np.uint64(1 << j)
        ut = -1
    return payload, meta, default_row, rows, ut


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
def _model(op: str, table, *, n_rows: int, dim: int, out_dtype: int = 1, idx_type=TensorProto.INT64,
           idx_rank: int = 1, offsets: bool = False, weights: bool = False, name: str = "lookup_user",
           format_version: int = 1, **extra_attrs) -> onnx.ModelProto:
    payload, meta, default_row, _, ut = table
    inits = [numpy_helper.from_array(payload, "payload"), numpy_helper.from_array(meta, "row_meta"),
             numpy_helper.from_array(default_row, "default_row")]
    inputs = [helper.make_tensor_value_info("indices", idx_type, [f"n{i}" for i in range(idx_rank)])]
    node_inputs = ["payload", "row_meta", "default_row", "indices"]
    if offsets or weights:
        node_inputs.append("offsets" if offsets else "")
        if offsets:
            inputs.append(helper.make_tensor_value_info("offsets", idx_type, ["b"]))
    if weights:
        node_inputs.append("weights")
        inputs.append(helper.make_tensor_value_info("weights", TensorProto.FLOAT, [f"n{i}" for i in range(idx_rank)]))
    attrs = dict(format_version=format_version, num_rows=n_rows, dim=dim, uniform_tier=ut, output_dtype=out_dtype)
    attrs.update(extra_attrs)
    node = helper.make_node(op, node_inputs, ["out"], domain=ops.DOMAIN, name=name, **attrs)
    out_t = TensorProto.FLOAT16 if out_dtype == 10 else TensorProto.FLOAT
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", out_t, None)], inits)
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)])


def _bag_reference(rows, idx, bounds, weights=None, mean=False, padding_idx=-1):
    """Float32 sums in index order (the kernel's documented order), so results compare exactly."""
    out = np.zeros((len(bounds) - 1, rows.shape[1]), np.float32)
    flat = idx.reshape(-1)
    w = None if weights is None else weights.reshape(-1)
    for b in range(len(bounds) - 1):
        acc = np.zeros(rows.shape[1], np.float32)
        n = 0
        for k in range(bounds[b], bounds[b + 1]):
            if flat[k] == padding_idx:
                continue
            x = rows[flat[k]]
            acc = acc + (x if w is None else np.float32(w[k]) * x)
            n += 1
        if mean and n > 1:
            acc = acc / np.float32(n)
        out[b] = acc
    return out


D = 20  # not a multiple of 8: exercises the vector tails
R_MIXED = 200


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(1)
    mixed_tiers = rng.integers(0, 6, size=R_MIXED)
    mixed_tiers[:6] = np.arange(6)
    return {
        "int8": make_table([INT8] * 300, D, seed=2),
        "fp32": make_table([FP32] * 300, D, seed=3),
        "mixed": make_table(mixed_tiers, D, seed=4),
        # dims 16/32/64 take the AVX2 register-accumulator bag kernels
        "int4_d16": make_table([INT4] * 100, 16, seed=5),
        "mixed_d32": make_table(mixed_tiers, 32, seed=6),
        "fp16_d64": make_table([FP16] * 100, 64, seed=7),
        "int2_d64": make_table([INT2] * 100, 64, seed=8),
    }


# ----------------------------------------------------------------------------------------------
# The library file
# ----------------------------------------------------------------------------------------------
def test_library_path_exists():
    path = shark_export.library_path()
    assert os.path.isfile(path), path
    assert ops.DOMAIN == "shark_export"


def test_library_exports_register_custom_ops():
    import ctypes

    lib = ctypes.CDLL(shark_export.library_path())
    assert hasattr(lib, "RegisterCustomOps")


def _elf_needed(path: str) -> list[str]:
    readelf = shutil.which("readelf")
    if readelf:
        out = subprocess.run([readelf, "-d", path], check=True, capture_output=True, text=True).stdout
        return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    # Minimal ELF64 little-endian parser: DT_NEEDED entries of the dynamic section.
    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "expected an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dyn = next(s for s in sections if s[1] == 6)  # SHT_DYNAMIC
    strtab = sections[dyn[6]]
    needed = []
    for off in range(dyn[4], dyn[4] + dyn[5], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            start = strtab[4] + val
            needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF dependency check is Linux-only")
def test_no_cuda_or_onnxruntime_dependency():
    needed = _elf_needed(shark_export.library_path())
    allowed = re.compile(r"^(libc|libm|libstdc\+\+|libgcc_s|ld-linux[-\w.]*|libpthread|libdl|librt)\.so")
    assert needed, "no NEEDED entries found"
    assert all(allowed.match(n) for n in needed), needed
    assert not any("cuda" in n or "onnxruntime" in n for n in needed), needed


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not (shutil.which("g++") and shutil.which("nm")), reason="needs g++ and nm to compile and read an object")
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="the AVX2 loops exist on x86-64 only")
def test_avx2_object_cannot_replace_a_portable_function(tmp_path):
    """isa_avx2.cc is compiled with AVX2 flags. A weak or global symbol it defines that the portable code
    also uses (an inline helper shared through a header) could be the copy the linker keeps, and a CPU
    without AVX2 would then run AVX2 instructions. At -O0 nothing but always_inline code is inlined, so
    every helper it uses shows up: each must be local, or be tied to Avx2Rows / shark::avx2."""
    obj = tmp_path / "isa_avx2.o"
    subprocess.run(["g++", "-std=c++17", "-O0", "-DSHARK_X86_AVX2_PATH=1", "-mavx2", "-mfma", "-mf16c", "-mpopcnt",
                    "-I", os.path.join(_REPO, "custom_ops"), "-c",
                    os.path.join(_REPO, "custom_ops", "kernels", "isa_avx2.cc"), "-o", str(obj)], check=True)
    listing = subprocess.run(["nm", "-C", "--defined-only", str(obj)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    shared = [line for line in listing if len(line.split()) >= 3 and line.split()[1] not in "trbdn"]
    assert shared, "nm listed no global symbol at all: the check would pass vacuously"
    strays = [line for line in shared if "Avx2Rows" not in line and "shark::avx2::" not in line]
    assert not strays, "AVX2-compiled symbols a portable caller could bind to:\n" + "\n".join(strays)


# ----------------------------------------------------------------------------------------------
# Lookups
# ----------------------------------------------------------------------------------------------
N_LOOKUPS = 2500  # > one parallel task of the gather kernel


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_dtype", [1, 10])
@pytest.mark.parametrize("idx_type", [TensorProto.INT32, TensorProto.INT64])
@pytest.mark.parametrize("kind", ["int8", "fp32", "mixed", "mixed_d32"])
def test_gather_matches_numpy(tables, kind, idx_type, out_dtype, threads):
    t = tables[kind]
    r, d = t[3].shape
    rng = np.random.default_rng(7)
    idx = rng.integers(0, r, size=(N_LOOKUPS // 5, 5))
    idx = idx.astype(np.int32 if idx_type == TensorProto.INT32 else np.int64)
    sess = ops.session(_model("RowwiseDequantGather", t, n_rows=r, dim=d, out_dtype=out_dtype, idx_type=idx_type,
                              idx_rank=2), threads=threads)
    (got,) = sess.run(None, {"indices": idx})
    want = t[3][idx]
    if out_dtype == 10:
        want = want.astype(np.float16)
    assert got.dtype == want.dtype and got.shape == (*idx.shape, d)
    np.testing.assert_array_equal(got, want)


def test_fp16_output_rounds_to_nearest_even():
    vals = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519.99, 65520, -65520, 2**-25, 2**-25 * 1.5, 2**-24 * 0.5,
                     3e-8, -6e-5, 1e-40, 0.1, -0.0, np.float32(np.pi), 7.62939453125e-06], np.float32)
    d = len(vals)
    payload = np.frombuffer(vals.tobytes(), np.uint8).copy()
    table = (payload, np.zeros((0, 4), np.uint64), np.zeros(d, np.float32), vals[None, :], FP32)
    sess = ops.session(_model("RowwiseDequantGather", table, n_rows=1, dim=d, out_dtype=10))
    (got,) = sess.run(None, {"indices": np.zeros(3, np.int64)})
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16)  # numpy: round to nearest even, overflow to inf
    np.testing.assert_array_equal(got.view(np.uint16), np.broadcast_to(want, (3, d)).view(np.uint16))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("out_dtype", [1, 10])
@pytest.mark.parametrize("idx_type", [TensorProto.INT32, TensorProto.INT64])
@pytest.mark.parametrize("kind", ["int8", "mixed", "int4_d16", "mixed_d32", "fp16_d64", "int2_d64"])
def test_embedding_bag_offsets_matches_numpy(tables, kind, idx_type, out_dtype, threads):
    t = tables[kind]
    r, d = t[3].shape
    rng = np.random.default_rng(11)
    sizes = rng.integers(0, 12, size=700)
    sizes[[0, 5, 6]] = 0  # empty bags, including the first
    np_idx = np.int32 if idx_type == TensorProto.INT32 else np.int64
    idx = rng.integers(0, r, size=int(sizes.sum())).astype(np_idx)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np_idx)
    bounds = list(offsets) + [len(idx)]
    for mode, weighted, pad in [(0, False, -1), (1, False, 3), (0, True, 5)]:
        w = rng.standard_normal(len(idx)).astype(np.float32) if weighted else None
        model = _model("RowwiseDequantEmbeddingBag", t, n_rows=r, dim=d, out_dtype=out_dtype, idx_type=idx_type,
                       offsets=True, weights=weighted, mode=mode, padding_idx=pad)
        feeds = {"indices": idx, "offsets": offsets}
        if weighted:
            feeds["weights"] = w
        (got,) = ops.session(model, threads=threads).run(None, feeds)
        want = _bag_reference(t[3], idx, bounds, weights=w, mean=mode == 1, padding_idx=pad)
        if out_dtype == 10:
            want = want.astype(np.float16)
        assert got.dtype == want.dtype and got.shape == (len(sizes), d)
        np.testing.assert_array_equal(got, want, err_msg=f"mode={mode} weighted={weighted} padding_idx={pad}")


@pytest.mark.parametrize("kind", ["mixed", "mixed_d32"])
def test_embedding_bag_2d_and_include_last_offset(tables, kind):
    t = tables[kind]
    D = t[3].shape[1]
    rng = np.random.default_rng(12)
    idx2 = rng.integers(0, R_MIXED, size=(300, 7)).astype(np.int64)
    model = _model("RowwiseDequantEmbeddingBag", t, n_rows=R_MIXED, dim=D, idx_rank=2, mode=1)
    (got,) = ops.session(model, threads=2).run(None, {"indices": idx2})
    np.testing.assert_array_equal(got, _bag_reference(t[3], idx2, [7 * b for b in range(301)], mean=True))

    idx = rng.integers(0, R_MIXED, size=50).astype(np.int64)
    offsets = np.array([0, 10, 10, 30, 45], np.int64)  # 4 bags; indices 45.. are not in any bag
    model = _model("RowwiseDequantEmbeddingBag", t, n_rows=R_MIXED, dim=D, offsets=True, include_last_offset=1)
    (got,) = ops.session(model).run(None, {"indices": idx, "offsets": offsets})
    np.testing.assert_array_equal(got, _bag_reference(t[3], idx, list(offsets)))


def test_empty_inputs(tables):
    t = tables["mixed"]
    (got,) = ops.session(_model("RowwiseDequantGather", t, n_rows=R_MIXED, dim=D)).run(
        None, {"indices": np.zeros((0,), np.int64)})
    assert got.shape == (0, D)
    bag = _model("RowwiseDequantEmbeddingBag", t, n_rows=R_MIXED, dim=D, offsets=True)
    (got,) = ops.session(bag).run(None, {"indices": np.zeros(0, np.int64), "offsets": np.zeros(0, np.int64)})
    assert got.shape == (0, D)
    (got,) = ops.session(bag).run(None, {"indices": np.zeros(0, np.int64), "offsets": np.zeros(3, np.int64)})
    np.testing.assert_array_equal(got, np.zeros((3, D), np.float32))


def test_table_as_graph_inputs_is_checked_every_run(tables):
    """Table tensors fed at run time (not constant initializers) are validated on every run."""
    payload, meta, dflt, rows, ut = tables["mixed"]
    node = helper.make_node("RowwiseDequantGather", ["payload", "row_meta", "default_row", "indices"], ["out"],
                            domain=ops.DOMAIN, name="dyn", format_version=1, num_rows=R_MIXED, dim=D, uniform_tier=ut)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("payload", TensorProto.UINT8, ["n"]),
         helper.make_tensor_value_info("row_meta", TensorProto.UINT64, ["b", 4]),
         helper.make_tensor_value_info("default_row", TensorProto.FLOAT, [D]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, ["k"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, ir_version=10,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)])
    sess = ops.session(model)
    idx = np.arange(R_MIXED, dtype=np.int64)
    feeds = {"payload": payload, "row_meta": meta, "default_row": dflt, "indices": idx}
    np.testing.assert_array_equal(sess.run(None, feeds)[0], rows[idx])
    with pytest.raises(Exception, match="node 'dyn'.*payload has"):
        sess.run(None, dict(feeds, payload=payload[:-4].copy()))
    np.testing.assert_array_equal(sess.run(None, feeds)[0], rows[idx])


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
def _run_error(model, feeds, threads=1) -> str:
    with pytest.raises(Exception) as info:
        ops.session(model, threads=threads).run(None, feeds)
    return str(info.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_out_of_range_index_names_node_value_position_rows(tables, threads):
    t = tables["int8"]
    idx = np.zeros(5000, np.int64)
    idx[17] = 300
    idx[4000] = -1
    msg = _run_error(_model("RowwiseDequantGather", t, n_rows=300, dim=D), {"indices": idx}, threads)
    assert ("RowwiseDequantGather node 'lookup_user': index 300 at position 17 is out of range for table with "
            "300 rows") in msg
    idx[17] = 0
    msg = _run_error(_model("RowwiseDequantGather", t, n_rows=300, dim=D, idx_type=TensorProto.INT64), {"indices": idx})
    assert "index -1 at position 4000 is out of range for table with 300 rows" in msg

    bag = _model("RowwiseDequantEmbeddingBag", tables["mixed"], n_rows=R_MIXED, dim=D, offsets=True, name="bags")
    msg = _run_error(bag, {"indices": np.array([1, 2, 200, 3], np.int64), "offsets": np.array([0, 2], np.int64)})
    assert "RowwiseDequantEmbeddingBag node 'bags': index 200 at position 2 is out of range for table with 200 rows" in msg


def test_unknown_format_version_rejected_at_session_creation(tables):
    with pytest.raises(Exception) as info:
        ops.session(_model("RowwiseDequantGather", tables["int8"], n_rows=300, dim=D, format_version=3))
    assert "node 'lookup_user'" in str(info.value) and "format_version 3" in str(info.value)


def test_truncated_payload_rejected(tables):
    payload, meta, dflt, rows, ut = tables["int8"]
    bad = (payload[:-4].copy(), meta, dflt, rows, ut)
    msg = _run_error(_model("RowwiseDequantGather", bad, n_rows=300, dim=D), {"indices": np.zeros(3, np.int64)})
    assert "node 'lookup_user'" in msg and f"payload has {payload.size - 4} bytes" in msg

    payload, meta, dflt, rows, ut = tables["mixed"]
    bad = (payload[:-4].copy(), meta, dflt, rows, ut)
    msg = _run_error(_model("RowwiseDequantGather", bad, n_rows=R_MIXED, dim=D), {"indices": np.zeros(3, np.int64)})
    assert "node 'lookup_user'" in msg and "payload has" in msg


def test_tier_code_7_rejected(tables):
    payload, meta, dflt, rows, ut = tables["mixed"]
    meta = meta.copy()
    for k in range(3):
        meta[1, 1 + k] |= np.uint64(1 << 9)  # row 73 gets code 7
    msg = _run_error(_model("RowwiseDequantGather", (payload, meta, dflt, rows, ut), n_rows=R_MIXED, dim=D),
                     {"indices": np.zeros(3, np.int64)})
    assert "node 'lookup_user'" in msg and "row 73 has invalid tier code 7" in msg


def test_bad_offsets_rejected(tables):
    model = _model("RowwiseDequantEmbeddingBag", tables["int8"], n_rows=300, dim=D, offsets=True, name="bags")
    idx = np.arange(6, dtype=np.int64)
    msg = _run_error(model, {"indices": idx, "offsets": np.array([1, 3], np.int64)})
    assert "node 'bags'" in msg and "offsets[0] is 1, must be 0" in msg
    msg = _run_error(model, {"indices": idx, "offsets": np.array([0, 4, 2], np.int64)})
    assert "offsets[2] = 2 is less than offsets[1] = 4" in msg
    msg = _run_error(model, {"indices": idx, "offsets": np.array([0, 7], np.int64)})
    assert "offsets[1] = 7 is greater than the number of indices 6" in msg


# ----------------------------------------------------------------------------------------------
# Other CPU code paths, chosen per session by the library's session config entries: the portable
# (non-AVX2) code, and non-temporal output stores forced on for every output size.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [{"cpu_isa": "generic"}, {"stream_bytes": "0"}, {"huge_pages": "0"}],
                         ids=["generic", "stream", "no-huge-pages"])
def test_other_cpu_paths_match(config):
    _other_path_checks(config)


@pytest.mark.parametrize("config,message", [
    ({"cpu_isa": "sse"}, "shark_export.cpu_isa must be 'auto' or 'generic', got 'sse'"),
    ({"stream_bytes": "-4"}, "shark_export.stream_bytes must be a byte count, got '-4'"),
    ({"huge_pages": "yes"}, "shark_export.huge_pages must be '0' or '1', got 'yes'"),
    ({"cuda": "maybe"}, "shark_export.cuda must be 'auto', '0' or 'force', got 'maybe'"),
])
def test_bad_session_config_values_are_named(tables, config, message):
    with pytest.raises(Exception, match=message):
        ops.session(_model("RowwiseDequantGather", tables["int8"], n_rows=300, dim=D), config=config)
    with pytest.raises(ValueError, match="unknown shark_export session config key 'threads'"):
        ops.session(_model("RowwiseDequantGather", tables["int8"], n_rows=300, dim=D), config={"threads": "2"})


def _other_path_checks(config: dict) -> None:
    rng = np.random.default_rng(3)
    for d in (20, 32):  # 32: whole 8-lane rows, so the streaming path applies
        tiers = rng.integers(0, 6, size=R_MIXED)
        for t in (make_table(tiers, d, seed=9), make_table([INT8] * R_MIXED, d, seed=10),
                  make_table([FP16] * R_MIXED, d, seed=11)):
            idx = rng.integers(0, R_MIXED, size=3000).astype(np.int64)
            for out_dtype in (1, 10):
                (got,) = ops.session(_model("RowwiseDequantGather", t, n_rows=R_MIXED, dim=d, out_dtype=out_dtype),
                                     threads=2, config=config).run(None, {"indices": idx})
                want = t[3][idx] if out_dtype == 1 else t[3][idx].astype(np.float16)
                np.testing.assert_array_equal(got, want)
                offsets = np.arange(0, 3000, 6, dtype=np.int64)
                (got,) = ops.session(_model("RowwiseDequantEmbeddingBag", t, n_rows=R_MIXED, dim=d,
                                            out_dtype=out_dtype, offsets=True),
                                     threads=2, config=config).run(None, {"indices": idx, "offsets": offsets})
                want = _bag_reference(t[3], idx, list(offsets) + [3000])
                np.testing.assert_array_equal(got, want if out_dtype == 1 else want.astype(np.float16))
    test_fp16_output_rounds_to_nearest_even()


# ----------------------------------------------------------------------------------------------
# ORT headers from an official-style release archive, checked by sha256 (tools/fetch_ort_headers.sh)
# ----------------------------------------------------------------------------------------------
def test_headers_from_a_release_archive_with_a_checksum(tmp_path):
    import hashlib
    import tarfile

    header = tmp_path / "src" / "onnxruntime-linux-x64-1.21.0" / "include" / "onnxruntime_c_api.h"
    header.parent.mkdir(parents=True)
    header.write_text("/* stand-in for the release's header */\n")
    archive = tmp_path / "onnxruntime-linux-x64-1.21.0.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "onnxruntime-linux-x64-1.21.0", arcname="onnxruntime-linux-x64-1.21.0")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "fetch_ort_headers.sh")

    def fetch(sha):
        env = dict(os.environ, SHARK_ORT_ARCHIVE=str(archive), SHARK_ORT_ARCHIVE_SHA256=sha)
        return subprocess.run(["bash", script, str(tmp_path / "cache")], env=env, capture_output=True, text=True)

    bad = fetch("0" * 64)
    assert bad.returncode != 0 and f"has sha256 {digest}, expected {'0' * 64}" in bad.stderr
    good = fetch(digest)
    assert good.returncode == 0, good.stderr
    include = good.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(include, "onnxruntime_c_api.h")) and include.endswith("include")
    assert fetch(digest).stdout.strip().splitlines()[-1] == include  # cached
