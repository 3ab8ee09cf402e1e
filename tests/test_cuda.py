"""The CUDA kernels (issue 5), as far as a machine without a GPU can check them, plus the GPU checks.

1. The library as installed: no CUDA entry among its DT_NEEDED (the CUDA runtime is linked statically and
   loads libcuda itself, lazily), CUDA device code inside when it was built with CUDA, and the CPU path
   unchanged with the CUDA kernel variants registered (session config shark_export.cuda=force) or not (=0).
2. The CUDA kernels' code on the host: custom_ops/cuda/lookup_body.h (row location, unit loads, decoding,
   fp16 rounding, bag accumulation, offsets/index checks) is compiled with the host compiler into the test
   library (libshark_export_testlib.so, CMake -DSHARK_BUILD_TESTS=ON; built here into a temporary directory
   unless $SHARK_TESTLIB names one) and run lane by lane. Gathers must equal shark_export.reference bit for
   bit, bags the CPU kernel bit for bit (both sum each element in index order with the same float32
   operations), and the error slot must name the positions the CPU kernel names.
3. GPU (marker ``cuda``): the ORT CUDA execution provider path and the CUDA launchers through ctypes on torch
   CUDA tensors. They skip, with the reason shown by ``-ra``, when there is no GPU / CUDA provider / CUDA
   test library -- they never pass without running.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cuda_testlib import (_BAG, _GATHER, _TABLE, NO_ERROR, TESTLIB_ENV, DeviceTable, _bag_shape, _ptr, build_testlib,
                          load)
from cuda_testlib import TestLib as _TestLib  # not collected as a test class
from op_models import bag_model, gather_model, multi_model
from test_ops import as_mixed, assert_bits_equal, make_table, random_bags, run_bag, run_gather

import shark_export
from shark_export import reference as ref
from shark_export.format import Tier, row_stride
from shark_export.quantize import quantize_table

TIER_NAMES = [t.name.lower() for t in Tier]
DIMS = [1, 2, 3, 5, 7, 8, 13, 20, 64, 100, 257]


# --------------------------------------------------------------------------------------------------
# 1. The library
# --------------------------------------------------------------------------------------------------
def _elf_sections(path: str) -> list[str]:
    data = open(path, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "expected an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sh = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = sh[shstrndx][4]
    return [data[strtab + s[0]:data.index(b"\0", strtab + s[0])].decode() for s in sh]


def _needed(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _built_with_cuda(path: str) -> bool:
    return ".nv_fatbin" in _elf_sections(path)


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                    reason="needs Linux and readelf")
def test_library_needs_no_cuda_library():
    path = shark_export.library_path()
    needed = _needed(path)
    assert needed and not any("cuda" in n or "cudart" in n or "nvidia" in n for n in needed), needed
    if _built_with_cuda(path):  # the static runtime must not leak into the exported symbols either
        out = subprocess.run(["readelf", "--dyn-syms", "-W", path], check=True, capture_output=True, text=True).stdout
        exported = {line.split()[-1] for line in out.splitlines()
                    if re.search(r"\bGLOBAL\b.*\bDEFAULT\b\s+\d+\s", line)}
        assert exported == {"RegisterCustomOps"}, sorted(exported)[:20]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF check is Linux-only")
def test_library_contains_cuda_kernels_when_asked_for():
    """SHARK_WITH_CUDA=ON pip install . (CI sets it) must put the kernels in; the default is a CPU library."""
    path = shark_export.library_path()
    has = _built_with_cuda(path)
    if not has:
        if os.environ.get("SHARK_WITH_CUDA", "").upper() == "ON":
            pytest.fail(f"SHARK_WITH_CUDA=ON but {path} has no CUDA device code (.nv_fatbin): was it built "
                        f"with another setting?")
        pytest.skip("library built without its CUDA kernels (SHARK_WITH_CUDA=ON compiles them)")
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        out = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", path], capture_output=True, text=True).stdout
        for arch in ("sm_80", "sm_90"):
            assert arch in out, out
        assert re.search(r"ptx.*(compute_|sm_)90", out), out


_CPU_CHECK = textwrap.dedent("""
    import numpy as np, sys
    sys.path.insert(0, {tests!r})
    import shark_export
    from shark_export import reference as ref
    from shark_export.quantize import quantize_table
    from op_models import bag_model, gather_model, multi_model
    config = {{"cuda": {mode!r}}}
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=300)
    t = quantize_table(rng.standard_normal((300, 20)).astype(np.float32), codes, name="t",
                       default_row=rng.standard_normal(20).astype(np.float32))
    idx = rng.integers(0, 300, size=1000)
    for dt in (np.float32, np.float16):
        (got,) = shark_export.session(gather_model(t, out_dtype=dt), config=config).run(None, {{"indices": idx}})
        assert (got.view(np.uint8) == ref.gather(t, idx, dt).view(np.uint8)).all()
    offsets = np.arange(0, 1000, 7)
    (got,) = shark_export.session(bag_model(t, mode=1), config=config).run(None, {{"indices": idx, "offsets": offsets}})
    want = ref.embedding_bag(t, idx, offsets, mode=1)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    try:
        shark_export.session(gather_model(t), config=config).run(None, {{"indices": np.array([300])}})
        raise SystemExit("no error for index 300")
    except Exception as e:
        assert "index 300 at position 0 is out of range for table with 300 rows" in str(e), e
    print("CPU OK")
