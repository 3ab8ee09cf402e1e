"""shark-export: mixed-precision embedding tables exported to ONNX with custom lookup ops.

`session()` and the library path need neither torch nor the exporter: everything else is imported on first
use (serving processes never load torch).
"""

from __future__ import annotations

import importlib

from . import errors
from .ops import DOMAIN, library_path, session
from .schemas import register_schemas

register_schemas()  # onnx's checker and shape inference learn our ops on import

__version__ = "0.1.0"

# name → module that defines it (imported on first access)
_LAZY = {
    "ConvertReport": "report",
    "convert": "converter",
    "FieldScores": "field_scoring",
    "score_fields": "field_scoring",
    "PrunePlan": "pruning",
    "prune_fields": "pruning",
    "find_fields": "fields",
    "find_tables": "fields",
    "QuantizedTable": "format",
    "Tier": "format",
    "quantize_table": "quantize",
    "ParityReport": "parity",
    "check_parity": "parity",
    "check_faithfulness": "faithfulness",
    "QuantConfig": "quant_config",
    "RowPriority": "row_priority",
    "score_rows": "row_priority",
    "OnnxModelRunner": "model_io",
    "run": "model_io",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shark_export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["DOMAIN", "errors", "library_path", "session", *_LAZY]
