"""Label a whole corpus: :func:`predict_corpus` streams documents through a model and a ``LabelIndex`` into one file.

Input (read lazily, row by row): text lines (``.txt``), JSON lines (``.jsonl``), CSV/TSV with a header, parquet
(batches of the needed columns), an XMC dataset split (:func:`~dexml_hf.data.load_xmc_dataset`) or any Hub dataset
(``datasets.load_dataset``, memory-mapped). Output, by extension: JSON lines or parquet, one row per input row:
``row`` (0-based position), ``id`` (the input's id field, when given), ``label_ids`` (label positions in the index,
best first), ``label_uids`` / ``label_texts`` (when the index stores them) and ``scores``.

Why parts: a run over a million documents must survive a kill. The rows are cut into parts of ``rows_per_part``
rows (fixed boundaries, so every encoder batch is the same whatever the process count or the resume point);
each part is written to ``<output>.partial/`` and committed by a rename, next to a manifest holding a fingerprint
of the job (input, model, index, options). Re-running the same job skips the committed parts; a different job
is refused. Under ``accelerate launch``/``torchrun`` the pending parts are split into contiguous shares, one per
process; the main process assembles the parts in input order into a temp file renamed onto ``output`` and removes
the work folder. The output path never holds a partial file.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dexml_hf.encoding import encoder_dtype
from dexml_hf.errors import DataError, UsageError
from dexml_hf.io import ArrowColumn

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dexml_hf.index import LabelIndex

logger = logging.getLogger(__name__)

__all__ = ["INPUT_FORMATS", "Corpus", "predict_corpus"]

INPUT_FORMATS = ("auto", "text", "jsonl", "csv", "parquet", "xmc", "hub")
_EXTENSIONS = {".txt": "text", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}
_EXTENSIONS.update({".parquet": "parquet", ".pq": "parquet"})
OUTPUT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
MANIFEST = "manifest.json"
_MARKER = "dexml_hf.predict"
_ARROW_BATCH = 4096
_PROBE_TEXTS = ("a probe sentence for the fingerprint", "zweite Probe 123", "")


class Corpus:
    """Documents of one input, read lazily in order: :meth:`rows` yields ``(text, id)`` (``id`` ``None`` without an
    id field) and raises :class:`DataError` naming the file and line (or row) of a malformed record.

    Args:
        source: a file path, an XMC dataset (folder, file or Hub id) or a Hub dataset id.
        input_format: one of :data:`INPUT_FORMATS`; ``auto``: a file by its extension, a folder or Hub id as an XMC
            dataset. ``hub`` reads any dataset through ``datasets.load_dataset``.
        text_field: the text column/field (JSONL, CSV, parquet, hub; default ``"text"``). XMC datasets use
            ``query_text_mode`` instead.
        id_field: a column/field copied to the output as ``id`` (XMC datasets: the query ``uid``, always).
        split: the split of an XMC or Hub dataset (default ``"test"``).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        input_format: str = "auto",
        text_field: str | None = None,
        id_field: str | None = None,
        split: str | None = None,
        query_text_mode: str | None = None,
        dataset_format: str | None = None,
        revision: str | None = None,
        hub_config: str | None = None,
        token: str | None = None,
    ):
        if input_format not in INPUT_FORMATS:
            raise UsageError(f"--input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
        self.source = str(source)
        path = Path(source).expanduser()
        if input_format == "auto":
            if path.is_file():
                input_format = _EXTENSIONS.get(path.suffix.lower())
                if input_format is None:
                    raise UsageError(
                        f"--input {source}: cannot tell the format from {path.suffix!r} (expected one of "
                        f"{', '.join(sorted(_EXTENSIONS))}); pass --input_format"
                    )
            else:
                input_format = "xmc"
        self.kind = input_format
        dataset_kind = self.kind in ("xmc", "hub")
        if not dataset_kind:
            if not path.is_file():
                raise DataError(f"{source}: no such file (--input_format {self.kind} reads a local file)")
            for name, value in (("split", split), ("dataset_format", dataset_format), ("revision", revision)):
                if value is not None:
                    raise UsageError(f"--{name} applies to XMC or Hub datasets, not to the {self.kind} file {source}")
            if hub_config is not None:
                raise UsageError(f"--hub_config applies to a Hub dataset (--input_format hub), not to {source}")
        if self.kind == "text" and (text_field or id_field):
            raise UsageError(f"{source} is a text file (one document a line): it has no fields to choose")
        if self.kind == "xmc" and (text_field or id_field or hub_config):
            raise UsageError(
                "an XMC dataset's texts come from --query_text_mode and its ids are the query uids; "
                "--text_field / --id_field / --hub_config apply to other inputs"
            )
        if self.kind != "xmc" and (query_text_mode or dataset_format):
            raise UsageError(f"--query_text_mode / --dataset_format apply to XMC datasets, not to {self.kind} input")
        self.path = path
        self.text_field = text_field or ("text" if self.kind not in ("text", "xmc") else None)
        self.id_field = "uid" if self.kind == "xmc" else id_field
        self.split = (split or "test") if dataset_kind else None
        self.query_text_mode = query_text_mode or "title"
        self._dataset_format, self._revision, self._hub_config, self._token = (
            dataset_format,
            revision,
            hub_config,
            token,
        )
        self._dataset = None
        if dataset_kind:
            self._dataset = self._load_dataset()

    def __repr__(self) -> str:
        return f"Corpus({self.source!r}, kind={self.kind!r}, text_field={self.text_field!r})"

    # ---- identity -----------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What this input is, for the resume fingerprint: a file's path, size and mtime; a dataset's id/split."""
        out: dict[str, Any] = {"kind": self.kind, "text_field": self.text_field, "id_field": self.id_field}
        if self.kind in ("xmc", "hub"):
            out.update(source=self.source, split=self.split, revision=self._revision, config=self._hub_config)
            if self.kind == "xmc":
                out.update(query_text_mode=self.query_text_mode, dataset_format=self._dataset_format)
            else:
                out["datasets_fingerprint"] = getattr(self._dataset, "_fingerprint", None)
        else:
            stat = self.path.stat()
            out.update(path=str(self.path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        return out

    # ---- reading ------------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[str, Any]]:
        """``(text, id)`` for every row, in input order."""
        reader = {
            "text": self._text_rows,
            "jsonl": self._jsonl_rows,
            "csv": self._csv_rows,
            "parquet": self._parquet_rows,
            "xmc": self._xmc_rows,
            "hub": self._hub_rows,
        }[self.kind]
        return reader()

    def scan(self, show_progress_bar: bool = False) -> tuple[int, type | None]:
        """Read every row once (nothing kept): the row count and the ids' Python type (``int``, ``str`` or ``None``);
        raises :class:`DataError` at the first malformed row, or where the ids change type."""
        from tqdm.auto import tqdm

        n, id_type = 0, None
        rows = tqdm(
            self.rows(), desc="checking input", unit="doc", disable=not show_progress_bar, leave=False, delay=2
        )
        for n, (_, id_) in enumerate(rows, 1):
            if id_ is not None and id_type is not type(id_):
                if id_type is not None:
                    raise DataError(
                        f"{self.source}: row {n - 1}: id {id_!r} is {type(id_).__name__}, earlier ids are "
                        f"{id_type.__name__} (one type per corpus)"
                    )
                id_type = type(id_)
        return n, id_type

    def _lines(self) -> Iterator[tuple[int, str]]:
        with open(self.path, encoding="utf-8") as f:
            lineno = 0
            try:
                for lineno, line in enumerate(f, 1):  # noqa: B007 - lineno names the failing line below
                    yield lineno, line
            except UnicodeDecodeError as err:
                raise DataError(f"{self.source}: line {lineno + 1}: not UTF-8 text ({err.reason})") from err

    def _text_rows(self):
        for _, line in self._lines():
            yield line.rstrip("\n"), None

    def _field(self, record: dict, name: str, where: str, kinds: tuple[type, ...]):
        if name not in record:
            raise DataError(
                f"{self.source}: {where}: no field {name!r} (has {', '.join(map(repr, record)) or 'none'})"
            )
        value = record[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            expected = " or ".join(k.__name__ for k in kinds)
            raise DataError(f"{self.source}: {where}: field {name!r} is {type(value).__name__}, expected {expected}")
        return value

    def _jsonl_rows(self):
        for lineno, line in self._lines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{self.source}: line {lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise DataError(f"{self.source}: line {lineno}: expected a JSON object, got {type(record).__name__}")
            where = f"line {lineno}"
            text = self._field(record, self.text_field, where, (str,))
            yield text, self._field(record, self.id_field, where, (str, int)) if self.id_field else None

    def _csv_rows(self):
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        with open(self.path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter, restkey="\0extra")
            try:
                header = reader.fieldnames or []
                for name in filter(None, (self.text_field, self.id_field)):
                    if name not in header:
                        raise DataError(f"{self.source}: the header has no column {name!r} (has {', '.join(header)})")
                for record in reader:
                    where = f"line {reader.line_num}"
                    if "\0extra" in record or None in record.values():
                        more = "more" if "\0extra" in record else "fewer"
                        raise DataError(f"{self.source}: {where}: {more} fields than the header's {len(header)}")
                    yield record[self.text_field], record[self.id_field] if self.id_field else None
            except (csv.Error, UnicodeDecodeError) as err:
                raise DataError(f"{self.source}: line {reader.line_num}: unreadable CSV ({err})") from err

    def _arrow_rows(self, batches, where: str, text_key: str | None = None, id_key: str | None = None):
        """Rows of column batches ``{column: list}``, with nulls refused by row number."""
        text_key, id_key = text_key or self.text_field, id_key or self.id_field
        row = 0
        for batch in batches:
            texts = batch[text_key]
            ids = batch[id_key] if id_key else itertools.repeat(None, len(texts))
            for text, id_ in zip(texts, ids):
                if not isinstance(text, str):
                    what = "null" if text is None else type(text).__name__
                    raise DataError(f"{where}: row {row}: field {text_key!r} is {what}, expected a string")
                if id_key and (id_ is None or isinstance(id_, bool) or not isinstance(id_, (str, int))):
                    raise DataError(f"{where}: row {row}: id field {id_key!r} is {id_!r}, expected str or int")
                yield text, id_
                row += 1

    def _parquet_rows(self):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{self.source}: not a readable parquet file ({err})") from err
        columns = [c for c in (self.text_field, self.id_field) if c]
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(f"{self.source}: no column {missing[0]!r} (has {', '.join(pf.schema_arrow.names)})")
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=_ARROW_BATCH, columns=columns))
        return self._arrow_rows(batches, self.source)

    def _load_dataset(self):
        if self.kind == "xmc":
            from dexml_hf.data import load_xmc_dataset

            ds = load_xmc_dataset(self.source, format=self._dataset_format, revision=self._revision, token=self._token)
            if self.split not in ds.splits:
                raise UsageError(f"dataset {self.source}: no {self.split!r} split (has {', '.join(ds.splits)})")
            return ds
        import datasets

        try:
            ds = datasets.load_dataset(
                self.source, self._hub_config, split=self.split, revision=self._revision, token=self._token
            )
        except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:
            raise DataError(f"Hub dataset {self.source} (split {self.split!r}): {err}") from err
        missing = [c for c in (self.text_field, self.id_field) if c and c not in ds.column_names]
        if missing:
            raise DataError(f"Hub dataset {self.source}: no column {missing[0]!r} (has {', '.join(ds.column_names)})")
        return ds

    def rows_with_lexical_texts(self, lexical_text_mode: str | None) -> Iterator[tuple[str, Any, str]]:
        """``(text, id, lexical text)`` for every row: an XMC dataset's queries in ``lexical_text_mode`` beside
        their texts (a memory whose lexical rows are of that mode); any other input's one text serves both."""
        if lexical_text_mode is None or self.kind != "xmc" or lexical_text_mode == self.query_text_mode:
            if lexical_text_mode is not None and self.kind != "xmc":
                warn_one_text_for_both(lexical_text_mode)
            return ((text, id_, text) for text, id_ in self.rows())
        lexical = (text for text, _ in self._xmc_rows(lexical_text_mode))
        return ((text, id_, words) for (text, id_), words in zip(self.rows(), lexical, strict=True))

    def _xmc_rows(self, mode: str | None = None):
        texts = self._dataset.query_text_array(self.split, mode or self.query_text_mode)
        ids = self._dataset.queries[self.split].data.column("uid")
        batches = (
            {"uid": ids.slice(i, _ARROW_BATCH).to_pylist(), "text": texts.slice(i, _ARROW_BATCH).to_pylist()}
            for i in range(0, len(texts), _ARROW_BATCH)
        )
        return self._arrow_rows(batches, f"{self.source} split {self.split}", "text", "uid")

    def _hub_rows(self):
        columns = [c for c in (self.text_field, self.id_field) if c]
        batches = self._dataset.select_columns(columns).iter(batch_size=_ARROW_BATCH)
        return self._arrow_rows(batches, f"Hub dataset {self.source} split {self.split}")


# ---- fingerprints -----------------------------------------------------------------------------------------------
def warn_one_text_for_both(lexical_text_mode: str) -> None:
    """Documents given as one text each feed both terms; say so when the memory compares another text mode."""
    logger.warning(
        "the retrieval memory's lexical neighbours were built from %r texts: the documents' given texts serve "
        "both the embedding and the lexical term (give each document's full text, or an XMC dataset split)",
        lexical_text_mode,
    )


def _digest(*arrays: np.ndarray | bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(a.encode() if isinstance(a, str) else a if isinstance(a, bytes) else np.ascontiguousarray(a).data)
    return h.hexdigest()


def _model_fingerprint(model: SentenceTransformer, index: LabelIndex) -> str:
    """The model by what it does (any backend): its rounded embeddings of fixed probe texts as this index embeds
    queries, plus its max length and prompts."""
    emb = index.encode_queries(model, list(_PROBE_TEXTS), batch_size=len(_PROBE_TEXTS)).numpy()
    dtype = str(encoder_dtype(model))  # a bf16 cast is another model (its rounded probes differ too)
    meta = json.dumps([getattr(model, "max_seq_length", None), getattr(model, "prompts", None), dtype], default=str)
    return _digest(np.round(emb.astype(np.float64), 4), meta)


def _index_fingerprint(index: LabelIndex, use_memory: bool) -> str:
    """The index by its public API: size, labels, and its top-k (rounded scores) for seeded probe queries."""
    probes = np.random.default_rng(0).standard_normal((8, index.dim)).astype(np.float32)
    texts = [_PROBE_TEXTS[i % len(_PROBE_TEXTS)] for i in range(len(probes))]  # a lexical memory's term too
    scores, ids = index.search(probes, min(10, len(index)), use_memory=use_memory, texts=texts)
    labels = [_column_digest(index.label_ids), _column_digest(index.texts), str(len(index)), str(index.dim)]
    return _digest(np.round(scores.astype(np.float64), 4), ids.astype(np.int64), *labels)


_DIGEST_BLOCK = 65536  # rows hashed at a time: fixed blocks, so the digest depends on the content, not the chunking


def _column_digest(column) -> str:
    """A label column by its content, in fixed row blocks (bounded memory at 10M labels): a memory-mapped Arrow
    column by its values' bytes (offsets rebased, no Python strings), else each block's JSON."""
    if column is None:
        return "none"
    h = hashlib.blake2b(digest_size=16)
    h.update(str(len(column)).encode())
    for start in range(0, len(column), _DIGEST_BLOCK):
        if isinstance(column, ArrowColumn):
            for part in _arrow_block_bytes(column.array.slice(start, _DIGEST_BLOCK)):
                h.update(part)
        else:
            h.update(json.dumps(list(column[start : start + _DIGEST_BLOCK]), default=str, ensure_ascii=False).encode())
    return h.hexdigest()


def _arrow_block_bytes(block) -> list[bytes]:
    """Canonical bytes of an Arrow slice whatever its chunks, offset or string width: the type, the null mask, and
    the values (strings as rebased int64 offsets + their bytes; fixed-width numbers as their array)."""
    import pyarrow as pa

    arr = block.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    nulls = arr.is_null().to_numpy(zero_copy_only=False).tobytes()
    head = [str(arr.type).encode(), nulls]
    if pa.types.is_large_string(arr.type):
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
        data = memoryview(data_buf)[offsets[0] : offsets[-1]] if data_buf is not None and len(arr) else b""
        return [*head, (offsets - offsets[0]).tobytes(), bytes(data)]
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return [*head, np.ascontiguousarray(arr.fill_null(0).to_numpy()).tobytes()]
    return [*head, json.dumps(arr.to_pylist(), default=str, ensure_ascii=False).encode()]


# ---- output -----------------------------------------------------------------------------------------------------
def _output_format(output: Path) -> str:
    fmt = OUTPUT_FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"--output {output}: write .jsonl or .parquet (the extension picks the format)")
    return fmt


def _arrow_schema(index: LabelIndex, id_type: type | None):
    import pyarrow as pa

    fields = [pa.field("row", pa.int64())]
    if id_type is not None:
        fields.append(pa.field("id", pa.int64() if id_type is int else pa.string()))
    fields.append(pa.field("label_ids", pa.list_(pa.int64())))
    if index.label_ids is not None:
        fields.append(pa.field("label_uids", pa.list_(pa.array(list(index.label_ids[:1024])).type)))
    if index.texts is not None:
        fields.append(pa.field("label_texts", pa.list_(pa.string())))
    fields.append(pa.field("scores", pa.list_(pa.float32())))
    return pa.schema(fields)


def _records(start: int, ids: list, scores: np.ndarray, top: np.ndarray, index: LabelIndex) -> dict[str, list]:
    """Columns of one part: empty places (id -1: fewer labels than k) dropped."""
    keep = top >= 0
    label_lists = [row[m].tolist() for row, m in zip(top, keep)]
    cols: dict[str, list] = {"row": list(range(start, start + len(top)))}
    if any(i is not None for i in ids):
        cols["id"] = ids
    cols["label_ids"] = label_lists
    if index.label_ids is not None:
        cols["label_uids"] = _lookup(index.label_ids, label_lists)
    if index.texts is not None:
        cols["label_texts"] = _lookup(index.texts, label_lists)
    cols["scores"] = [row[m] for row, m in zip(scores.astype(np.float32), keep)]
    return cols


def _lookup(column, label_lists: list[list[int]]) -> list[list]:
    """``column[j]`` for every label of every row; one Arrow ``take`` for a memory-mapped column."""
    if not isinstance(column, ArrowColumn):
        return [[column[j] for j in row] for row in label_lists]
    flat = column.array.take(np.fromiter(itertools.chain.from_iterable(label_lists), dtype=np.int64)).to_pylist()
    out, start = [], 0
    for row in label_lists:
        out.append(flat[start : start + len(row)])
        start += len(row)
    return out


def _write_part(path: Path, cols: dict[str, list], fmt: str, schema) -> None:
    """Write one part to ``path`` + ``.tmp``, flush it to disk and rename it into place (the commit)."""
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "jsonl":
        names = list(cols)
        with open(tmp, "w", encoding="utf-8") as f:
            for values in zip(*cols.values()):
                record = dict(zip(names, values))
                # float32 scores as their shortest exact decimal (0.8123457, not 0.8123456835746765)
                record["scores"] = [float(str(s)) for s in record["scores"]]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = dict(cols, scores=[s.tolist() for s in cols["scores"]])
        pq.write_table(pa.table(cols, schema=schema), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _assemble(parts: list[Path], output: Path, fmt: str, schema, tmp: Path) -> None:
    """Concatenate the parts in order into ``tmp``, then rename it onto ``output`` (atomic on one filesystem)."""
    if fmt == "jsonl":
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
            out.flush()
            os.fsync(out.fileno())
    else:
        import pyarrow.parquet as pq

        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part, schema=schema))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, output)


# ---- the job ----------------------------------------------------------------------------------------------------
def _process_state():
    """accelerate's process state (rank, world size, barrier); CPU processes when no GPU is visible."""
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and state.num_processes != world:
        raise UsageError(
            f"WORLD_SIZE={world} but this process did not join a process group: each process would label the "
            "whole corpus (launch with accelerate launch / torchrun on a working backend)"
        )
    return state


def _open_work_folder(work: Path, fingerprint: dict, overwrite: bool) -> bool:
    """Create ``work`` with its manifest, or check an existing one belongs to this job; True when resuming."""
    manifest = work / MANIFEST
    if work.exists():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict) or old.get("made_by") != _MARKER:
            raise UsageError(
                f"{work} exists but was not made by dexml-hf predict; move it away or pick another --output"
            )
        if old.get("fingerprint") == fingerprint and not overwrite:
            for stale in work.glob("*.tmp"):  # a part being written when the last run was killed
                stale.unlink()
            return True
        if not overwrite:
            changed = sorted(k for k in fingerprint if old.get("fingerprint", {}).get(k) != fingerprint[k])
            raise UsageError(
                f"{work} holds an unfinished run of a different job ({', '.join(changed)} changed): re-run the "
                "same command to resume it, or pass --overwrite to start this one from scratch"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tmp = manifest.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"made_by": _MARKER, "fingerprint": fingerprint}, indent=1), encoding="utf-8")
    os.replace(tmp, manifest)
    return False


