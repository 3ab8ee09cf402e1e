"""Typed errors. Every message names the thing (table, row, field, node, file) and the offending value."""


class SharkExportError(Exception):
    """Base class of every error shark-export raises on purpose."""


class FormatError(SharkExportError, ValueError):
    """A table cannot be stored in, or read from, the storage format (bad shape, dtype, values, version)."""


class IndexOutOfRangeError(SharkExportError, IndexError):
    """A lookup index is negative or not below the table's row count."""


class LibraryNotFoundError(SharkExportError, FileNotFoundError):
    """The compiled custom-op library is missing (package not built/installed)."""
