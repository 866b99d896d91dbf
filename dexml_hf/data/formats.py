"""Readers and writers for the Extreme Classification Repository formats (DESIGN.md §2).

=============  ======================================================================  =============
format         files                                                                   texts
=============  ======================================================================  =============
``lf``         ``trn/tst[/val].json.gz`` (uid, title, content, target_ind, target_rel),  queries+labels
               ``lbl.json.gz`` (uid, title, content), ``filter_labels_{train,test}.txt``
``wiki500k``   ``trn.raw.json.gz``, ``tst.raw.json.gz`` (as LF), ``Yf.txt`` (``uid->name``)  queries+labels
``pecos``      ``raw/trn_X.txt``, ``raw/tst_X.txt``, ``raw/Y.txt`` (a text a line),       queries+labels
               ``Y.trn.npz``, ``Y.tst.npz`` (scipy CSR, points x labels)
``sparse``     ``trn_X_Y.txt``, ``tst_X_Y.txt``: header ``N L``, a line per point            none
               ``idx:val idx:val``
``bow``        ``train.txt``, ``test.txt``: header ``N D L``, lines ``l1,l2 f:v f:v``        none
               (features are read only to validate them; labels are kept)
``csv``        one ``.csv`` with ``title,content,tags`` (comma-separated tags), optional   queries+labels
               ``uid`` and ``split`` columns; otherwise a seeded train/test split
=============  ======================================================================  =============

Labels-only formats (``sparse``, ``bow``) have no texts: queries get empty titles and each label's
``uid`` and ``title`` are its id as a string (``"17"``) — a placeholder, not a name a dual encoder
can learn from; put real names in ``Yf.txt`` next to the files and they are used instead.
Optional ``val`` files become the ``validation`` split. Bad input raises ``ValueError`` naming the
file, the line and the field. Writers go through a temp folder renamed at the end, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import scipy.sparse as sp
from tqdm.auto import tqdm

from dexml_hf.data._utils import (
    atomic_directory,
    csr_from_lists,
    data_error,
    iter_lines,
    list_array_parts,
    open_text_out,
    parse_float,
    parse_int,
    read_utf8,
)
from dexml_hf.data.dataset import XMCDataset, index_strings, text_table

FORMATS = ("lf", "wiki500k", "pecos", "sparse", "bow", "csv", "movielens", "hub")

# file-name stem per split for each format
_LF_STEMS = {"train": "trn", "test": "tst", "validation": "val"}
_BOW_NAMES = {"train": "train.txt", "test": "test.txt", "validation": "val.txt"}


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _require(folder: Path, names: list[str], what: str) -> Path:
    path = _first_existing(folder, names)
    if path is None:
        raise FileNotFoundError(f"{folder}: no {what} file (looked for {', '.join(names)})")
    return path


# ---------------------------------------------------------------------------------------------- JSON lines
def _validate_json_lines(path: Path, required: tuple[str, ...], num_labels: int | None) -> None:
    """Slow, exact scan that raises at the first bad line; used only after the fast reader found a problem."""
    for number, text in iter_lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise data_error(path, number, None, f"invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise data_error(path, number, None, f"expected a JSON object, got {type(record).__name__}")
        for key in required:
            if key not in record or record[key] is None:
                raise data_error(path, number, key, "missing")
        for key in ("title", "content"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise data_error(path, number, key, f"expected a string, got {type(record[key]).__name__}")
        if "uid" in record and not isinstance(record["uid"], (str, int)):
            raise data_error(path, number, "uid", f"expected a string, got {type(record['uid']).__name__}")
        if "target_ind" in record:
            ids = record["target_ind"]
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise data_error(path, number, "target_ind", f"expected a list of integers, got {ids!r:.80}")
            for i in ids:
                if num_labels is not None and not 0 <= i < num_labels:
                    raise data_error(path, number, "target_ind", f"label id {i} out of range [0, {num_labels})")
            rel = record.get("target_rel")
            if rel is not None:
                if not isinstance(rel, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in rel
                ):
                    raise data_error(path, number, "target_rel", f"expected a list of numbers, got {rel!r:.80}")
                if len(rel) != len(ids):
                    raise data_error(path, number, "target_rel", f"{len(rel)} values for {len(ids)} label ids")


def _read_json_lines(
    path: Path, required: tuple[str, ...], num_labels: int | None
) -> tuple[datasets.Dataset, sp.csr_matrix | None]:
    """JSON lines -> (uid/title/content Dataset, CSR or None); pyarrow parses, errors come from the exact scan."""

    def fail(reason: str):
        _validate_json_lines(path, required, num_labels)
        raise data_error(path, None, None, reason)

    try:
        with pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None) as stream:
            table = pa_json.read_json(stream, read_options=pa_json.ReadOptions(block_size=32 << 20))
        table.validate(full=True)  # the JSON reader lets invalid UTF-8 through; full validation catches it
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        fail(f"could not parse JSON lines ({err})")
    names = set(table.column_names)
    for key in required:
        if key not in names or table.column(key).null_count:
            fail(f"field {key!r} missing")
    for key in ("uid", "title", "content"):
        if key in names:
            col = table.column(key)
            if not (pa.types.is_string(col.type) or pa.types.is_null(col.type) or pa.types.is_integer(col.type)):
                fail(f"field {key!r} has type {col.type}")
            if pa.types.is_integer(col.type) and key != "uid":
                fail(f"field {key!r} has type {col.type}")
    n = table.num_rows
    uid = table.column("uid") if "uid" in names else index_strings(n)
    queries = text_table(
        uid=uid,
        title=table.column("title") if "title" in names else None,
        content=table.column("content") if "content" in names else None,
        n=n,
    )
    if "target_ind" not in required:
        return queries, None
    ind = table.column("target_ind")
    if not (pa.types.is_list(ind.type) and pa.types.is_integer(ind.type.value_type)) and not (
        pa.types.is_list(ind.type) and pa.types.is_null(ind.type.value_type)
    ):
        fail(f"field 'target_ind' has type {ind.type}")
    offsets, ids = list_array_parts(ind.cast(pa.list_(pa.int64())))
    if len(ids) and (ids.min() < 0 or ids.max() >= num_labels):
        fail("label id out of range")
    values = None
    if "target_rel" in names and table.column("target_rel").null_count != n:
        rel = table.column("target_rel")
        has_rel = pc.is_valid(rel).to_numpy(zero_copy_only=False)
        try:
            rel_offsets, rel_values = list_array_parts(rel.cast(pa.list_(pa.float32())))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            fail("field 'target_rel' is not a list of numbers")
        lengths, rel_lengths = np.diff(offsets), np.diff(rel_offsets)
        if not np.array_equal(lengths[has_rel], rel_lengths[has_rel]):
            fail("field 'target_rel' length differs from 'target_ind'")
        # lines without target_rel keep relevance 1
        values = np.ones(len(ids), dtype=np.float32)
        values[np.repeat(has_rel, lengths)] = rel_values
        if not np.isfinite(values).all() or (values < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(values) | (values < 0))[0])
            row = int(np.searchsorted(offsets, bad, side="right") - 1)
            raise data_error(path, row + 1, "target_rel", f"relevance {values[bad]} is not a finite number >= 0")
    return queries, csr_from_lists(offsets, ids, values, num_labels)


def _write_json_lines(path: Path, table: datasets.Dataset, matrix: sp.csr_matrix | None) -> None:
    with open_text_out(path) as out:
        starts = range(0, max(len(table), 1), 10_000)
        for start in tqdm(starts, desc=f"writing {path.name}", unit=" x10k rows", disable=len(table) < 200_000):
            batch = table[start : start + 10_000]
            for k, (uid, title, content) in enumerate(zip(batch["uid"], batch["title"], batch["content"])):
                record = {"uid": uid, "title": title, "content": content}
                if matrix is not None:
                    row = start + k
                    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
                    record["target_ind"] = matrix.indices[lo:hi].tolist()
                    record["target_rel"] = [float(v) for v in matrix.data[lo:hi]]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_filters(path: Path, num_queries: int, num_labels: int) -> np.ndarray:
    pairs = []
    for number, text in iter_lines(path):
        fields = text.split()
        if len(fields) != 2:
            raise data_error(path, number, None, f"expected 2 fields 'query_idx label_idx', got {len(fields)}")
        q = parse_int(fields[0], path, number, "query_idx")
        lab = parse_int(fields[1], path, number, "label_idx")
        if not 0 <= q < num_queries:
            raise data_error(path, number, "query_idx", f"{q} out of range [0, {num_queries})")
        if not 0 <= lab < num_labels:
            raise data_error(path, number, "label_idx", f"{lab} out of range [0, {num_labels})")
        pairs.append((q, lab))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _write_filters(path: Path, pairs: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(f"{q} {lab}\n" for q, lab in pairs.tolist())


def read_lf(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """LF raw layout: ``lbl.json.gz`` + ``trn/tst[/val].json.gz`` + optional ``filter_labels_*.txt``."""
    folder = Path(folder)
    lbl = _require(folder, ["lbl.json.gz", "lbl.json"], "label (lbl.json.gz)")
    labels, _ = _read_json_lines(lbl, ("title",), None)
    queries, matrices, filters = {}, {}, {}
    for split, stem in _LF_STEMS.items():
        path = _first_existing(folder, [f"{stem}.json.gz", f"{stem}.json"])
        if path is None:
            if split != "validation":
                raise FileNotFoundError(f"{folder}: no {stem}.json.gz")
            continue
        queries[split], matrices[split] = _read_json_lines(path, ("title", "target_ind"), len(labels))
        for fname in {f"filter_labels_{split}.txt", f"filter_labels_{stem}.txt"}:
            if (folder / fname).is_file():
                filters[split] = _read_filters(folder / fname, len(queries[split]), len(labels))
    return XMCDataset(queries, labels, matrices, filters, family=family, name=name or folder.name)


def write_lf(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    with atomic_directory(folder, overwrite) as tmp:
        _write_json_lines(tmp / "lbl.json.gz", ds.labels, None)
        for split in ds.splits:
            _write_json_lines(tmp / f"{_LF_STEMS[split]}.json.gz", ds.queries[split], ds.label_matrices[split])
        for split, pairs in ds.filters.items():
            _write_filters(tmp / f"filter_labels_{split}.txt", pairs)


# ---------------------------------------------------------------------------------------------- Wikipedia-500K
def _read_names(path: Path) -> datasets.Dataset:
    """``Yf.txt``: a label a line, ``uid->name`` (a line without ``->`` is all name, its uid the line index)."""
    uids, titles = [], []
    for number, text in iter_lines(path, skip_blank=False):
        uid, sep, title = text.partition("->")
        if not sep:
            uid, title = str(number - 1), text
        uids.append(uid)
        titles.append(title)
    return text_table(uid=uids, title=titles)


def read_wiki500k(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """Wikipedia-500K raw variant: ``trn.raw.json.gz``, ``tst.raw.json.gz`` and ``Yf.txt`` label names."""
    folder = Path(folder)
    labels = _read_names(_require(folder, ["Yf.txt"], "label names (Yf.txt)"))
    queries, matrices = {}, {}
    for split, stem in _LF_STEMS.items():
        path = _first_existing(folder, [f"{stem}.raw.json.gz", f"{stem}.raw.json"])
        if path is None:
            if split != "validation":
                raise FileNotFoundError(f"{folder}: no {stem}.raw.json.gz")
            continue
        queries[split], matrices[split] = _read_json_lines(path, ("title", "target_ind"), len(labels))
    return XMCDataset(queries, labels, matrices, family=family or "wikipedia", name=name or folder.name)


def write_wiki500k(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    with atomic_directory(folder, overwrite) as tmp:
        with open(tmp / "Yf.txt", "w", encoding="utf-8") as out:
            for uid, title in zip(ds.labels["uid"], ds.labels["title"]):
                out.write(f"{uid}->{_one_line(title)}\n")
        for split in ds.splits:
            path = tmp / f"{_LF_STEMS[split]}.raw.json.gz"
            _write_json_lines(path, ds.queries[split], ds.label_matrices[split])


# ---------------------------------------------------------------------------------------------- PECOS / DEXML
def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _read_text_lines(path: Path) -> list[str]:
    return [text for _, text in iter_lines(path, skip_blank=False)]


def read_pecos(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """DEXML/PECOS layout: ``raw/{trn,tst}_X.txt``, ``raw/Y.txt`` (a text a line), ``Y.{trn,tst}.npz``.

    Query texts go to ``title`` (``content`` empty); uids are line indices.
    """
    folder = Path(folder)
    y_path = _require(folder / "raw", ["Y.txt"], "label text (raw/Y.txt)")
    label_names = _read_text_lines(y_path)
    labels = text_table(uid=index_strings(len(label_names)), title=label_names)
    queries, matrices = {}, {}
    for split, stem in _LF_STEMS.items():
        x_path, y_npz = folder / "raw" / f"{stem}_X.txt", folder / f"Y.{stem}.npz"
        if not x_path.is_file() or not y_npz.is_file():
            if split != "validation":
                raise FileNotFoundError(f"{folder}: need raw/{stem}_X.txt and Y.{stem}.npz")
            continue
        texts = _read_text_lines(x_path)
        try:
            matrix = sp.load_npz(y_npz).tocsr()
        except Exception as err:  # noqa: BLE001 - any failure to load is a bad file
            raise data_error(y_npz, None, None, f"not a scipy sparse .npz ({err})") from None
        if matrix.shape != (len(texts), len(label_names)):
            raise data_error(
                y_npz,
                None,
                "shape",
                f"{matrix.shape} does not match {len(texts)} lines in {x_path.name} x {len(label_names)} in Y.txt",
            )
        queries[split] = text_table(uid=index_strings(len(texts)), title=texts)
        matrices[split] = matrix
    return XMCDataset(queries, labels, matrices, family=family, name=name or folder.name)


def write_pecos(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Texts are ``title_content`` with newlines turned into spaces (one text a line)."""
    with atomic_directory(folder, overwrite) as tmp:
        (tmp / "raw").mkdir()
        with open(tmp / "raw" / "Y.txt", "w", encoding="utf-8") as out:
            out.writelines(_one_line(t) + "\n" for t in ds.label_texts("title"))
        for split in ds.splits:
            stem = _LF_STEMS[split]
            with open(tmp / "raw" / f"{stem}_X.txt", "w", encoding="utf-8") as out:
                out.writelines(_one_line(t) + "\n" for t in ds.query_texts(split, "title_content"))
            sp.save_npz(tmp / f"Y.{stem}.npz", ds.label_matrices[split])


