"""Ranking metrics for extreme multi-label classification, vectorised over a top-k matrix.

Inputs everywhere: ``topk``, an ``(n, k)`` integer array of predicted label ids per point, best
first (``-1`` marks padding: a place with no prediction, never a hit), and ``truth``, an
``(n, L)`` sparse matrix whose non-zero entries are the true labels. A ranking shorter than the
requested ``k`` counts the missing places as misses (as napkinxc does).

Definitions follow pyxclib / napkinxc (DESIGN.md §3):

- ``P@k = |top-k ∩ Y| / k``; ``R@k = |top-k ∩ Y| / |Y|``;
  ``nDCG@k = Σ_{hit at rank r ≤ k} 1/log2(r+1) / Σ_{r ≤ min(k, |Y|)} 1/log2(r+1)``;
  ``MRR@k = 1 / (rank of the first hit within k)``, 0 without a hit. Averaged over points.
- ``PSP@k`` and ``PSnDCG@k`` weigh each hit by the label's inverse propensity and are a ratio
  of sums over all points: the model's weighted gain over the best achievable gain (the true
  labels with the largest inverse propensities ranked first).

Points with no positives (the documented rule, identical to pyxclib and to napkinxc's default
``zero_division=0``): they stay in the average and score 0 in P@k, nDCG@k, R@k and MRR@k; in the
propensity-scored metrics they add 0 to both the numerator and the best-achievable denominator,
so they do not move PSP@k / PSnDCG@k. All metrics are in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = [
    "PROPENSITY_PRESETS",
    "bucket_metrics",
    "frequency_buckets",
    "hits_matrix",
    "inv_propensity",
    "metric_contributions",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "psndcg_at_k",
    "psp_at_k",
    "recall_at_k",
    "xmc_metrics",
]

#: Jain et al. (2016) ``(A, B)`` for the dataset families (DESIGN.md §3).
PROPENSITY_PRESETS: dict[str, tuple[float, float]] = {
    "generic": (0.55, 1.5),
    "amazon": (0.6, 2.6),
    "wikipedia": (0.5, 0.4),
}

#: Extra cut-offs reported for recall and MRR when the top-k matrix is wide enough.
EXTRA_RANK_KS: tuple[int, ...] = (10, 20, 50, 100)


def inv_propensity(
    frequencies: np.ndarray | Sequence[float],
    n_points: int,
    A: float | None = None,
    B: float | None = None,
    family: str = "generic",
) -> np.ndarray:
    """Inverse propensities ``1 + C (n_l + B)^-A`` with ``C = (ln N - 1)(B + 1)^A`` (Jain et al., 2016).

    ``frequencies`` are the labels' training counts ``n_l``, ``n_points`` the number of training
    points ``N``; ``A``/``B`` default to the ``family`` preset (generic, amazon, wikipedia).
    """
    if family not in PROPENSITY_PRESETS:
        raise ValueError(f"family must be one of {sorted(PROPENSITY_PRESETS)}, got {family!r}")
    preset_a, preset_b = PROPENSITY_PRESETS[family]
    A = preset_a if A is None else float(A)
    B = preset_b if B is None else float(B)
    freq = np.asarray(frequencies, dtype=np.float64).ravel()
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    if freq.size and freq.min() < 0:
        raise ValueError("frequencies must be non-negative")
    c = (np.log(n_points) - 1.0) * (B + 1.0) ** A
    return 1.0 + c * (freq + B) ** (-A)


def _check_inputs(topk: np.ndarray, truth) -> tuple[np.ndarray, sp.csr_matrix]:
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise ValueError(f"topk must be a 2-D (n, k) array of label ids, got shape {topk.shape}")
    if topk.size and not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must hold integer label ids, got dtype {topk.dtype}")
    if not sp.issparse(truth):
        truth = sp.csr_matrix(np.asarray(truth))
    truth = sp.csr_matrix(truth, copy=True)
    truth.eliminate_zeros()
    truth.sum_duplicates()  # also sorts the indices of every row
    if truth.shape[0] != topk.shape[0]:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {truth.shape[0]}")
    if topk.size and topk.max() >= truth.shape[1]:
        raise ValueError(f"topk holds label id {int(topk.max())} but truth has only {truth.shape[1]} labels")
    if topk.size and topk.min() < -1:
        raise ValueError("topk may only hold label ids >= 0 or -1 (padding)")
    return topk.astype(np.int64, copy=False), truth


def _pad(arr: np.ndarray, k: int, fill) -> np.ndarray:
    """The first ``k`` columns of ``arr``, padded with ``fill`` when it is narrower."""
    if arr.shape[1] >= k:
        return arr[:, :k]
    out = np.full((arr.shape[0], k), fill, dtype=arr.dtype)
    out[:, : arr.shape[1]] = arr
    return out


def hits_matrix(topk: np.ndarray, truth) -> np.ndarray:
    """Boolean ``(n, k)``: whether ``topk[i, r]`` is a true label of point ``i`` (padding is never a hit)."""
    topk, truth = _check_inputs(topk, truth)
    return _hits(topk, truth)


def _hits(topk: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    n, n_labels = truth.shape
    # One sorted key per true (row, label) pair; membership of every predicted pair by binary search.
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(truth.indptr))
    true_keys = rows * n_labels + truth.indices.astype(np.int64)
    pred_keys = np.arange(n, dtype=np.int64)[:, None] * n_labels + topk
    pos = np.searchsorted(true_keys, pred_keys)
    pos = np.minimum(pos, max(true_keys.size - 1, 0))
    found = true_keys[pos] == pred_keys if true_keys.size else np.zeros(topk.shape, dtype=bool)
    return found & (topk >= 0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _top_true_weights(truth: sp.csr_matrix, weights: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)``: each point's ``k`` largest weights among its true labels, descending, zero-padded."""
    n = truth.shape[0]
    counts = np.diff(truth.indptr)
    rows = np.repeat(np.arange(n), counts)
    w = weights[truth.indices]
    order = np.lexsort((-w, rows))  # by row, then by weight descending
    rank = np.arange(w.size) - truth.indptr[rows]
    keep = rank < k
    out = np.zeros((n, k), dtype=np.float64)
    out[rows[keep], rank[keep]] = w[order][keep]
    return out


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_weights(weights, n_labels: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape[0] < n_labels:
        raise ValueError(f"inv_propensity has {weights.shape[0]} entries but truth has {n_labels} labels")
    return weights


# Each metric has a private core over prepared inputs (hits computed once in ``xmc_metrics``) that returns every
# point's contribution (the metric is their sum: a mean's terms are divided by n, a ratio of sums' by its
# denominator), and a public wrapper that validates and sums.


def _precision(hits: np.ndarray, k: int) -> np.ndarray:
    return _pad(hits, k, False).sum(axis=1) / (k * max(hits.shape[0], 1))


def _recall(hits: np.ndarray, n_true: np.ndarray, k: int) -> np.ndarray:
    found = _pad(hits, k, False).sum(axis=1)
    return np.divide(found, n_true, out=np.zeros(len(found)), where=n_true > 0) / max(hits.shape[0], 1)


def _ndcg(hits: np.ndarray, n_true: np.ndarray, k: int) -> np.ndarray:
    disc = _discounts(k)
    dcg = _pad(hits, k, False) @ disc
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_true, k)]
    return np.divide(dcg, ideal, out=np.zeros(len(dcg)), where=ideal > 0) / max(hits.shape[0], 1)


