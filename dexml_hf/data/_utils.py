"""Shared helpers for the data package: error messages, atomic folders, Arrow <-> CSR conversion."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from dexml_hf.errors import DataError


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


def iter_lines(path: str | os.PathLike, skip_blank: bool = True) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, without the newline); non-UTF-8 bytes raise with the line."""
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


def read_utf8(path: str | os.PathLike) -> str:
    """The whole file as text; a decoding error names the line of the offending byte."""
    with open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise data_error(path, line, None, f"not valid UTF-8 ({err.reason})") from None


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


@contextlib.contextmanager
def atomic_directory(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder next to ``dst`` and rename it to ``dst`` only if the block succeeds.

    A failure (bad input, Ctrl-C) removes the temp folder, so ``dst`` is either complete or absent.
    """
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            os.replace(dst, backup / "old")
            os.replace(tmp, dst)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
