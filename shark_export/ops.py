"""The compiled custom-op library (domain ``shark_export``) and onnxruntime sessions that use it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

from .errors import LibraryNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime

#: ONNX domain of the custom ops (RowwiseDequantGather, RowwiseDequantEmbeddingBag), opset version 1.
DOMAIN = "shark_export"
#: Opset version of DOMAIN.
DOMAIN_VERSION = 1

#: Environment variable naming a library file to use instead of the installed one.
LIBRARY_ENV = "SHARK_EXPORT_LIBRARY"

_LIBRARY_NAMES = ("libshark_export_ops.so", "libshark_export_ops.dylib", "shark_export_ops.dll")


def library_path() -> str:
    """Path of the custom-op library: ``$SHARK_EXPORT_LIBRARY`` if set, else the one installed next to
    this package. Raises LibraryNotFoundError when the file does not exist."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise LibraryNotFoundError(
                f"{LIBRARY_ENV}={env!r} does not name an existing file; unset it to use the installed "
                f"library, or build one with `cmake -S . -B build && cmake --build build`"
            )
        return str(path.resolve())
    here = Path(__file__).resolve().parent
    for name in _LIBRARY_NAMES:
        candidate = here / name
        if candidate.is_file():
            return str(candidate)
    raise LibraryNotFoundError(
        f"the shark-export custom-op library ({_LIBRARY_NAMES[0]}) is not in {here}: the package was not "
        f"built. Install it with `pip install .` from the repository root (that compiles the library), "
        f"or point {LIBRARY_ENV} at a library built with `cmake -S . -B build && cmake --build build`"
    )


ModelLike = Union[str, os.PathLike, bytes, "onnx.ModelProto"]


# The library's session config entries (custom_ops/README.md): key → accepted values (None: a byte count).
CONFIG_KEYS = {"cpu_isa": ("auto", "generic"), "stream_bytes": None, "huge_pages": ("0", "1"),
               "cuda": ("auto", "0", "force")}


def session_options(threads: int | None = None, config: dict | None = None) -> "onnxruntime.SessionOptions":
    """SessionOptions with the custom-op library registered; ``threads`` sets the intra-op thread count
    (and inter-op to 1); ``config`` sets the library's session config entries (``{"cpu_isa": "generic"}``
    becomes ``shark_export.cpu_isa=generic``; keys: cpu_isa, stream_bytes, huge_pages, cuda)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key, value in (config or {}).items():
        if key not in CONFIG_KEYS:
            raise ValueError(f"unknown shark_export session config key {key!r}; known: {', '.join(CONFIG_KEYS)}")
        so.add_session_config_entry(f"shark_export.{key}", str(value))  # values are checked by the library
    so.register_custom_ops_library(library_path())
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def session(
    model: ModelLike,
    providers: Sequence | None = None,
    threads: int | None = None,
    verify: bool = False,
    config: dict | None = None,
) -> "onnxruntime.InferenceSession":
    """An onnxruntime InferenceSession for ``model`` (a path, serialized bytes or an onnx.ModelProto)
    with the shark_export ops available. Default providers: ["CPUExecutionProvider"].

    ``config``: the library's session config entries (see :func:`session_options`).
    ``verify=True`` (a path only) first recomputes every table's checksum against the one recorded at
    conversion and raises ``IntegrityError`` naming the table that changed."""
    import onnxruntime as ort

    if verify:
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("verify=True needs the model's path (its tables are read from the file)")
        from .integrity import verify_model

        verify_model(model)

    if isinstance(model, (bytes, bytearray)):
        source = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
    elif hasattr(model, "SerializeToString"):
        source = model.SerializeToString()
    else:
        raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    so = session_options(threads, config)
    return ort.InferenceSession(
        source, sess_options=so, providers=list(providers) if providers is not None else ["CPUExecutionProvider"]
    )