def _mrr(hits: np.ndarray, k: int) -> np.ndarray:
    h = _pad(hits, k, False)
    first = h.argmax(axis=1)
    return np.where(h.any(axis=1), 1.0 / (first + 1), 0.0) / max(hits.shape[0], 1)


def _psp(hits: np.ndarray, topk: np.ndarray, best: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    gain = (_pad(hits, k, False) * weights[np.maximum(_pad(topk, k, -1), 0)]).sum(axis=1)
    denom = best[:, :k].sum()
    return gain / denom if denom > 0 else np.zeros(len(gain))


def _psndcg(
    hits: np.ndarray, topk: np.ndarray, best: np.ndarray, weights: np.ndarray, n_true: np.ndarray, k: int
) -> np.ndarray:
    disc = _discounts(k)
    dcg = (_pad(hits, k, False) * weights[np.maximum(_pad(topk, k, -1), 0)]) @ disc
    best_dcg = best[:, :k] @ disc
    norm = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_true, k)]
    valid = norm > 0
    denom = (best_dcg[valid] / norm[valid]).sum()
    out = np.zeros(len(dcg))
    if denom > 0:
        out[valid] = dcg[valid] / norm[valid] / denom
    return out


def precision_at_k(topk: np.ndarray, truth, k: int) -> float:
    """Mean over points of ``|top-k ∩ Y| / k``."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    return float(_precision(_hits(topk, truth), k).sum())


def recall_at_k(topk: np.ndarray, truth, k: int) -> float:
    """Mean over points of ``|top-k ∩ Y| / |Y|`` (0 for a point without positives)."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    return float(_recall(_hits(topk, truth), np.diff(truth.indptr), k).sum())


