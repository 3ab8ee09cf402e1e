"""The compiled custom-op library (domain ``shark_export``) and onnxruntime sessions that use it."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

from . import domain
from .errors import LibraryNotFoundError, MissingCustomOpsError

#: ONNX domain of the custom ops and its opset version (shark_export.domain; here as the package has always named them).
DOMAIN, DOMAIN_VERSION = domain.DOMAIN, domain.DOMAIN_VERSION

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnxruntime

#: Environment variable naming a library file to use instead of the installed one.
LIBRARY_ENV = "SHARK_EXPORT_LIBRARY"

_LIBRARY_NAMES = ("libshark_export_ops.so", "libshark_export_ops.dylib", "shark_export_ops.dll")

#: metadata_props key under which the converter writes RUNTIME_NOTE (also the model's doc_string).
RUNTIME_KEY = "shark_export.runtime"
#: What any ONNX Runtime user of a converted model must do: written into every converted model that uses our ops.
RUNTIME_NOTE = (
    f"Needs the shark-export custom-op library {_LIBRARY_NAMES[0]} (ops of domain '{DOMAIN}') registered in the ONNX "
    f"Runtime session options: Python so.register_custom_ops_library(path) or shark_export.session(model), C++ "
    f"RegisterCustomOpsLibrary, C# RegisterCustomOpLibraryV2, Java registerCustomOpLibrary; "
    f"shark_export.ops.library_path() finds the path (${LIBRARY_ENV} overrides it)."
)


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


# ONNX Runtime's words for a node whose op it cannot find: an unknown domain/op (no library registered, or an
# op the library lacks), or an op with a schema but no kernel.
_MISSING_OP = (
    re.compile(rf"\b{DOMAIN}:(\w+)\(-?\d+\) is not a registered function/op"),
    re.compile(r"No Op registered for (RowwiseDequant\w*) with domain_version"),
    re.compile(r"Could not find an implementation for (RowwiseDequant\w*)\("),
)


def missing_ops_error(exc: BaseException, model: str, registered: str | None) -> MissingCustomOpsError | None:
    """The MissingCustomOpsError for ONNX Runtime's failure `exc` to find a shark_export op of `model` (a name
    for the message) in a session where the library `registered` (None: none) was registered; None when
    `exc` is about something else."""
    text = str(exc)
    op = next((m.group(1) for pattern in _MISSING_OP if (m := pattern.search(text))), None)
    if op is None:
        return None
    try:
        where = f"here it is {library_path()!r}"
    except LibraryNotFoundError as missing:
        where = f"here it finds none: {missing}"
    if registered is None:
        cause = "no shark-export custom-op library was registered in the session"
    else:
        cause = (f"the library registered ({registered!r}) does not provide it, so it is older than the model or "
                 f"another build: rebuild or reinstall shark-export")
    return MissingCustomOpsError(
        f"ONNX Runtime cannot load {model}: it found no op {DOMAIN}:{op} ({cause}). Models converted by "
        f"shark-export need the custom-op library {_LIBRARY_NAMES[0]} registered in the session options "
        f"(so.register_custom_ops_library(path), or use shark_export.session(path)); shark_export.ops.library_path() "
        f"finds it ({where}; ${LIBRARY_ENV} overrides it). ONNX Runtime said: {text}"
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
    from .ort_session import Session

    if providers is not None:
        _warn_unavailable_providers(providers, ort.get_available_providers())
    so = session_options(threads, config)
    try:
        return Session(
            source, sess_options=so, providers=list(providers) if providers is not None else ["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; only a missing op of ours is rewritten
        error = missing_ops_error(exc, repr(source) if isinstance(source, str) else "the model", library_path())
        if error is None:
            from .ort_errors import named_model_error

            error = named_model_error(exc, source)
        if error is None:
            raise
        raise error from exc


def _warn_unavailable_providers(asked: Sequence, available: list[str]) -> None:
    """ORT falls back to the CPU without a word when an execution provider is missing; say why and what to do."""
    import importlib.metadata as metadata
    import warnings

    missing = [p for p in (p if isinstance(p, str) else p[0] for p in asked) if p not in available]
    if not missing:
        return
    installed = {name for name in ("onnxruntime", "onnxruntime-gpu") if _installed(metadata, name)}
    fix = ("pip install shark-export[gpu] (onnxruntime-gpu)" if "onnxruntime-gpu" not in installed else
           "onnxruntime and onnxruntime-gpu are both installed and share one module, the CPU one's files won: "
           "pip install --force-reinstall --no-deps onnxruntime-gpu" if "onnxruntime" in installed else
           "check that the CUDA and cuDNN libraries onnxruntime-gpu needs are installed")
    warnings.warn(f"execution provider(s) {missing} are not available in this onnxruntime (available: {available}); "
                  f"ONNX Runtime runs those nodes elsewhere. {fix}", RuntimeWarning, stacklevel=3)


def _installed(metadata, name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False
