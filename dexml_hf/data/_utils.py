"""Shared helpers for the data package: error messages, atomic folders, Arrow <-> CSR conversion."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dexml_hf.errors import DataError, UsageError


def data_error(path, line: int | None = None, field: str | None = None, message: str = "") -> DataError:
    """A :class:`~dexml_hf.errors.DataError` (a ValueError) that always says where: ``file, line N, field 'x': message``."""
    where = str(path)
    if line is not None:
        where += f", line {line}"
    if field is not None:
        where += f", field {field!r}"
    return DataError(f"{where}: {message}")


def open_binary(path: str | os.PathLike):
    """Open a file for reading bytes, decompressing ``.gz`` transparently."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def open_text_out(path: str | os.PathLike):
    """Open a file for writing UTF-8 text, gzip-compressed when the name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the output byte-identical across runs.
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8", newline="\n")
    return open(path, "w", encoding="utf-8", newline="\n")


_COMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def compression_error(path, err: BaseException) -> DataError:
    """A truncated or non-gzip ``.gz`` file, named."""
    if isinstance(err, EOFError):
        reason = "truncated gzip file (ends before the end of the compressed stream)"
    else:
        reason = f"not a valid gzip file ({err})"
    return data_error(path, None, None, reason)


def iter_lines(path: str | os.PathLike, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, without the newline); non-UTF-8 bytes raise with the line.

    A truncated or corrupt ``.gz`` raises a :class:`DataError` naming the file.
    """
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise data_error(path, number, None, f"not valid UTF-8 (byte {err.start}: {err.reason})") from None
                text = text.rstrip("\r\n")
                if skip_blank and not text.strip():
                    continue
                yield number, text
    except _COMPRESSION_ERRORS as err:
        raise compression_error(path, err) from None


def read_utf8(path: str | os.PathLike) -> str:
    """The whole file as text; a decoding error names the line of the offending byte."""
    try:
        with open_binary(path) as handle:
            data = handle.read()
    except _COMPRESSION_ERRORS as err:
        raise compression_error(path, err) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise data_error(path, line, None, f"not valid UTF-8 ({err.reason})") from None


def count_lines(path: str | os.PathLike) -> int:
    """Number of newline-terminated (or final unterminated) lines, streamed in blocks (a header check)."""
    count, last = 0, b"\n"
    try:
        with open_binary(path) as handle:
            while block := handle.read(1 << 22):
                count += block.count(b"\n")
                last = block[-1:]
    except _COMPRESSION_ERRORS as err:
        raise compression_error(path, err) from None
    return count + (last != b"\n")


def missing_file(folder, names: Iterable[str], what: str) -> DataError:
    """A required file is absent: name the folder and the file(s) looked for."""
    return DataError(f"{folder}: no {what} file (looked for {', '.join(names)})")


