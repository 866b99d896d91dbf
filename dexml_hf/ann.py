"""Approximate top-k inner-product search through faiss, for label sets (or retrieval memories) of 1M–100M rows.

:class:`ApproximateIndex` wraps one faiss index built by :func:`faiss.index_factory` with the inner-product metric:

- ``kind="hnsw"``: a graph (``M`` links a node, ``efConstruction`` at build, ``efSearch`` at search time);
- ``kind="ivf"``: ``nlist`` k-means cells, ``nprobe`` of them scanned a query;
- ``kind="flat"``: a scan of every row, exact for ``codes="flat"``; with ``codes="fp16"`` / ``"sq8"`` it is the
  2×/4× smaller storage option (faiss ``IndexScalarQuantizer``) for a memory whose recall allows it.

``codes`` is how faiss stores the vectors: ``flat`` (fp32), ``fp16``, ``sq8`` (one byte a dimension) or ``pq``
(``pq_m`` sub-quantisers of ``pq_nbits`` bits a vector; with 4 bits an IVF index scans them with faiss's
fast-scan kernels, codes of each vector's residual to its cell's centroid: the fastest option at 1M+ rows when
re-ranked). With compressed codes the scores faiss returns are approximate; when the full-precision
vectors are at hand (``vectors=``, e.g. the :class:`~dexml_hf.index.LabelIndex` embeddings, no copy) the search
fetches ``rerank × k`` candidates and re-scores them exactly, so the returned scores are true inner products.
Results are ordered like the exact path (score descending, then id ascending); empty places have id ``-1`` and
score ``-inf``.

Ids: faiss numbers the rows ``0 … n-1`` in the order added ("positions"); ``ids`` maps a position to the caller's
int64 id (by default the position itself). :meth:`remove` marks positions as removed and every search filters
them through a faiss ``IDSelectorBitmap`` in the search parameters (HNSW graphs cannot drop nodes; IVF lists also
drop them for real), so a removed id is never returned. :meth:`tune` picks the smallest ``efSearch`` / ``nprobe``
reaching a target recall against exact search on sample queries, and stores the measured recall.

Files written by :meth:`save` into a folder: ``index.faiss`` (``faiss.write_index``), ``ann.json`` (kind, codes,
parameters, measured recall), and, when needed, ``ids.npy``, ``removed.npy`` and ``vectors.npy`` (the re-ranking
vectors when this object owns them). Nothing is pickled; ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from dexml_hf.io import ConfigFields

logger = logging.getLogger(__name__)

__all__ = ["ANN_CONFIG_FILE", "ANN_INDEX_FILE", "ApproximateIndex", "allowed_params", "recall_at_k"]

ANN_INDEX_FILE = "index.faiss"
ANN_CONFIG_FILE = "ann.json"
IDS_FILE = "ids.npy"
REMOVED_FILE = "removed.npy"
VECTORS_FILE = "vectors.npy"
FORMAT_VERSION = 1
KINDS = ("hnsw", "ivf", "flat")
CODES = ("flat", "fp16", "sq8", "pq")
_DEFAULTS = {
    "hnsw": {"M": 32, "efConstruction": 200, "efSearch": 64},  # efConstruction 80 cost ~2 points of recall@100
    "ivf": {"nlist": None, "nprobe": 16},
    "flat": {},
}
_ADD_CHUNK = 65536
_SEARCH_CHUNK = 4096
_RERANK_BYTES = 64 * 2**20  # the gathered candidate vectors of one re-ranking block
#: the search-time values :meth:`ApproximateIndex.tune` tries, smallest first
_EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
_NPROBE_GRID = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
#: the re-ranking depths (candidates per result) :meth:`ApproximateIndex.tune` tries below the built one
_RERANK_GRID = (1, 2, 3, 5, 10, 20, 30, 50)


def _between(lo: int, hi: int, steps: int = 4) -> list[int]:
    """Up to ``steps - 1`` integers evenly spaced strictly between ``lo`` and ``hi`` (the grid's refinement: at 1M
    labels nprobe 288 reaches a recall target that the coarse grid could only meet at 384)."""
    return sorted({round(lo + (hi - lo) * j / steps) for j in range(1, steps)} - {lo, hi})


def allowed_params(kind: str, codes: str) -> set[str]:
    """The build parameters that ``kind`` with ``codes`` takes (a CLI checks them before any work); ``rerank``
    (an argument of its own in :meth:`ApproximateIndex.build`) only where compressed codes are re-ranked."""
    return (
        set(_DEFAULTS[kind])
        | ({"pq_m", "pq_nbits"} if codes == "pq" else set())
        | ({"rerank"} if codes != "flat" else set())
    )


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("approximate search needs faiss: pip install faiss-cpu (or dexml_hf[faiss])") from err
    return faiss


def _as_numpy(x) -> np.ndarray:
    """A 2-D numpy view of a tensor or array (no copy for a CPU tensor / contiguous array)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.numpy() if x.dtype != torch.bfloat16 else x.float().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D (rows × dims) matrix, got shape {x.shape}")
    return x


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int | None = None) -> float:
    """``Σ_q |approx top-k ∩ exact top-k| / Σ_q |exact top-k|`` over the queries (``-1`` places ignored)."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    if k is not None:
        approx_ids, exact_ids = approx_ids[:, :k], exact_ids[:, :k]
    hits, total = 0, 0
    for a, e in zip(approx_ids, exact_ids):
        e = e[e >= 0]
        hits += np.intersect1d(a[a >= 0], e).size
        total += e.size
    return hits / total if total else 1.0


def _order_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by score descending, then id ascending (empty places, id -1, last); first ``k`` kept."""
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if scores.shape[1] > 2 * k:  # re-ranked candidates: keep each row's top k and its ties at the cut, sort those
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
        width = int((scores >= kth[:, None]).sum(axis=1).max())
        if width < scores.shape[1]:
            keep = np.argpartition(-scores, width - 1, axis=1)[:, :width]
            scores, ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    empty = ids < 0
    order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, ids), -scores.astype(np.float64), empty), axis=-1)
    scores, ids = np.take_along_axis(scores, order, 1)[:, :k], np.take_along_axis(ids, order, 1)[:, :k]
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return scores, ids


