"""Tag-column CSV: ``title,content,tags`` (comma-separated tags), optional ``uid`` and ``split`` columns.

Without a ``split`` column, a seeded ``test_fraction`` of the rows become ``test``. The label vocabulary is the
sorted set of tags (tags that no row uses are not kept).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from dexml_hf.data._utils import (
    atomic_directory,
    check_destination,
    clean_stale_temp,
    csr_from_lists,
    data_error,
    marked_temp_dir,
    read_utf8,
)
from dexml_hf.data.dataset import XMCDataset, text_table
from dexml_hf.data.formats._common import SPLIT_STEMS
from dexml_hf.data.registry import register_format
from dexml_hf.errors import DataError, UsageError

__all__ = ["read_csv", "write_csv"]

HEADER = ["uid", "title", "content", "tags", "split"]
FOLDER_FILE = "data.csv"


def read_csv(
    path, name: str | None = None, family: str | None = None, seed: int = 0, test_fraction: float = 0.2
) -> XMCDataset:
    """A CSV with ``title,content,tags`` (tags comma-separated), e.g. StackExchange dumps.

    The label vocabulary is the sorted set of tags. A ``split`` column, when present, gives the
    splits; otherwise ``test_fraction`` of the rows (a seeded permutation) become ``test``. A ``uid``
    column is used when present, else the row index. Relevance is 1. A split with no rows (all rows train, or
    ``test_fraction=0``) is left out of the dataset rather than kept empty. ``path`` may be a folder holding
    exactly one ``.csv`` (what :func:`write_csv` writes into a folder).
    """
    path = Path(path)
    default_name = path.name if path.is_dir() else path.stem
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise DataError(f"{path}: expected exactly one .csv file in the folder, found {len(found)}")
        path = found[0]
    elif not path.is_file():
        raise DataError(f"{path}: no such file")
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"csv: test_fraction must be in [0, 1), got {test_fraction}")
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise data_error(path, 1, "header", "empty file; expected a header 'title,content,tags'") from None
    except csv.Error as err:
        raise data_error(path, 1, "header", f"bad CSV ({err})") from None
    header = [h.strip() for h in header]
    for column in ("title", "tags"):
        if column not in header:
            raise data_error(path, 1, column, f"missing column (header is {header})")
    pos = {h: i for i, h in enumerate(header)}
    rows: dict[str, list] = {k: [] for k in ("uid", "title", "content", "tags", "split")}
    try:
        line_end = reader.line_num
        for record in reader:
            line, line_end = line_end + 1, reader.line_num  # a quoted field may span lines: report the first
            if not record:
                continue
            if len(record) != len(header):
                raise data_error(path, line, None, f"{len(record)} fields, the header has {len(header)}")
            tags = [t.strip() for t in record[pos["tags"]].split(",") if t.strip()]
            rows["tags"].append(tags)
            rows["title"].append(record[pos["title"]])
            rows["content"].append(record[pos["content"]] if "content" in pos else "")
            rows["uid"].append(record[pos["uid"]] if "uid" in pos else str(len(rows["uid"])))
            if "split" in pos:
                split = record[pos["split"]].strip()
                if split not in SPLIT_STEMS:
                    raise data_error(path, line, "split", f"expected train/test/validation, got {split!r}")
                rows["split"].append(split)
    except csv.Error as err:
        raise data_error(path, reader.line_num, None, f"bad CSV ({err})") from None
    n = len(rows["title"])
    if "split" in pos:
        split_of = np.asarray(rows["split"], dtype=object)
    else:
        n_test = int(round(n * test_fraction))
        split_of = np.full(n, "train", dtype=object)
        split_of[np.random.default_rng(seed).permutation(n)[:n_test]] = "test"
    vocab = sorted({t for tags in rows["tags"] for t in tags})
    index = {t: i for i, t in enumerate(vocab)}
    labels = text_table(uid=vocab, title=vocab, n=len(vocab))
    queries, matrices = {}, {}
    for split in SPLIT_STEMS:
        members = np.flatnonzero(split_of == split)
        if not len(members):
            if split == "train":
                raise data_error(path, None, "split", "no train rows (every dataset needs a train split)")
            continue  # a split without rows is left out, so what is written loads back the same
        lengths = [len(rows["tags"][i]) for i in members]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.asarray([index[t] for i in members for t in rows["tags"][i]], dtype=np.int64)
        matrices[split] = csr_from_lists(indptr, ids, None, len(vocab))
        queries[split] = text_table(**{k: [rows[k][i] for i in members] for k in ("uid", "title", "content")})
    return XMCDataset(queries, labels, matrices, family=family, name=name or default_name)


def _write_rows(ds: XMCDataset, out, names: list[str]) -> None:
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for split in ds.splits:
        m, table = ds.label_matrices[split], ds.queries[split]
        for i, (uid, title, content) in enumerate(zip(table["uid"], table["title"], table["content"])):
            tags = ", ".join(names[j] for j in m.indices[m.indptr[i] : m.indptr[i + 1]])
            writer.writerow([uid, title, content, tags, split])


def write_csv(ds: XMCDataset, path, overwrite: bool = False) -> None:
    """One CSV with ``uid,title,content,tags,split`` (label titles as tags; relevance is dropped).

    ``path`` ending in ``.csv``: that single file (never replaces an existing file: a file cannot carry the
    package's marker). Otherwise a folder (atomic, marked) holding ``data.csv``.
    """
    path = Path(path)
    names = ds.label_texts("title")
    bad = [t for t in names if "," in t or t != t.strip() or not t]
    if bad:
        raise DataError(f"label titles cannot be written as comma-separated tags: {bad[:3]}")
    if path.suffix.lower() != ".csv":
        with atomic_directory(path, overwrite, fmt="csv") as tmp:
            with open(tmp / FOLDER_FILE, "w", encoding="utf-8", newline="") as out:
                _write_rows(ds, out, names)
        return
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists; a single .csv file is never overwritten (remove it, or write to a folder)"
        )
    target = check_destination(path, False)
    clean_stale_temp(target)
    with marked_temp_dir(target, "csv") as tmp:
        with open(tmp / FOLDER_FILE, "w", encoding="utf-8", newline="") as out:
            _write_rows(ds, out, names)
        os.replace(tmp / FOLDER_FILE, target)


def is_csv(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return path.is_dir() and len(list(path.glob("*.csv"))) == 1


register_format("csv", read_csv, write_csv, is_csv, "one .csv with title,content,tags[,uid,split] columns")
