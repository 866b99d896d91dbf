"""Lexical neighbours for the retrieval memory: TF-IDF cosine over the training queries' words.

Why: the dual encoder's query–query similarity ranks the neighbours' labels on positions 2–5 worse than a TF-IDF
model does (EURLEX57K: every dense fusion point sat on a P@5 plateau below omikuji's). Word and bigram overlap is
the evidence a sparse model uses and a 384-dim MiniLM embedding blurs; a second neighbour term from it, mixed into
the memory's (:mod:`dexml_hf.retrieval`), adds that evidence without training anything.

The vectoriser is scikit-learn's ``TfidfVectorizer`` (the ``lexical`` extra), fitted on the memory's own texts;
it is saved as its vocabulary (an Arrow column of terms, in column order), its idf and its settings — never
pickled — and rebuilt from them on load. Neighbours are exact: the ``k`` training queries with the largest TF-IDF
cosine (only those sharing a term with the query; ties to the lower row), a block of queries at a time, so the
dense blocks are bounded by ``max_block`` values whatever the memory's size. CPU (torch sparse CSR).

Files, in the index folder beside ``memory.safetensors``: ``memory_lexical.safetensors`` (``idf``, and the
memory's TF-IDF rows as CSR ``indptr``/``indices``/``data``) and ``memory_lexical_terms.feather``; the settings go
into the ``"lexical"`` entry of the memory's config.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["LEXICAL_FILE", "LEXICAL_TERMS_FILE", "LexicalNeighbours", "require_lexical"]

LEXICAL_FILE = "memory_lexical.safetensors"
LEXICAL_TERMS_FILE = "memory_lexical_terms.feather"
_MAX_BLOCK = 1 << 25  # similarities held densely at once (128 MiB of float32)


def require_lexical(option: str) -> None:
    """Refuse ``option`` up front (a :class:`~dexml_hf.errors.UsageError`) when scikit-learn is missing, before
    hours of training end in an ImportError."""
    import importlib.util

    from dexml_hf.errors import UsageError

    if importlib.util.find_spec("sklearn") is None:
        raise UsageError(f"{option} needs scikit-learn: pip install 'dexml-hf[lexical]'")


def _vectorizer(**settings):
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as err:
        raise ImportError(
            "lexical neighbours need scikit-learn: pip install 'dexml-hf[lexical]' (or scikit-learn)"
        ) from err
    return TfidfVectorizer(dtype=np.float32, sublinear_tf=True, norm="l2", **settings)


class LexicalNeighbours:
    """TF-IDF rows of the memory queries and the vectoriser that made them.

    Args:
        vectorizer: a fitted ``TfidfVectorizer`` (l2-normalised rows).
        matrix: ``(n, V)`` CSR, the memory queries' TF-IDF rows.
        settings: the vectoriser's settings that are saved (``ngram_range``, ``min_df``, ``max_features``,
            ``lowercase``).
        text_mode: the dataset text mode (``title_content``, ...) the rows were made from when it is not the
            memory's own query texts; then the queries' texts of that mode feed the lexical term (``None``: the
            texts the queries are embedded from). Full document texts are a stronger lexical signal than titles
            (benchmarks/RESULTS.md, issue 23).
    """

    def __init__(self, vectorizer, matrix: sp.csr_matrix, settings: dict[str, Any], text_mode: str | None = None):
        self.vectorizer = vectorizer
        self.text_mode = text_mode
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.matrix.sort_indices()
        self.settings = dict(settings)
        self._torch_rows = None

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        ngram_range: tuple[int, int] = (1, 2),
        min_df: int = 2,
        max_features: int | None = 2_000_000,
        lowercase: bool = True,
        text_mode: str | None = None,
    ) -> LexicalNeighbours:
        """Fit the vectoriser on the memory's texts (words and, by default, bigrams seen in at least ``min_df`` of
        them, at most ``max_features`` terms) and keep their TF-IDF rows."""
        n = len(texts)
        settings = {
            "ngram_range": [int(ngram_range[0]), int(ngram_range[1])],
            # a term must occur in min_df texts; a memory smaller than that keeps every term
            "min_df": int(min_df) if n >= int(min_df) else 1,
            "max_features": None if max_features is None else int(max_features),
            "lowercase": bool(lowercase),
        }
        vectorizer = _vectorizer(**{**settings, "ngram_range": tuple(settings["ngram_range"])})
        try:
            matrix = vectorizer.fit_transform(list(texts))
        except ValueError as err:  # "empty vocabulary": no text has a word token
            raise ValueError(f"lexical neighbours: the {n} memory texts have no usable words ({err})") from err
        return cls(vectorizer, matrix, settings, text_mode)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    @property
    def num_terms(self) -> int:
        return self.matrix.shape[1]

    def select(self, rows: np.ndarray) -> LexicalNeighbours:
        """The rows ``rows`` only (same vocabulary and idf)."""
        return LexicalNeighbours(
            self.vectorizer, self.matrix[np.asarray(rows, dtype=np.int64)], self.settings, self.text_mode
        )

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self.vectorizer.transform(list(texts)).tocsr()

    def neighbours(
        self, texts: Sequence[str], k: int, exclude=None, max_block: int = _MAX_BLOCK
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``k`` nearest memory rows of each text by TF-IDF cosine: ``(similarities (n, k) float32, rows
        (n, k) int64)``, best first, ties to the lower row. Rows sharing no term with the text are never
        neighbours: their places hold row ``-1`` and similarity ``-inf``. ``exclude``: an ``n × len(self)``
        sparse matrix of (text, row) pairs that may not be neighbours."""
        n, k = len(texts), int(k)
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        rows = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or k == 0:
            return sims, rows
        matrix = self._torch_matrix()
        excluded = None if exclude is None else sp.csr_matrix(exclude, dtype=bool)
        # both dense blocks stay within max_block: the queries' (V, c) and the similarities' (c, N)
        chunk = max(1, int(max_block) // max(1, len(self), self.num_terms))
        for c0 in range(0, n, chunk):
            c1 = min(n, c0 + chunk)
            queries = torch.from_numpy(self.transform(texts[c0:c1]).T.toarray())
            block = (matrix @ queries).T.numpy()
            if excluded is not None:
                ex = excluded[c0:c1].tocoo()
                block[ex.row, ex.col] = 0.0
            _topk_positive(block, k, sims[c0:c1], rows[c0:c1])
        return sims, rows

    def _torch_matrix(self):
        """The rows as a torch CSR tensor: its sparse × dense product (multi-threaded) is 3.2× scipy's sparse × sparse
        one at 640k rows, where common words make every block nearly dense (benchmarks/lexical_scale.py)."""
        if self._torch_rows is None:
            m = self.matrix
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
                self._torch_rows = torch.sparse_csr_tensor(
                    torch.from_numpy(m.indptr.astype(np.int64)),
                    torch.from_numpy(m.indices.astype(np.int64)),
                    torch.from_numpy(m.data.astype(np.float32)),
                    size=m.shape,
                )
        return self._torch_rows

    # ---- files ------------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return {
            "file": LEXICAL_FILE,
            "terms_file": LEXICAL_TERMS_FILE,
            "n_queries": len(self),
            "n_terms": self.num_terms,
            "kind": "tfidf",
            "sublinear_tf": True,
            "norm": "l2",
            **self.settings,
            "text_mode": self.text_mode,
        }

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        from dexml_hf.io import write_arrow_columns

        folder = Path(folder)
        terms = np.empty(self.num_terms, dtype=object)
        for term, col in self.vectorizer.vocabulary_.items():
            terms[col] = term
        write_arrow_columns(folder / LEXICAL_TERMS_FILE, {"term": terms.tolist()})
        tensors = {
            "idf": np.ascontiguousarray(self.vectorizer.idf_, dtype=np.float32),
            "indptr": self.matrix.indptr.astype(np.int64),
            "indices": self.matrix.indices.astype(np.int64),
            "data": np.ascontiguousarray(self.matrix.data, dtype=np.float32),
        }
        save_file(tensors, str(folder / LEXICAL_FILE), metadata={"format": "dexml_hf.lexical_neighbours"})

    @classmethod
    def load(cls, folder: str | os.PathLike, config: dict[str, Any], where: str) -> LexicalNeighbours:
        """Rebuild from :meth:`save`'s files and the ``"lexical"`` config entry (checked field by field)."""
        from dexml_hf.errors import DataError
        from dexml_hf.io import ConfigFields, read_arrow_columns, read_safetensors

        fields = ConfigFields(config, where)
        if fields.get("kind", str) != "tfidf":
            raise DataError(f"{where}: field 'kind'={config.get('kind')!r}; this version reads 'tfidf'")
        file = fields.member("file", folder, LEXICAL_FILE)
        terms_file = fields.member("terms_file", folder, LEXICAL_TERMS_FILE)
        tensors = read_safetensors(file, framework="numpy")
        missing = {"idf", "indptr", "indices", "data"} - set(tensors)
        if missing:
            raise DataError(f"{file}: missing tensors {sorted(missing)}")
        terms = read_arrow_columns(terms_file).get("term")
        if terms is None:
            raise DataError(f"{terms_file}: no 'term' column")
        terms = list(terms)
        n, n_terms = fields.get("n_queries", int), fields.get("n_terms", int)
        idf, indptr, indices = tensors["idf"], tensors["indptr"], tensors["indices"]
        if len(terms) != n_terms or len(idf) != n_terms or len(set(terms)) != n_terms:
            raise DataError(
                f"{terms_file}: {len(terms)} terms ({len(set(terms))} distinct), {len(idf)} idf values; "
                f"the config says {n_terms}"
            )
        if len(indptr) != n + 1 or int(indptr[-1]) != len(indices) or len(indices) != len(tensors["data"]):
            raise DataError(
                f"{file}: a CSR of {len(indptr) - 1} rows / {len(indices)} entries; the config says {n} rows"
            )
        if not np.all(np.isfinite(idf)) or (len(idf) and idf.min() <= 0):
            raise DataError(f"{file}: idf values must be finite and positive")
        if len(indices) and (indices.min() < 0 or indices.max() >= n_terms):
            raise DataError(f"{file}: a term index outside 0..{n_terms - 1}")
        ngram = fields.get("ngram_range", list)
        if len(ngram) != 2 or not all(isinstance(x, int) and x >= 1 for x in ngram) or ngram[0] > ngram[1]:
            raise DataError(f"{where}: field 'ngram_range'={ngram!r} must be [min, max] with 1 <= min <= max")
        settings = {
            "ngram_range": [int(ngram[0]), int(ngram[1])],
            "min_df": fields.get("min_df", int, 1),
            "max_features": fields.get("max_features", int, None),
            "lowercase": fields.get("lowercase", bool, True),
        }
        vectorizer = _vectorizer(
            ngram_range=tuple(settings["ngram_range"]),
            lowercase=settings["lowercase"],
            vocabulary={term: col for col, term in enumerate(terms)},
        )
        vectorizer.idf_ = idf.astype(np.float32)  # a fixed vocabulary needs only its idf to transform
        matrix = sp.csr_matrix((tensors["data"], indices, indptr), shape=(n, n_terms))
        text_mode = fields.get("text_mode", str, None)
        if text_mode is not None and not text_mode:
            raise DataError(f"{where}: field 'text_mode' is empty; a text mode name (e.g. 'title_content') or null")
        return cls(vectorizer, matrix, settings, text_mode)


def _topk_positive(block: np.ndarray, k: int, sims_out: np.ndarray, rows_out: np.ndarray) -> None:
    """Per row of ``block`` the ``k`` largest positive entries, by value descending then column ascending."""
    n, width = block.shape
    kk = min(k, width)
    if kk < width:
        kth = torch.topk(torch.from_numpy(block), kk, dim=1).values[:, -1:].numpy()  # the k-th largest per row
        cand = (block >= kth) & (block > 0)
    else:
        cand = block > 0
    r, c = np.nonzero(cand)  # row-major: columns ascending within a row
    v = block[r, c]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(n))[r]
    keep = rank < k
    sims_out[r[keep], rank[keep]] = v[keep]
    rows_out[r[keep], rank[keep]] = c[keep]