def parse_int(text: str, path, line: int, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise data_error(path, line, field, f"expected an integer, got {text!r}") from None


def parse_float(text: str, path, line: int, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise data_error(path, line, field, f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise data_error(path, line, field, f"expected a finite number, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------- safe output
#: Written into every folder this package creates; ``overwrite`` replaces only a folder that has it.
MARKER_FILE = ".dexml_hf_dataset.json"
MARKER_KIND = "dexml_hf.dataset"
_TEMP_PATTERN = r"\.{name}\.(tmp|old)-[A-Za-z0-9_]+"


def write_marker(folder: Path, fmt: str | None, **extra) -> None:
    """Mark ``folder`` as written by this package (``extra``: e.g. the writing process while in progress)."""
    record = {"kind": MARKER_KIND, "version": 1, "format": fmt, **extra}
    (folder / MARKER_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_marker(folder: Path) -> dict | None:
    """The marker record of ``folder``, or ``None`` when it is not a folder this package wrote."""
    path = Path(folder) / MARKER_FILE
    if Path(folder).is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == MARKER_KIND else None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_destination(dst: str | os.PathLike, overwrite: bool = False, sources: Iterable = ()) -> Path:
    """Validate an output path before anything is read or written; returns it absolute.

    Refused always: ``/``, the home folder, the current folder, the source itself or any folder that contains a
    source. An existing ``dst`` needs ``overwrite`` and must be a folder this package wrote (it has
    :data:`MARKER_FILE`); anything else is never replaced.
    """
    raw = Path(dst).expanduser()
    target = raw.resolve()
    forbidden = {Path("/").resolve(): "the root folder", Path.home().resolve(): "the home folder"}
    forbidden.setdefault(Path.cwd().resolve(), "the current folder")
    if target in forbidden:
        raise UsageError(f"refusing to write a dataset into {dst} ({forbidden[target]}); choose a new folder")
    for src in sources:
        src_path = Path(src).expanduser().resolve()
        if _is_within(src_path, target):
            what = "is the source" if src_path == target else f"contains the source {src}"
            raise UsageError(f"refusing to write into {dst}: it {what}; choose a new folder")
    if raw.is_symlink():
        raise UsageError(f"{dst} is a symbolic link; refusing to replace it (write to a new folder)")
    if raw.exists():
        if not overwrite:
            raise UsageError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
        if not raw.is_dir() or read_marker(raw) is None:
            what = "a file" if not raw.is_dir() else f"a folder without the marker file {MARKER_FILE}"
            raise UsageError(
                f"refusing to overwrite {dst}: it is {what}, not a dataset written by dexml_hf; "
                "remove it yourself or choose a new folder"
            )
    return Path(os.path.abspath(raw))


def _process_alive(record: dict) -> bool:
    """Whether the process that started a temp folder may still be writing it (another host's: assume so)."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int):
        return False  # a finished dataset in a temp name: the swap of an overwrite was interrupted
    if host != socket.gethostname():
        return True
    from dexml_hf.io import pid_alive

    return pid_alive(pid)


def clean_stale_temp(dst: str | os.PathLike) -> list[Path]:
    """Remove ``.<dst>.tmp-*`` / ``.<dst>.old-*`` folders a killed run left next to ``dst``.

    Only folders with this package's naming *and* marker whose writing process is gone are removed.
    """
    dst = Path(os.path.abspath(Path(dst).expanduser()))
    if not dst.parent.is_dir():
        return []
    pattern = re.compile(_TEMP_PATTERN.format(name=re.escape(dst.name)))
    removed = []
    for entry in dst.parent.iterdir():
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        record = read_marker(entry)
        if record is None or _process_alive(record):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def marked_temp_dir(dst: Path, fmt: str | None = None) -> Iterator[Path]:
    """A temp folder ``.<dst>.tmp-*`` next to ``dst``, marked with this process's id; removed on exit if still there."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        write_marker(tmp, fmt, pid=os.getpid(), host=socket.gethostname(), state="writing")
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(
    dst: str | os.PathLike, overwrite: bool = False, fmt: str | None = None, sources: Iterable = ()
) -> Iterator[Path]:
    """Yield a marked temp folder next to ``dst`` and rename it to ``dst`` only if the block succeeds.

    ``dst`` is checked first (:func:`check_destination`); stale temp folders of killed runs are removed. A failure
    (bad input, Ctrl-C) removes the temp folder and a kill leaves at most a temp folder the next run cleans, so
    ``dst`` is either complete or absent. An existing ``dst`` (marked, with ``overwrite``) is swapped out only
    after the new one is complete.
    """
    dst = check_destination(dst, overwrite, sources)
    clean_stale_temp(dst)
    with marked_temp_dir(dst, fmt) as tmp:
        yield tmp
        if dst.exists():
            check_destination(dst, True)  # still ours? (it could have been replaced while we wrote)
            old = dst.parent / f".{dst.name}.old-{os.urandom(4).hex()}"
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    write_marker(dst, fmt)  # the final marker, without the writer's pid (a kill before this leaves a valid one)


def _merge_duplicates(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape) -> sp.csr_matrix:
    """CSR from coordinates with sorted columns; a label listed twice for a query keeps its largest relevance."""
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    if len(rows):
        new = np.ones(len(rows), dtype=bool)
        new[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        if not new.all():
            starts = np.flatnonzero(new)
            vals = np.maximum.reduceat(vals, starts)
            rows, cols = rows[starts], cols[starts]
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((vals.astype(np.float32), cols.astype(np.int32), indptr), shape=shape)


def csr_from_lists(
    offsets: np.ndarray, indices: np.ndarray, values: np.ndarray | None, num_labels: int
) -> sp.csr_matrix:
    """Build the queries x labels CSR from list offsets + flat ids (+ relevance), vectorised.

    Explicit zero relevances are dropped (a zero is "not a positive"); duplicates keep the maximum.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    offsets = offsets - offsets[0]
    n = len(offsets) - 1
    indices = np.asarray(indices, dtype=np.int64)[: offsets[-1]]
    if values is None:
        values = np.ones(len(indices), dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)[: offsets[-1]]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
    keep = values != 0
    if not keep.all():
        rows, indices, values = rows[keep], indices[keep], values[keep]
    matrix = _merge_duplicates(rows, indices, values, (n, num_labels))
    matrix.has_sorted_indices = True
    return matrix


def list_array_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, flat values)`` of an Arrow list column as numpy arrays (nulls count as empty lists)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_large_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    if column.null_count:
        column = column.fill_null(pa.scalar([], type=column.type))
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False)
    values = values[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def csr_to_list_arrays(matrix: sp.csr_matrix) -> tuple[pa.ListArray, pa.ListArray]:
    """``(label_ids, label_rel)`` Arrow list columns from a CSR, zero-copy where possible."""
    matrix = matrix.tocsr()
    offsets = pa.array(matrix.indptr.astype(np.int64), type=pa.int64())
    ids = pa.LargeListArray.from_arrays(offsets, pa.array(matrix.indices.astype(np.int64)))
    rel = pa.LargeListArray.from_arrays(offsets, pa.array(matrix.data.astype(np.float32)))
    return ids.cast(pa.list_(pa.int64())), rel.cast(pa.list_(pa.float32()))
