"""Shared machinery of the DEXML loss classes: read the batch, dedupe candidates, build the positives mask.

A loss subclass only names its functional core (:mod:`dexml_hf.losses.functional`) and its extra config.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import (
    all_gather,
    all_gather_with_grad,
    cos_sim,
    dot_score,
    get_world_size,
    similarity_fct_name,
)
from torch import Tensor, nn

from dexml_hf.citation import DEXML_CITATION


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def split_labels(
    labels: Tensor | None, batch_size: int, n_candidate_columns: int
) -> tuple[Tensor | None, Tensor | None]:
    """Split the collated ``label`` tensor into (query_ids (B,), candidate_ids (B * n_columns,), column-major).

    ``labels`` is ``(B, 1 + n_candidate_columns)`` = ``[query_id, positive_id, negative ids...]``. ``None`` (no label
    column) gives ``(None, None)``: MNRL semantics, candidate i is the positive of query i.
    """
    if labels is None:
        return None, None
    labels = torch.as_tensor(labels)
    if labels.dim() != 2 or labels.shape[0] != batch_size or labels.shape[1] != 1 + n_candidate_columns:
        raise ValueError(
            f"The 'label' column must hold [query_id, positive_label_id, <one label id per extra candidate column>] "
            f"for each row, i.e. a tensor of shape ({batch_size}, {1 + n_candidate_columns}); got shape "
            f"{tuple(labels.shape)}. With {n_candidate_columns} candidate column(s) after the query column."
        )
    if labels.is_floating_point():
        raise ValueError(f"The 'label' column must hold integer ids, got dtype {labels.dtype}")
    labels = labels.long()
    return labels[:, 0], labels[:, 1:].T.reshape(-1)


class XMCLoss(nn.Module):
    """Base class: (query, positive label[, extra candidate labels]) rows with ``[query_id, label ids...]`` labels.

    Subclasses implement :meth:`loss_fn` ``(scores, positives, reduction) -> Tensor`` and set
    :attr:`all_labels_objective` when the all-label engine can compute them exactly.

    Public API (sentence-transformers' contract plus what the DEXML trainer calls):

    - ``forward(sentence_features, labels)`` embeds every column with ``self.model`` and calls
      ``compute_loss_from_embeddings(embeddings: list[Tensor], labels)`` (ST's signature: one tensor a column).
    - ``compute_loss_from_candidates(query_embeddings, candidate_embeddings, query_ids, candidate_ids)``: the same
      loss from the query embeddings and the column-major candidate embeddings with their ids.
    - ``compute_loss_against_labels(query_embeddings, label_embeddings, query_ids, positive_ids,
      positive_embeddings=None)``: the batch's queries against a full label table (row = label id); the
      'all_cached' mode passes the cached table and the positives' fresh embeddings.
    - ``all_labels_engine(model, label_texts, preprocess, ...)``: the exact chunked all-label loss
      (:class:`~dexml_hf.negatives.all_labels.AllLabelsLoss`) with this loss's objective, scale and similarity.
    - ``all_labels_objective``: ``"decoupled_softmax"``, ``"softmax"``, ``"soft_topk"`` or ``None`` (no exact
      all-label form); subclasses inherit their parent's, so the trainer can dispatch on it.
    """

    #: What the all-label engine computes for this loss; ``None``: it has no exact chunked form.
    all_labels_objective: str | None = None

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        label_matrix: sp.spmatrix | None = None,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        logq_correction: bool = False,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive (scale = 1 / temperature), got {scale}")
        self.model = model
        self.scale = float(scale)
        self.gather_across_devices = gather_across_devices
        self.similarity_fct = similarity_fct
        self.logq_correction = logq_correction
        self.label_matrix = None
        self.label_log_prior: Tensor | None = None
        self._label_index: dict[torch.device, tuple[Tensor, Tensor]] = {}
        if label_matrix is not None:
            self.set_label_matrix(label_matrix)

    def set_label_matrix(self, label_matrix: sp.spmatrix | None) -> None:
        """Use ``label_matrix`` (queries × labels, any scipy sparse format) for the positives.

        Kept as scipy CSR (for the config and the log-prior) and as torch CSR index tensors, moved once to each device
        the loss runs on, so the positives mask of a step is built there with torch ops, without a host round trip.
        """
        self._label_index = {}
        if label_matrix is None:
            self.label_matrix = None
            return
        if not sp.issparse(label_matrix):
            raise ValueError(
                f"label_matrix must be a scipy sparse matrix (queries x labels), got {type(label_matrix)}"
            )
        matrix = sp.csr_matrix(label_matrix, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        matrix.sort_indices()
        self.label_matrix = matrix
        self._label_index[torch.device("cpu")] = (
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
        )
        self.label_log_prior = label_log_prior(matrix) if self.logq_correction else None

    def _label_index_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        device = torch.device(device)
        if device not in self._label_index:
            crow, col = self._label_index[torch.device("cpu")]
            self._label_index[device] = (crow.to(device), col.to(device))
        return self._label_index[device]

    def label_matrix_pairs(self, query_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(row in ``query_ids``, label id) of every positive the label matrix gives these queries, on their device.

        Vectorised CSR row gather (``repeat_interleave``; its output size is the one scalar this reads back).
        """
        if self.label_matrix is None:
            raise ValueError(f"{type(self).__name__} has no label_matrix")
        n_queries = self.label_matrix.shape[0]
        bad = (query_ids < 0) | (query_ids >= n_queries)
        if bool(bad.any()):
            raise ValueError(
                f"label column: query_id {int(query_ids[bad][0])} is outside the label matrix, which has "
                f"{n_queries} rows"
            )
        crow, col = self._label_index_on(query_ids.device)
        start, counts = crow[query_ids], crow[query_ids + 1] - crow[query_ids]
        rows = torch.repeat_interleave(torch.arange(len(query_ids), device=query_ids.device), counts)
        offsets = torch.arange(len(rows), device=query_ids.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        return rows, col[start[rows] + offsets]

    # ------------------------------------------------------------------------------------------------------------
    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        raise NotImplementedError

    def prepare_candidates(self, scores: Tensor, positives: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
        """Hook before :meth:`loss_fn`: ``sampled`` marks each row's own sampled positive. Identity here; the soft
        top-k loss caps the positives per query (the others leave the candidates, score -inf)."""
        return scores, positives

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = embed_columns(self.model, list(sentence_features))
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """sentence-transformers' entry: per-column embeddings ``[queries, positives, negatives_1, ...]`` and the
        collated ``label`` column ``(B, 1 + n_candidate_columns)`` (``None``: MNRL semantics)."""
        if isinstance(embeddings, Tensor) or len(embeddings) < 2:
            raise ValueError(
                f"{type(self).__name__}.compute_loss_from_embeddings takes a list of per-column embeddings "
                "[queries, positives, negatives...] (at least a query and a label column) and the labels; for "
                "(queries, candidates, query_ids, candidate_ids) call compute_loss_from_candidates"
            )
        query_ids, candidate_ids = split_labels(labels, embeddings[0].shape[0], len(embeddings) - 1)
        return self.compute_loss_from_candidates(embeddings[0], torch.cat(embeddings[1:]), query_ids, candidate_ids)

    def compute_loss_from_candidates(
        self,
        query_embeddings: Tensor,
        candidate_embeddings: Tensor,
        query_ids: Tensor | None = None,
        candidate_ids: Tensor | None = None,
    ) -> Tensor:
        """Score the batch's queries against its (deduped) candidates and apply the loss.

        ``candidate_embeddings`` is (B * n_columns, d), column-major: the first B rows are the rows' positives.
        ``candidate_ids`` (B * n_columns,) are their label ids (``None``: MNRL semantics, no dedup). With
        ``gather_across_devices`` this rank's queries are scored against the candidates of every rank, and the loss
        is scaled so that DDP's gradient averaging yields the gradient of the loss on the concatenated batch.
        """
        batch_size = query_embeddings.shape[0]
        device = query_embeddings.device
        if candidate_embeddings.shape[0] % max(batch_size, 1) != 0:
            raise ValueError(
                f"candidate_embeddings ({candidate_embeddings.shape[0]} rows) must hold whole columns of the "
                f"{batch_size} queries"
            )
        if (query_ids is None) != (candidate_ids is None):
            raise ValueError("query_ids and candidate_ids must be given together")
        if query_ids is not None:
            query_ids, candidate_ids = query_ids.to(device), candidate_ids.to(device)
        local_candidates = candidate_embeddings
        world_size, rank = 1, 0
        if self.gather_across_devices and _is_distributed():
            world_size, rank = get_world_size(), torch.distributed.get_rank()
            n_columns = candidate_embeddings.shape[0] // batch_size
            # Gather column by column so the concatenation stays column-major over the global batch.
            columns = candidate_embeddings.reshape(n_columns, batch_size, -1)
            candidate_embeddings = torch.cat([all_gather_with_grad(c) for c in columns.unbind(0)])
            if candidate_ids is not None:
                gathered_ids = [all_gather(c) for c in candidate_ids.reshape(n_columns, batch_size).unbind(0)]
                candidate_ids = torch.cat(gathered_ids)
                all_query_ids = all_gather(query_ids)
        local_rows = torch.arange(rank * batch_size, (rank + 1) * batch_size, device=device)
        global_batch = batch_size * world_size

        row_index = torch.arange(batch_size, device=device)
        if candidate_ids is None:
            unique_embeddings = candidate_embeddings
            positives = torch.zeros(batch_size, candidate_embeddings.shape[0], dtype=torch.bool, device=device)
            positives[row_index, local_rows] = True
            sampled = positives.clone()
            unique_ids = None
        else:
            if world_size == 1:
                all_query_ids = query_ids
            unique_ids, first = _dedupe(candidate_ids)
            unique_embeddings = candidate_embeddings[first.to(candidate_embeddings.device)]
            positives = self._positives_mask(query_ids, all_query_ids, candidate_ids[:global_batch], unique_ids)
            sampled = torch.zeros_like(positives)
            own = torch.searchsorted(unique_ids, candidate_ids[:global_batch][local_rows].contiguous())
            sampled[row_index, own] = True
        scores = self.score(query_embeddings, unique_embeddings)
        if self.logq_correction:
            scores = scores - self._log_prior_of(unique_ids, scores)
        # duplicates are not scored, so their embeddings are checked too (all in one flag: one host sync a step)
        bad = self._nonfinite_flag(scores) | ~torch.isfinite(local_candidates).all()
        n_queries = positives.any(dim=1).sum()
        if world_size > 1:
            # one all-reduce for the count and the non-finite flag, so every rank raises together (no hang)
            stats = torch.stack([n_queries.to(scores.dtype), bad.to(scores.dtype)])
            torch.distributed.all_reduce(stats)
            n_queries, bad = stats[0], stats[1] > 0
        if bool(bad):
            self._raise_nonfinite(query_embeddings, local_candidates, candidate_ids, "candidate")
        scores, positives = self.prepare_candidates(scores, positives, sampled)
        total = self.loss_fn(scores, positives, reduction="sum")
        # DDP averages gradients over ranks, hence the factor world_size: mean_r(loss_r) = global sum / global count.
        return total * world_size / n_queries.clamp_min(1).to(total.dtype)

    def compute_loss_against_labels(
        self,
        query_embeddings: Tensor,
        label_embeddings: Tensor,
        query_ids: Tensor,
        positive_ids: Tensor,
        positive_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Mean loss of the batch's queries against every label: ``label_embeddings`` is L × d, row = label id.

        The positives of query b are its row of ``label_matrix`` (if set) plus its sampled ``positive_ids[b]``; they
        never count as negatives. Scores in fp32 with this loss's similarity and scale (no log-prior correction:
        scoring every label has no sampling bias).

        ``positive_embeddings`` (B × d, with grad; the 'all_cached' mode): ``label_embeddings`` is then a fixed table
        (no grad, never copied or written) and the columns of the batch's positives are scored against these fresh
        embeddings instead — the same loss as the table with those rows replaced (a repeated id takes its first
        row), without an L × d copy a step.
        """
        device = query_embeddings.device
        query_ids = torch.as_tensor(query_ids, device=device).long().reshape(-1)
        positive_ids = torch.as_tensor(positive_ids, device=device).long().reshape(-1)
        batch, num_labels = query_embeddings.shape[0], label_embeddings.shape[0]
        if query_ids.shape[0] != batch or positive_ids.shape[0] != batch:
            raise ValueError(f"query_ids and positive_ids need one entry per query ({batch})")
        if bool(((positive_ids < 0) | (positive_ids >= num_labels)).any()):
            raise ValueError(f"positive_ids must lie in [0, {num_labels}), got {positive_ids.tolist()[:10]}")
        if positive_embeddings is None:
            scores = self.score(query_embeddings, label_embeddings)
        else:
            if positive_embeddings.shape[0] != batch:
                raise ValueError(
                    f"positive_embeddings needs one row per query ({batch}), got {positive_embeddings.shape[0]}"
                )
            scores = self.score_against_table(query_embeddings, label_embeddings.detach())
            unique_ids, first = _dedupe(positive_ids)
            fresh = self.score(query_embeddings, positive_embeddings[first])
            scores.index_copy_(1, unique_ids, fresh.to(scores.dtype))
        if bool(self._nonfinite_flag(scores)):  # every label is scored: non-finite embeddings show up here
            if positive_embeddings is not None and not bool(torch.isfinite(positive_embeddings.detach()).all()):
                self._raise_nonfinite(query_embeddings, positive_embeddings, positive_ids, "positive")
            self._raise_nonfinite(query_embeddings, label_embeddings, None, "table")
        row_index = torch.arange(batch, device=device)
        positives = torch.zeros(batch, num_labels, dtype=torch.bool, device=device)
        if self.label_matrix is not None:
            if self.label_matrix.shape[1] != num_labels:
                raise ValueError(
                    f"label_embeddings has {num_labels} rows but the label matrix has {self.label_matrix.shape[1]} "
                    "label columns"
                )
            rows, cols = self.label_matrix_pairs(query_ids)
            positives[rows, cols] = True
        positives[row_index, positive_ids] = True
        sampled = torch.zeros_like(positives)
        sampled[row_index, positive_ids] = True
        scores, positives = self.prepare_candidates(scores, positives, sampled)
        return self.loss_fn(scores, positives, reduction="mean")

    def score(self, query_embeddings: Tensor, label_embeddings: Tensor) -> Tensor:
        """``scale * similarity_fct(q, l)`` in fp32 even under fp16/bf16 autocast (fp16 logits at scale 20 lose
        digits; the reference scores in fp32 too)."""
        with torch.autocast(device_type=query_embeddings.device.type, enabled=False):
            return self.similarity_fct(_at_least_fp32(query_embeddings), _at_least_fp32(label_embeddings)) * self.scale

    def score_against_table(self, query_embeddings: Tensor, table: Tensor) -> Tensor:
        """:meth:`score` against a large fixed table (B × L, fp32) without copying it: for ``cos_sim`` and
        ``dot_score`` one ``q · tableᵀ`` product, cosine dividing by the table's row norms afterwards instead of
        normalising a copy of the table; any other similarity through :meth:`score`."""
        if self.similarity_fct is not cos_sim and self.similarity_fct is not dot_score:
            return self.score(query_embeddings, table)
        with torch.autocast(device_type=query_embeddings.device.type, enabled=False):
            queries = _at_least_fp32(query_embeddings)
            table = table if table.dtype == queries.dtype else table.to(queries.dtype)
            if self.similarity_fct is cos_sim:
                queries = nn.functional.normalize(queries, p=2, dim=1)
            scores = queries @ table.T
            if self.similarity_fct is cos_sim:  # F.normalize's floor on the norm, as cos_sim
                scores.div_(torch.linalg.vector_norm(table, dim=1).clamp_min(1e-12))
            return scores.mul_(self.scale)

    @staticmethod
    def _nonfinite_flag(scores: Tensor) -> Tensor:
        """A 0-dim bool tensor (no host sync yet): any NaN/inf score. Non-finite embeddings always show up here."""
        return ~torch.isfinite(scores).all()

    def _raise_nonfinite(self, queries: Tensor, labels: Tensor, label_ids: Tensor | None, what: str) -> None:
        def bad_rows(x: Tensor) -> list[int]:
            return (~torch.isfinite(x.detach())).reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()

        q_rows, l_rows = bad_rows(queries), bad_rows(labels)
        parts = []
        if q_rows:
            parts.append(f"query embeddings (batch rows {q_rows[:10]})")
        if l_rows:
            ids = f", label ids {label_ids[l_rows[:10]].tolist()}" if label_ids is not None else ""
            parts.append(f"{what} label embeddings (rows {l_rows[:10]}{ids})")
        where = " and ".join(parts) or f"scores (scale={self.scale}: the similarities overflow)"
        raise FloatingPointError(
            f"{type(self).__name__}: NaN or inf in the {where}; refusing to return a non-finite loss. Check the "
            "inputs, the learning rate (diverged weights) and fp16 overflow."
        )

    def _positives_mask(
        self, query_ids: Tensor, all_query_ids: Tensor, positive_ids: Tensor, unique_ids: Tensor
    ) -> Tensor:
        """Bool (B, C) mask on ``query_ids``' device: candidate c is a positive of query b.

        Always: the positive label of every batch row with the same query id (so a query's own positive, or one
        sampled for it in another row, is never its negative). With a label matrix: also every label in the
        query's row of the matrix (CSR row gather + searchsorted over the sorted candidate ids, all torch ops).
        """
        device = query_ids.device
        all_query_ids, positive_ids, unique_ids = (t.to(device) for t in (all_query_ids, positive_ids, unique_ids))
        n_unique = len(unique_ids)
        same_query = query_ids[:, None] == all_query_ids[None, :]
        positive_columns = torch.searchsorted(unique_ids, positive_ids.contiguous())
        # positives[b, column of row j's positive] |= (row j has b's query id), as one scatter (no nonzero, no sync)
        counts = torch.zeros(len(query_ids), n_unique, device=device)
        counts.scatter_add_(1, positive_columns.expand(len(query_ids), -1), same_query.to(counts.dtype))
        positives = counts > 0
        if self.label_matrix is not None:
            rows, labels = self.label_matrix_pairs(query_ids)
            cols = torch.searchsorted(unique_ids, labels).clamp_max(max(n_unique - 1, 0))
            hit = unique_ids[cols] == labels if n_unique else torch.zeros_like(labels, dtype=torch.bool)
            positives[rows[hit], cols[hit]] = True
        return positives

    def _log_prior_of(self, label_ids: Tensor | None, scores: Tensor) -> Tensor:
        if label_ids is None or self.label_log_prior is None:
            raise ValueError(
                "logq_correction needs label ids (a 'label' column) and the training label_matrix, which gives how "
                "often each label is drawn as a positive"
            )
        return self.label_log_prior.to(scores.device, scores.dtype)[label_ids.to(scores.device)]

    # ------------------------------------------------------------------------------------------------------------
    def all_labels_engine(
        self,
        model: nn.Module,
        label_texts: Sequence[str],
        preprocess: Callable[[list[str]], dict],
        label_chunk_size: int = 4096,
        mini_batch_size: int | None = None,
        ddp_grad_factor: float = 1.0,
        show_progress_bar: bool = False,
    ):
        """The exact all-label loss of this loss's objective (see :class:`~dexml_hf.negatives.all_labels.AllLabelsLoss`).

        ``model`` is what the engine calls (the trainer's possibly DDP-wrapped model); scale, similarity (cosine →
        L2-normalised embeddings, dot → raw) and, for soft top-k, k / alpha / n_iter / max_positives come from this loss.
        """
        from dexml_hf.negatives.all_labels import AllLabelsLoss

        return AllLabelsLoss.from_loss(
            self,
            model,
            label_texts,
            preprocess,
            label_chunk_size=label_chunk_size,
            mini_batch_size=mini_batch_size,
            ddp_grad_factor=ddp_grad_factor,
            show_progress_bar=show_progress_bar,
        )

    def get_config_dict(self) -> dict[str, Any]:
        """The constructor arguments of this class (and only those), as the model card shows them."""
        config = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name in ("self", "model", "show_progress_bar") or not hasattr(self, name):
                continue
            value = getattr(self, name)
            if name == "similarity_fct":
                value = similarity_fct_name(value)
            elif name == "label_matrix":
                value = None if value is None else f"{value.shape[0]}x{value.shape[1]} CSR"
            config[name] = value
        return config

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    @property
    def citation(self) -> str:
        return DEXML_CITATION


def label_log_prior(label_matrix: sp.csr_matrix) -> Tensor:
    """log q_j: the share of the training rows whose positive is label j, each query drawing one positive uniformly.

    In-batch candidates are the other rows' positives, so label j is a negative in proportion to q_j; subtracting
    log q_j from its scores (the logQ correction of Yi et al., RecSys 2019) makes the in-batch softmax estimate
    the softmax over all labels, which keeps popular labels from being pushed down. Labels that are never a
    positive get the smallest positive share (they only show up as extra negative columns).
    """
    per_query = np.diff(label_matrix.indptr)
    weights = np.repeat(1.0 / np.maximum(per_query, 1), per_query)
    share = np.bincount(label_matrix.indices, weights=weights, minlength=label_matrix.shape[1])
    share /= max(share.sum(), 1e-300)
    floor = share[share > 0].min() if (share > 0).any() else 1.0
    return torch.from_numpy(np.log(np.maximum(share, floor))).float()


def _at_least_fp32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _dedupe(candidate_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted unique label ids and, for each, the position of its first occurrence (the one that gets scored)."""
    unique_ids, inverse = torch.unique(candidate_ids, sorted=True, return_inverse=True)
    positions = torch.arange(len(candidate_ids), device=candidate_ids.device)
    first = torch.full((len(unique_ids),), len(candidate_ids), dtype=torch.long, device=candidate_ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique_ids, first
