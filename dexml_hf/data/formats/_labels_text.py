"""The header + one-line-per-point label files shared by ``sparse`` (``trn_X_Y.txt``) and ``bow`` (``train.txt``).

Counts in the header are checked against the files before anything is sized from them: the number of points
against the lines, the number of labels against ``Yf.txt`` when present and against the int32 label ids the
label matrices use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from dexml_hf.data._utils import csr_from_lists, data_error, iter_lines, missing_file, parse_int
from dexml_hf.data.dataset import XMCDataset, index_strings, text_table
from dexml_hf.data.formats._common import count_names, placeholder_labels

#: label ids are stored as int32 in the CSR matrices
MAX_LABELS = np.iinfo(np.int32).max


def parse_header(path: Path, line: tuple[int, str] | None, fields: tuple[str, ...]) -> list[int]:
    if line is None:
        raise data_error(path, 1, "header", f"empty file; expected a header '{' '.join(fields)}'")
    number, text = line
    parts = text.split()
    if len(parts) != len(fields):
        raise data_error(path, number, "header", f"expected {len(fields)} counts '{' '.join(fields)}', got {text!r}")
    values = [parse_int(p, path, number, f"header {f}") for p, f in zip(parts, fields)]
    for value, field in zip(values, fields):
        if value < 0:
            raise data_error(path, number, f"header {field}", f"negative count {value}")
    return values


def check_label_count(path: Path, num_labels: int, names_file: Path | None) -> None:
    """The header's label count against what it can be: int32 ids, and the lines of ``Yf.txt`` when present."""
    if num_labels > MAX_LABELS:
        raise data_error(
            path, 1, "header L", f"{num_labels} labels is more than label ids can address ({MAX_LABELS}); bad header?"
        )
    if names_file is not None:
        named = count_names(names_file)
        if named != num_labels:
            raise data_error(path, 1, "header L", f"{num_labels} labels, but {names_file.name} names {named}")


def label_rows(
    path: Path, fields: tuple[str, ...], parse_line, names_file: Path | None = None
) -> tuple[list[int], sp.csr_matrix]:
    """Shared loop for the header + one-line-per-point formats; checks the point count and id ranges."""
    lines = iter_lines(path, skip_blank=False)
    header = parse_header(path, next(lines, None), fields)
    n, num_labels = header[0], header[-1]
    check_label_count(path, num_labels, names_file)
    indptr, indices, values = [0], [], []
    count = 0
    for number, text in tqdm(lines, total=n, desc=path.name, unit=" lines", disable=n < 200_000):
        if count == n:
            if text.strip():
                raise data_error(path, number, None, f"more points than the {n} the header announces")
            continue
        for label, value in parse_line(text, number, header):
            if not 0 <= label < num_labels:
                raise data_error(path, number, "label", f"label id {label} out of range [0, {num_labels})")
            indices.append(label)
            values.append(value)
        indptr.append(len(indices))
        count += 1
    if count != n:
        raise data_error(path, 1, "header N", f"header announces {n} points, the file has {count}")
    matrix = csr_from_lists(np.asarray(indptr), np.asarray(indices, dtype=np.int64), np.asarray(values), num_labels)
    return header, matrix


def read_label_files(folder: Path, names: dict[str, str], fields, parser, name, family) -> XMCDataset:
    """Read every split file of a labels-only format; the label count must agree across splits."""
    matrices = {}
    num_labels = None
    for split, fname in names.items():
        path = folder / fname
        if not path.is_file():
            if split != "validation":
                raise missing_file(folder, [fname], f"{split} split")
            continue
        names_file = folder / "Yf.txt" if (folder / "Yf.txt").is_file() else None
        header, matrices[split] = label_rows(path, fields, lambda t, n, h, p=path: parser(t, n, h, p), names_file)
        if num_labels is not None and header[-1] != num_labels:
            raise data_error(path, 1, "header L", f"{header[-1]} labels, but another split has {num_labels}")
        num_labels = header[-1]
    queries = {s: text_table(uid=index_strings(m.shape[0]), n=m.shape[0]) for s, m in matrices.items()}
    labels = placeholder_labels(folder, num_labels)
    return XMCDataset(queries, labels, matrices, family=family, name=name or folder.name)


def write_label_lines(path: Path, header: str, matrix: sp.csr_matrix, fmt_row) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(header + "\n")
        for i in range(matrix.shape[0]):
            lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
            out.write(fmt_row(matrix.indices[lo:hi], matrix.data[lo:hi]) + "\n")
