"""A model that needs the custom-op library, opened without it (or with a library that lacks one of its ops),
fails with a message that names the library to register and where shark_export.ops.library_path() finds it;
every converted model carries that instruction in its doc_string and metadata."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import shark_export
from shark_export import ops
from shark_export.errors import MissingCustomOpsError, SharkExportError
from shark_export.example_models import DeepFM, FieldSpec
from shark_export.model_io import OnnxModelRunner
from shark_export.ort_offline import optimize_offline

SPECS = [FieldSpec("user", 300), FieldSpec("item", 200)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp("hint") / "model.onnx"
    torch.manual_seed(0)
    batch = {f.name: torch.randint(0, f.cardinality, (8,)) for f in SPECS}
    shark_export.convert(DeepFM(SPECS, dim=8).eval(), (batch,), path, quant="int8")
    return path


@pytest.fixture()
def unknown_op_model(tmp_path):
    """A model with a shark_export op that no library provides."""
    graph = helper.make_graph([helper.make_node("RowwiseDequantNope", ["x"], ["y"], domain=ops.DOMAIN)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid(ops.DOMAIN, 1)])
    onnx.save(model, tmp_path / "nope.onnx")
    return tmp_path / "nope.onnx"


def _names_the_library(message: str) -> None:
    assert "libshark_export_ops.so" in message
    assert "shark_export.ops.library_path()" in message


def test_converted_model_says_which_library_to_register(converted):
    proto = onnx.load(str(converted), load_external_data=False)
    assert proto.doc_string == ops.RUNTIME_NOTE
    assert {p.key: p.value for p in proto.metadata_props}[ops.RUNTIME_KEY] == ops.RUNTIME_NOTE
    _names_the_library(ops.RUNTIME_NOTE)
    for api in ("register_custom_ops_library", "RegisterCustomOpsLibrary", "RegisterCustomOpLibraryV2",
                "registerCustomOpLibrary"):
        assert api in ops.RUNTIME_NOTE
    # what a runtime user sees through ONNX Runtime's own model metadata
    meta = shark_export.session(str(converted)).get_modelmeta()
    assert meta.description == ops.RUNTIME_NOTE
    assert meta.custom_metadata_map[ops.RUNTIME_KEY] == ops.RUNTIME_NOTE


def test_opened_without_the_library_the_error_names_it(converted):
    with pytest.raises(Exception) as raised:  # plain onnxruntime, nothing registered
        ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    error = ops.missing_ops_error(raised.value, repr(str(converted)), None)
    assert isinstance(error, MissingCustomOpsError) and isinstance(error, SharkExportError)
    message = str(error)
    _names_the_library(message)
    assert "no shark-export custom-op library was registered" in message
    assert ops.library_path() in message and "model.onnx" in message


def test_a_library_without_the_op_is_a_typed_error(unknown_op_model):
    with pytest.raises(MissingCustomOpsError) as raised:
        shark_export.session(str(unknown_op_model))
    message = str(raised.value)
    _names_the_library(message)
    assert "shark_export:RowwiseDequantNope" in message and "older than the model" in message
    assert ops.library_path() in message
    with pytest.raises(MissingCustomOpsError, match="RowwiseDequantNope"):
        shark_export.session(unknown_op_model.read_bytes())
    with pytest.raises(MissingCustomOpsError, match="RowwiseDequantNope"):
        OnnxModelRunner(unknown_op_model)
    with pytest.raises(MissingCustomOpsError, match="RowwiseDequantNope"):
        optimize_offline(unknown_op_model, unknown_op_model.parent / "opt.onnx")


def test_other_onnxruntime_errors_pass_through(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(Exception) as raised:
        shark_export.session(str(tmp_path / "junk.onnx"))
    assert not isinstance(raised.value, MissingCustomOpsError)
    assert ops.missing_ops_error(ValueError("something else"), "m", None) is None


def test_the_converted_model_still_runs(converted):
    sess = shark_export.session(str(converted))
    feeds = {i.name: np.zeros(3, np.int64) for i in sess.get_inputs()}
    assert sess.run(None, feeds)[0].shape == (3,)