""")


@pytest.mark.parametrize("mode", ["force", "0"])
def test_cpu_path_with_and_without_cuda_variants(mode, tmp_path):
    """Session config shark_export.cuda=force registers the CUDA kernel variants even without a driver (ORT
    then holds four variants per op name); CPU sessions must behave exactly as before. =0 never registers them."""
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(shark_export.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, os.environ.get("PYTHONPATH", "")]))
    code = _CPU_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)), mode=mode)
    # cwd outside the checkout: `python -c` puts cwd first on sys.path, which would shadow the installed package
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0 and "CPU OK" in res.stdout, res.stdout + res.stderr


# --------------------------------------------------------------------------------------------------
# 2. The kernels' code on the host
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def testlib(tmp_path_factory):
    path = os.environ.get(TESTLIB_ENV)
    if not path:
        try:
            path = build_testlib(tmp_path_factory.mktemp("testlib"), cuda=False)
        except RuntimeError as e:
            pytest.fail(f"could not build the test library: {e}")
    return load(path)


def test_group_size(testlib):
    want = {1: 1, 4: 1, 5: 2, 8: 2, 13: 4, 16: 4, 20: 8, 32: 8, 33: 16, 64: 16, 100: 32, 128: 32, 65536: 32}
    assert {d: testlib.group_size(d) for d in want} == want


def _tables_for(D: int):
    for name in TIER_NAMES + ["all6", "skewed"]:
        table, w = make_table(150, D, name, seed=D)
        yield name, table
        if name in TIER_NAMES:
            yield name + "_as_mixed", as_mixed(table)
        spec = name if name in TIER_NAMES else table.tiers()
        yield name + "_v1", quantize_table(w, spec, name=name + "_v1", default_row=table.default_row, format_version=1)
    w = make_table(150, D, "fp32", seed=D)[1]
    yield "no_default_row", quantize_table(w, np.arange(150) % 5, name="no_default_row")  # v2, nothing dropped


@pytest.fixture
def aligned_loads_only(testlib):
    """The emulation counts word loads a GPU would reject as misaligned: there must be none (v2 rows start
    at any byte)."""
    before = testlib.misaligned_loads()
    yield
    assert testlib.misaligned_loads() == before, "a kernel made a misaligned word load"


@pytest.mark.parametrize("D", DIMS)
def test_emu_gather_matches_reference(testlib, aligned_loads_only, D):
    rng = np.random.default_rng(D)
    for name, table in _tables_for(D):
        idx = rng.integers(0, table.num_rows, size=257)
        idx[:2] = [0, table.num_rows - 1]
        for index_dtype in (np.int32, np.int64):
            for out_dtype in (np.float32, np.float16):
                got, err = testlib.emu_gather(table, idx.astype(index_dtype), out_dtype)
                assert err == (NO_ERROR, NO_ERROR)
                assert_bits_equal(got, ref.gather(table, idx, out_dtype), f"emu gather {name} D={D} "
                                  f"{np.dtype(index_dtype)} -> {np.dtype(out_dtype)}")


def test_emu_fp16_output_rounds_to_nearest_even(testlib):
    vals = np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504, 65519.99, 65520, -65520, 2**-25, 2**-25 * 1.5, 2**-24 * 0.5,
                     3e-8, -6e-5, 1e-40, 0.1, -0.0, np.float32(np.pi), 7.62939453125e-06], np.float32)
    t = quantize_table(vals[None, :], "fp32", name="edge")
    got, _ = testlib.emu_gather(t, np.zeros(3, np.int64), np.float16)
    with np.errstate(over="ignore"):
        want = np.broadcast_to(vals.astype(np.float16), (3, len(vals)))
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_emu_gather_out_of_range_reads_nothing_and_reports_lowest(testlib):
    table, _ = make_table(200, 13, "all6", seed=3)
    idx = np.arange(50, dtype=np.int64) % 200
    idx[[7, 30, 31]] = [200, -1, 10**12]
    got, err = testlib.emu_gather(table, idx)
    assert err == (7, NO_ERROR)
    assert not got[[7, 30, 31]].any()  # zero rows
    ok = np.setdiff1d(np.arange(50), [7, 30, 31])
    assert_bits_equal(got[ok], ref.gather(table, idx[ok]), "rows around bad indices")
    got, err = testlib.emu_gather(table, idx.astype(np.int32))  # 10**12 wraps in int32: still bad or not
    assert err[0] == 7


def _bag_cases(rng, R):
    idx, offsets = random_bags(rng, 120, R, max_len=20)
    yield dict(indices=idx, offsets=offsets)
    yield dict(indices=idx, offsets=offsets, mode=1, padding_idx=3)
    yield dict(indices=idx, offsets=offsets, per_sample_weights=rng.standard_normal(idx.size).astype(np.float32),
               padding_idx=5)
    ilo = np.append(offsets[offsets <= idx.size - 2], idx.size - 2).astype(offsets.dtype)
    yield dict(indices=idx, offsets=ilo, include_last_offset=1)  # B + 1 offsets, 2 trailing indices in no bag
    yield dict(indices=rng.integers(0, R, size=(40, 9)), mode=1)
    yield dict(indices=rng.integers(0, R, size=(40, 9)),
               per_sample_weights=rng.standard_normal((40, 9)).astype(np.float32))
    yield dict(indices=np.zeros((5, 0), np.int64))  # 2-D empty bags


@pytest.mark.parametrize("D", [1, 3, 13, 64, 130, 600])
def test_emu_bag_equals_cpu_kernel_bitwise(testlib, aligned_loads_only, D):
    """Bags sum each element in index order with the CPU kernel's float32 operations: equal bit for bit.
    D = 600 takes five column tiles per bag."""
    rng = np.random.default_rng(D)
    for name, table in _tables_for(D):
        for case in _bag_cases(rng, table.num_rows):
            for out_dtype in (np.float32, np.float16):
                for index_dtype in (np.int64, np.int32):
                    c = dict(case, indices=case["indices"].astype(index_dtype))
                    if "offsets" in c:
                        c["offsets"] = c["offsets"].astype(index_dtype)
                    got, err = testlib.emu_bag(table, out_dtype=out_dtype, **c)
                    assert err == (NO_ERROR, NO_ERROR), (name, case.keys())
                    want = run_bag(table, c["indices"], offsets=c.get("offsets"), psw=c.get("per_sample_weights"),
                                   mode=c.get("mode", 0), include_last_offset=c.get("include_last_offset", 0),
                                   padding_idx=c.get("padding_idx", -1), out_dtype=out_dtype)
                    assert_bits_equal(got, want, f"emu bag {name} D={D} {sorted(c)} -> {np.dtype(out_dtype)}")


def test_emu_bag_errors_name_the_cpu_positions(testlib):
    table, _ = make_table(200, 13, "all6", seed=5)
    idx = np.arange(40, dtype=np.int64)
    bad = idx.copy()
    bad[[12, 33]] = [-3, 200]
    _, err = testlib.emu_bag(table, bad, offsets=np.array([0, 10, 20], np.int64))
    assert err == (12, NO_ERROR)
    # include_last_offset: indices after the last bag are range-checked too (and read by no bag)
    tail = idx.copy()
    tail[38] = 999
    out, err = testlib.emu_bag(table, tail, offsets=np.array([0, 10, 30], np.int64), include_last_offset=1)
    assert err == (38, NO_ERROR) and out.shape == (2, 13)
    _, err = testlib.emu_bag(table, tail, offsets=np.array([0], np.int64), include_last_offset=1)  # no bags at all
    assert err == (38, NO_ERROR)
    _, err = testlib.emu_bag(table, bad.reshape(4, 10))
    assert err == (12, NO_ERROR)
    # offsets: the same first bad i as the CPU kernel's message
    for offsets, i in [([1, 3], 0), ([0, 4, 2, 1], 2), ([0, 7, 41], 2), ([0, -1], 1), ([0, 5, 5, 50, 3], 3)]:
        _, err = testlib.emu_bag(table, idx, offsets=np.array(offsets, np.int64))
        assert err[1] == i, (offsets, err)
        sess = shark_export.session(bag_model(table, name="b"))
        with pytest.raises(Exception, match=rf"offsets\[{i}\]"):
            sess.run(None, {"indices": idx, "offsets": np.array(offsets, np.int64)})


# RowwiseDequantMultiLookup on CUDA: one gather / bag launch per field into the field's column block of
# the [B, W] output (GatherParams / BagParams out_stride). Emulated here field by field into one array.
MULTI_B = 203


def _multi_case(rng, index_dtype=np.int64, B=MULTI_B):
    """(fields for op_models.multi_model, feeds per field): every kind, tiers uniform / mixed / v1, dims that
    put blocks at unaligned columns (13, 5, 7, 3), a [B, 3] and a [B, 1] gather, weighted and mean bags,
    include_last_offset with trailing indices in no bag, padding, empty bags."""
    t_mixed = make_table(300, 20, "all6", seed=11)[0]
    t_int8 = make_table(150, 13, "int8", seed=12)[0]
    t_int4 = as_mixed(make_table(120, 5, "int4", seed=13)[0])
    w16 = make_table(90, 7, "fp16", seed=14)[1]
    t_fp16_v1 = quantize_table(w16, "fp16", name="fp16_v1", format_version=1)
    t_int2 = make_table(200, 64, "int2", seed=15)[0]
    t_skew = make_table(250, 3, "skewed", seed=16)[0]
    ids = lambda t, shape: rng.integers(0, t.num_rows, size=shape).astype(index_dtype)  # noqa: E731
    lengths = rng.integers(0, 6, size=B)
    lengths[[0, B // 2, B - 1]] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(index_dtype)
    n_bag = int(lengths.sum())
    lengths2 = rng.integers(0, 4, size=B)
    offsets2 = np.concatenate([[0], np.cumsum(lengths2)]).astype(index_dtype)  # B + 1 entries
    fields = [
        dict(table=t_mixed, kind=0, name="user"),
        dict(table=t_int8, kind=0, index_rank=2, name="history"),                              # [B, 3]
        dict(table=t_int2, kind=2, weights=True, name="tags"),                                 # weighted sum
        dict(table=t_fp16_v1, kind=1, mode=1, padding_idx=5, name="slots"),                    # 2-D mean
        dict(table=t_int4, kind=0, index_rank=2, name="item"),                                 # [B, 1], mixed
        dict(table=t_skew, kind=2, mode=1, include_last_offset=1, name="pages"),
        dict(table=t_mixed, kind=1, name="user_bag"),                                          # shares a table
    ]
    feeds = [
        dict(indices=ids(t_mixed, B)),
        dict(indices=ids(t_int8, (B, 3))),
        dict(indices=ids(t_int2, n_bag), offsets=offsets, weights=rng.standard_normal(n_bag).astype(np.float32)),
        dict(indices=ids(t_fp16_v1, (B, 4))),
        dict(indices=ids(t_int4, (B, 1))),
        dict(indices=ids(t_skew, int(lengths2.sum()) + 2), offsets=offsets2),
        dict(indices=ids(t_mixed, (B, 2))),
    ]
    feeds[3]["indices"][::5, 2] = 5  # padding entries
    for f in fields:
        f["index_dtype"] = index_dtype
    return fields, feeds


def _multi_graph_feeds(feeds):
    out = {}
    for k, f in enumerate(feeds):
        out[f"indices{k}"] = f["indices"]
        if "offsets" in f:
            out[f"offsets{k}"] = f["offsets"]
        if "weights" in f:
            out[f"weights{k}"] = f["weights"]
    return out


def _block_width(field, feed):
    idx = feed["indices"]
    return (idx.size // idx.shape[0] if field["kind"] == 0 else 1) * int(field["table"].dim)


def _emu_field(testlib, field, feed, out, column):
    """Field `field` emulated into columns [column, column + width) of `out`; its error slot."""
    if field["kind"] == 0:
        _, err = testlib.emu_gather(field["table"], feed["indices"], out=out, column=column)
    else:
        _, err = testlib.emu_bag(field["table"], feed["indices"], offsets=feed.get("offsets"),
                                 per_sample_weights=feed.get("weights"), mode=field.get("mode", 0),
                                 include_last_offset=field.get("include_last_offset", 0),
                                 padding_idx=field.get("padding_idx", -1), out=out, column=column)
    return err


def _emu_multi(testlib, fields, feeds, out_dtype, fill=0x7F):
    """The CUDA multi lookup emulated: every field into one [B, W] array (filled with garbage first, so
    every element must be written); the error slot of each field."""
    widths = [_block_width(f, feed) for f, feed in zip(fields, feeds)]
    B = feeds[0]["indices"].shape[0] if fields[0]["kind"] != 2 else len(feeds[0]["offsets"]) - fields[0].get(
        "include_last_offset", 0)
    out = np.full((B, sum(widths)), fill, dtype=np.dtype(out_dtype))
    errs, column = [], 0
    for f, feed, w in zip(fields, feeds, widths):
        errs.append(_emu_field(testlib, f, feed, out, column))
        column += w
    return out, errs


def _reference_multi(fields, feeds):
    entries = []
    for f, feed in zip(fields, feeds):
        e = dict(table=f["table"], indices=feed["indices"], bag=f["kind"] != 0)
        if e["bag"]:
            e.update(offsets=feed.get("offsets"), per_sample_weights=feed.get("weights"), mode=f.get("mode", 0),
                     include_last_offset=f.get("include_last_offset", 0), padding_idx=f.get("padding_idx", -1))
        entries.append(e)
    return ref.multi_lookup(entries, output_dtype=np.float32)


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_emu_multi_lookup_equals_cpu_op_and_reference(testlib, aligned_loads_only, index_dtype, out_dtype):
    """Each field emulated into its block of one [B, W] array: the whole array equals the CPU
    RowwiseDequantMultiLookup bit for bit; gather blocks equal shark_export.reference bit for bit, bag blocks
    agree with it within float32 summation error (the CPU op and the kernels sum in index order)."""
    rng = np.random.default_rng(21)
    fields, feeds = _multi_case(rng, index_dtype)
    got, errs = _emu_multi(testlib, fields, feeds, out_dtype)
    assert errs == [(NO_ERROR, NO_ERROR)] * len(fields)
    (cpu,) = shark_export.session(multi_model(fields, out_dtype=out_dtype)).run(None, _multi_graph_feeds(feeds))
    assert got.shape == cpu.shape == (MULTI_B, 20 + 3 * 13 + 64 + 7 + 5 + 3 + 20)
    assert_bits_equal(got, cpu, f"emulated multi lookup vs CPU op -> {np.dtype(out_dtype)}")
    want = _reference_multi(fields, feeds)
    column = 0
    for f, feed in zip(fields, feeds):
        w = _block_width(f, feed)
        block, want_block = got[:, column:column + w], want[:, column:column + w].astype(out_dtype)
        if f["kind"] == 0:
            assert_bits_equal(np.ascontiguousarray(block), want_block, f"gather field {f['name']}")
        else:
            scale = np.abs(want_block.astype(np.float64)).max() + 1e-30
            np.testing.assert_allclose(block.astype(np.float64), want_block.astype(np.float64),
                                       rtol=2e-3 if out_dtype == np.float16 else 1e-5, atol=1e-6 * scale,
                                       err_msg=f"bag field {f['name']}")
        column += w
    assert column == got.shape[1]


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_emu_field_writes_only_its_block(testlib, out_dtype):
    """A field alone into a sentinel-filled [B, W] array: its block equals the field's own op (bits), every
    column outside it keeps the sentinel (no store strays into a neighbour's block, partial units included)."""
    rng = np.random.default_rng(22)
    fields, feeds = _multi_case(rng)
    widths = [_block_width(f, feed) for f, feed in zip(fields, feeds)]
    W = sum(widths) + 3  # 3 spare columns at the end of every row, never written
    sentinel = np.array(0x7BCD if out_dtype == np.float16 else 0x7FC0BEEF,
                        np.uint16 if out_dtype == np.float16 else np.uint32)
    column = 0
    for f, feed, w in zip(fields, feeds, widths):
        out = np.full((MULTI_B, W), sentinel).view(np.dtype(out_dtype))
        err = _emu_field(testlib, f, feed, out, column)
        assert err == (NO_ERROR, NO_ERROR)
        alone = _emu_multi(testlib, [f], [feed], out_dtype)[0]  # the field written back to back
        assert_bits_equal(np.ascontiguousarray(out[:, column:column + w]), alone, f"block of {f['name']}")
        outside = np.concatenate([out[:, :column], out[:, column + w:]], axis=1).view(sentinel.dtype)
        assert outside.size and (outside == sentinel).all(), f"{f['name']} wrote outside columns [{column}, {column + w})"
        column += w


def test_emu_multi_lookup_errors_per_field_match_cpu_op(testlib):
    """One error slot per field: a bad index of a [B, 3] gather and bad offsets of a later bag are each
    reported in their own field's slot, at the positions the CPU op names (it reports bad offsets of any
    field before out-of-range indices; so must the CUDA op from the slots)."""
    rng = np.random.default_rng(23)
    fields, feeds = _multi_case(rng)
    feeds[1]["indices"][[40, 100], [2, 0]] = [150, -4]  # "history": flat positions 122 and 300
    _, errs = _emu_multi(testlib, fields, feeds, np.float32)
    assert errs == [(NO_ERROR, NO_ERROR), (122, NO_ERROR)] + [(NO_ERROR, NO_ERROR)] * (len(fields) - 2)
    session = shark_export.session(multi_model(fields))
    with pytest.raises(Exception, match=r"RowwiseDequantMultiLookup node 'multi_node': field 'history': index 150 at "
                                        r"position 122 is out of range for table with 150 rows"):
        session.run(None, _multi_graph_feeds(feeds))
    feeds[5]["offsets"][7] = feeds[5]["offsets"][6] - 1  # "pages": decreasing offsets at 7
    _, errs = _emu_multi(testlib, fields, feeds, np.float32)
    assert errs[1] == (122, NO_ERROR) and errs[5][1] == 7
    with pytest.raises(Exception, match=r"field 'pages': offsets\[7\] = -?\d+ is less than offsets\[6\]"):
        session.run(None, _multi_graph_feeds(feeds))


def test_emu_refuses_overlapping_layouts(testlib):
    """An out_stride smaller than the rows it must hold is refused before anything is written."""
    table, _ = make_table(50, 8, "int8", seed=4)
    idx = np.zeros((4, 2), np.int64)
    out = np.zeros((4, 16), np.float32)
    with pytest.raises(AssertionError, match="-2"):
        testlib.emu_gather(table, idx, out=out, column=0, out_stride=15)  # 2 rows of 8 need 16
    with pytest.raises(AssertionError, match="-2"):
        testlib.emu_bag(table, idx, out=out, column=0, out_stride=7)
    assert not out.any()


# --------------------------------------------------------------------------------------------------
# Format v3 (scale groups): the emulated kernels through the test library's *_ex entry points, which
# also take the payload's length (it ends with the group section) and scale_group_rows.
# --------------------------------------------------------------------------------------------------
V3_DIMS = [1, 3, 5, 16, 64]
V3_GROUPS = [1, 64, 256]
V3_ROWS = 300  # G = 64: 5 groups, the last one partial; G = 256: 2


def _ex_lib(testlib):
    """The test library's ctypes handle with the *_ex signatures set (cuda_testlib predates them)."""
    lib = testlib.lib
    group = [ctypes.c_uint64, ctypes.c_int64]
    lib.shark_emu_gather_ex.argtypes = _TABLE + group + _GATHER + [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p]
    lib.shark_emu_gather_ex.restype = ctypes.c_int
    lib.shark_emu_bag_ex.argtypes = _TABLE + group + _BAG + [ctypes.c_uint64, ctypes.c_void_p]
    lib.shark_emu_bag_ex.restype = ctypes.c_int
    if testlib.has_cuda:
        lib.shark_cuda_gather_ex.argtypes = _TABLE + group + _GATHER + [ctypes.c_uint64, ctypes.c_uint64,
                                                                         ctypes.c_void_p, ctypes.c_void_p]
        lib.shark_cuda_gather_ex.restype = ctypes.c_int
        lib.shark_cuda_bag_ex.argtypes = _TABLE + group + _BAG + [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p]
        lib.shark_cuda_bag_ex.restype = ctypes.c_int
    return lib


def _group_args(table) -> list[int]:
    return [int(np.asarray(table.payload).size), int(getattr(table, "scale_group_rows", 0) or 0)]


def _emu_gather_ex(testlib, table, indices, out_dtype=np.float32, out=None, column=0):
    """TestLib.emu_gather through shark_emu_gather_ex (any format version)."""
    idx = np.ascontiguousarray(indices)
    if out is None:
        out = np.full((*idx.shape, int(table.dim)), 0x7F, dtype=np.dtype(out_dtype))
        target, per_sample, stride = _ptr(out), 1, 0
    else:
        per_sample = idx.size // idx.shape[0] if idx.shape[0] else 1
        target, stride = _TestLib._block(out, column, per_sample * int(table.dim), None)
    err = np.zeros(2, np.uint64)
    targs, _keep = _TestLib._table_args(table)
    rc = _ex_lib(testlib).shark_emu_gather_ex(*targs, *_group_args(table), _ptr(idx), int(idx.dtype == np.int64),
                                              idx.size, target, int(out.dtype == np.float16), per_sample, stride,
                                              _ptr(err))
    assert rc == 0, rc
    return out, (int(err[0]), int(err[1]))


def _emu_bag_ex(testlib, table, indices, offsets=None, per_sample_weights=None, mode=0, include_last_offset=0,
                padding_idx=-1, out_dtype=np.float32, out=None, column=0):
    """TestLib.emu_bag through shark_emu_bag_ex (any format version)."""
    idx = np.ascontiguousarray(indices)
    n_bags, bag_len, off, n_off = _bag_shape(idx, offsets, include_last_offset, None)
    w = None if per_sample_weights is None else np.ascontiguousarray(per_sample_weights, dtype=np.float32)
    if out is None:
        out = np.full((n_bags, int(table.dim)), 0x7F, dtype=np.dtype(out_dtype))
        target, stride = _ptr(out), 0
    else:
        target, stride = _TestLib._block(out, column, int(table.dim), None)
    err = np.zeros(2, np.uint64)
    targs, _keep = _TestLib._table_args(table)
    rc = _ex_lib(testlib).shark_emu_bag_ex(*targs, *_group_args(table), _ptr(idx), int(idx.dtype == np.int64),
                                           idx.size, _ptr(off), int(off is not None and off.dtype == np.int64), n_off,
                                           int(include_last_offset), bag_len, n_bags, _ptr(w), int(mode),
                                           int(padding_idx), target, int(out.dtype == np.float16), stride, _ptr(err))
    assert rc == 0, rc
    return out, (int(err[0]), int(err[1]))


def _v3_tables(D: int, G: int, R: int = V3_ROWS):
    """v3 tables of D dims and G rows per scale group: uniform int8/int4/int2 (also stored mixed) and mixed
    tables of all six tiers and of a skewed mix, each checked to end with its group section."""
    for name in ("int8", "int4", "int2", "all6", "skewed"):
        base, w = make_table(R, D, name, seed=D + G)
        spec = name if name in TIER_NAMES else base.tiers()
        t = quantize_table(w, spec, name=f"{name}_v3_g{G}", default_row=base.default_row, format_version=3,
                           scale_group_rows=G)
        assert t.format_version == 3 and t.scale_group_rows == G
        codes = t.tiers().astype(np.int64)
        rows_bytes = sum(row_stride(Tier(c), D, 3) * int((codes == c).sum()) for c in range(6))
        assert t.payload.size == rows_bytes + 12 * -(-R // G), (name, t.payload.size, rows_bytes)
        yield name, t
        if name in TIER_NAMES:
            yield name + "_as_mixed", as_mixed(t)


@pytest.mark.parametrize("G", V3_GROUPS)
@pytest.mark.parametrize("D", V3_DIMS)
def test_emu_v3_gather_matches_reference_and_cpu_op(testlib, aligned_loads_only, D, G):
    """v3 gathers: the emulated kernel equals shark_export.reference and the CPU op bit for bit, for every
    index and output dtype (a row's scale and bias come from its group's slot for its tier)."""
    rng = np.random.default_rng(100 * D + G)
    for name, table in _v3_tables(D, G):
        idx = rng.integers(0, table.num_rows, size=401)
        idx[:4] = [0, table.num_rows - 1, G - 1 if G <= table.num_rows else 1, min(G, table.num_rows - 1)]
        for out_dtype in (np.float32, np.float16):
            want = ref.gather(table, idx, out_dtype)
            assert_bits_equal(run_gather(table, idx, out_dtype), want, f"CPU op v3 gather {name} D={D} G={G}")
            for index_dtype in (np.int32, np.int64):
                got, err = _emu_gather_ex(testlib, table, idx.astype(index_dtype), out_dtype)
                assert err == (NO_ERROR, NO_ERROR)
                assert_bits_equal(got, want, f"emu v3 gather {name} D={D} G={G} {np.dtype(index_dtype)} -> "
                                             f"{np.dtype(out_dtype)}")


@pytest.mark.parametrize("G", V3_GROUPS)
@pytest.mark.parametrize("D", V3_DIMS)
def test_emu_v3_bag_equals_cpu_op_bitwise(testlib, aligned_loads_only, D, G):
    rng = np.random.default_rng(200 * D + G)
    for name, table in _v3_tables(D, G):
        for case in _bag_cases(rng, table.num_rows):
            for out_dtype in (np.float32, np.float16):
                got, err = _emu_bag_ex(testlib, table, out_dtype=out_dtype, **case)
                assert err == (NO_ERROR, NO_ERROR), (name, case.keys())
                want = run_bag(table, case["indices"], offsets=case.get("offsets"),
                               psw=case.get("per_sample_weights"), mode=case.get("mode", 0),
                               include_last_offset=case.get("include_last_offset", 0),
                               padding_idx=case.get("padding_idx", -1), out_dtype=out_dtype)
                assert_bits_equal(got, want, f"emu v3 bag {name} D={D} G={G} {sorted(case)} -> {np.dtype(out_dtype)}")


def test_emu_v3_reads_the_group_slot_of_the_row_tier(testlib):
    """Each quantized row reads the slot of its own group and tier: rewriting one slot changes exactly the
    rows of that group and tier (the reference agrees), and the emulation follows it bit for bit."""
    D, G = 5, 64
    table = next(t for name, t in _v3_tables(D, G) if name == "all6")
    codes = table.tiers().astype(np.int64)
    idx = np.arange(table.num_rows)
    before = _emu_gather_ex(testlib, table, idx)[0]
    payload = table.payload.copy()
    group, tier = 2, int(Tier.INT4)
    at = payload.size - 12 * -(-table.num_rows // G) + 12 * group + 4 * (tier - int(Tier.INT8))
    payload[at:at + 4] = np.array([1.0, -2.0], np.float16).view(np.uint8)  # scale 1, bias -2
    edited = dataclasses.replace(table, payload=payload)
    after = _emu_gather_ex(testlib, edited, idx)[0]
    changed = (before != after).any(axis=1)
    hit = (idx // G == group) & (codes == tier)
    assert hit.any() and not (changed & ~hit).any()
    assert_bits_equal(after, ref.gather(edited, idx), "emu v3 gather after a slot edit")


def test_emu_v3_multi_lookup_equals_cpu_op(testlib, aligned_loads_only):
    """RowwiseDequantMultiLookup over v3 fields of different group sizes (and a v2 field): every field emulated
    into its block of one [B, W] array equals the CPU op bit for bit, gather blocks the reference too."""
    rng = np.random.default_rng(41)
    B = 151
    tabs = {n: t for n, t in _v3_tables(3, 64) if n in ("all6", "int4_as_mixed")}
    t1 = next(t for n, t in _v3_tables(16, 1) if n == "int2")
    t256 = next(t for n, t in _v3_tables(5, 256) if n == "skewed")
    t_v2 = make_table(V3_ROWS, 7, "int8", seed=3)[0]
    ids = lambda t, shape: rng.integers(0, t.num_rows, size=shape)  # noqa: E731
    lengths = rng.integers(0, 5, size=B)
    lengths[[0, B - 1]] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fields = [
        dict(table=tabs["all6"], kind=0, name="mixed_g64"),
        dict(table=t1, kind=0, index_rank=2, name="int2_g1"),                            # [B, 2]
        dict(table=t256, kind=2, weights=True, name="skewed_g256"),                      # weighted sum
        dict(table=t_v2, kind=1, mode=1, padding_idx=4, name="int8_v2"),                 # 2-D mean
        dict(table=tabs["int4_as_mixed"], kind=1, name="int4_mixed_g64"),
        dict(table=tabs["all6"], kind=2, mode=1, name="mixed_g64_bag"),                  # shares a table
    ]
    feeds = [
        dict(indices=ids(tabs["all6"], B)),
        dict(indices=ids(t1, (B, 2))),
        dict(indices=ids(t256, int(lengths.sum())), offsets=offsets,
             weights=rng.standard_normal(int(lengths.sum())).astype(np.float32)),
        dict(indices=ids(t_v2, (B, 3))),
        dict(indices=ids(tabs["int4_as_mixed"], (B, 4))),
        dict(indices=ids(tabs["all6"], int(lengths.sum())), offsets=offsets),
    ]
    feeds[3]["indices"][::4, 1] = 4
    # the per-field scale_group_rows multi_model writes (0 for the v2 field)
    groups = [int(f["table"].op_attributes().get("scale_group_rows", 0)) for f in fields]
    assert groups == [64, 1, 256, 0, 64, 64]
    for out_dtype in (np.float32, np.float16):
        model = multi_model(fields, out_dtype=out_dtype)
        (cpu,) = shark_export.session(model).run(None, _multi_graph_feeds(feeds))
        widths = [_block_width(f, feed) for f, feed in zip(fields, feeds)]
        got = np.full((B, sum(widths)), 0x7F, dtype=np.dtype(out_dtype))
        column = 0
        for f, feed, w in zip(fields, feeds, widths):
            if f["kind"] == 0:
                _, err = _emu_gather_ex(testlib, f["table"], feed["indices"], out=got, column=column)
                assert_bits_equal(np.ascontiguousarray(got[:, column:column + w]),
                                  ref.gather(f["table"], feed["indices"], out_dtype).reshape(B, w),
                                  f"v3 gather field {f['name']}")
            else:
                _, err = _emu_bag_ex(testlib, f["table"], feed["indices"], offsets=feed.get("offsets"),
                                     per_sample_weights=feed.get("weights"), mode=f.get("mode", 0),
                                     padding_idx=f.get("padding_idx", -1), out=got, column=column)
            assert err == (NO_ERROR, NO_ERROR), f["name"]
            column += w
        assert_bits_equal(got, cpu, f"emulated v3 multi lookup vs CPU op -> {np.dtype(out_dtype)}")


def test_emu_v3_out_of_range_and_refusals(testlib):
    """v3 tables: bad indices are reported at the CPU op's positions; the entry points without the group
    arguments refuse a v3 table (-3), as do bad group arguments."""
    table = next(t for n, t in _v3_tables(5, 64) if n == "all6")
    idx = np.arange(60, dtype=np.int64) * 5
    idx[[9, 40]] = [table.num_rows, -2]
    got, err = _emu_gather_ex(testlib, table, idx)
    assert err == (9, NO_ERROR) and not got[[9, 40]].any()
    with pytest.raises(Exception, match=rf"index {table.num_rows} at position 9 is out of range"):
        run_gather(table, idx)
    _, err = _emu_bag_ex(testlib, table, idx, offsets=np.array([0, 20, 50], np.int64))
    assert err == (9, NO_ERROR)
    with pytest.raises(AssertionError, match="-3"):
        testlib.emu_gather(table, np.zeros(3, np.int64))
    with pytest.raises(AssertionError, match="-3"):
        testlib.emu_bag(table, np.zeros((2, 2), np.int64))
    lib = _ex_lib(testlib)
    targs, _keep = _TestLib._table_args(table)
    idx3, out, err2 = np.zeros(3, np.int64), np.zeros((3, 5), np.float32), np.zeros(2, np.uint64)
    n = int(table.payload.size)
    for payload_bytes, g in [(n, 0), (n, 48), (n, 2**41), (11, 64)]:
        assert lib.shark_emu_gather_ex(*targs, payload_bytes, g, _ptr(idx3), 1, 3, _ptr(out), 0, 1, 0, _ptr(err2)) == -3


# --------------------------------------------------------------------------------------------------
# 3. GPU
# --------------------------------------------------------------------------------------------------
def _ort_cuda_session(model):
    """A session whose every node runs on the CUDA EP. Skips (with the reason) when this onnxruntime has
    no working CUDA EP -- checked on a standard-op model first, so that a CUDA EP that works while our op
    is not on it fails instead of skipping."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (CPU-only build)")
    probe = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]), ir_version=10,
        opset_imports=[helper.make_opsetid("", 17)])
    try:
        providers = ort.InferenceSession(probe.SerializeToString(), providers=["CUDAExecutionProvider"]).get_providers()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no usable CUDA execution provider here: {str(e)[:300]}")
    if providers[0] != "CUDAExecutionProvider":
        pytest.skip(f"CUDAExecutionProvider could not be created (no GPU, or CUDA/cuDNN libraries missing): {providers}")
    if not _built_with_cuda(shark_export.library_path()):
        pytest.fail("a CUDA EP works here but the custom-op library was built without CUDA")
    so = shark_export.ops.session_options()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # fails unless our node is on CUDA
    return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CUDAExecutionProvider"])


@pytest.mark.cuda
@pytest.mark.parametrize("D", [7, 64])
def test_ort_cuda_ep_matches_cpu_bitwise(D):
    rng = np.random.default_rng(D)
    for name in ["int8", "int4", "fp16", "all6"]:
        table, _ = make_table(1000, D, name, seed=D)
        for out_dtype in (np.float32, np.float16):
            idx = rng.integers(0, 1000, size=(64, 26))
            sess = _ort_cuda_session(gather_model(table, index_rank=2, out_dtype=out_dtype))
            (got,) = sess.run(None, {"indices": idx})
            assert_bits_equal(got, run_gather(table, idx, out_dtype), f"ORT CUDA gather {name}")
            bags, offsets = random_bags(rng, 300, 1000)
            w = rng.standard_normal(bags.size).astype(np.float32)
            sess = _ort_cuda_session(bag_model(table, weights=True, padding_idx=2, out_dtype=out_dtype))
            (got,) = sess.run(None, {"indices": bags, "offsets": offsets, "per_sample_weights": w})
            want = run_bag(table, bags, offsets=offsets, psw=w, padding_idx=2, out_dtype=out_dtype)
            assert_bits_equal(got, want, f"ORT CUDA bag {name}")


@pytest.mark.cuda
def test_ort_cuda_ep_errors_match_cpu():
    table, _ = make_table(200, 13, "all6", seed=1)
    sess = _ort_cuda_session(gather_model(table, name="g"))
    idx = np.zeros(5000, np.int64)
    idx[[17, 4000]] = [300, -1]
    with pytest.raises(Exception, match=r"RowwiseDequantGather node 'g': index 300 at position 17 is out of range "
                                        r"for table with 200 rows"):
        sess.run(None, {"indices": idx})
    assert sess.run(None, {"indices": np.arange(200)})[0].shape == (200, 13)  # still usable
    sess = _ort_cuda_session(bag_model(table, name="b"))
    with pytest.raises(Exception, match=r"offsets\[2\] = 2 is less than offsets\[1\] = 4"):
        sess.run(None, {"indices": np.arange(6), "offsets": np.array([0, 4, 2])})
    with pytest.raises(Exception, match=r"index 200 at position 2 is out of range"):
        sess.run(None, {"indices": np.array([1, 2, 200, 3]), "offsets": np.array([0, 2])})


@pytest.mark.cuda
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_ort_cuda_multi_lookup_matches_cpu_bitwise(index_dtype, out_dtype):
    rng = np.random.default_rng(31)
    fields, feeds = _multi_case(rng, index_dtype, B=2500)
    model = multi_model(fields, out_dtype=out_dtype)
    (got,) = _ort_cuda_session(model).run(None, _multi_graph_feeds(feeds))
    (want,) = shark_export.session(model).run(None, _multi_graph_feeds(feeds))
    assert_bits_equal(got, want, f"ORT CUDA multi lookup -> {np.dtype(out_dtype)}")


@pytest.mark.cuda
def test_ort_cuda_multi_lookup_errors_match_cpu():
    rng = np.random.default_rng(32)
    fields, feeds = _multi_case(rng)
    model = multi_model(fields)
    sess = _ort_cuda_session(model)
    cpu = shark_export.session(model)

    def both(feed_list):
        msgs = []
        for s in (sess, cpu):
            with pytest.raises(Exception) as info:
                s.run(None, _multi_graph_feeds(feed_list))
            msgs.append(re.search(r"RowwiseDequantMultiLookup node .*", str(info.value)).group(0))
        return msgs

    feeds[1]["indices"][[40, 100], [2, 0]] = [150, -4]
    got, want = both(feeds)
    assert got == want and "field 'history': index 150 at position 122" in got
    feeds[5]["offsets"][7] = feeds[5]["offsets"][6] - 1
    got, want = both(feeds)
    assert got == want and "field 'pages': offsets[7]" in got
    feeds[1]["indices"][:] = 0
    feeds[5]["offsets"][7] = feeds[5]["offsets"][6]
    feeds[6]["indices"][3, 1] = 300
    got, want = both(feeds)
    assert got == want and "field 'user_bag': index 300 at position 7" in got
    feeds[6]["indices"][3, 1] = 0
    assert sess.run(None, _multi_graph_feeds(feeds))[0].shape == (MULTI_B, 158)  # still usable


@pytest.fixture(scope="session")
def cuda_testlib(tmp_path_factory):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA GPU")
    path = os.environ.get(TESTLIB_ENV)
    if path and load(path).has_cuda:
        return load(path)
    if not shutil.which("nvcc"):
        pytest.skip(f"no CUDA test library (${TESTLIB_ENV}) and no nvcc to build one")
    cc = "%d%d" % torch.cuda.get_device_capability()
    return load(build_testlib(tmp_path_factory.mktemp("testlib_cuda"), cuda=True, cuda_archs=f"{cc}-real"))


@pytest.mark.cuda
@pytest.mark.parametrize("D", [1, 5, 13, 64, 130, 600])
def test_cuda_launchers_match_host_emulation_bitwise(cuda_testlib, D):
    import torch

    lib = cuda_testlib
    rng = np.random.default_rng(D)
    err = torch.empty(2, dtype=torch.int64, device="cuda")
    for name, table in _tables_for(D):
        dt = DeviceTable.from_table(table)
        idx = rng.integers(0, table.num_rows, size=999)
        idx[[5, 700]] = [table.num_rows, -1]
        for out_dtype, tdt in ((np.float32, torch.float32), (np.float16, torch.float16)):
            want, want_err = lib.emu_gather(table, idx, out_dtype)
            out = torch.full((999, D), 7.0, dtype=tdt, device="cuda")
            lib.cuda_gather(dt, torch.from_numpy(idx).cuda(), out, err)
            got_err = tuple(int(x) & NO_ERROR for x in err.cpu().numpy())
            assert got_err == want_err == (5, NO_ERROR)
            assert_bits_equal(out.cpu().numpy(), want, f"CUDA gather {name} D={D}")
            for case in _bag_cases(rng, table.num_rows):
                want, want_err = lib.emu_bag(table, out_dtype=out_dtype, **case)
                ti = torch.from_numpy(np.ascontiguousarray(case["indices"])).cuda()
                off = case.get("offsets")
                psw = case.get("per_sample_weights")
                out = torch.full(want.shape, 7.0, dtype=tdt, device="cuda")
                lib.cuda_bag(dt, ti, out, err, offsets=None if off is None else torch.from_numpy(off).cuda(),
                             per_sample_weights=None if psw is None else torch.from_numpy(psw).cuda(),
                             mode=case.get("mode", 0), include_last_offset=case.get("include_last_offset", 0),
                             padding_idx=case.get("padding_idx", -1))
                got_err = tuple(int(x) & NO_ERROR for x in err.cpu().numpy())
                assert got_err == want_err
                assert_bits_equal(out.cpu().numpy(), want, f"CUDA bag {name} D={D} {sorted(case)}")


@pytest.mark.cuda
@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_cuda_launchers_write_field_blocks_as_emulated(cuda_testlib, out_dtype):
    """The strided launchers, field by field into one CUDA [B, W] tensor, against the host emulation."""
    import torch

    lib = cuda_testlib
    fields, feeds = _multi_case(np.random.default_rng(33))
    want, want_errs = _emu_multi(lib, fields, feeds, out_dtype)
    tdt = torch.float16 if out_dtype == np.float16 else torch.float32
    out = torch.full(want.shape, 7.0, dtype=tdt, device="cuda")
    err = torch.empty(2, dtype=torch.int64, device="cuda")
    column = 0
    for f, feed, want_err in zip(fields, feeds, want_errs):
        dt = DeviceTable.from_table(f["table"])
        idx = torch.from_numpy(np.ascontiguousarray(feed["indices"])).cuda()
        if f["kind"] == 0:
            lib.cuda_gather_block(dt, idx, out, column, err)
        else:
            off, psw = feed.get("offsets"), feed.get("weights")
            lib.cuda_bag(dt, idx, out, err, offsets=None if off is None else torch.from_numpy(off).cuda(),
                         per_sample_weights=None if psw is None else torch.from_numpy(psw).cuda(),
                         mode=f.get("mode", 0), include_last_offset=f.get("include_last_offset", 0),
                         padding_idx=f.get("padding_idx", -1), column=column)
        assert tuple(int(x) & NO_ERROR for x in err.cpu().numpy()) == want_err
        column += _block_width(f, feed)
    assert_bits_equal(out.cpu().numpy(), want, "CUDA field blocks")


def _cuda_table_args(dev_table: DeviceTable, table) -> list:
    """DeviceTable.args() with the *_ex group arguments after them."""
    return [*dev_table.args(), *_group_args(table)]


@pytest.mark.cuda
@pytest.mark.parametrize("G", V3_GROUPS)
@pytest.mark.parametrize("D", [1, 3, 16, 64])
def test_cuda_launchers_v3_match_host_emulation_bitwise(cuda_testlib, D, G):
    """Format v3 tables through shark_cuda_{gather,bag}_ex against the emulation, bits and error slots."""
    import torch

    lib = _ex_lib(cuda_testlib)
    rng = np.random.default_rng(300 * D + G)
    err = torch.empty(2, dtype=torch.int64, device="cuda")
    stream = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    for name, table in _v3_tables(D, G):
        dt = DeviceTable.from_table(table)
        targs = _cuda_table_args(dt, table)
        idx = rng.integers(0, table.num_rows, size=999)
        idx[[5, 700]] = [table.num_rows, -1]
        ti = torch.from_numpy(idx).cuda()
        for out_dtype, tdt in ((np.float32, torch.float32), (np.float16, torch.float16)):
            want, want_err = _emu_gather_ex(cuda_testlib, table, idx, out_dtype)
            out = torch.full((999, D), 7.0, dtype=tdt, device="cuda")
            rc = lib.shark_cuda_gather_ex(*targs, ti.data_ptr(), 1, idx.size, out.data_ptr(), int(tdt == torch.float16),
                                          1, 0, err.data_ptr(), stream())
            assert rc == 0, cuda_testlib.lib.shark_cuda_error_string(rc)
            assert tuple(int(x) & NO_ERROR for x in err.cpu().numpy()) == want_err == (5, NO_ERROR)
            assert_bits_equal(out.cpu().numpy(), want, f"CUDA v3 gather {name} D={D} G={G}")
            for case in _bag_cases(rng, table.num_rows):
                want, want_err = _emu_bag_ex(cuda_testlib, table, out_dtype=out_dtype, **case)
                cidx = np.ascontiguousarray(case["indices"])
                n_bags, bag_len, off, n_off = _bag_shape(cidx, case.get("offsets"), case.get("include_last_offset", 0),
                                                         None)
                t_idx = torch.from_numpy(cidx).cuda()
                t_off = None if off is None else torch.from_numpy(off).cuda()
                psw = case.get("per_sample_weights")
                t_w = None if psw is None else torch.from_numpy(np.ascontiguousarray(psw, np.float32)).cuda()
                out = torch.full(want.shape, 7.0, dtype=tdt, device="cuda")
                rc = lib.shark_cuda_bag_ex(
                    *targs, t_idx.data_ptr(), int(cidx.dtype == np.int64), cidx.size,
                    None if t_off is None else t_off.data_ptr(), int(off is not None and off.dtype == np.int64), n_off,
                    int(case.get("include_last_offset", 0)), bag_len, n_bags, None if t_w is None else t_w.data_ptr(),
                    int(case.get("mode", 0)), int(case.get("padding_idx", -1)), out.data_ptr(),
                    int(tdt == torch.float16), 0, err.data_ptr(), stream())
                assert rc == 0, cuda_testlib.lib.shark_cuda_error_string(rc)
                assert tuple(int(x) & NO_ERROR for x in err.cpu().numpy()) == want_err
                assert_bits_equal(out.cpu().numpy(), want, f"CUDA v3 bag {name} D={D} G={G} {sorted(case)}")


@pytest.mark.cuda
@pytest.mark.parametrize("D", [3, 16])
def test_ort_cuda_ep_v3_matches_cpu_bitwise(D):
    """Format v3 tables on the CUDA EP (scale_group_rows read from the node, the group section from the end
    of payload): gather, weighted bag and a multi lookup equal the CPU op bit for bit."""
    rng = np.random.default_rng(400 + D)
    for G in V3_GROUPS:
        for name, table in _v3_tables(D, G, R=1000):
            for out_dtype in (np.float32, np.float16):
                idx = rng.integers(0, 1000, size=(64, 26))
                sess = _ort_cuda_session(gather_model(table, index_rank=2, out_dtype=out_dtype))
                (got,) = sess.run(None, {"indices": idx})
                assert_bits_equal(got, run_gather(table, idx, out_dtype), f"ORT CUDA v3 gather {name} G={G}")
                bags, offsets = random_bags(rng, 300, 1000)
                w = rng.standard_normal(bags.size).astype(np.float32)
                sess = _ort_cuda_session(bag_model(table, weights=True, padding_idx=2, out_dtype=out_dtype))
                (got,) = sess.run(None, {"indices": bags, "offsets": offsets, "per_sample_weights": w})
                want = run_bag(table, bags, offsets=offsets, psw=w, padding_idx=2, out_dtype=out_dtype)
                assert_bits_equal(got, want, f"ORT CUDA v3 bag {name} G={G}")
    t64 = next(t for n, t in _v3_tables(D, 64, R=1000) if n == "all6")
    t1 = next(t for n, t in _v3_tables(D, 1, R=1000) if n == "int4")
    t_v2 = make_table(1000, D, "int8", seed=D)[0]
    B = 500
    lengths = rng.integers(0, 5, size=B)
    fields = [dict(table=t64, kind=0, index_rank=2, name="g64"), dict(table=t1, kind=1, mode=1, name="g1"),
              dict(table=t_v2, kind=2, name="v2"), dict(table=t64, kind=2, weights=True, name="g64_bag")]
    n_bag = int(lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    feeds = [dict(indices=rng.integers(0, 1000, size=(B, 3))), dict(indices=rng.integers(0, 1000, size=(B, 4))),
             dict(indices=rng.integers(0, 1000, size=n_bag), offsets=offsets),
             dict(indices=rng.integers(0, 1000, size=n_bag), offsets=offsets,
                  weights=rng.standard_normal(n_bag).astype(np.float32))]
    for out_dtype in (np.float32, np.float16):
        model = multi_model(fields, out_dtype=out_dtype, attrs={"scale_group_rows": [64, 1, 0, 64]})
        (got,) = _ort_cuda_session(model).run(None, _multi_graph_feeds(feeds))
        (want,) = shark_export.session(model).run(None, _multi_graph_feeds(feeds))
        assert_bits_equal(got, want, f"ORT CUDA v3 multi lookup -> {np.dtype(out_dtype)}")


def test_gpu_harness_dry_run_on_host(testlib, tmp_path):
    """benchmarks/gpu/verify_and_bench.py end to end on the host emulation and torch CPU at toy size, so the
    GPU session's script is known to run (its timings mean nothing here)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu",
                          "verify_and_bench.py")
    out = tmp_path / "res.json"
    res = subprocess.run([sys.executable, script, "--backend", "emu", "--testlib", testlib.path, "--rows", "5000",
                          "--batch", "32", "--iters", "1", "--repeats", "1", "--copy-bytes", "100000",
                          "--verify-dims", "5,64", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "FAILED" not in res.stdout and out.is_file()
    import json

    data = json.loads(out.read_text())
    assert data["failures"] == [] and {c["contender"] for c in data["bench"]["cases"]} >= {
        "ours_int8", "ours_int4", "ours_fp16", "ours_mixed", "torch_embedding_fp32", "torch_embedding_fp16",
        "torch_deq_after_gather_int8", "torch_embedding_bag_fp32"}
