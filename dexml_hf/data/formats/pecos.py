"""DEXML / PECOS layout: ``raw/{trn,tst}_X.txt``, ``raw/Y.txt`` (a text a line) and ``Y.{trn,tst}.npz`` (CSR).

The ``.npz`` arrays are validated before scipy sees them (``indptr`` monotonic and consistent, column ids in
``[0, L)``, relevance finite and >= 0, shape equal to the text files'): scipy's C++ code trusts them and a
corrupt ``indptr`` otherwise crashes the interpreter.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from dexml_hf.data._utils import atomic_directory, csr_from_lists, data_error, missing_file
from dexml_hf.data.dataset import XMCDataset, index_strings, text_table
from dexml_hf.data.formats._common import SPLIT_STEMS, one_line, read_text_lines, require
from dexml_hf.data.registry import register_format

__all__ = ["load_csr_npz", "read_pecos", "write_pecos"]


def _first_row(indptr: np.ndarray, position: int) -> int:
    """The row that holds the ``position``-th stored entry."""
    return int(np.searchsorted(indptr, position, side="right") - 1)


def load_csr_npz(path: Path, shape: tuple[int, int], shape_source: str = "") -> sp.csr_matrix:
    """A ``scipy.sparse.save_npz`` CSR file, checked array by array before a matrix is built.

    ``shape`` is what the matrix must be (points x labels, from the text files); ``shape_source`` says where it
    comes from, for the message. Explicit zeros are dropped and duplicate entries keep the largest value, as every
    reader does.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise data_error(path, None, None, f"not a scipy sparse .npz file ({err})") from None
    with archive:
        names = set(archive.files)
        missing = {"format", "shape", "indptr", "indices", "data"} - names
        if missing:
            raise data_error(path, None, None, f"not a scipy sparse .npz file (missing arrays {sorted(missing)})")
        try:
            fmt = archive["format"].item()
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            stored_shape = tuple(int(v) for v in archive["shape"].ravel())
            indptr, indices, data = archive["indptr"], archive["indices"], archive["data"]
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise data_error(path, None, None, f"unreadable array ({err})") from None
    if fmt != "csr":
        raise data_error(path, None, "format", f"expected a CSR matrix (points x labels), got {fmt!r}")
    if stored_shape != tuple(shape):
        raise data_error(path, None, "shape", f"{stored_shape} does not match {shape_source or tuple(shape)}")
    n, num_labels = shape
    for field, array in (("indptr", indptr), ("indices", indices)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise data_error(path, None, field, f"expected a 1-D integer array, got {array.dtype} {array.shape}")
    if data.ndim != 1 or not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise data_error(path, None, "data", f"expected a 1-D numeric array, got {data.dtype} {data.shape}")
    if len(indptr) != n + 1:
        raise data_error(path, None, "indptr", f"length {len(indptr)}, expected rows + 1 = {n + 1}")
    indptr = indptr.astype(np.int64)
    if n >= 0 and indptr[0] != 0:
        raise data_error(path, None, "indptr", f"must start at 0, starts at {indptr[0]}")
    steps = np.diff(indptr)
    if (steps < 0).any():
        row = int(np.flatnonzero(steps < 0)[0])
        raise data_error(
            path, None, "indptr", f"not monotonic: decreases at row {row} ({indptr[row]} -> {indptr[row + 1]})"
        )
    if indptr[-1] != len(indices) or len(indices) != len(data):
        raise data_error(
            path, None, "indptr", f"ends at {indptr[-1]}, but there are {len(indices)} indices and {len(data)} values"
        )
    if len(indices):
        bad = np.flatnonzero((indices < 0) | (indices >= num_labels))
        if len(bad):
            raise data_error(
                path,
                None,
                "indices",
                f"row {_first_row(indptr, bad[0])}: label id {indices[bad[0]]} out of range [0, {num_labels})",
            )
        values = data.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if len(bad):
            raise data_error(
                path,
                None,
                "data",
                f"row {_first_row(indptr, bad[0])}: relevance {values[bad[0]]} is not a finite number >= 0",
            )
    return csr_from_lists(indptr, indices.astype(np.int64), data.astype(np.float32), num_labels)


def read_pecos(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """DEXML/PECOS layout: ``raw/{trn,tst}_X.txt``, ``raw/Y.txt`` (a text a line), ``Y.{trn,tst}.npz``.

    Query texts go to ``title`` (``content`` empty); uids are line indices.
    """
    folder = Path(folder)
    y_path = require(folder / "raw", ["Y.txt"], "label text (raw/Y.txt)")
    label_names = read_text_lines(y_path)
    labels = text_table(uid=index_strings(len(label_names)), title=label_names, n=len(label_names))
    queries, matrices = {}, {}
    for split, stem in SPLIT_STEMS.items():
        x_path, y_npz = folder / "raw" / f"{stem}_X.txt", folder / f"Y.{stem}.npz"
        if not x_path.is_file() or not y_npz.is_file():
            if split != "validation":
                raise missing_file(folder, [f"raw/{stem}_X.txt", f"Y.{stem}.npz"], f"{split} split")
            continue
        texts = read_text_lines(x_path)
        source = f"{len(texts)} lines in {x_path.name} x {len(label_names)} in Y.txt"
        matrices[split] = load_csr_npz(y_npz, (len(texts), len(label_names)), source)
        queries[split] = text_table(uid=index_strings(len(texts)), title=texts, n=len(texts))
    return XMCDataset(queries, labels, matrices, family=family, name=name or folder.name)


def write_pecos(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Texts are ``title_content`` with newlines turned into spaces (one text a line)."""
    with atomic_directory(folder, overwrite, fmt="pecos") as tmp:
        (tmp / "raw").mkdir()
        with open(tmp / "raw" / "Y.txt", "w", encoding="utf-8") as out:
            out.writelines(one_line(t) + "\n" for t in ds.label_texts("title"))
        for split in ds.splits:
            stem = SPLIT_STEMS[split]
            with open(tmp / "raw" / f"{stem}_X.txt", "w", encoding="utf-8") as out:
                out.writelines(one_line(t) + "\n" for t in ds.query_texts(split, "title_content"))
            sp.save_npz(tmp / f"Y.{stem}.npz", ds.label_matrices[split])


def is_pecos(path: Path) -> bool:
    return path.is_dir() and (path / "raw" / "trn_X.txt").is_file() and (path / "Y.trn.npz").is_file()


register_format("pecos", read_pecos, write_pecos, is_pecos, "raw/{trn,tst}_X.txt, raw/Y.txt, Y.{trn,tst}.npz")
