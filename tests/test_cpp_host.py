"""examples/cpp (shark_host): a converted model served from C++ through the ONNX Runtime C++ API computes the
same bits as the Python onnxruntime session with the same library; its errors name what is wrong.

The program is built once per test session with CMake, against the onnxruntime wheel's libonnxruntime and the
ORT headers the package build fetched; ``$SHARK_CPP_HOST`` names a prebuilt one instead."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import shark_export
import shark_export.model_file
from shark_export import ops
from shark_export.example_models import DeepFM, FieldSpec

REPO = Path(__file__).resolve().parents[1]
SPECS = [FieldSpec("user", 500), FieldSpec("item", 300), FieldSpec("tags", 50, multi_hot=True)]
N_DENSE = 3


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> str:
    prebuilt = os.environ.get("SHARK_CPP_HOST")
    if prebuilt:
        return prebuilt
    cmake = shutil.which("cmake")
    assert cmake is not None, "cmake is not on PATH (the test extra installs it)"
    build = tmp_path_factory.mktemp("shark_host_build")
    for cmd in ([cmake, "-S", str(REPO / "examples" / "cpp"), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
                 "-DCMAKE_BUILD_TYPE=Release"],
                [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return str(build / "shark_host")


def _batch(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {f.name: torch.randint(0, f.cardinality, (n,), generator=g) for f in SPECS if not f.multi_hot}
    lengths = torch.randint(0, 5, (n,), generator=g)  # bags of 0..4 ids, empty bags included
    batch["tags"] = torch.randint(0, 50, (int(lengths.sum()),), generator=g)
    batch["tags_offsets"] = torch.cumsum(lengths, 0) - lengths
    batch["dense"] = torch.randn(n, N_DENSE, generator=g)
    return batch


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A mixed-precision DeepFM (Embedding + EmbeddingBag fields, dense features) with its weights in an
    external data file next to the .onnx."""
    folder = tmp_path_factory.mktemp("cpp_host_model")
    torch.manual_seed(0)
    model = DeepFM(SPECS, dim=8, n_dense=N_DENSE).eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shark_export.model_file, "EXTERNAL_DATA_BYTES", 1000)
        shark_export.convert(model, (_batch(8, 0),), folder / "model.onnx", quant="mixed",
                             calibration=[(_batch(64, s),) for s in range(2)])
    assert list(folder.glob("*.onnx.data")), "the test model should have external data"
    return folder / "model.onnx"


