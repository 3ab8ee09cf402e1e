"""Run a converted model from the same inputs the torch model takes.

The converter records, in the model's metadata, which pytree path of forward's inputs feeds which graph
input (inputs of pruned fields are gone from the graph) and the output names; the runner uses them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SharkExportError
from .export import ExampleInputs
from .ort_errors import numpy_dtype

INPUTS_KEY = "shark_export.inputs"
OUTPUTS_KEY = "shark_export.outputs"
REPORT_KEY = "shark_export.report"
FAITHFULNESS_KEY = "shark_export.faithfulness"  # what check_faithfulness needs from a file: pruned means, lookup dtype


def canonical_inputs(inputs: Any) -> Any:
    """torchrec KeyedJaggedTensors rebuilt from values, weights and lengths only (what the converted model
    takes), whatever the caller's KJT has cached; any other input is returned as is."""
    if "torchrec" not in sys.modules:
        return inputs  # no KJT can exist without torchrec imported
    from . import torchrec_compat

    return torchrec_compat.canonical_inputs(inputs) if torchrec_compat.has_kjt(inputs) else inputs


def uses_custom_ops(path) -> bool:
    """Whether the model imports our op domain (a portable `ops="standard"` model does not: it runs in a stock
    onnxruntime, without the library)."""
    import onnx

    from .ops import DOMAIN

    proto = onnx.load(str(path), load_external_data=False)
    return any(entry.domain == DOMAIN for entry in proto.opset_import)


def plain_session(model, providers: list[str] | None = None, threads: int | None = None):
    """A stock onnxruntime session (no custom-op library) for a portable model: a path or serialized bytes."""
    import onnxruntime as ort

    from .ort_session import Session

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = int(threads), 1
    source = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
    return Session(source, sess_options=options, providers=providers or ["CPUExecutionProvider"])


class OnnxModelRunner:
    """A converted model fed the way the torch model is called: `OnnxModelRunner(path)(*args, **kwargs)`."""

    def __init__(self, path, providers: list[str] | None = None, threads: int | None = None):
        from .ops import session

        self.path = Path(path)
        if not self.path.is_file():
            raise SharkExportError(f"ONNX model {str(self.path)!r} does not exist")
        if uses_custom_ops(self.path):
            self.session = session(str(self.path), providers=providers, threads=threads)
        else:  # a portable model: a stock session, the custom-op library is neither needed nor loaded
            self.session = plain_session(self.path, providers, threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if INPUTS_KEY in metadata:
            self.input_map: list[tuple[str, str | None]] = [tuple(pair) for pair in json.loads(metadata[INPUTS_KEY])]
        else:  # not written by us: feed tensors in order
            self.input_map = [(None, name) for name in graph_inputs]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, example: ExampleInputs) -> dict[str, np.ndarray]:
        tensors = example.named_tensors()
        if len(tensors) != len(self.input_map):
            raise SharkExportError(
                f"{self.path.name} takes {len(self.input_map)} input tensors "
                f"({', '.join(str(p) for p, _ in self.input_map)}), the batch has {len(tensors)}"
            )
        feeds = {}
        for (path, tensor), (expected_path, name) in zip(tensors, self.input_map):
            if expected_path is not None and path != expected_path:
                raise SharkExportError(f"input {path} given where {self.path.name} expects {expected_path}")
            if name is not None:
                feeds[name] = self._as_input(name, path, tensor.detach().cpu().numpy())
        return feeds

    def _as_input(self, name: str, path, array: np.ndarray) -> np.ndarray:
        """The array at the dtype the graph input takes: an integer widened losslessly (int32 ids for an int64
        input, as the torch model accepts them), anything else an error naming the input."""
        want = numpy_dtype(self.input_types.get(name, ""))
        if want is None or array.dtype == want:
            return array
        if array.dtype.kind in "iu" and np.dtype(want).kind in "iu" and np.can_cast(array.dtype, want, "safe"):
            return array.astype(want)
        raise SharkExportError(f"input {name!r} ({path if path is not None else 'positional'}) is {array.dtype}, "
                               f"but {self.path.name} takes {np.dtype(want).name}")

    def run(self, inputs: Any) -> list[np.ndarray]:
        example = ExampleInputs.of(canonical_inputs(inputs))
        return [np.asarray(out, dtype=np.float32) for out in self.session.run(self.output_names, self.feeds(example))]

    def __call__(self, *args, **kwargs) -> list[np.ndarray]:
        """The outputs (numpy, in `output_names` order) for the arguments the torch model's forward takes; the
        inputs of pruned fields are accepted and not fed."""
        example = ExampleInputs.of(canonical_inputs(tuple(args)), kwargs)
        return self.session.run(self.output_names, self.feeds(example))


def run(path, *args, **kwargs) -> list[np.ndarray]:
    """Run the converted model at `path` on the torch model's own arguments (`shark_export.run("m.onnx", batch)`
    for `model(batch)`): a session is opened for the call (keep an `OnnxModelRunner(path)` to run many)."""
    return OnnxModelRunner(path)(*args, **kwargs)


def read_metadata(path) -> dict[str, str]:
    """The model's metadata entries, read without loading its external data."""
    import onnx

    file = Path(path)
    if not file.is_file():
        raise SharkExportError(f"ONNX model {str(file)!r} does not exist")
    try:
        model = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise SharkExportError(f"cannot read {str(file)!r} as an ONNX model: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}
