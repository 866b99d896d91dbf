"""Label texts as extra training queries (Gandalf: Kharbanda et al., 2024, "Learning label-label correlations in
extreme multi-label classification via label features").

Each label's text becomes one more train query. Its positives are the label itself (relevance 1) and, with
``cooccurrence_top = c > 0``, the ``c`` labels that co-occur with it most often in the training label matrix, each
with relevance ``P(m | l) = |{q : l, m ∈ Y_q}| / |{q : l ∈ Y_q}|`` (in ``(0, 1]``; ties in the count go to the lower
label id). With ``positive_sampling="relevance"`` the trainer then samples the label itself at least as often as
any co-occurring one; with ``"uniform"`` all of the row's positives are equally likely.

Labels never seen in train are included by default (``include_unseen=True``): their text is the only training signal
they get, which is the point for the tail (PSP@k); they have no co-occurrences, so their row holds the label only.

Only the ``train`` split changes (the new rows are appended after the original queries, so existing query ids and
filters stay valid); other splits and the label table are shared. Propensities (``inv_propensity``) of the augmented
dataset count the label rows as training queries: evaluate PSP@k with the original dataset's propensities.
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from dexml_hf.data.dataset import LABEL_TEXT_MODES, QUERY_TEXT_MODES, XMCDataset, text_table

__all__ = ["augment_with_label_texts", "cooccurrence_positives"]

#: prefix of the uid of an augmentation row (``label:<label uid>``)
UID_PREFIX = "label:"


def cooccurrence_positives(train_matrix, top: int) -> sp.csr_matrix:
    """``(L, L)`` CSR: row ``l`` holds ``l`` itself (1.0) and its ``top`` most co-occurring labels with
    ``P(m | l)`` (labels never positive in train get their own id only). Vectorised over the CSR."""
    y = sp.csr_matrix(train_matrix, dtype=np.float32, copy=True)
    y.eliminate_zeros()
    y.data = np.ones_like(y.data)
    n_labels = y.shape[1]
    eye = sp.identity(n_labels, dtype=np.float32, format="csr")
    if top <= 0:
        return eye
    counts = (y.T @ y).tocsr().astype(np.float64)  # counts[l, m] = train queries with both l and m
    freq = counts.diagonal()
    counts.setdiag(0)
    counts.eliminate_zeros()
    coo = counts.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))  # per row: count descending, then lower label id
    rows, cols, vals = coo.row[order], coo.col[order], coo.data[order]
    starts = np.searchsorted(rows, np.arange(n_labels))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < top
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    related = sp.csr_matrix((vals / freq[rows], (rows, cols)), shape=(n_labels, n_labels), dtype=np.float32)
    out = (related + eye).tocsr()
    out.sort_indices()
    return out


def augment_with_label_texts(
    xmc: XMCDataset,
    cooccurrence_top: int = 0,
    label_text_mode: str = "title",
    include_unseen: bool = True,
    query_text_mode: str = "title",
) -> XMCDataset:
    """A copy of ``xmc`` whose ``train`` split has one extra query per label: its text, with the label (and
    optionally its ``cooccurrence_top`` most co-occurring labels, weighted by ``P(m | l)``) as positives.

    Args:
        xmc: the dataset (needs a ``train`` split).
        cooccurrence_top: co-occurring labels added to each label's row (0: the label only).
        label_text_mode: the label text used as the query (``title`` or ``title_alt``), as in training.
        include_unseen: also add rows for labels that no training query has (see the module doc).
        query_text_mode: the query text mode training reads (:meth:`XMCDataset.query_texts`): the label text goes
            into the field that mode reads, so the row's query text is the label text in every mode (``title``: the
            title; ``content``, ``title_content`` and ``wikipedia``: the content, with an empty title).

    Returns:
        A new :class:`XMCDataset`; the rows are appended after the original training queries, with uids
        ``label:<label uid>`` and the label text as ``title`` or ``content`` (the other field empty).
    """
    if "train" not in xmc.label_matrices:
        raise ValueError(f"augment_with_label_texts needs a 'train' split; splits: {xmc.splits}")
    if (
        not isinstance(cooccurrence_top, (int, np.integer))
        or isinstance(cooccurrence_top, bool)
        or cooccurrence_top < 0
    ):
        raise ValueError(f"cooccurrence_top must be an integer >= 0, got {cooccurrence_top!r}")
    if label_text_mode not in LABEL_TEXT_MODES:
        raise ValueError(f"label_text_mode {label_text_mode!r}; expected one of {LABEL_TEXT_MODES}")
    if query_text_mode not in QUERY_TEXT_MODES:
        raise ValueError(f"query_text_mode {query_text_mode!r}; expected one of {QUERY_TEXT_MODES}")
    train = xmc.label_matrices["train"]
    positives = cooccurrence_positives(train, int(cooccurrence_top))
    if include_unseen:
        label_rows = np.arange(xmc.num_labels, dtype=np.int64)
    else:
        label_rows = np.flatnonzero(xmc.label_frequencies("train") > 0).astype(np.int64)
    take = pa.array(label_rows)
    uids = xmc.labels.with_format("arrow")[:]["uid"] if len(xmc.labels) else pa.chunked_array([], pa.string())
    uid = pc.binary_join_element_wise(UID_PREFIX, pc.cast(uids, pa.string()).take(take), "")
    # title_content joins the non-empty fields and wikipedia repeats the title: only 'title' reads the title alone
    field = "title" if query_text_mode == "title" else "content"
    texts = {field: xmc.label_text_array(label_text_mode).take(take)}
    extra = text_table(uid=uid, n=len(label_rows), **texts)
    queries = dict(xmc.queries)
    base = xmc.queries["train"].select_columns(["uid", "title", "content"]).cast(extra.features)
    queries["train"] = datasets.concatenate_datasets([base.flatten_indices(), extra])
    matrices = dict(xmc.label_matrices)
    matrices["train"] = sp.vstack([train, positives[label_rows]], format="csr", dtype=np.float32)
    return XMCDataset(queries, xmc.labels, matrices, filters=xmc.filters, family=xmc.family, name=xmc.name)