# ---------------------------------------------------------------------------------------------- sparse text / BoW
def _placeholder_labels(folder: Path, num_labels: int) -> datasets.Dataset:
    names = folder / "Yf.txt"
    if names.is_file():
        labels = _read_names(names)
        if len(labels) != num_labels:
            raise data_error(names, None, None, f"{len(labels)} label names for {num_labels} labels in the header")
        return labels
    ids = index_strings(num_labels)
    return text_table(uid=ids, title=ids)


def _parse_header(path: Path, line: tuple[int, str] | None, fields: tuple[str, ...]) -> list[int]:
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


def _label_rows(path: Path, fields: tuple[str, ...], parse_line) -> tuple[list[int], sp.csr_matrix]:
    """Shared loop for the header + one-line-per-point formats; checks the point count and id ranges."""
    lines = iter_lines(path, skip_blank=False)
    header = _parse_header(path, next(lines, None), fields)
    n, num_labels = header[0], header[-1]
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


def _parse_sparse_line(text, number, header, path):
    out = []
    for token in text.split():
        idx, sep, val = token.partition(":")
        if not sep:
            raise data_error(path, number, "label", f"expected 'idx:val', got {token!r}")
        out.append((parse_int(idx, path, number, "label"), parse_float(val, path, number, "value")))
    return out