def _feeds(path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    names = [i.name for i in shark_export.session(str(path)).get_inputs()]
    batch = {k: v.numpy() for k, v in _batch(n, seed).items()}
    feeds = {name: batch[name.removeprefix("batch_")] for name in names}
    assert len(feeds) == len(batch) == 5
    return feeds


def _write(folder: Path, feeds: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in feeds.items():
        np.save(folder / f"{name}.npy", value)
    return folder


def _run(host: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([host, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def test_outputs_equal_the_python_session_bit_for_bit(host, converted, tmp_path):
    sess = shark_export.session(str(converted), threads=2)
    for n, seed in ((1, 1), (300, 2)):
        feeds = _feeds(converted, n, seed)
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        inputs, outputs = _write(tmp_path / f"in{seed}", feeds), tmp_path / f"out{seed}"
        res = _run(host, "--threads", 2, "--library", ops.library_path(), converted, inputs, outputs)
        assert res.returncode == 0, res.stderr
        assert sorted(p.stem for p in outputs.glob("*.npy")) == sorted(want)
        for name, value in want.items():
            got = np.load(outputs / f"{name}.npy")
            assert _same_bits(got, value), (name, got, value)

    # printed (no output dir; the library from $SHARK_EXPORT_LIBRARY): every float reads back to the same bits
    res = _run(host, converted, inputs, env={"SHARK_EXPORT_LIBRARY": ops.library_path()})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    (name, value), = want.items()
    assert lines[0] == f"{name} float32 [{value.shape[0]}]"
    assert _same_bits(np.array([float(x) for x in lines[1:]], dtype=np.float32), value.ravel())


def test_any_rank_and_other_dtypes(host, tmp_path):
    """int32 / int64 / float32 / float16 / bool inputs of rank 0 to 3, outputs of the same types, against ORT."""
    nodes = [
        helper.make_node("Cast", ["ids32"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids_f", "x"], ["sum"]),                     # float32 [2, 3, 4]
        helper.make_node("Mul", ["step", "step"], ["step2"]),                 # int64 scalar
        helper.make_node("Cast", ["sum"], ["half"], to=TensorProto.FLOAT16),  # float16 [2, 3, 4]
        helper.make_node("Not", ["mask"], ["not_mask"]),                      # bool [5]
        helper.make_node("Identity", ["ids32"], ["ids_out"]),                 # int32 [2, 3, 4]
    ]
    graph = helper.make_graph(
        nodes, "dtypes",
        [helper.make_tensor_value_info("ids32", TensorProto.INT32, ["b", 3, 4]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4]),
         helper.make_tensor_value_info("step", TensorProto.INT64, []),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["m"])],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("sum", TensorProto.FLOAT), ("step2", TensorProto.INT64), ("half", TensorProto.FLOAT16),
          ("not_mask", TensorProto.BOOL), ("ids_out", TensorProto.INT32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, tmp_path / "dtypes.onnx")
    rng = np.random.default_rng(0)
    feeds = {"ids32": rng.integers(-1000, 1000, (2, 3, 4)).astype(np.int32),
             "x": rng.standard_normal((2, 3, 4)).astype(np.float32),
             "step": np.array(-7, dtype=np.int64),
             "mask": rng.integers(0, 2, 5).astype(bool)}
    want = dict(zip([o.name for o in model.graph.output], shark_export.session(tmp_path / "dtypes.onnx").run(None, feeds)))
    res = _run(host, "--library", ops.library_path(), tmp_path / "dtypes.onnx", _write(tmp_path / "in", feeds),
               tmp_path / "out")
    assert res.returncode == 0, res.stderr
    for name, value in want.items():
        assert _same_bits(np.load(tmp_path / "out" / f"{name}.npy"), value), name


def test_bad_inputs_name_what_is_wrong(host, converted, tmp_path):
    lib = ops.library_path()
    feeds = _feeds(converted, 10, 3)

    wrong_name = _write(tmp_path / "wrong_name", feeds)
    (wrong_name / "batch_user.npy").rename(wrong_name / "batch_usr.npy")
    res = _run(host, "--library", lib, converted, wrong_name)
    assert res.returncode == 1
    assert "input file 'batch_usr.npy' names no model input" in res.stderr
    assert "model input 'batch_user' has no file" in res.stderr

    wrong_type = _write(tmp_path / "wrong_type", {**feeds, "batch_item": feeds["batch_item"].astype(np.int32)})
    res = _run(host, "--library", lib, converted, wrong_type)
    assert res.returncode == 1 and "input 'batch_item': batch_item.npy holds int32, the model takes int64" in res.stderr

    wrong_shape = _write(tmp_path / "wrong_shape", {**feeds, "batch_dense": np.zeros((10, 4), np.float32)})
    res = _run(host, "--library", lib, converted, wrong_shape)
    assert res.returncode == 1 and "has shape [10, 4], the model takes [?, 3]" in res.stderr

    res = _run(host, "--library", lib, tmp_path / "missing.onnx", wrong_type)
    assert res.returncode == 1 and "missing.onnx' does not exist" in res.stderr

    res = _run(host, "--library", tmp_path / "nolib.so", converted, wrong_type)
    assert res.returncode == 1 and "nolib.so' does not exist" in res.stderr and "library_path()" in res.stderr

    res = _run(host, converted, wrong_type, env={"SHARK_EXPORT_LIBRARY": ""})
    assert res.returncode == 2 and "no custom-op library" in res.stderr

    # ONNX Runtime's own errors come through: a bag offset past the end of the ids
    bad_offsets = _write(tmp_path / "bad_offsets", {**feeds, "batch_tags_offsets": feeds["batch_tags_offsets"] + 10_000})
    res = _run(host, "--library", lib, converted, bad_offsets)
    assert res.returncode == 1 and "ONNX Runtime failed to run the model" in res.stderr


def test_a_missing_op_prints_which_library_to_register(host, tmp_path):
    """A model using a shark_export op the registered library lacks: the hint names the library and
    shark_export.ops.library_path()."""
    graph = helper.make_graph([helper.make_node("RowwiseDequantNope", ["x"], ["y"], domain=ops.DOMAIN)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid(ops.DOMAIN, 1)])
    onnx.save(model, tmp_path / "nope.onnx")
    res = _run(host, "--library", ops.library_path(), tmp_path / "nope.onnx", _write(tmp_path / "in", {"x": np.zeros(2, np.float32)}))
    assert res.returncode == 1
    assert "RowwiseDequantNope" in res.stderr
    assert "libshark_export_ops.so" in res.stderr and "shark_export.ops.library_path()" in res.stderr
