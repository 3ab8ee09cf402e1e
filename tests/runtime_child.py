"""Run an ONNX file on one ONNX runtime: the runners tests/test_portable_runtimes.py uses, and, as a script, a child
process that feeds one input set and prints what happened (`RAN <shapes> finite|nonfinite` or `ERROR <type> <text>`)
so that a runtime that aborts or crashes on bad input takes down only the child.

    python runtime_child.py <runtime> <model.onnx> <inputs.npz> [<outputs.npz>]
"""

from __future__ import annotations

import sys

import numpy as np


def run_onnxruntime(path: str, feeds: dict) -> list:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def run_reference(path: str, feeds: dict) -> list:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(path).run(None, feeds)


def run_openvino(path: str, feeds: dict) -> list:
    import openvino as ov

    # f32: on a CPU with bf16 instructions (AVX512-BF16, AMX) OpenVINO's default runs MatMul in bf16
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled(feeds)
    return [np.asarray(results[output]) for output in compiled.outputs]


def run_tract(path: str, feeds: dict) -> list:
    import tract

    runnable = tract.onnx().load(path).into_model().into_runnable()
    return [output.to_numpy() for output in runnable.run(list(feeds.values()))]


def run_onnx2torch(path: str, feeds: dict) -> list:
    """The file converted back to a torch module by onnx2torch, run on the feeds. onnx2torch imports torchvision
    for its NMS and RoiAlign converters only; where torchvision is missing (CPU torch has no matching wheel) a
    stand-in module lets it import. Run in a child process: the stand-in must not reach other tests."""
    import types

    import torch

    try:
        import torchvision  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.roi_align = stand_in.ops.nms = stand_in.ops.box_convert = None
        sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, stand_in.ops
    from onnx2torch import convert

    with torch.no_grad():
        outputs = convert(path)(*[torch.from_numpy(v) for v in feeds.values()])
    return [o.numpy() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


RUNNERS = {"onnxruntime": run_onnxruntime, "onnx.reference": run_reference, "openvino": run_openvino, "tract": run_tract,
           "onnx2torch": run_onnx2torch}
MODULES = {"onnxruntime": "onnxruntime", "onnx.reference": "onnx", "openvino": "openvino", "tract": "tract",
           "onnx2torch": "onnx2torch"}


def main(argv: list[str]) -> int:
    runtime, path, inputs = argv[:3]
    feeds = dict(np.load(inputs))
    try:
        outputs = [np.asarray(o) for o in RUNNERS[runtime](path, feeds)]
    except Exception as exc:  # noqa: BLE001 - the parent reads what failed
        print("ERROR", type(exc).__name__, " ".join(str(exc).split())[:2000], flush=True)
        return 0
    if len(argv) > 3:
        np.savez(argv[3], *outputs)
    finite = all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")
    print("RAN", [list(o.shape) for o in outputs], "finite" if finite else "nonfinite", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
