"""JSON lines (LF ``*.json.gz``, wiki500k ``*.raw.json.gz``) and the LF filter-pair files."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import scipy.sparse as sp
from tqdm.auto import tqdm

from dexml_hf.data._utils import (
    csr_from_lists,
    data_error,
    iter_lines,
    list_array_parts,
    open_text_out,
    parse_int,
)
from dexml_hf.data.dataset import index_strings, text_table


def validate_json_lines(path: Path, required: tuple[str, ...], num_labels: int | None) -> None:
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


def read_json_lines(
    path: Path, required: tuple[str, ...], num_labels: int | None
) -> tuple[datasets.Dataset, sp.csr_matrix | None]:
    """JSON lines -> (uid/title/content Dataset, CSR or None); pyarrow parses, errors come from the exact scan."""

    def fail(reason: str):
        validate_json_lines(path, required, num_labels)
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


def write_json_lines(path: Path, table: datasets.Dataset, matrix: sp.csr_matrix | None) -> None:
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


def read_filters(path: Path, num_queries: int, num_labels: int) -> np.ndarray:
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


def write_filters(path: Path, pairs: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(f"{q} {lab}\n" for q, lab in pairs.tolist())