def ndcg_at_k(topk: np.ndarray, truth, k: int) -> float:
    """Mean over points of DCG@k over the ideal DCG@k with ``min(k, |Y|)`` hits (0 without positives)."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    return float(_ndcg(_hits(topk, truth), np.diff(truth.indptr), k).sum())


def mrr_at_k(topk: np.ndarray, truth, k: int) -> float:
    """Mean reciprocal rank of the first true label within the top ``k`` (0 when none)."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    return float(_mrr(_hits(topk, truth), k).sum())


def psp_at_k(topk: np.ndarray, truth, inv_propensity: np.ndarray, k: int) -> float:
    """Propensity-scored precision: hits weighted by inverse propensity over the best achievable (sums over points)."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    weights = _check_weights(inv_propensity, truth.shape[1])
    return float(_psp(_hits(topk, truth), topk, _top_true_weights(truth, weights, k), weights, k).sum())


def psndcg_at_k(topk: np.ndarray, truth, inv_propensity: np.ndarray, k: int) -> float:
    """Propensity-scored nDCG: per-point PS-DCG over the ideal DCG, summed, over the same for the best ranking."""
    k = _check_k(k)
    topk, truth = _check_inputs(topk, truth)
    weights = _check_weights(inv_propensity, truth.shape[1])
    best = _top_true_weights(truth, weights, k)
    return float(_psndcg(_hits(topk, truth), topk, best, weights, np.diff(truth.indptr), k).sum())


def xmc_metrics(
    topk: np.ndarray,
    truth,
    ks: Iterable[int] = (1, 3, 5),
    inv_propensity: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics at once: ``precision@k``, ``ndcg@k``, ``recall@k``, ``mrr@k`` for every ``k`` in ``ks``,
    ``psp@k`` / ``psndcg@k`` when ``inv_propensity`` is given, and ``recall@k`` / ``mrr@k`` at 10, 20, 50, 100
    as far as ``topk`` is wide enough. Filtered pairs must already be removed from ``topk``.
    """
    return {name: float(c.sum()) for name, c in metric_contributions(topk, truth, ks, inv_propensity).items()}


