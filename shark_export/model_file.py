"""Writing a converted model: staged next to the destination, checked there, then committed in one rename.

- Big tensors go to an external data file (protobuf caps a file at 2 GiB, and serializing big tables
  inline costs several transient copies of them). Its name is taken from its content (`<digest>.onnx.data`),
  never from the output path, so converting the same model twice gives the same bytes wherever it is written.
- The data file is written and synced first and moved into place under its new name; only then does the
  `.onnx` that names it replace the old one, in one rename. A crash at any point leaves either the old model
  with its own data file or the new model with its own: never one model reading another's data. The old
  model's data file is removed afterwards unless another `.onnx` next to it still names it.
- Nothing reaches the output path until `commit()`; leaving the `with` block without it removes the stage.
- A process killed mid-way can leave its stage directory (`.<name>.<random>/`) or a data file no model names
  (the new one between the two renames, the old one before its removal). `clean_leftovers` removes exactly those:
  stage directories whose owner process (pid and start time, in the directory's name) is gone, and content-named data
  files no `.onnx` in the directory names, while no live stage exists. Every conversion into a directory, and
  `shark-export inspect`/`check` of a model in it, runs it first. Commits and cleanups hold a lock on the
  directory, so a cleanup never sees a commit half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from .errors import SharkExportError

# Above this many initializer bytes the tensors go to an external data file next to the model.
EXTERNAL_DATA_BYTES = 256 * 1024 * 1024
DATA_SUFFIX = ".onnx.data"


def _content_digest(model: ir.Model) -> str:
    """A digest of every initializer (name, type, shape, bytes), in order: names the external data file."""
    digest = hashlib.blake2b(digest_size=12)
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        digest.update(f"{value.name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(np.ascontiguousarray(tensor.numpy()).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def data_files_of(path: Path) -> set[str]:
    """Names of the external data files an ONNX model file refers to (empty for an unreadable file)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a model we can read: it refers to nothing we know of
        return set()
    names = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return names


# A stage directory is named f".{output name}.{pid}-{process start}-" + mkdtemp's 8 characters: its owner is in
# its name from the moment it exists, so a kill at any point leaves a directory whose owner can be checked.
_STAGE_DIR = re.compile(r"^\..+\.(\d+)-(\d+)-[A-Za-z0-9_]{8}$")
_DATA_FILE = re.compile(rf"^[0-9a-f]{{24}}{re.escape(DATA_SUFFIX)}$")  # content-named, as this module names them


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def directory_lock(directory: Path):
    """An exclusive advisory lock on `directory` itself (no lock file is left behind)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def stage_prefix(output_path: Path) -> str:
    return f".{output_path.name}.{os.getpid()}-{_process_start(os.getpid()) or 0}-"


def require_output_dir(output_path: Path) -> None:
    """The directory a model is written into must exist: a typo in a path is not silently made a new directory."""
    parent = Path(output_path).parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise SharkExportError(f"output directory {str(parent)!r} {what} (for {Path(output_path).name!r}): create it "
                               f"first (mkdir -p {parent}) or write the model elsewhere")


def make_stage_dir(output_path: Path) -> Path:
    """A private directory next to `output_path` for staging, named after its owner; leftovers of killed
    conversions in that directory are cleaned first."""
    require_output_dir(output_path)
    clean_leftovers(output_path.parent)
    return Path(tempfile.mkdtemp(dir=output_path.parent, prefix=stage_prefix(output_path)))


def clean_leftovers(directory: Path) -> list[str]:
    """Remove what killed conversions left in `directory` and is provably ours and unreferenced: stage directories
    whose owner (in their name) is gone, and content-named data files that no `.onnx` in the directory names, only
    while no live stage exists. Returns the names removed; anything else is never touched."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed: list[str] = []
    with directory_lock(directory):
        live = False
        for entry in directory.iterdir():
            match = _STAGE_DIR.match(entry.name)
            if not (match and entry.is_dir() and not entry.is_symlink()):
                continue
            if _process_start(int(match.group(1))) == match.group(2):
                live = True  # its conversion is running: leave it, and the data files with it
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        if not live:
            named: set[str] = set()
            for model in directory.glob("*.onnx"):
                named |= data_files_of(model)
            for entry in directory.iterdir():
                if _DATA_FILE.match(entry.name) and entry.name not in named and entry.is_file() and not entry.is_symlink():
                    entry.unlink()
                    removed.append(entry.name)
    return removed


class StagedModel:
    """A model saved and checked in a private directory next to `output_path`; `commit()` moves it into place."""

    def __init__(self, model: ir.Model, output_path: Path, stage_dir: Path | None = None,
                 data_names: list[str] | None = None):
        """`stage_dir` and `data_names`: a stage made before (make_stage_dir) holding the model's data files
        already (streamed tables: the graph's external tensors name them); the model is saved around them."""
        self.output_path = Path(output_path)
        require_output_dir(self.output_path)
        self._dir = make_stage_dir(self.output_path) if stage_dir is None else Path(stage_dir)
        self.path = self._dir / self.output_path.name
        if data_names is not None:
            self.data_names = list(data_names)
            external = None
        else:
            size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
            external = f"{_content_digest(model)}{DATA_SUFFIX}" if size > EXTERNAL_DATA_BYTES else None
            self.data_names = [external] if external else []
        try:
            ir.save(model, self.path, external_data=external)
            onnx.checker.check_model(str(self.path), full_check=True)
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> "StagedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def commit(self) -> None:
        """Data file first (synced, renamed into place), then the model in one rename; then the old data file."""
        commit_files(self._dir, self.path, self.data_names, self.output_path)
        self.discard()


def commit_files(stage_dir: Path, staged_model: Path, data_name: "str | list[str] | None", output_path: Path) -> None:
    """Move a model staged in `stage_dir` (with its data file `data_name`, if any) to `output_path`: the data
    file first (synced, renamed into place), then the model in one rename; then the replaced model's data
    file, unless another `.onnx` next to it still names it."""
    target_dir = output_path.parent
    with directory_lock(target_dir):
        _commit_locked(stage_dir, staged_model, data_name, output_path)


def _commit_locked(stage_dir: Path, staged_model: Path, data_name: "str | list[str] | None", output_path: Path) -> None:
    target_dir = output_path.parent
    previous = data_files_of(output_path) if output_path.is_file() else set()
    names = [data_name] if isinstance(data_name, str) else list(data_name or [])
    for name in names:  # every data file in place before the model that names them
        staged_data = stage_dir / name
        _fsync(staged_data)
        os.replace(staged_data, target_dir / name)
    _fsync(staged_model)
    os.replace(staged_model, output_path)
    _fsync_dir(target_dir)
    stale = previous - set(names)
    if stale:
        still_named = set()
        for other in target_dir.glob("*.onnx"):
            if other != output_path:
                still_named |= data_files_of(other)
        for name in stale - still_named:
            candidate = target_dir / name
            if candidate.parent == target_dir and candidate.is_file():  # never a path outside the directory
                candidate.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        _fsync(directory)
    except OSError:  # some filesystems cannot sync a directory; the renames are still atomic
        pass


def stage(model: ir.Model, output_path, stage_dir: Path | None = None, data_names: list[str] | None = None) -> StagedModel:
    """Save `model` (checked with onnx's full checker) next to `output_path` without touching it."""
    try:
        return StagedModel(model, Path(output_path), stage_dir, data_names)
    except OSError as exc:
        raise SharkExportError(f"cannot write the model next to {str(output_path)!r}: {exc}") from exc