class ApproximateIndex:
    """An approximate (or compressed) inner-product index over rows with int64 ids; see the module doc.

    Build with :meth:`build`; then :meth:`search`, :meth:`add`, :meth:`remove`, :meth:`tune`, :meth:`save` /
    :meth:`load`.

    Example::

        ann = ApproximateIndex.build(label_embeddings, kind="hnsw", M=32)
        ann.tune(validation_query_embeddings, k=100, target_recall=0.99)
        scores, ids = ann.search(query_embeddings, k=10)
    """

    def __init__(self, index, kind: str, codes: str, params: dict[str, Any], ids: np.ndarray, vectors=None):
        self.index = index
        self.kind = kind
        self.codes = codes
        self.params = dict(params)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.removed = np.zeros(len(self.ids), dtype=bool)
        self.vectors = _as_numpy(vectors) if vectors is not None else None
        self.owns_vectors = False
        #: what :meth:`tune` measured: ``{"k", "recall", "target_recall", "n_queries", <param>: value}``
        self.recall: dict[str, Any] | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._bitmap: np.ndarray | None = None
        self._check_vectors()

    # ---- building ---------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        embeddings,
        kind: str = "hnsw",
        ids: np.ndarray | None = None,
        metric: str = "ip",
        codes: str = "flat",
        vectors=None,
        keep_vectors: bool | None = None,
        rerank: int | None = None,
        seed: int = 0,
        show_progress_bar: bool | None = None,
        **params,
    ) -> ApproximateIndex:
        """Index ``embeddings`` (``(n, d)``, fp32 or fp16, tensor or array; added in chunks, so fp16 is converted a
        chunk at a time).

        Args:
            kind: ``"hnsw"``, ``"ivf"`` or ``"flat"``.
            ids: int64 id per row (default ``0 … n-1``); must be distinct.
            metric: only ``"ip"`` (inner product; normalise the embeddings first for cosine).
            codes: ``"flat"``, ``"fp16"``, ``"sq8"`` or ``"pq"`` (``pq_m`` sub-quantisers of ``pq_nbits`` bits;
                ``kind="ivf"`` with ``pq_nbits=4`` is faiss's fast-scan ``IVF…,PQ…x4fs``).
            vectors: full-precision vectors for exact re-ranking, rows aligned with ``embeddings`` (not copied; e.g.
                the same matrix). ``keep_vectors=True`` keeps ``embeddings`` themselves for that (and saves them).
                Default: re-rank against ``embeddings`` when the codes are compressed.
            rerank: candidates fetched per result when re-ranking (``rerank × k``); default 4 (10 for ``pq``).
            params: ``M``, ``efConstruction``, ``efSearch`` (hnsw); ``nlist``, ``nprobe`` (ivf); ``pq_m``,
                ``pq_nbits`` (pq codes). Unknown names are refused.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if codes not in CODES:
            raise ValueError(f"codes must be one of {', '.join(CODES)}, got {codes!r}")
        if metric != "ip":
            raise ValueError(f"metric {metric!r} is not supported: only 'ip' (inner product; normalise for cosine)")
        if kind == "flat" and codes == "pq":
            raise ValueError("kind='flat' with codes='pq' is not offered: use kind='ivf', codes='pq'")
        emb = _as_numpy(embeddings)
        n, d = emb.shape
        if n == 0:
            raise ValueError("cannot build an approximate index over zero rows")
        allowed = allowed_params(kind, codes) - {"rerank"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for kind={kind!r}, codes={codes!r}; allowed: {sorted(allowed)}"
            )
        p = {**_DEFAULTS[kind], **params}
        if kind == "ivf":
            p["nlist"] = int(p["nlist"] or max(1, min(n // 40 or 1, int(4 * math.sqrt(n)))))
            if not 1 <= p["nlist"] <= n:
                raise ValueError(f"nlist={p['nlist']} must be between 1 and the number of rows ({n})")
            p["nprobe"] = int(min(p["nprobe"], p["nlist"]))
        if codes == "pq":
            p.setdefault("pq_m", max(1, d // 8))
            p.setdefault("pq_nbits", 8)
            if d % int(p["pq_m"]):
                raise ValueError(f"pq_m={p['pq_m']} must divide the dimension {d}")
        for name, value in p.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            p[name] = int(value)
        faiss = _faiss()
        index = faiss.index_factory(d, cls._factory_string(kind, codes, p), faiss.METRIC_INNER_PRODUCT)
        if codes == "pq":  # polysemous codes (Hamming pre-filtering) are not used here and slow training down
            pq_part = faiss.downcast_index(index.storage) if kind == "hnsw" else index
            if hasattr(pq_part, "do_polysemous_training"):  # fast-scan PQ has no polysemous codes
                pq_part.do_polysemous_training = False
        if kind == "hnsw":
            index.hnsw.efConstruction = p["efConstruction"]
            index.hnsw.efSearch = p["efSearch"]
        if ids is None:
            ids = np.arange(n, dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be {n} integers (one per row), got shape {ids.shape}, dtype {ids.dtype}")
        if np.unique(ids).size != n:
            raise ValueError("ids must be distinct")
        if keep_vectors and vectors is not None:
            raise ValueError("give either vectors= (kept by reference) or keep_vectors=True, not both")
        owns = bool(keep_vectors or (keep_vectors is None and vectors is None and codes != "flat"))
        if owns:
            vectors = emb
        if rerank is None:
            rerank = 10 if codes == "pq" else 4
        if not isinstance(rerank, (int, np.integer)) or isinstance(rerank, bool) or rerank < 1:
            raise ValueError(f"rerank must be a positive integer (candidates per result), got {rerank!r}")
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            size = min(
                n, max(40 * p.get("nlist", 1), 256 * (1 << p.get("pq_nbits", 0)) if codes == "pq" else 0, 20000)
            )
            sample = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
            index.train(_f32(emb[sample]))
        out = cls(index, kind, codes, {**p, "rerank": int(rerank)}, np.empty(0, np.int64), vectors=None)
        out._add_rows(emb, show_progress_bar)
        out.ids = ids.astype(np.int64)
        out.removed = np.zeros(n, dtype=bool)
        out.vectors = vectors if vectors is None else _as_numpy(vectors)
        out.owns_vectors = owns
        out._check_vectors()
        return out

    @classmethod
    def build_tuned(
        cls,
        embeddings,
        tune_queries=None,
        tune_k: int = 100,
        target_recall: float | None = None,
        tune_max_queries: int = 1000,
        show_progress_bar: bool | None = None,
        **build_options,
    ) -> ApproximateIndex:
        """:meth:`build` over ``embeddings`` (re-ranked against them), then, with ``target_recall``, :meth:`tune` on
        ``tune_queries`` (prepared like the rows: normalised for cosine) — what the label index and the retrieval
        memory both do."""
        if target_recall is not None and tune_queries is None:
            raise ValueError("target_recall needs tune_queries (query embeddings to measure recall on)")
        ann = cls.build(embeddings, vectors=embeddings, show_progress_bar=show_progress_bar, **build_options)
        if target_recall is not None:
            ann.tune(
                tune_queries, tune_k, target_recall, max_queries=tune_max_queries, show_progress_bar=show_progress_bar
            )
        return ann

    @staticmethod
    def _factory_string(kind: str, codes: str, p: dict[str, Any]) -> str:
        storage = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}.get(codes)
        if codes == "pq":
            # 4-bit codes in IVF lists use faiss's fast-scan kernels (SIMD look-ups in registers): same codes,
            # several times the scan speed of the generic 4-bit path; HNSW storage has no fast-scan variant.
            # "fsr": codes of the residual to the cell's centroid (faiss's plain "fs" encodes the vector itself):
            # at 1M labels PQ384x4 codes alone then hold 99% of the true top-100 in their top 300 instead of 1,000,
            # at no search cost (for inner products the look-up tables do not depend on the cell)
            fast = kind == "ivf" and p["pq_nbits"] == 4
            storage = f"PQ{p['pq_m']}x{p['pq_nbits']}" + ("fsr" if fast else "")
        if kind == "hnsw":
            return f"HNSW{p['M']}" + ("" if codes == "flat" else f"_{storage}")
        if kind == "ivf":
            return f"IVF{p['nlist']},{storage}"
        return storage

    def _add_rows(self, emb: np.ndarray, show_progress_bar: bool | None) -> None:
        """Append rows to the faiss index in chunks; their positions follow the last one (removed rows included:
        an IVF index's ``ntotal`` shrinks when rows are removed, positions never do)."""
        start = len(self.ids)
        bar = tqdm(total=len(emb), desc=f"building {self.kind} index", disable=not show_progress_bar, leave=False)
        for s in range(0, len(emb), _ADD_CHUNK):
            chunk = _f32(emb[s : s + _ADD_CHUNK])
            if self.kind == "ivf":  # explicit positions: IVF lists can then drop removed rows for real
                self.index.add_with_ids(chunk, np.arange(start + s, start + s + len(chunk), dtype=np.int64))
            else:
                self.index.add(chunk)
            bar.update(len(chunk))
        bar.close()

    def _check_vectors(self) -> None:
        if self.vectors is not None and self.vectors.shape != (len(self.ids), self.dim):
            raise ValueError(
                f"re-ranking vectors have shape {self.vectors.shape}, expected {(len(self.ids), self.dim)} "
                "(one row per indexed position)"
            )

    # ---- properties -------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        """Rows that can be returned (added and not removed)."""
        return int(len(self.ids) - self.removed.sum())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        recall = f", recall@{self.recall['k']}={self.recall['recall']:.4f}" if self.recall else ""
        return f"ApproximateIndex(kind={self.kind!r}, codes={self.codes!r}, n={len(self)}, dim={self.dim}, {params}{recall})"

    @property
    def reranks(self) -> bool:
        """Whether search re-scores candidates exactly (compressed codes and full vectors at hand)."""
        return self.vectors is not None and self.codes != "flat"

    # ---- changing the rows ------------------------------------------------------------------------------------

    def _positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of live ``ids`` (-1 where absent or removed)."""
        if self._sorted is None:
            live = np.flatnonzero(~self.removed)
            order = np.argsort(self.ids[live], kind="stable")
            self._sorted = (self.ids[live][order], live[order])
        keys, positions = self._sorted
        if not len(keys):
            return np.full(len(ids), -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[where] == ids, positions[where], -1)

    def add(self, embeddings, ids, vectors=None, show_progress_bar: bool | None = None) -> None:
        """Add rows with new int64 ``ids`` (an id present and not removed is refused).

        When search re-ranks against vectors owned by this object, ``embeddings`` are appended to them; when the
        vectors belong to the caller (``vectors=`` at build), pass the caller's grown matrix as ``vectors``.
        """
        emb = _as_numpy(embeddings)
        ids = np.asarray(ids)
        if emb.shape[1] != self.dim:
            raise ValueError(f"embeddings have {emb.shape[1]} dims, the index has {self.dim}")
        if ids.shape != (len(emb),) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be {len(emb)} integers (one per row), got shape {ids.shape}")
        ids = ids.astype(np.int64)
        if np.unique(ids).size != len(ids):
            raise ValueError("ids to add must be distinct")
        present = ids[self._positions_of(ids) >= 0]
        if present.size:
            raise ValueError(f"id {int(present[0])} is already in the index (remove it first to replace it)")
        self._add_rows(emb, show_progress_bar)
        self.ids = np.concatenate([self.ids, ids])
        self.removed = np.concatenate([self.removed, np.zeros(len(ids), dtype=bool)])
        if vectors is not None:
            self.vectors, self.owns_vectors = _as_numpy(vectors), False
        elif self.vectors is not None:
            if not self.owns_vectors:
                raise ValueError("the re-ranking vectors belong to the caller: pass the grown matrix as vectors=")
            self.vectors = np.concatenate([self.vectors, emb.astype(self.vectors.dtype)])
        self._sorted, self._bitmap = None, None
        self._check_vectors()

    def remove(self, ids) -> int:
        """Remove rows by id: never returned again. Unknown (or already removed) ids are refused; returns the count."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        pos = self._positions_of(ids)
        if (pos < 0).any():
            raise ValueError(f"id {int(ids[pos < 0][0])} is not in the index (or already removed)")
        self.removed[pos] = True
        if self.kind == "ivf":
            self.index.remove_ids(_faiss().IDSelectorBatch(pos.astype(np.int64)))
        self._sorted, self._bitmap = None, None
        return int(len(pos))

    # ---- search -----------------------------------------------------------------------------------------------

    def _search_params(self, overrides: dict[str, int] | None = None):
        faiss = _faiss()
        p = {**self.params, **(overrides or {})}
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(p["efSearch"])
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(p["nprobe"])
        else:
            params = faiss.SearchParameters()
        if self.removed.any():
            if self._bitmap is None:
                self._bitmap = np.packbits(~self.removed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(self.removed), faiss.swig_ptr(self._bitmap))
        return params

    def search(
        self, queries, k: int, exclude=None, show_progress_bar: bool = False, **overrides
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k``: ``(scores (q, k) float32, ids (q, k) int64)``, score descending, then id ascending.

        ``exclude``: a sparse ``(q, max_id + 1)`` matrix (or ``(query_row, id)`` pairs) of pairs not to return.
        ``overrides`` (``efSearch=`` / ``nprobe=`` / ``rerank=``) change a search-time parameter for this call only.
        Queries must be prepared like the rows (normalised for cosine).
        """
        from dexml_hf.evaluation.topk import exclude_to_csr

        q = _as_numpy(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have shape {q.shape}, expected (n, {self.dim})")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        n = q.shape[0]
        unknown = sorted(set(overrides) - {"efSearch", "nprobe", "rerank"})
        if unknown:
            raise ValueError(f"unknown search parameter(s) {unknown}: efSearch (hnsw), nprobe (ivf) or rerank")
        rerank = overrides.pop("rerank", self.params.get("rerank", 1))
        if not isinstance(rerank, (int, np.integer)) or isinstance(rerank, bool) or rerank < 1:
            raise ValueError(f"rerank must be a positive integer (candidates per result), got {rerank!r}")
        excluded = None
        if exclude is not None:
            width = exclude.shape[1] if sp.issparse(exclude) else int(self.ids.max(initial=0)) + 1
            excluded = exclude_to_csr(exclude, n, width)
        extra = int(np.diff(excluded.indptr).max()) if excluded is not None and excluded.nnz else 0
        live = len(self)
        depth = min(live, (k + extra) * (int(rerank) if self.reranks else 1))
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        out_ids = np.full((n, k), -1, dtype=np.int64)
        if depth == 0 or n == 0:
            return out_scores, out_ids
        params = self._search_params(overrides)
        for s in tqdm(range(0, n, _SEARCH_CHUNK), desc="approximate search", disable=not show_progress_bar):
            qc = _f32(q[s : s + _SEARCH_CHUNK])
            scores, pos = self.index.search(qc, depth, params=params)
            valid = pos >= 0
            if self.reranks:
                scores = self._exact_scores(qc, pos)
            ids = np.where(valid, self.ids[np.maximum(pos, 0)], -1)
            if excluded is not None and extra:
                rows = np.repeat(np.arange(s, s + len(qc)), depth)
                cols = np.maximum(ids.ravel(), 0)
                in_range = cols < excluded.shape[1]
                drop = np.zeros(len(cols), dtype=bool)
                drop[in_range] = np.asarray(excluded[rows[in_range], cols[in_range]]).ravel().astype(bool)
                ids = np.where(drop.reshape(ids.shape), -1, ids)
            out_scores[s : s + len(qc)], out_ids[s : s + len(qc)] = _order_rows(scores, ids, k)
        return out_scores, out_ids

    def _exact_scores(self, q: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """``<q_i, vectors[pos_ij]>`` in fp32 (places with ``pos = -1`` get ``-inf``).

        fp32 vectors: faiss's ``fvec_inner_products_by_idx`` reads the candidate rows in place (threaded, no gathered
        copy, which dominated a re-ranked search); other dtypes: gathered in blocks and converted."""
        safe = np.ascontiguousarray(np.maximum(pos, 0), dtype=np.int64)
        scores = np.empty(pos.shape, dtype=np.float32)
        v = self.vectors
        if v.dtype == np.float32 and v.flags.c_contiguous:
            faiss = _faiss()
            q = _f32(q)
            faiss.fvec_inner_products_by_idx(
                faiss.swig_ptr(scores),
                faiss.swig_ptr(q),
                faiss.swig_ptr(v),
                faiss.swig_ptr(safe),
                self.dim,
                *pos.shape,
            )
            return np.where(pos >= 0, scores, -np.inf).astype(np.float32)
        step = max(1, _RERANK_BYTES // max(1, pos.shape[1] * self.dim * 4))  # queries per gathered block
        for s in range(0, len(q), step):
            block = self.vectors[safe[s : s + step].ravel()].astype(np.float32, copy=False)
            block = block.reshape(-1, pos.shape[1], self.dim)
            scores[s : s + step] = np.einsum("qkd,qd->qk", block, q[s : s + step], dtype=np.float32)
        return np.where(pos >= 0, scores, -np.inf).astype(np.float32)

    # ---- tuning -----------------------------------------------------------------------------------------------

    def exact_search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the live rows (chunked matmul on the full vectors, or faiss's own vectors when the
        codes are flat), ties to the lower id; the reference :meth:`tune` measures against."""
        from dexml_hf.evaluation.topk import chunked_topk

        live = np.flatnonzero(~self.removed)
        # chunked_topk breaks ties by row; rows in id order make that the lower id
        in_order = len(live) == len(self.ids) and bool(np.all(np.diff(self.ids) > 0))
        order = live if in_order else live[np.argsort(self.ids[live], kind="stable")]
        if self.vectors is not None:
            base = self.vectors if in_order else self.vectors[order]  # the common case (a LabelIndex): no copy
        elif self.codes == "flat":
            base = self.index.reconstruct_batch(order) if self.kind != "ivf" else self._ivf_reconstruct(order)
        else:
            raise ValueError("exact search needs the full-precision vectors (build with vectors= or keep_vectors)")
        q = torch.from_numpy(_f32(_as_numpy(queries)))
        base = torch.from_numpy(base if base.dtype in (np.float16, np.float32) else _f32(base))
        scores, rows = chunked_topk(q, base, min(int(k), len(live)))
        rows = rows.numpy()
        return scores.numpy(), np.where(rows >= 0, self.ids[order][np.maximum(rows, 0)], -1)

    def _ivf_reconstruct(self, positions: np.ndarray) -> np.ndarray:
        faiss = _faiss()
        if self.index.direct_map.type != faiss.DirectMap.Hashtable:  # survives later add / remove
            self.index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return (
            np.stack([self.index.reconstruct(int(p)) for p in positions])
            if len(positions)
            else np.empty((0, self.dim))
        )

    def tune(
        self,
        queries,
        k: int = 100,
        target_recall: float = 0.99,
        max_queries: int = 1000,
        seed: int = 0,
        show_progress_bar: bool | None = None,
    ) -> dict[str, Any]:
        """Choose the smallest ``efSearch`` (hnsw) / ``nprobe`` (ivf) whose recall@``k`` on (a seeded sample of at
        most ``max_queries`` of) ``queries`` reaches ``target_recall`` against exact search; keep it and store
        the measured recall in :attr:`recall` (also returned). The grid is walked smallest first; between the last
        value that missed and the first that reached the target a binary search over intermediate values refines
        the choice. If none reaches it, the largest tried is kept and the shortfall logged. A re-ranked index then
        takes the smallest ``rerank`` (of the built one and :data:`_RERANK_GRID` below it) that keeps the target:
        fewer candidates fetched and re-scored a query. ``flat`` indexes have nothing to tune: their recall is
        measured only."""
        if not 0.0 < float(target_recall) <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}")
        q = _as_numpy(queries)
        if len(q) > max_queries:
            q = q[np.sort(np.random.default_rng(seed).choice(len(q), size=max_queries, replace=False))]
        k = int(min(k, len(self)))
        _, exact = self.exact_search(q, k)
        name = {"hnsw": "efSearch", "ivf": "nprobe"}.get(self.kind)
        grid = {"hnsw": _EF_GRID, "ivf": [v for v in _NPROBE_GRID if v < self.params.get("nlist", 0)]}.get(
            self.kind, [None]
        )
        if self.kind == "ivf":
            grid = [*grid, self.params["nlist"]]

        def measure(value) -> float:
            return recall_at_k(self.search(q, k, **({name: value} if name else {}))[1], exact)

        chosen, recall, missed = None, 0.0, None
        for value in tqdm(grid, desc=f"tuning {name or 'recall'}", disable=not show_progress_bar, leave=False):
            recall = measure(value)
            if recall >= target_recall:
                chosen = value
                break
            missed = value
        else:  # the target was missed: keep the largest value tried, nothing to refine
            chosen, missed = missed, None
        if missed is not None:  # refine between the last value that missed and the first that reached it
            between = _between(missed, chosen)
            lo, hi = 0, len(between)
            while lo < hi:  # binary search: recall grows with efSearch / nprobe (up to noise)
                mid = (lo + hi) // 2
                r = measure(between[mid])
                if r >= target_recall:
                    chosen, recall, hi = between[mid], r, mid
                else:
                    lo = mid + 1
        if name:
            self.params[name] = int(chosen)
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = int(chosen)
            else:
                self.index.nprobe = int(chosen)
        if self.reranks and recall >= target_recall:  # the shallowest re-ranking that keeps the target
            for depth in (v for v in _RERANK_GRID if v < self.params["rerank"]):
                r = recall_at_k(self.search(q, k, rerank=depth)[1], exact)
                if r >= target_recall:
                    self.params["rerank"], recall = depth, r
                    break
        if recall < target_recall:
            logger.warning(
                f"approximate index: recall@{k} {recall:.4f} < target {target_recall} even at {name}={chosen}; "
                "build with larger M / nlist or less compressed codes"
            )
        self.recall = {"k": k, "recall": float(recall), "target_recall": float(target_recall), "n_queries": len(q)}
        if name:
            self.recall[name] = int(chosen)
        if self.reranks:
            self.recall["rerank"] = int(self.params["rerank"])
        return self.recall

    # ---- persistence ------------------------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "codes": self.codes,
            "metric": "ip",
            "dim": self.dim,
            "n_rows": int(len(self.ids)),
            "n_removed": int(self.removed.sum()),
            "params": self.params,
            "recall": self.recall,
            "reranks": self.reranks,
            "vectors": VECTORS_FILE if self.owns_vectors and self.vectors is not None else None,
        }

    def save(self, folder: str | os.PathLike, include_vectors: bool = True) -> Path:
        """Write ``index.faiss`` (faiss's writer), ``ann.json`` and the ``.npy`` side files into ``folder``.

        Owned re-ranking vectors go into ``vectors.npy`` unless ``include_vectors=False``; vectors given by the
        caller are the caller's to save (pass them to :meth:`load` again)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(folder / ANN_INDEX_FILE))
        side = {
            IDS_FILE: None if np.array_equal(self.ids, np.arange(len(self.ids))) else self.ids,
            REMOVED_FILE: np.flatnonzero(self.removed).astype(np.int64) if self.removed.any() else None,
            VECTORS_FILE: self.vectors if self.owns_vectors and include_vectors else None,
        }
        for name, array in side.items():
            if array is not None:
                np.save(folder / name, np.ascontiguousarray(array), allow_pickle=False)
            elif (folder / name).is_file():
                (folder / name).unlink()  # a stale file of an earlier save must not look like this index's
        config = self.config_dict()
        if not include_vectors:
            config["vectors"] = None
        with open(folder / ANN_CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, vectors=None, mmap: bool = False) -> ApproximateIndex:
        """Read a folder written by :meth:`save`. ``vectors``: the caller's re-ranking vectors (as at build);
        ``mmap=True`` memory-maps the faiss index and ``.npy`` files instead of reading them."""
        folder = Path(folder)
        config_path = folder / ANN_CONFIG_FILE
        if not config_path.is_file() or not (folder / ANN_INDEX_FILE).is_file():
            raise FileNotFoundError(
                f"{folder} lacks {ANN_CONFIG_FILE} or {ANN_INDEX_FILE}; not a saved ApproximateIndex"
            )
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        fields = ConfigFields(config, str(config_path))
        version = fields.get("format_version", default=None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {version!r}; this dexml_hf reads {FORMAT_VERSION}")
        for field, allowed in (("kind", KINDS), ("codes", CODES)):
            if config.get(field) not in allowed:
                raise ValueError(f"{config_path}: field {field}={config.get(field)!r}, expected one of {allowed}")
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(folder / ANN_INDEX_FILE), flags)
        n = fields.get("n_rows", int)
        mode = "r" if mmap else None

        def read(name: str):
            return np.load(folder / name, allow_pickle=False, mmap_mode=mode) if (folder / name).is_file() else None

        ids = read(IDS_FILE)
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(ids) != n or index.d != fields.get("dim", int, index.d):
            raise ValueError(f"{folder}: {len(ids)} ids / {index.d} dims, but {ANN_CONFIG_FILE} says {n} rows")
        owned = None
        vectors_file = fields.member("vectors", folder, None)
        if vectors_file is not None:
            owned = read(vectors_file.name)
            if owned is None:
                raise FileNotFoundError(f"{vectors_file} is missing: {ANN_CONFIG_FILE} declares it")
        out = cls(
            index,
            config["kind"],
            config["codes"],
            fields.get("params", dict),
            ids,
            vectors=owned if owned is not None else vectors,
        )
        out.owns_vectors = owned is not None
        removed = read(REMOVED_FILE)
        if removed is not None:
            out.removed[np.asarray(removed, dtype=np.int64)] = True
        out.recall = fields.get("recall", dict, None)
        return out
