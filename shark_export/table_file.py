"""One table in one ``.npz`` file (``QuantizedTable.save`` / ``.load``): for tools and tests that handle a
table outside a model. The format version, attributes and tier counts travel inside; loading validates."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from .errors import FormatError
from .format import QuantizedTable, Tier, check_version

_FILE_MAGIC = "shark-export.table"
_FILE_KEYS = (
    "magic",
    "format_version",
    "name",
    "num_rows",
    "dim",
    "uniform_tier",
    "tier_counts",
    "payload",
    "row_meta",
    "default_row",
)


def save_table(table: QuantizedTable, path: str | os.PathLike) -> None:
    """Write the table to one uncompressed ``.npz`` file, atomically (temp file in the same
    directory, fsync, ``os.replace``), with the format version inside."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=".npz", dir=directory)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a saved table is an ordinary readable file
        with os.fdopen(fd, "wb") as f:
            counts = np.array([int(table.tier_counts.get(t, 0)) for t in Tier], dtype=np.int64)
            np.savez(
                f,
                magic=np.array(_FILE_MAGIC),
                format_version=np.array(table.format_version, dtype=np.int64),
                name=np.array(str(table.name)),
                num_rows=np.array(table.num_rows, dtype=np.int64),
                dim=np.array(table.dim, dtype=np.int64),
                uniform_tier=np.array(table.uniform_tier, dtype=np.int64),
                tier_counts=counts,
                scale_group_rows=np.array(table.scale_group_rows, dtype=np.int64),
                payload=table.payload,
                row_meta=table.row_meta,
                default_row=table.default_row,
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

def load_table(path: str | os.PathLike) -> QuantizedTable:
    """Read a file written by :func:`save_table` and validate it. A missing file raises FileNotFoundError;
    a corrupt, truncated, foreign or wrong-version file raises :class:`FormatError` naming the file."""
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - anything np.load trips over is a format problem
        raise FormatError(f"{path}: not a readable shark-export table file ({type(e).__name__}: {e})") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise FormatError(f"{path}: not a shark-export table file (a single .npy array, not an .npz archive)")
    try:
        with data:
            missing = [k for k in _FILE_KEYS if k not in data.files]
            if missing:
                raise FormatError(f"{path}: not a shark-export table file (missing {', '.join(missing)})")
            if str(data["magic"][()]) != _FILE_MAGIC:
                raise FormatError(f"{path}: not a shark-export table file (magic {data['magic'][()]!r})")
            version = check_version(int(data["format_version"][()]), path)
            arrays = {k: data[k] for k in _FILE_KEYS}  # reads (and CRC-checks) every member
            if "scale_group_rows" in data.files:  # v3 files (older files have no such member)
                arrays["scale_group_rows"] = data["scale_group_rows"]
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001
        raise FormatError(f"{path}: corrupt or truncated shark-export table file ({type(e).__name__}: {e})") from e
    try:
        counts_arr = arrays["tier_counts"]
        if counts_arr.shape != (6,):
            raise FormatError(f"tier_counts has shape {counts_arr.shape}, expected (6,)")
        table = QuantizedTable(
            name=str(arrays["name"][()]),
            num_rows=int(arrays["num_rows"][()]),
            dim=int(arrays["dim"][()]),
            payload=arrays["payload"],
            row_meta=arrays["row_meta"],
            default_row=arrays["default_row"],
            uniform_tier=int(arrays["uniform_tier"][()]),
            tier_counts={t: int(counts_arr[t.value]) for t in Tier},
            format_version=version,
            scale_group_rows=int(arrays["scale_group_rows"][()]) if "scale_group_rows" in arrays else 0,
        )
        return table.validate()
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}: malformed shark-export table file ({e})") from e
