"""``XMCDataset``: an extreme multi-label dataset as Arrow tables (texts) + CSR matrices (labels).

Texts stay in ``datasets.Dataset`` tables (memory-mapped when loaded from the Hub layout); the
label structure is a scipy CSR per split (queries x labels, float32 relevance). Training views are
drawn with vectorised numpy over the CSR and assembled with Arrow ``take``, so no Python list of
millions of strings is ever built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dexml_hf.data import registry
from dexml_hf.errors import UsageError
from dexml_hf.evaluation.metrics import PROPENSITY_PRESETS, inv_propensity

SPLITS = ("train", "test", "validation")

#: The propensity families (A, B): one table, ``dexml_hf.evaluation.metrics.PROPENSITY_PRESETS`` (DESIGN.md §3).
FAMILIES = PROPENSITY_PRESETS

TEXT_FEATURES = datasets.Features(
    {"uid": datasets.Value("string"), "title": datasets.Value("string"), "content": datasets.Value("string")}
)

#: How a query / a label becomes text (``query_texts`` / ``label_texts``); the one definition of the modes.
#: ``wikipedia`` is the DEXML reference's LF-Wikipedia-500K preprocessing (:func:`wikipedia_text`): a query is
#: ``title + " " + title + " " + content`` and a label its name, lower-cased and split as the reference did.
QUERY_TEXT_MODES = ("title", "content", "title_content", "wikipedia")
LABEL_TEXT_MODES = ("title", "title_alt", "wikipedia")

# The reference keeps [a-zA-Z0-9.] of ``text.lower()`` and joins the runs with single spaces. Python's full
# lower-casing maps exactly two non-ASCII characters onto kept ASCII ones (checked over every code point):
# U+0130 -> "i" + U+0307 (a separator) and the Kelvin sign U+212A -> "k". Everything else non-ASCII separates.
_WIKIPEDIA_TO_ASCII = (("\u0130", "i "), ("\u212a", "k"))
_WIKIPEDIA_SEPARATORS = r"[^a-z0-9.]+"


def wikipedia_text(text: str) -> str:
    """The reference's Wikipedia text normalisation of one string (see :func:`wikipedia_text_array`).

    >>> wikipedia_text("Albert_Einstein (1879–1955): Physicist, Nobel-Prize 1921.")
    'albert einstein 1879 1955 physicist nobel prize 1921.'
    """
    return wikipedia_text_array(pa.array([text], type=pa.string()))[0].as_py()


def wikipedia_text_array(texts: pa.Array) -> pa.Array:
    """Lower-case, cut at every character outside ``[a-z0-9.]`` (dots are kept, as in the reference), drop the
    empty pieces and join the rest with single spaces; vectorised in Arrow. Equal to Python's
    ``" ".join(p for p in re.split("[^a-zA-Z0-9.]", s.lower()) if p)`` for every string."""
    out = texts
    for char, replacement in _WIKIPEDIA_TO_ASCII:
        out = pc.replace_substring(out, char, replacement)
    out = pc.replace_substring_regex(pc.ascii_lower(out), _WIKIPEDIA_SEPARATORS, " ")
    return pc.utf8_trim(out, " ")


def infer_family(name: str | None) -> str:
    """Guess the propensity family from a dataset name, as the reference does (``get_inv_prop``).

    ``amazon`` in the name -> ``amazon`` (A, B = 0.6, 2.6); ``wiki`` but not WikiSeeAlso -> ``wikipedia``
    (0.5, 0.4); anything else, LF-WikiSeeAlso included, -> ``generic`` (0.55, 1.5). Separators are ignored, so
    ``wiki_see_also`` and ``Wiki-SeeAlso`` are WikiSeeAlso too.
    """
    if not name:
        return "generic"
    squeezed = re.sub(r"[^a-z0-9]", "", name.lower())
    if "amazon" in squeezed:
        return "amazon"
    if "wiki" in squeezed and "wikiseealso" not in squeezed:
        return "wikipedia"
    return "generic"


def index_strings(n: int) -> pa.Array:
    """``"0", "1", ..., str(n - 1)`` as an Arrow string array, without a Python list."""
    return pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())


def text_table(uid=None, title=None, content=None, n: int | None = None) -> datasets.Dataset:
    """A ``uid, title, content`` Dataset from Arrow arrays or sequences; missing columns become ''."""
    columns = {"uid": uid, "title": title, "content": content}
    if n is None:
        n = next(len(v) for v in columns.values() if v is not None)
    arrays = {}
    for key, value in columns.items():
        if value is None:
            arrays[key] = pa.nulls(n, type=pa.string()).fill_null("")
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arr = value.cast(pa.string()) if value.type != pa.string() else value
            arrays[key] = arr.fill_null("") if arr.null_count else arr
        else:
            arrays[key] = pa.array([("" if v is None else str(v)) for v in value], type=pa.string())
    return datasets.Dataset(pa.table(arrays), info=datasets.DatasetInfo(features=TEXT_FEATURES))


def _column(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """One column as Arrow, honouring an indices mapping (after ``select``) without copying otherwise."""
    return ds.with_format("arrow")[:][name] if len(ds) else pa.chunked_array([], type=pa.string())


def _as_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _join_nonempty(first: pa.Array, second: pa.Array, sep: str) -> pa.Array:
    """``first + sep + second``, or whichever is non-empty alone (no dangling separators)."""
    joined = pc.binary_join_element_wise(first, second, sep)
    out = pc.if_else(pc.equal(pc.utf8_length(second), 0), first, joined)
    return pc.if_else(pc.equal(pc.utf8_length(first), 0), second, out)


def training_table(
    query_text: pa.Array,
    label_text: pa.Array,
    query_ids: np.ndarray,
    label_ids: np.ndarray,
    negatives: np.ndarray | None = None,
) -> pa.Table:
    """Rows ``query, positive[, negative_1..m], label=[query_id, label_id, ...]``, one per ``(query_ids[i],
    label_ids[i][, negatives[i]])``, the texts taken from the query / label text arrays (Arrow ``take``)."""
    columns = {"query": query_text.take(pa.array(query_ids)), "positive": label_text.take(pa.array(label_ids))}
    id_columns = [np.asarray(query_ids, dtype=np.int64), np.asarray(label_ids, dtype=np.int64)]
    if negatives is not None:
        for j in range(negatives.shape[1]):
            columns[f"negative_{j + 1}"] = label_text.take(pa.array(negatives[:, j]))
            id_columns.append(negatives[:, j].astype(np.int64))
    ids = np.stack(id_columns, axis=1).reshape(-1)
    width = len(id_columns)
    offsets = pa.array(np.arange(0, len(ids) + 1, width, dtype=np.int32))
    columns["label"] = pa.ListArray.from_arrays(offsets, pa.array(ids, type=pa.int64()))
    return pa.table(columns)


def training_dataset(table: pa.Table) -> datasets.Dataset:
    """A :func:`training_table` as a ``datasets.Dataset`` (string columns, ``label`` a list of int64)."""
    features = datasets.Features(
        {
            **{k: datasets.Value("string") for k in table.column_names if k != "label"},
            "label": datasets.List(datasets.Value("int64")),
        }
    )
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


@dataclass
class _SplitSummary:
    queries: int
    positives: int
    queries_without_labels: int

    @property
    def avg_labels(self) -> float:
        return self.positives / max(self.queries, 1)


class XMCDataset:
    """An XMC dataset: query tables per split, one label table, CSR label matrices, filter pairs.

    Args:
        queries: split name -> ``datasets.Dataset`` with columns ``uid``, ``title``, ``content``.
        labels: ``datasets.Dataset`` with ``uid``, ``title`` (label name) and ``content``
            (alternative names / description); row ``i`` is label id ``i``.
        label_matrices: split name -> CSR (queries x labels), relevance values kept (float32).
        filters: split name -> int array (k, 2) of ``(query_idx, label_idx)`` pairs to remove from
            predictions at evaluation (the LF "reciprocal pair" files).
        family: ``generic`` | ``amazon`` | ``wikipedia`` (propensity A, B); default inferred from ``name``.
        name: a display name (``EURLEX57K``); used to infer the family.
        propensity_splits: the splits whose label counts define the propensities (``("train",)``; a validation
            split carved from train by :meth:`carve_validation` adds itself, so PSP@k stays that of the full train).

    Queries without labels and labels never seen in train are kept, and reported by ``summary()``.
    """

    def __init__(
        self,
        queries: dict[str, datasets.Dataset],
        labels: datasets.Dataset,
        label_matrices: dict[str, sp.spmatrix],
        filters: dict[str, np.ndarray] | None = None,
        family: str | None = None,
        name: str | None = None,
        propensity_splits: tuple[str, ...] = ("train",),
    ):
        self.name = name
        family = family or infer_family(name)
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
        self.family = family
        if set(queries) != set(label_matrices):
            raise ValueError(f"query splits {sorted(queries)} and label-matrix splits {sorted(label_matrices)} differ")
        for table, what in [(labels, "labels"), *[(q, f"queries[{s!r}]") for s, q in queries.items()]]:
            missing = {"uid", "title", "content"} - set(table.column_names)
            if missing:
                raise ValueError(f"{what} lacks columns {sorted(missing)}")
        self.labels = labels
        self.queries = dict(queries)
        self.label_matrices: dict[str, sp.csr_matrix] = {}
        num_labels = len(labels)
        for split, matrix in label_matrices.items():
            matrix = sp.csr_matrix(matrix, dtype=np.float32)
            if matrix.shape != (len(queries[split]), num_labels):
                raise ValueError(
                    f"label matrix {split!r} has shape {matrix.shape}, expected "
                    f"({len(queries[split])}, {num_labels}) = (queries, labels)"
                )
            matrix.sort_indices()
            self.label_matrices[split] = matrix
        self.filters: dict[str, np.ndarray] = {}
        for split, pairs in (filters or {}).items():
            pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            if split not in self.queries:
                raise ValueError(f"filters given for unknown split {split!r}")
            bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= len(self.queries[split]))
            bad |= (pairs[:, 1] < 0) | (pairs[:, 1] >= num_labels)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(f"filters[{split!r}] pair {row} = {pairs[row].tolist()} is out of range")
            if len(pairs):  # no pairs = no filter: one representation, so datasets compare and round-trip equal
                self.filters[split] = pairs
        propensity_splits = tuple(propensity_splits)
        if "train" in self.queries and (not propensity_splits or set(propensity_splits) - set(self.queries)):
            raise ValueError(f"propensity_splits {propensity_splits} must be splits of the dataset ({self.splits})")
        self.propensity_splits = propensity_splits

    # ------------------------------------------------------------------ basic facts
    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.queries] + [s for s in self.queries if s not in SPLITS]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def num_queries(self, split: str = "train") -> int:
        return len(self.queries[split])

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={self.num_queries(s)}" for s in self.splits)
        return f"XMCDataset(name={self.name!r}, family={self.family!r}, labels={self.num_labels}, {parts})"

    def label_frequencies(self, split: str = "train") -> np.ndarray:
        """Number of ``split`` queries each label is a positive of (int64, length = num_labels)."""
        matrix = self.label_matrices[split]
        return np.bincount(matrix.indices, minlength=self.num_labels).astype(np.int64)

    def inv_propensity(self, A: float | None = None, B: float | None = None) -> np.ndarray:  # noqa: N803
        """Inverse propensities ``1 + C (n_l + B)^-A``, ``C = (ln N - 1)(B + 1)^A`` (Jain et al. 2016).

        ``n_l`` are train frequencies and ``N`` the number of train queries (train + a validation split carved from
        it: ``propensity_splits``); ``A``, ``B`` default to the dataset family's values (DESIGN.md §3).
        """
        splits = self.propensity_splits
        freq = sum(self.label_frequencies(split) for split in splits)
        points = sum(self.num_queries(split) for split in splits)
        return inv_propensity(freq, points, A=A, B=B, family=self.family)

    def summary(self) -> dict:
        """Counts per split, queries without labels, and labels never seen in train (kept, not dropped)."""
        out: dict = {"name": self.name, "family": self.family, "labels": self.num_labels, "splits": {}}
        for split in self.splits:
            matrix = self.label_matrices[split]
            per_row = np.diff(matrix.indptr)
            s = _SplitSummary(len(per_row), int(matrix.nnz), int((per_row == 0).sum()))
            out["splits"][split] = {
                "queries": s.queries,
                "positives": s.positives,
                "avg_labels": round(s.avg_labels, 4),
                "queries_without_labels": s.queries_without_labels,
            }
            if split in self.filters:
                out["splits"][split]["filter_pairs"] = len(self.filters[split])
        if "train" in self.label_matrices:
            out["labels_unseen_in_train"] = int((self.label_frequencies("train") == 0).sum())
        return out

    # ------------------------------------------------------------------ texts
    def query_text_array(self, split: str, mode: str = "title", max_chars: int | None = None) -> pa.Array:
        """Query texts of ``split`` as an Arrow string array (see ``query_texts``)."""
        if mode not in QUERY_TEXT_MODES:
            raise ValueError(f"query text mode {mode!r}; expected one of {QUERY_TEXT_MODES}")
        table = self.queries[split]
        title = _as_array(_column(table, "title"))
        content = _as_array(_column(table, "content"))
        if mode == "title":
            out = title
        elif mode == "content":
            out = content
        elif mode == "wikipedia":  # title twice, then the content (the separators vanish in the normalisation)
            out = wikipedia_text_array(pc.binary_join_element_wise(title, title, content, " "))
        else:
            out = _join_nonempty(title, content, " ")
        if max_chars is not None:
            out = pc.utf8_slice_codeunits(out, 0, int(max_chars))
        return out

    def query_texts(self, split: str = "test", mode: str = "title", max_chars: int | None = None) -> list[str]:
        """Query texts of ``split`` as a list (what ``model.encode`` takes).

        ``mode``: ``title`` (LF "Titles" datasets), ``content``, ``title_content`` (title + " " + content), or
        ``wikipedia`` (the reference's LF-Wikipedia-500K text: :func:`wikipedia_text` of title + " " + title + " " +
        content); then cut to ``max_chars`` characters (a cheap pre-truncation before tokenising).
        """
        return self.query_text_array(split, mode, max_chars).to_pylist()

    def label_text_array(self, mode: str = "title", sep: str = "; ") -> pa.Array:
        """Label texts as an Arrow string array (see ``label_texts``)."""
        if mode not in LABEL_TEXT_MODES:
            raise ValueError(f"label text mode {mode!r}; expected one of {LABEL_TEXT_MODES}")
        title = _as_array(_column(self.labels, "title"))
        if mode == "title":
            return title
        if mode == "wikipedia":
            return wikipedia_text_array(title)
        return _join_nonempty(title, _as_array(_column(self.labels, "content")), sep)

    def label_texts(self, mode: str = "title", sep: str = "; ") -> list[str]:
        """Label texts: ``title`` (the name), ``title_alt`` (name + ``sep`` + alternative names) or ``wikipedia``
        (:func:`wikipedia_text` of the name, the reference's LF-Wikipedia-500K label text)."""
        return self.label_text_array(mode, sep).to_pylist()

    # ------------------------------------------------------------------ training view
    def sample_positives(
        self, split: str = "train", epoch: int = 0, seed: int = 0, sampling: str = "uniform"
    ) -> tuple[np.ndarray, np.ndarray]:
        """One positive per query that has one: ``(query_ids, label_ids)``, vectorised over the CSR.

        ``uniform`` picks each of a query's positives with equal chance; ``relevance`` in proportion
        to the stored relevance. The draw depends only on ``(seed, epoch)``.
        """
        if sampling not in ("uniform", "relevance"):
            raise ValueError(f"sampling {sampling!r}; expected 'uniform' or 'relevance'")
        matrix = self.label_matrices[split]
        indptr = matrix.indptr.astype(np.int64)
        counts = np.diff(indptr)
        rows = np.flatnonzero(counts > 0)
        rng = np.random.default_rng([int(seed), int(epoch)])
        u = rng.random(len(rows))
        starts, sizes = indptr[rows], counts[rows]
        if sampling == "uniform":
            pos = starts + np.minimum((u * sizes).astype(np.int64), sizes - 1)
        else:
            data = np.clip(matrix.data.astype(np.float64), 0.0, None)
            cum = np.concatenate([[0.0], np.cumsum(data)])
            lo, hi = cum[starts], cum[starts + sizes]
            total = hi - lo
            pos = np.searchsorted(cum, lo + u * total, side="right") - 1
            pos = np.clip(pos, starts, starts + sizes - 1)
            # Rows whose relevances are all zero fall back to a uniform draw.
            flat = total <= 0
            if flat.any():
                pos[flat] = starts[flat] + np.minimum((u[flat] * sizes[flat]).astype(np.int64), sizes[flat] - 1)
        return rows.astype(np.int64), matrix.indices[pos].astype(np.int64)

    def training_view(
        self,
        epoch: int = 0,
        seed: int = 0,
        sampling: str = "uniform",
        query_text: str = "title",
        label_text: str = "title",
        max_chars: int | None = None,
        split: str = "train",
        negatives: np.ndarray | None = None,
    ) -> datasets.Dataset:
        """Rows ``query, positive[, negative_1..m], label=[query_id, label_id, ...]`` for one epoch.

        One row per ``split`` query with at least one positive, one positive sampled per row (new
        draw per epoch, deterministic per ``(seed, epoch)``). ``negatives`` (optional, int array
        ``(num_queries, m)`` of label ids indexed by query id) adds ``m`` hard-negative columns.
        """
        query_ids, label_ids = self.sample_positives(split, epoch, seed, sampling)
        if negatives is not None:
            negatives = self.check_negatives(negatives, split)[query_ids]
        texts = self.query_text_array(split, query_text, max_chars), self.label_text_array(label_text)
        return training_dataset(training_table(*texts, query_ids, label_ids, negatives))

    def check_negatives(self, negatives: np.ndarray, split: str = "train") -> np.ndarray:
        """``negatives`` as int64 ``(num_queries(split), m)`` label ids, or a ValueError naming what is wrong."""
        negatives = np.asarray(negatives, dtype=np.int64)
        if negatives.ndim != 2 or negatives.shape[0] != self.num_queries(split):
            raise ValueError(f"negatives must have shape ({self.num_queries(split)}, m), got {negatives.shape}")
        if negatives.size and (negatives.min() < 0 or negatives.max() >= self.num_labels):
            raise ValueError("negatives contain label ids out of range")
        return negatives

    def head(self, split: str, n: int | None) -> XMCDataset:
        """A dataset whose ``split`` keeps only its first ``n`` queries (label-matrix rows and filter pairs cut alike).

        Other splits, the labels, the family and the name are shared, not copied. ``n=None`` or ``n`` at least the
        split's size returns ``self``. Used for quick runs (``max_train_samples``, ``eval_max_queries``).
        """
        if split not in self.queries:
            raise ValueError(f"no split {split!r}; splits: {', '.join(self.splits)}")
        if n is None or n >= self.num_queries(split):
            return self
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"head: n must be an integer >= 0 or None, got {n!r}")
        n = int(n)
        queries = {**self.queries, split: self.queries[split].select(range(n))}
        matrices = {**self.label_matrices, split: self.label_matrices[split][:n]}
        filters = dict(self.filters)
        if split in filters:
            filters[split] = filters[split][filters[split][:, 0] < n]
        return self._with(queries, matrices, filters)

    def carve_validation(self, num_points: int, seed: int = 0) -> XMCDataset:
        """A dataset whose new ``validation`` split is ``num_points`` train queries drawn at random (seeded), removed
        from train: model selection without touching the test split (the reference's ``num_val_points``).

        Both splits keep the original order of their queries; label-matrix rows and the train filter pairs follow
        their queries (a pair of a carved query becomes a ``validation`` pair, row renumbered). The draw depends
        only on ``(seed, number of train queries, num_points)``. Propensities keep counting the carved queries
        (``propensity_splits``), so PSP@k is still that of the full train set. Labels, test, family and name are
        shared. Refused when the dataset has a validation split already, or ``num_points`` is not below the number
        of train queries.
        """
        if "validation" in self.queries:
            raise UsageError(
                f"dataset {self.name or ''} has a validation split already ({self.num_queries('validation')} "
                "queries); carve one only from a dataset without"
            )
        if "train" not in self.queries:
            raise UsageError(f"dataset {self.name or ''} has no train split to carve a validation split from")
        n_train = self.num_queries("train")
        if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points <= 0:
            raise UsageError(f"num_val_points must be a positive integer, got {num_points!r}")
        if num_points >= n_train:
            raise UsageError(
                f"num_val_points={num_points} must be below the number of train queries ({n_train}): "
                "train would be left empty"
            )
        rng = np.random.default_rng([int(seed), n_train, int(num_points)])
        in_val = np.zeros(n_train, dtype=bool)
        in_val[rng.choice(n_train, size=int(num_points), replace=False)] = True
        val_rows, train_rows = np.flatnonzero(in_val), np.flatnonzero(~in_val)
        new_row = np.empty(n_train, dtype=np.int64)  # a train row's index in whichever split it lands in
        new_row[val_rows] = np.arange(len(val_rows))
        new_row[train_rows] = np.arange(len(train_rows))
        table, matrix = self.queries["train"], self.label_matrices["train"]
        queries = {**self.queries, "train": table.select(train_rows), "validation": table.select(val_rows)}
        matrices = {**self.label_matrices, "train": matrix[train_rows], "validation": matrix[val_rows]}
        filters = dict(self.filters)
        pairs = filters.pop("train", None)
        if pairs is not None:
            to_val = in_val[pairs[:, 0]]
            moved = np.column_stack([new_row[pairs[:, 0]], pairs[:, 1]])
            filters["train"], filters["validation"] = moved[~to_val], moved[to_val]
        return self._with(queries, matrices, filters, propensity_splits=(*self.propensity_splits, "validation"))

    def _with(self, queries, matrices, filters, propensity_splits: tuple[str, ...] | None = None) -> XMCDataset:
        """A dataset with other query tables / matrices / filters and this one's labels, family and name."""
        splits = self.propensity_splits if propensity_splits is None else propensity_splits
        return XMCDataset(
            queries, self.labels, matrices, filters, family=self.family, name=self.name, propensity_splits=splits
        )

    # ------------------------------------------------------------------ persistence (through the format registry)
    def save(self, path: str | Path, format: str = "hub", overwrite: bool = False) -> None:  # noqa: A002
        """Write the dataset in any registered format (atomically, with the package's marker file)."""
        spec = registry.get_format(format)
        if spec.writer is None:
            raise UsageError(f"format {format!r} can be read but not written")
        spec.writer(self, path, overwrite=overwrite)

    def save_to_folder(self, path: str | Path, overwrite: bool = False) -> None:
        """Write the Hub layout (parquet + README configs + ``xmc.json``) into a local folder."""
        self.save(path, format="hub", overwrite=overwrite)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None, **kwargs) -> None:
        """Push the Hub layout to a dataset repo (one ``datasets`` push per config + ``xmc.json``)."""
        # the Hub module is found through the registry's module table, not imported here (no import cycle)
        push = registry.import_format_module("hub").push_to_hub
        push(self, repo_id, private=private, token=token, **kwargs)

    def equals(self, other: XMCDataset) -> bool:
        """Same texts, label matrices (ids and relevance), filters, family and name."""
        if self.family != other.family or self.name != other.name or self.splits != other.splits:
            return False
        if self.labels.to_dict() != other.labels.to_dict():
            return False
        for split in self.splits:
            if (
                self.queries[split].select_columns(["uid", "title", "content"]).to_dict()
                != other.queries[split].select_columns(["uid", "title", "content"]).to_dict()
            ):
                return False
            a, b = self.label_matrices[split], other.label_matrices[split]
            if a.shape != b.shape or (a != b).nnz:
                return False
        if set(self.filters) != set(other.filters):
            return False
        return all(np.array_equal(self.filters[s], other.filters[s]) for s in self.filters)