def _parse_bow_line(text, number, header, path):
    _, dim, _ = header
    label_part, _, feature_part = text.partition(" ")
    if ":" in label_part:  # no labels: the line starts with features
        label_part, feature_part = "", text
    for token in feature_part.split():
        f, sep, v = token.partition(":")
        if not sep:
            raise data_error(path, number, "feature", f"expected 'f:v', got {token!r}")
        fid = parse_int(f, path, number, "feature")
        if not 0 <= fid < dim:
            raise data_error(path, number, "feature", f"feature id {fid} out of range [0, {dim})")
        parse_float(v, path, number, "feature value")
    return [(parse_int(lab, path, number, "label"), 1.0) for lab in label_part.split(",") if lab.strip()]


def _read_label_files(folder: Path, names: dict[str, str], fields, parser, name, family) -> XMCDataset:
    matrices = {}
    num_labels = None
    for split, fname in names.items():
        path = folder / fname
        if not path.is_file():
            if split != "validation":
                raise FileNotFoundError(f"{folder}: no {fname}")
            continue
        header, matrices[split] = _label_rows(path, fields, lambda t, n, h, p=path: parser(t, n, h, p))
        if num_labels is not None and header[-1] != num_labels:
            raise data_error(path, 1, "header L", f"{header[-1]} labels, but another split has {num_labels}")
        num_labels = header[-1]
    queries = {s: text_table(uid=index_strings(m.shape[0]), n=m.shape[0]) for s, m in matrices.items()}
    labels = _placeholder_labels(folder, num_labels)
    return XMCDataset(queries, labels, matrices, family=family, name=name or folder.name)


