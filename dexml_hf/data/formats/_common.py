"""Helpers shared by the format modules: split file stems, finding files, label-name files."""

from __future__ import annotations

from pathlib import Path

import datasets

from dexml_hf.data._utils import data_error, iter_lines, missing_file
from dexml_hf.data.dataset import index_strings, text_table

#: file-name stem per split (LF, wiki500k, PECOS, sparse)
SPLIT_STEMS = {"train": "trn", "test": "tst", "validation": "val"}


def first_existing(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def require(folder: Path, names: list[str], what: str) -> Path:
    path = first_existing(folder, names)
    if path is None:
        raise missing_file(folder, names, what)
    return path


def one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def read_text_lines(path: Path) -> list[str]:
    """A text a line (blank lines kept: line i is item i)."""
    return [text for _, text in iter_lines(path, skip_blank=False)]


def read_names(path: Path) -> datasets.Dataset:
    """``Yf.txt``: a label a line, ``uid->name`` (a line without ``->`` is all name, its uid the line index).

    Line ``i`` is label ``i``, so a blank line inside the file is an error (a label without a name); blank lines
    at the end of the file are ignored.
    """
    uids, titles, blank_at = [], [], None
    for number, text in iter_lines(path, skip_blank=False):
        if not text.strip():
            blank_at = blank_at or number
            continue
        if blank_at is not None:
            raise data_error(path, blank_at, None, "blank line: line i names label i, so every line needs a name")
        uid, sep, title = text.partition("->")
        if not sep:
            uid, title = str(number - 1), text
        uids.append(uid)
        titles.append(title)
    return text_table(uid=uids, title=titles, n=len(uids))


def count_names(path: Path) -> int:
    """Number of label names in ``Yf.txt`` (trailing blank lines excluded), without building the table."""
    count = pending = 0
    for _, text in iter_lines(path, skip_blank=False):
        if text.strip():
            count += pending + 1
            pending = 0
        else:
            pending += 1
    return count


def placeholder_labels(folder: Path, num_labels: int) -> datasets.Dataset:
    """Label names from ``Yf.txt`` next to the files, else each label's id as a string."""
    names = folder / "Yf.txt"
    if names.is_file():
        labels = read_names(names)
        if len(labels) != num_labels:
            raise data_error(names, None, None, f"{len(labels)} label names for {num_labels} labels in the header")
        return labels
    ids = index_strings(num_labels)
    return text_table(uid=ids, title=ids)
