"""Typed errors. Every message names the thing (table, row, field, node, file) and the offending value."""


class SharkExportError(Exception):
    """Base class of every error shark-export raises on purpose."""


class FormatError(SharkExportError, ValueError):
    """A table cannot be stored in, or read from, the storage format (bad shape, dtype, values, version)."""


class IndexOutOfRangeError(SharkExportError, IndexError):
    """A lookup index is negative or not below the table's row count."""


class LibraryNotFoundError(SharkExportError, FileNotFoundError):
    """The compiled custom-op library is missing (package not built/installed)."""


class MissingCustomOpsError(SharkExportError, RuntimeError):
    """ONNX Runtime could not find a ``shark_export`` op the model uses: the custom-op library was not registered
    in the session, or the library registered is older than the model. The message names the library to
    register and where ``shark_export.ops.library_path()`` finds it."""


class OptionError(SharkExportError, ValueError):
    """An option given to convert (or another entry point) has a value it does not take; the message names both."""


class InputTypeError(SharkExportError, TypeError):
    """An input fed to a converted model has another dtype than the graph input it feeds (int32 ids where the
    graph takes int64, float ids): the message names the input, both dtypes and the fix."""


class ExportError(SharkExportError, RuntimeError):
    """torch could not export the model, or a lookup in it cannot be mapped to a table."""


class UnsupportedModelError(SharkExportError, ValueError):
    """The model has no embedding table, or uses an embedding feature the converter cannot serve."""


class UnknownFieldError(SharkExportError, KeyError):
    """A field name (a lookup) that the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class ParityError(SharkExportError, AssertionError):
    """The converted model's outputs differ from the reference beyond tolerance. `report` holds the
    ParityReport (check_parity) or ConvertReport (convert) when there is one."""

    def __init__(self, message: str = "", report=None):
        super().__init__(message)
        self.report = report


class IntegrityError(FormatError):
    """A stored table's content does not match the checksum recorded at conversion (or none is recorded)."""


class AmbiguousModelError(IntegrityError):
    """The file does not say unambiguously what ONNX Runtime will compute: two initializers of one name, a table
    tensor shadowed by a graph input or a node output, lookup nodes of one table disagreeing on its tensors or
    attributes, a lookup inside a subgraph. What verify checked could differ from what ORT reads."""
