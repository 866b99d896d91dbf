"""Exact top-k inner-product search in chunks, so the full ``n × L`` score matrix never exists.

Queries are processed in chunks; for each, label chunks are scored with one matmul and a running
top-k is merged with each chunk's top-k. Memory is bounded by one ``query_chunk × label_chunk``
score block (sized from free memory by default).

Ties are broken towards the lower label id: the result equals the first ``k`` columns of a *stable*
descending sort of each full score row (``torch.topk`` itself leaves the order of equal scores
unspecified, so only its scores, not its ids, are comparable when ties exist).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

__all__ = [
    "available_memory_bytes",
    "chunked_topk",
    "default_chunk_sizes",
    "exact_fp32",
    "exclude_to_csr",
    "labels_for_device",
]

_BYTES_PER_SCORE = 4
# The score block takes at most this share of free memory, and never more than _MAX_BLOCK_BYTES.
_MEMORY_SHARE = 0.125
_MAX_BLOCK_BYTES = 512 * 2**20
_MIN_BLOCK_BYTES = 16 * 2**20
# Score blocks are scanned in groups of this many labels (group maxima prune the merge).
_GROUP = 32


def available_memory_bytes(device: torch.device | str | None = None) -> int:
    """Free memory on ``device``: CUDA's own count, else ``MemAvailable`` from ``/proc/meminfo``, else 4 GiB."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def default_chunk_sizes(
    n_queries: int,
    n_labels: int,
    k: int,
    device: torch.device | str | None = None,
    memory_budget: int | None = None,
    dim: int | None = None,
) -> tuple[int, int]:
    """``(query_chunk, label_chunk)`` so one fp32 score block fits a small share of free memory on ``device``, or
    ``memory_budget`` bytes when given (then taken as is: a tiny budget gives tiny blocks, never a wrong answer).
    With ``dim``, the fp32 copy of a label block (``label_chunk × dim``: fp16 labels, or labels moved to the
    device) fits the same budget: with few queries the score block alone would allow the whole label set (10M ×
    384 fp16 labels searched for 10 queries made a 15 GB fp32 copy)."""
    row_bytes = _BYTES_PER_SCORE * (dim or 0)
    if memory_budget is not None:
        budget = max(int(memory_budget), _BYTES_PER_SCORE)
        query_chunk = max(1, min(n_queries, 4096, budget // (_BYTES_PER_SCORE * min(n_labels, _GROUP))))
        label_chunk = max(1, min(n_labels, budget // (query_chunk * _BYTES_PER_SCORE)))
        if row_bytes:
            label_chunk = max(1, min(label_chunk, budget // row_bytes))
        if _GROUP <= label_chunk < n_labels:
            label_chunk = label_chunk // _GROUP * _GROUP
        return query_chunk, label_chunk
    budget = int(available_memory_bytes(device) * _MEMORY_SHARE)
    budget = max(_MIN_BLOCK_BYTES, min(_MAX_BLOCK_BYTES, budget))
    query_chunk = max(1, min(n_queries, 4096))
    label_chunk = budget // (query_chunk * _BYTES_PER_SCORE)
    if row_bytes:
        label_chunk = min(label_chunk, budget // row_bytes)
    label_chunk = max(min(n_labels, 2 * k, 1024), min(n_labels, label_chunk))
    if label_chunk < n_labels:
        label_chunk = max(_GROUP, label_chunk // _GROUP * _GROUP)  # whole groups, no padding per block
    return query_chunk, label_chunk


class DeviceCopy:
    """A CPU tensor as a search on ``device`` reads it (:func:`labels_for_device`: a resident copy when it fits the
    budget, else the CPU tensor to stream), made once and made again when the tensor is replaced."""

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._copy: torch.Tensor | None = None

    def get(self, tensor: torch.Tensor, device: torch.device, memory_budget: int | None) -> torch.Tensor:
        if device.type == "cpu":
            return tensor
        if self._source is not tensor:
            self._source, self._copy = tensor, labels_for_device(tensor, device, memory_budget)
        return self._copy


def labels_for_device(labels: torch.Tensor, device: torch.device | str, memory_budget: int | None = None):
    """``labels`` as :func:`chunked_topk` should get them for a search on ``device``: moved there whole when they
    fit half of ``memory_budget`` (default: of the device's free memory), else left where they are, to be moved one
    chunk at a time. On the CPU, the tensor itself."""
    device = torch.device(device)
    if labels.device == device or device.type == "cpu":
        return labels
    budget = memory_budget if memory_budget is not None else available_memory_bytes(device)
    nbytes = labels.numel() * labels.element_size()
    return labels.to(device) if nbytes <= budget // 2 else labels


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """fp32 matmuls in IEEE precision on CUDA (no TF32), so GPU scores match the CPU's to fp32 rounding."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def exclude_to_csr(exclude, n_queries: int, n_labels: int) -> sp.csr_matrix | None:
    """Excluded ``(query_row, label_id)`` pairs as a boolean CSR ``n_queries × n_labels`` (accepts pairs or sparse)."""
    if exclude is None:
        return None
    if sp.issparse(exclude):
        mat = sp.csr_matrix(exclude)
        if mat.shape != (n_queries, n_labels):
            raise ValueError(f"exclude matrix has shape {mat.shape}, expected {(n_queries, n_labels)}")
        mat = mat.copy()
        mat.eliminate_zeros()
        mat.data = np.ones_like(mat.data, dtype=bool)
        return mat
    pairs = np.asarray(exclude)
    if pairs.size == 0:
        return None
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"exclude must be an (m, 2) array of (query_row, label_id) pairs, got shape {pairs.shape}")
    pairs = pairs.astype(np.int64)
    bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= n_queries) | (pairs[:, 1] < 0) | (pairs[:, 1] >= n_labels)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"exclude pair #{i} = {tuple(pairs[i])} is out of range for {n_queries} queries × {n_labels} labels"
        )
    data = np.ones(len(pairs), dtype=bool)
    mat = sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])), shape=(n_queries, n_labels))
    mat.sum_duplicates()
    return mat


def _stable_desc_order(values: torch.Tensor) -> torch.Tensor:
    return torch.sort(values, dim=1, descending=True, stable=True).indices


def _block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a block with ties broken by lower column; positions are block columns."""
    k = min(k, scores.shape[1])
    if k == scores.shape[1]:
        order = _stable_desc_order(scores)
        return scores.gather(1, order), order
    # One spare place tells where a tie straddles the k-th place; only those rows need a full stable sort.
    vals, idx = torch.topk(scores, k + 1, dim=1, sorted=True)
    straddle = vals[:, k - 1] == vals[:, k]
    vals, idx = vals[:, :k], idx[:, :k]
    # Within the selection, order equal scores by column: sort by column, then stably by score.
    by_col = torch.sort(idx, dim=1).indices
    vals, idx = vals.gather(1, by_col), idx.gather(1, by_col)
    order = _stable_desc_order(vals)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    if bool(straddle.any()):
        rows = straddle.nonzero().squeeze(1)
        full = _stable_desc_order(scores[rows])[:, :k]
        idx[rows] = full
        vals[rows] = scores[rows].gather(1, full)
    return vals, idx


def _merge(best_vals, best_ids, vals, ids, k):
    """Top-k of running ∪ new; the running entries hold lower ids, so a stable sort keeps ties by lower id."""
    if best_vals is None:
        return vals, ids
    cat_vals = torch.cat([best_vals, vals], dim=1)
    cat_ids = torch.cat([best_ids, ids], dim=1)
    order = _stable_desc_order(cat_vals)[:, :k]
    return cat_vals.gather(1, order), cat_ids.gather(1, order)


def _merge_above_threshold(best_vals, best_ids, scores, l0, k):
    """Merge a score block into a full running top-k, touching only entries above each row's k-th score.

    Group maxima (one pass over the block) find the few groups that can hold such entries; entries equal to
    the k-th score cannot enter (their ids are higher), so the test is strict and ties stay exact.
    """
    rows_n, width = scores.shape
    thr = best_vals[:, -1]
    grouped = scores.view(rows_n, width // _GROUP, _GROUP)
    g_rows, g_idx = (grouped.amax(dim=2) > thr[:, None]).nonzero(as_tuple=True)
    if g_rows.numel() == 0:
        return best_vals, best_ids
    if g_rows.numel() * _GROUP > rows_n * max(4 * k, 1024):  # many candidates: a plain block top-k is cheaper
        vals, idx = _block_topk(scores, k)
        return _merge(best_vals, best_ids, vals, idx + l0, k)
    offsets = torch.arange(_GROUP, device=scores.device)
    vals = grouped[g_rows, g_idx].reshape(-1)
    ids = (g_idx[:, None] * _GROUP + offsets).reshape(-1) + l0
    rows = g_rows.repeat_interleave(_GROUP)
    keep = vals > thr[rows]
    rows, vals, ids = rows[keep], vals[keep], ids[keep]  # row-major, ids ascending within a row
    counts = torch.bincount(rows, minlength=rows_n)
    touched = (counts > 0).nonzero().squeeze(1)
    width_c = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=scores.device) - starts[rows]
    local = torch.full((rows_n,), -1, dtype=torch.long, device=scores.device)
    local[touched] = torch.arange(touched.numel(), device=scores.device)
    cand_vals = torch.full((touched.numel(), width_c), float("-inf"), device=scores.device)
    cand_ids = torch.full((touched.numel(), width_c), -1, dtype=torch.long, device=scores.device)
    cand_vals[local[rows], slot] = vals
    cand_ids[local[rows], slot] = ids
    new_vals, new_ids = _merge(best_vals[touched], best_ids[touched], cand_vals, cand_ids, k)
    best_vals, best_ids = best_vals.clone(), best_ids.clone()
    best_vals[touched], best_ids[touched] = new_vals, new_ids
    return best_vals, best_ids


@torch.inference_mode()
def chunked_topk(
    queries: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k: int,
    exclude=None,
    query_chunk: int | None = None,
    label_chunk: int | None = None,
    device: torch.device | str | None = None,
    show_progress_bar: bool = False,
    memory_budget: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` labels by inner product for every query.

    Args:
        queries: ``(n, d)`` query embeddings.
        labels: ``(L, d)`` label embeddings (fp16/bf16 are scored in fp32, one chunk at a time).
        k: how many labels to return per query (clipped to ``L``).
        exclude: ``(query_row, label_id)`` pairs (``(m, 2)`` array) or an ``n × L`` sparse matrix of pairs
            removed before the top-k is taken (reciprocal-pair filters).
        query_chunk, label_chunk: block sizes; default from free memory (:func:`default_chunk_sizes`).
        device: where to compute; defaults to the labels' device. Labels on another device (CPU) are moved there
            one label chunk at a time, so a label set larger than the GPU's memory is still searched on it.
        memory_budget: bytes one score block (and one label block's fp32 copy) may take (instead of a share of
            free memory).

    Returns:
        ``(scores, ids)``, both ``(n, k)`` on CPU: fp32 scores descending, int64 label ids, ties by lower id.
        Places left empty because a row has fewer than ``k`` non-excluded labels hold score ``-inf`` and id ``-1``.
    """
    queries = torch.as_tensor(queries)
    labels = torch.as_tensor(labels)
    if queries.ndim != 2 or labels.ndim != 2 or queries.shape[1] != labels.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and labels {tuple(labels.shape)} must be (n, d) and (L, d)")
    n, n_labels = queries.shape[0], labels.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_labels == 0:
        raise ValueError("cannot search an empty label set")
    k = min(k, n_labels)
    device = torch.device(device) if device is not None else labels.device
    auto_q, auto_l = default_chunk_sizes(n, n_labels, k, device, memory_budget, dim=labels.shape[1])
    query_chunk = max(1, int(query_chunk or auto_q))
    label_chunk = max(1, int(label_chunk or auto_l))
    excluded = exclude_to_csr(exclude, n, n_labels)

    out_scores = torch.empty((n, k), dtype=torch.float32)
    out_ids = torch.empty((n, k), dtype=torch.int64)
    n_blocks = -(-n // query_chunk) * -(-n_labels // label_chunk)
    progress = tqdm(total=n_blocks, desc="Top-k search", disable=not show_progress_bar, leave=False)
    with exact_fp32(device):
        _search_blocks(queries, labels, k, excluded, query_chunk, label_chunk, device, out_scores, out_ids, progress)
    progress.close()
    if torch.isnan(out_scores).any():
        warnings.warn("top-k search met NaN scores; check the embeddings", stacklevel=2)
    return out_scores, out_ids


def _search_blocks(queries, labels, k, excluded, query_chunk, label_chunk, device, out_scores, out_ids, progress):
    """The block loop of :func:`chunked_topk`: fills ``out_scores`` / ``out_ids`` (CPU) one query chunk at a time."""
    n, n_labels = queries.shape[0], labels.shape[0]
    buffer = None  # reused score block: a fresh 100s-of-MiB tensor per block costs page faults
    for q0 in range(0, n, query_chunk):
        q1 = min(n, q0 + query_chunk)
        q = queries[q0:q1].to(device=device, dtype=torch.float32)
        if excluded is not None:
            sub = excluded[q0:q1].tocoo()
            ex_rows = torch.from_numpy(sub.row.astype(np.int64)).to(device)
            ex_cols = torch.from_numpy(sub.col.astype(np.int64)).to(device)
        best_vals = best_ids = None
        for l0 in range(0, n_labels, label_chunk):
            l1 = min(n_labels, l0 + label_chunk)
            width = -(-(l1 - l0) // _GROUP) * _GROUP
            if buffer is None or buffer.shape[1] != width or buffer.shape[0] < q.shape[0] or buffer.device != device:
                buffer = torch.empty((query_chunk if width == label_chunk else q.shape[0], width), device=device)
            scores = buffer[: q.shape[0]]
            torch.mm(q, labels[l0:l1].to(device=device, dtype=torch.float32).T, out=scores[:, : l1 - l0])
            scores[:, l1 - l0 :] = float("-inf")  # pad to whole groups; padding never outranks a real label
            if excluded is not None and ex_rows.numel():
                sel = (ex_cols >= l0) & (ex_cols < l1)
                if bool(sel.any()):
                    scores[ex_rows[sel], ex_cols[sel] - l0] = float("-inf")
            if best_vals is None or best_vals.shape[1] < k:
                vals, idx = _block_topk(scores[:, : l1 - l0], k)
                best_vals, best_ids = _merge(best_vals, best_ids, vals, idx + l0, k)
            else:
                best_vals, best_ids = _merge_above_threshold(best_vals, best_ids, scores, l0, k)
            progress.update(1)
        best_ids = torch.where(torch.isneginf(best_vals), torch.full_like(best_ids, -1), best_ids)
        out_scores[q0:q1] = best_vals.cpu()
        out_ids[q0:q1] = best_ids.cpu()
