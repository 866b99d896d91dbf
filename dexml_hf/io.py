"""The package's own files (label indexes, retrieval memories, checkpoint state): read without trusting them
(safetensors, JSON and Arrow only, nothing unpickled, a :class:`~dexml_hf.errors.DataError` naming the file when one
is missing or damaged) and written atomically (:func:`atomic_folder`: a whole folder appears at once, with the
permissions of any file the user creates)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dexml_hf.errors import DataError, UsageError

__all__ = [
    "ArrowColumn",
    "ConfigFields",
    "atomic_folder",
    "read_arrow_columns",
    "read_json",
    "read_safetensors",
    "remove_stale_temp_folders",
    "write_arrow_columns",
]


def read_safetensors(path: str | os.PathLike, framework: str = "pt") -> dict[str, Any]:
    """All tensors of a safetensors file (``framework`` "pt" or "numpy")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if framework == "numpy":
        from safetensors.numpy import load_file
    else:
        from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise DataError(f"{path}: not a readable safetensors file ({err})") from err


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


_REQUIRED = object()


class ConfigFields:
    """The fields of a saved folder's JSON config, read without trusting them (a folder may come from the Hub or
    be edited by hand): a missing or mistyped field is a :class:`DataError` naming ``where`` (the file, and the
    entry of a nested config) and the field, not a bare ``KeyError`` later, and a file name in the config cannot
    reach outside the folder."""

    def __init__(self, config: Any, where: str):
        if not isinstance(config, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(config).__name__}")
        self.config, self.where = config, where

    def get(self, field: str, kind: type | tuple[type, ...] | None = None, default: Any = _REQUIRED) -> Any:
        """``config[field]`` when it is a ``kind`` (``True`` is no ``int``); ``default`` when it is absent or null,
        an error when there is no default."""
        value = self.config.get(field)
        if value is None:
            if default is _REQUIRED:
                raise DataError(f"{self.where}: required field {field!r} is missing")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if kind is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            expected = " or ".join(k.__name__ for k in kinds)
            raise DataError(f"{self.where}: field {field!r} must be {expected}, got {value!r}")
        return value

    def member(self, field: str, folder: str | os.PathLike, default: Any = _REQUIRED) -> Path | None:
        """The file ``folder / config[field]``; the name must be a plain file name (no folder part, not absolute,
        not ``..``), so the config can only point at the folder's own files."""
        name = self.get(field, str, default)
        if name is None:
            return None
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise DataError(f"{self.where}: field {field!r}={name!r} must be the name of a file inside {folder}")
        return Path(folder) / name


# ---- Arrow columns (label ids and texts): memory-mapped, so a 10M-label table costs page cache, not heap ----------


class ArrowColumn(Sequence):
    """A read-only sequence over one column of a memory-mapped Arrow file; items come out as Python values.

    Compares equal to any sequence with the same items (``index.texts == ["a", "b"]``), so code written for the
    lists an index used to hold keeps working without 10M Python strings being made at load time."""

    def __init__(self, array):
        import pyarrow as pa

        self.array = array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step == 1:
                return self.array.slice(start, max(0, stop - start)).to_pylist()
            return [self.array[i].as_py() for i in range(start, stop, step)]
        i = int(item)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} labels")
        return self.array[i].as_py()

    def __iter__(self) -> Iterator:
        for chunk in self.array.chunks:
            for start in range(0, len(chunk), 65536):
                yield from chunk.slice(start, 65536).to_pylist()

    def __eq__(self, other) -> bool:
        if isinstance(other, ArrowColumn):
            return self.array.equals(other.array)
        if not isinstance(other, Sequence) or isinstance(other, str) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self[:3])
        return f"ArrowColumn([{head}{', ...' if len(self) > 3 else ''}], n={len(self)}, type={self.array.type})"