def _part_chunks(rows: Iterator, parts: list[int], part_rows: int) -> Iterator[tuple[int, list]]:
    """``(part, its rows)`` for the sorted ``parts``, in one pass over ``rows`` (skipped rows are not kept)."""
    pos = 0
    for part in parts:
        start = part * part_rows
        collections.deque(itertools.islice(rows, start - pos), maxlen=0)
        chunk = list(itertools.islice(rows, part_rows))
        pos = start + len(chunk)
        yield part, chunk


def predict_corpus(
    model: SentenceTransformer,
    index: LabelIndex,
    input: str | os.PathLike | Corpus,  # noqa: A002
    output: str | os.PathLike,
    top_k: int = 10,
    batch_size: int = 64,
    rows_per_part: int | None = None,
    use_memory: bool = True,
    overwrite: bool = False,
    show_progress_bar: bool = True,
    **corpus_options,
) -> Path:
    """Write the top-``top_k`` labels of every document of ``input`` to ``output`` (``.jsonl`` or ``.parquet``).

    ``input`` is a path / dataset id (``corpus_options``: :class:`Corpus`'s ``input_format``, ``text_field``,
    ``id_field``, ``split``, ...) or a :class:`Corpus`. Queries are embedded ``batch_size`` at a time and searched
    a part (``rows_per_part`` rows, default 32 batches) at a time, so memory stays at one part whatever the corpus.
    A killed run resumes when called again with the same arguments; ``overwrite`` replaces an existing output or
    an unfinished different job. Under ``accelerate launch`` every process takes a contiguous share of the parts
    and the main process writes the file. Returns ``output``.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    fmt = _output_format(output)
    if top_k < 1 or batch_size < 1:
        raise UsageError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
    part_rows = 32 * batch_size if rows_per_part is None else rows_per_part
    if part_rows < 1:
        raise UsageError(f"rows_per_part must be >= 1, got {part_rows}")
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; give a .jsonl or .parquet file name")
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} exists; pass --overwrite to replace it")
    if index.dim != model.get_embedding_dimension():
        raise UsageError(
            f"the index holds {index.dim}-dim embeddings but the model makes {model.get_embedding_dimension()}-dim ones"
        )
    corpus = input if isinstance(input, Corpus) else Corpus(input, **corpus_options)
    state = _process_state()
    if state.num_processes > 1 and str(model.device) != str(state.device):
        model.to(state.device)
    n_rows, id_type = corpus.scan(
        show_progress_bar and state.is_main_process
    )  # every row validated before any work: a bad record costs nothing
    schema = _arrow_schema(index, id_type)
    lexical_mode = index.memory.lexical_text_mode if use_memory and index.memory is not None else None
    fingerprint = {
        "input": corpus.identity(),
        "rows": n_rows,
        "model": _model_fingerprint(model, index),
        "index": _index_fingerprint(index, use_memory),
        "options": {"top_k": top_k, "batch_size": batch_size, "rows_per_part": part_rows, "use_memory": use_memory,
                    "format": fmt, "lexical_text_mode": lexical_mode},
    }  # fmt: skip
    work = output.with_name(output.name + ".partial")
    if state.is_main_process:
        output.parent.mkdir(parents=True, exist_ok=True)
        resuming = _open_work_folder(work, fingerprint, overwrite)
    state.wait_for_everyone()
    if not state.is_main_process:
        resuming = True
        if json.loads((work / MANIFEST).read_text(encoding="utf-8"))["fingerprint"] != fingerprint:
            raise UsageError(f"process {state.process_index} was started with other arguments than the main process")
    n_parts = -(-n_rows // part_rows)
    names = [work / f"part-{p:06d}.{fmt}" for p in range(n_parts)]
    pending = [p for p in range(n_parts) if not names[p].exists()]
    state.wait_for_everyone()  # every process has listed the parts before any writes one
    if resuming and state.is_main_process:
        logger.warning("resuming %s: %d of %d parts already done", work, n_parts - len(pending), n_parts)
    world, rank = state.num_processes, state.process_index
    mine = pending[rank * len(pending) // world : (rank + 1) * len(pending) // world]
    if world > 1:
        logger.warning("process %d of %d: %d of %d pending parts", rank, world, len(mine), len(pending))
    todo = sum(min(part_rows, n_rows - p * part_rows) for p in mine)
    bar = tqdm(total=todo, unit="doc", desc="predict", disable=not (show_progress_bar and state.is_main_process))
    for part, chunk in _part_chunks(corpus.rows_with_lexical_texts(lexical_mode), mine, part_rows):
        texts = [text for text, _, _ in chunk]
        # one call a part: sentence-transformers sorts the part by length into batches (less padding)
        embeddings = index.encode_queries(model, texts, batch_size=batch_size)
        lexical = [words for _, _, words in chunk]
        scores, top = index.search(embeddings, top_k, use_memory=use_memory, texts=lexical)
        cols = _records(part * part_rows, [id_ for _, id_, _ in chunk], scores, top, index)
        _write_part(names[part], cols, fmt, schema)
        bar.update(len(chunk))
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [p for p in range(n_parts) if not names[p].exists()]
        if missing:
            raise DataError(f"{work}: parts {missing[:5]} are missing after every process finished")
        if n_parts == 0:
            _write_part(work / f"empty.{fmt}", {name: [] for name in schema.names}, fmt, schema)
            names = [work / f"empty.{fmt}"]
        _assemble(names, output, fmt, schema, work / f"assembled.{fmt}.tmp")
        shutil.rmtree(work)
    state.wait_for_everyone()
    return output