def metric_contributions(
    topk: np.ndarray,
    truth,
    ks: Iterable[int] = (1, 3, 5),
    inv_propensity: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The metrics of :func:`xmc_metrics` point by point: each an ``(n,)`` array that sums to the metric (a mean's
    terms over ``n``, PSP's over its best-achievable denominator), so two rankings of the same points can be
    compared with a paired test (:func:`dexml_hf.retrieval.grid_search`'s guard margin)."""
    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise ValueError("ks must name at least one cut-off")
    topk, truth = _check_inputs(topk, truth)
    if ks[-1] > topk.shape[1]:
        raise ValueError(f"ks asks for @{ks[-1]} but topk has only {topk.shape[1]} columns")
    hits = _hits(topk, truth)
    n_true = np.diff(truth.indptr)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"precision@{k}"] = _precision(hits, k)
        out[f"ndcg@{k}"] = _ndcg(hits, n_true, k)
    for k in sorted(set(ks) | {k for k in EXTRA_RANK_KS if k <= topk.shape[1]}):
        out[f"recall@{k}"] = _recall(hits, n_true, k)
        out[f"mrr@{k}"] = _mrr(hits, k)
    if inv_propensity is not None:
        weights = _check_weights(inv_propensity, truth.shape[1])
        best = _top_true_weights(truth, weights, ks[-1])
        for k in ks:
            out[f"psp@{k}"] = _psp(hits, topk, best, weights, k)
            out[f"psndcg@{k}"] = _psndcg(hits, topk, best, weights, n_true, k)
    return out


def frequency_buckets(frequencies: np.ndarray, n_buckets: int = 3) -> np.ndarray:
    """Bucket of every label (0 = head … ``n_buckets - 1`` = tail): labels sorted by training frequency,
    cut so each bucket holds about the same share of all positive occurrences (unseen labels fall in the tail)."""
    freq = np.asarray(frequencies, dtype=np.float64).ravel()
    order = np.argsort(-freq, kind="stable")
    total = freq.sum()
    if total <= 0:
        return np.full(freq.shape, n_buckets - 1, dtype=np.int64)
    before = (np.cumsum(freq[order]) - freq[order]) / total  # share of mass held by more frequent labels
    buckets = np.empty(freq.shape, dtype=np.int64)
    buckets[order] = np.minimum((before * n_buckets).astype(np.int64), n_buckets - 1)
    return buckets


def bucket_metrics(
    topk: np.ndarray,
    truth,
    buckets: np.ndarray,
    ks: Iterable[int] = (1, 3, 5),
    inv_propensity: np.ndarray | None = None,
    names: Sequence[str] = ("head", "torso", "tail"),
) -> dict[str, dict[str, float]]:
    """Each bucket's contribution to ``precision@k`` (and ``psp@k``): only hits on the bucket's labels count,
    the normalisers are the overall ones, so the buckets' values add up to the overall metric."""
    ks = sorted({_check_k(k) for k in ks})
    topk, truth = _check_inputs(topk, truth)
    buckets = np.asarray(buckets, dtype=np.int64)
    hits = _hits(topk, truth)
    pred_bucket = np.where(topk >= 0, buckets[np.maximum(topk, 0)], -1)
    weights = best = None
    if inv_propensity is not None:
        weights = _check_weights(inv_propensity, truth.shape[1])
        best = _top_true_weights(truth, weights, ks[-1])
    out: dict[str, dict[str, float]] = {}
    for b, name in enumerate(names):
        in_bucket = hits & (pred_bucket == b)
        row: dict[str, float] = {"labels": float((buckets == b).sum())}
        for k in ks:
            row[f"precision@{k}"] = float(_precision(in_bucket, k).sum())
            if weights is not None:
                row[f"psp@{k}"] = float(_psp(in_bucket, topk, best, weights, k).sum())
        out[name] = row
    return out


#: the LMTC label groups (Chalkidis et al.): more than ``few_max`` training documents, 1 to ``few_max``, none
LABEL_GROUPS = ("frequent", "few", "zero")


def label_group_metrics(
    topk: np.ndarray,
    truth,
    train_frequencies: np.ndarray,
    ks: Iterable[int] = (1, 3, 5),
    few_max: int = 50,
) -> dict[str, dict[str, float]]:
    """P@k, R@k and nDCG@k within each label group (``frequent``: > ``few_max`` training documents, ``few``:
    1 to ``few_max``, ``zero``: none), as the LMTC literature reports them: the ranking is cut to the group's labels
    (order kept), the truth to its columns, and only queries with a true label in the group count.

    ``topk`` is the ranked list the search returned, so a group's ranking is its labels within that depth (a
    label ranked below it counts as missed). Each group also gives its number of ``labels`` and ``queries``."""
    ks = sorted({_check_k(k) for k in ks})
    topk, truth = _check_inputs(topk, truth)
    freq = np.asarray(train_frequencies).ravel()
    if freq.shape[0] != truth.shape[1]:
        raise ValueError(f"train_frequencies has {freq.shape[0]} entries for {truth.shape[1]} labels")
    members = {"frequent": freq > few_max, "few": (freq >= 1) & (freq <= few_max), "zero": freq == 0}
    out: dict[str, dict[str, float]] = {}
    for name in LABEL_GROUPS:
        cols = np.flatnonzero(members[name])
        sub_truth = truth[:, cols].tocsr()
        rows = np.flatnonzero(np.diff(sub_truth.indptr) > 0)
        group: dict[str, float] = {"labels": float(len(cols)), "queries": float(len(rows))}
        if len(rows):
            remap = np.full(truth.shape[1], -1, dtype=np.int64)
            remap[cols] = np.arange(len(cols))
            ranked = np.where(topk >= 0, remap[np.maximum(topk, 0)], -1)[rows]
            order = np.argsort(ranked < 0, axis=1, kind="stable")  # the group's labels first, in rank order
            ranked = np.take_along_axis(ranked, order, axis=1)
            hits = _hits(ranked, sub_truth[rows])
            n_true = np.diff(sub_truth[rows].indptr)
            for k in ks:
                group[f"precision@{k}"] = float(_precision(hits, k).sum())
                group[f"recall@{k}"] = float(_recall(hits, n_true, k).sum())
                group[f"ndcg@{k}"] = float(_ndcg(hits, n_true, k).sum())
        out[name] = group
    return out
