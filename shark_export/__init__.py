"""shark-export: mixed-precision embedding tables exported to ONNX with custom lookup ops."""

from . import errors
from .ops import DOMAIN, library_path, session
from .schemas import register_schemas

register_schemas()  # onnx's checker and shape inference learn our ops on import

from .convert import ConvertReport, convert  # noqa: E402
from .field_scoring import FieldScores, PrunePlan, score_fields  # noqa: E402
from .fields import find_fields, find_tables  # noqa: E402
from .format import QuantizedTable, Tier, quantize_table  # noqa: E402
from .parity import ParityReport, check_parity  # noqa: E402
from .pruning import prune_fields  # noqa: E402
from .quant_config import QuantConfig  # noqa: E402
from .row_priority import RowPriority, score_rows  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DOMAIN",
    "ConvertReport",
    "FieldScores",
    "PrunePlan",
    "ParityReport",
    "QuantConfig",
    "QuantizedTable",
    "RowPriority",
    "Tier",
    "check_parity",
    "convert",
    "errors",
    "find_fields",
    "find_tables",
    "library_path",
    "prune_fields",
    "quantize_table",
    "score_fields",
    "score_rows",
    "session",
]
