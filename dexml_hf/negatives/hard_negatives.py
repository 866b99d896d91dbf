"""Hard-negative mining: each query's top labels under the current encoder, minus its positives.

Exact search by default (chunked, via :class:`~dexml_hf.index.LabelIndex`); faiss ``IndexFlatIP`` when asked. Both
are exact; faiss is only faster on large label sets. Under DDP the queries are sharded over the ranks and the
shortlists gathered, so each rank mines 1/world of the training set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["mine_shortlists", "sample_from_shortlists"]


def mine_shortlists(
    model,
    query_texts: Sequence[str],
    label_texts: Sequence[str],
    label_matrix: sp.csr_matrix,
    shortlist_size: int,
    batch_size: int = 256,
    label_chunk_size: int = 4096,
    use_faiss: bool = False,
    show_progress_bar: bool = False,
    process_index: int = 0,
    num_processes: int = 1,
) -> np.ndarray:
    """(n_queries, shortlist_size) label ids, best first, positives excluded; ``-1`` where fewer labels remain.

    With ``num_processes > 1`` (an initialised ``torch.distributed`` group, every rank calling) each rank embeds and
    searches its contiguous block of the queries, and the blocks are gathered (int64 tensors, no pickle): every rank
    returns the same full array. The labels are embedded on every rank.
    """
    from dexml_hf.index import LabelIndex

    if label_matrix.shape != (len(query_texts), len(label_texts)):
        raise ValueError(
            f"label matrix shape {label_matrix.shape} does not match {len(query_texts)} queries x "
            f"{len(label_texts)} labels"
        )
    n = len(query_texts)
    block = -(-n // num_processes)  # ceil: equal blocks, the last ones short (or empty)
    lo, hi = min(n, process_index * block), min(n, (process_index + 1) * block)
    was_training = model.training
    try:
        index = LabelIndex.from_texts(
            model,
            list(label_texts),
            batch_size=batch_size,
            backend="faiss" if use_faiss else "torch",
            show_progress_bar=show_progress_bar,
        )
        queries = index.encode_queries(
            model, list(query_texts[lo:hi]), batch_size=batch_size, show_progress_bar=show_progress_bar
        )
        kwargs = {} if use_faiss else {"label_chunk": label_chunk_size}
        _, ids = index.search(queries, shortlist_size, exclude=sp.csr_matrix(label_matrix)[lo:hi], **kwargs)
    finally:
        model.train(was_training)
    ids = np.asarray(ids, dtype=np.int64)
    if num_processes > 1:
        ids = _gather_blocks(ids, block, n, model.device)
    return ids


def _gather_blocks(ids: np.ndarray, block: int, n: int, device) -> np.ndarray:
    """Every rank's ``(<= block, width)`` rows, padded with -1 to ``block`` and all-gathered, cut back to ``n``."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("mine_shortlists(num_processes > 1) needs an initialised torch.distributed process group")
    if dist.get_world_size() * block < n:
        raise RuntimeError(f"{dist.get_world_size()} processes cannot hold {n} queries in blocks of {block}")
    # gloo gathers CPU tensors; NCCL and the other accelerator backends gather on the model's device
    device = torch.device("cpu") if dist.get_backend() == "gloo" else torch.device(device)
    padded = torch.full((block, ids.shape[1]), -1, dtype=torch.int64, device=device)
    padded[: len(ids)] = torch.from_numpy(ids).to(device)
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].cpu().numpy()


def sample_from_shortlists(shortlists: np.ndarray, num: int, num_labels: int, rng: np.random.Generator) -> np.ndarray:
    """(n, num) negatives per query: distinct shortlist entries drawn uniformly (vectorised via random keys).

    Rows with fewer than ``num`` valid entries reuse them; rows with none get random labels (a query whose every
    label is a positive has no true negative anyway).
    """
    n, width = shortlists.shape
    valid = shortlists >= 0
    keys = np.where(valid, rng.random((n, width)), np.inf)
    order = np.argsort(keys, axis=1)[:, :num]
    picked = np.take_along_axis(shortlists, order, axis=1)
    counts = valid.sum(axis=1)
    short = counts < num
    if short.any():
        for row in np.flatnonzero(short):
            pool = shortlists[row][valid[row]]
            if len(pool) == 0:
                picked[row] = rng.integers(0, num_labels, size=num)
            else:
                picked[row] = rng.choice(pool, size=num, replace=True)
    return picked