def read_sparse(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """``trn_X_Y.txt`` / ``tst_X_Y.txt`` (header ``N L``; lines ``idx:val ...``); labels only, no texts."""
    names = {s: f"{stem}_X_Y.txt" for s, stem in _LF_STEMS.items()}
    return _read_label_files(Path(folder), names, ("N", "L"), _parse_sparse_line, name, family)


def read_bow(folder, name: str | None = None, family: str | None = None) -> XMCDataset:
    """Legacy BoW ``train.txt`` / ``test.txt`` (header ``N D L``; lines ``l1,l2 f:v ...``); labels only."""
    return _read_label_files(Path(folder), _BOW_NAMES, ("N", "D", "L"), _parse_bow_line, name, family)


def _write_label_lines(path: Path, header: str, matrix: sp.csr_matrix, fmt_row) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(header + "\n")
        for i in range(matrix.shape[0]):
            lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
            out.write(fmt_row(matrix.indices[lo:hi], matrix.data[lo:hi]) + "\n")


def write_sparse(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Labels and relevance only (texts are not part of the format)."""
    with atomic_directory(folder, overwrite) as tmp:
        for split in ds.splits:
            m = ds.label_matrices[split]
            _write_label_lines(
                tmp / f"{_LF_STEMS[split]}_X_Y.txt",
                f"{m.shape[0]} {m.shape[1]}",
                m,
                lambda ids, vals: " ".join(f"{i}:{v:.6g}" for i, v in zip(ids.tolist(), vals.tolist())),
            )


def write_bow(ds: XMCDataset, folder, overwrite: bool = False) -> None:
    """Labels only, no features (``D = 0``); relevance is not part of the format."""
    with atomic_directory(folder, overwrite) as tmp:
        for split in ds.splits:
            m = ds.label_matrices[split]
            _write_label_lines(
                tmp / _BOW_NAMES[split], f"{m.shape[0]} 0 {m.shape[1]}", m, lambda ids, _: ",".join(map(str, ids))
            )


# ---------------------------------------------------------------------------------------------- tag-column CSV
def read_csv(
    path, name: str | None = None, family: str | None = None, seed: int = 0, test_fraction: float = 0.2
) -> XMCDataset:
    """A CSV with ``title,content,tags`` (tags comma-separated), e.g. StackExchange dumps.

    The label vocabulary is the sorted set of tags. A ``split`` column, when present, gives the
    splits; otherwise ``test_fraction`` of the rows (a seeded permutation) become ``test``. A ``uid``
    column is used when present, else the row index. Relevance is 1.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected exactly one .csv file, found {len(found)}")
        path = found[0]
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
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
                if split not in _LF_STEMS:
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
    labels = text_table(uid=vocab, title=vocab)
    queries, matrices = {}, {}
    for split in _LF_STEMS:
        members = np.flatnonzero(split_of == split)
        if not len(members) and split == "validation":
            continue
        lengths = [len(rows["tags"][i]) for i in members]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.asarray([index[t] for i in members for t in rows["tags"][i]], dtype=np.int64)
        matrices[split] = csr_from_lists(indptr, ids, None, len(vocab))
        queries[split] = text_table(**{k: [rows[k][i] for i in members] for k in ("uid", "title", "content")})
    return XMCDataset(queries, labels, matrices, family=family, name=name or path.stem)


def write_csv(ds: XMCDataset, path, overwrite: bool = False) -> None:
    """One CSV with ``uid,title,content,tags,split`` (label titles as tags; relevance is dropped)."""
    path = Path(path)
    names = ds.label_texts("title")
    bad = [t for t in names if "," in t or t != t.strip() or not t]
    if bad:
        raise ValueError(f"label titles cannot be written as comma-separated tags: {bad[:3]}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["uid", "title", "content", "tags", "split"])
            for split in ds.splits:
                m, table = ds.label_matrices[split], ds.queries[split]
                for i, (uid, title, content) in enumerate(zip(table["uid"], table["title"], table["content"])):
                    tags = ", ".join(names[j] for j in m.indices[m.indptr[i] : m.indptr[i + 1]])
                    writer.writerow([uid, title, content, tags, split])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- dispatch
READERS = {"lf": read_lf, "wiki500k": read_wiki500k, "pecos": read_pecos, "sparse": read_sparse, "bow": read_bow}
WRITERS = {
    "lf": write_lf,
    "wiki500k": write_wiki500k,
    "pecos": write_pecos,
    "sparse": write_sparse,
    "bow": write_bow,
    "csv": write_csv,
}


def detect_format(src) -> str:
    """Guess the format of a file or folder from the file names it holds."""
    src = Path(src)
    if src.is_file():
        if src.suffix == ".csv":
            return "csv"
        raise ValueError(f"{src}: cannot tell the format of a single file (only .csv is supported)")
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist")
    checks = [
        ("hub", ["xmc.json"]),
        ("hub", ["queries"]),
        ("lf", ["lbl.json.gz"]),
        ("lf", ["lbl.json"]),
        ("wiki500k", ["trn.raw.json.gz", "Yf.txt"]),
        ("pecos", ["raw/trn_X.txt", "Y.trn.npz"]),
        ("sparse", ["trn_X_Y.txt"]),
        ("bow", ["train.txt"]),
        ("movielens", ["u.data", "u.item", "u1.base"]),
    ]
    for fmt, names in checks:
        if all((src / n).exists() for n in names):
            return fmt
    if len(list(src.glob("*.csv"))) == 1:
        return "csv"
    raise ValueError(f"{src}: no known XMC layout found (formats: {', '.join(FORMATS)})")


def read_xmc(src, format: str = "auto", **kwargs) -> XMCDataset:  # noqa: A002
    """Read any supported format (``auto`` detects it from the file names)."""
    fmt = detect_format(src) if format == "auto" else format
    if fmt == "csv":
        return read_csv(src, **kwargs)
    if fmt == "hub":
        from dexml_hf.data.hub_layout import load_xmc_dataset

        return load_xmc_dataset(src, **kwargs)
    if fmt == "movielens":
        from dexml_hf.data.movielens import load_movielens

        return load_movielens(src, **kwargs)
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)} or auto")
    kwargs = {k: v for k, v in kwargs.items() if k in ("name", "family")}
    return READERS[fmt](src, **kwargs)