def write_arrow_columns(path: str | os.PathLike, columns: dict[str, Sequence | None], batch_rows: int = 1 << 20):
    """Write the non-``None`` columns (equal lengths) to an Arrow IPC file, ``batch_rows`` rows a record batch.
    Texts are ``large_string`` (no 2 GiB limit per batch); ids keep the type Arrow infers (int64, string, ...)."""
    import pyarrow as pa

    columns = {name: values for name, values in columns.items() if values is not None}
    n = len(next(iter(columns.values()))) if columns else 0

    def as_array(name, values):
        if isinstance(values, ArrowColumn):
            return values.array
        try:
            return pa.chunked_array([pa.array(list(values), type=pa.large_string() if name == "text" else None)])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise DataError(f"{path}: column {name!r} cannot be stored in Arrow ({err}); use ids of one type") from err

    arrays = {name: as_array(name, values) for name, values in columns.items()}
    if arrays and len({len(a) for a in arrays.values()}) > 1:
        raise ValueError(f"{path}: columns of different lengths {[len(a) for a in arrays.values()]}")
    table = pa.table(arrays) if arrays else pa.table({})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for start in range(0, max(n, 1) if arrays else 0, batch_rows):
            writer.write_table(table.slice(start, batch_rows))
    return Path(path)


def read_arrow_columns(path: str | os.PathLike) -> dict[str, ArrowColumn]:
    """The columns of an Arrow IPC file, memory-mapped (nothing is copied until an item is read)."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Arrow IPC file ({err})") from err
    return {name: ArrowColumn(table.column(name)) for name in table.column_names}


# ---- atomic folder writes --------------------------------------------------------------------------------------

_TEMP_TAG = "dexml_hf"
_RENAME_EXCHANGE = 2  # linux/fs.h


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host may still run (one we may not signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False


def _host_tag() -> str:
    """This host's name as it goes into a temp folder's name (characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"


def remove_stale_temp_folders(target: str | os.PathLike) -> list[Path]:
    """Remove the temp folders a killed :func:`atomic_folder` left beside ``target``: only folders named
    ``.<target>.dexml_hf-(tmp|old)-<host>-<pid>-<uuid>`` made on this host by a process that is gone. A pid says
    nothing about another host (a shared filesystem), so another host's temp folder is never removed, whatever
    its age (a write of a large index may take hours; a crashed host's leftovers are for a person to remove), nor
    is one named without a host. Returns what was removed."""
    target = Path(target).absolute()
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{_TEMP_TAG}-(tmp|old)-(.+)-(\d+)-[0-9a-f]{{32}}$")
    removed = []
    if not target.parent.is_dir():
        return removed
    host = _host_tag()
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or match.group(2) != host or not entry.is_dir() or entry.is_symlink():
            continue
        if not pid_alive(int(match.group(3))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _fix_permissions(folder: Path) -> None:
    """Files ``0666 & ~umask``, folders ``0777 & ~umask``: what ``open()`` / ``mkdir`` give (some writers use 0600)."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, replaceable: Callable[[Path], bool] = lambda p: False) -> Iterator[Path]:
    """Write a folder atomically: yields an empty temp folder beside ``target``; on success it takes ``target``'s
    place in one rename (an existing ``target`` is swapped out and deleted), on error it is removed.

    A kill at any moment leaves the old folder or the new one at ``target`` (with Linux's ``renameat2``; elsewhere
    two renames, with a moment where ``target`` is absent). Temp folders of killed writes on this host are removed
    by the next write to the same target (see :func:`remove_stale_temp_folders`). An existing ``target`` is
    replaced only if it is empty or ``replaceable(target)`` (e.g. it holds the package's own files): a folder of
    someone else's is never deleted.
    """
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise UsageError(f"{target} is a non-empty folder this package did not write; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_folders(target)
    tag = f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex}"
    tmp = target.parent / f".{target.name}.{_TEMP_TAG}-tmp-{tag}"
    tmp.mkdir()
    try:
        yield tmp
        _fix_permissions(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not target.exists():
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = target.parent / f".{target.name}.{_TEMP_TAG}-old-{tag}"
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
