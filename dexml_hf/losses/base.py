"""Shared machinery of the DEXML loss classes: read the batch, dedupe candidates, build the positives mask.

A loss subclass only names its functional core (:mod:`dexml_hf.losses.functional`) and its extra config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import all_gather, all_gather_with_grad, cos_sim, get_world_size, similarity_fct_name
from torch import Tensor, nn

DEXML_CITATION = """
@inproceedings{gupta2024dualencoders,
    title={Dual-Encoders for Extreme Multi-Label Classification},
    author={Nilesh Gupta and Devvrit Khatri and Ankit Singh Rawat and Srinadh Bhojanapalli and Prateek Jain and Inderjit S. Dhillon},
    booktitle={The Twelfth International Conference on Learning Representations},
    year={2024},
    url={https://openreview.net/forum?id=dNe1T0Ahby}
}
"""


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

    Subclasses implement :meth:`loss_fn` ``(scores, positives, reduction) -> Tensor``.
    """

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
        if label_matrix is not None:
            self.set_label_matrix(label_matrix)

    def set_label_matrix(self, label_matrix: sp.spmatrix | None) -> None:
        """Use ``label_matrix`` (queries × labels, any scipy sparse format) for the positives; kept on CPU as CSR."""
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
        self.label_log_prior = label_log_prior(matrix) if self.logq_correction else None

    # ------------------------------------------------------------------------------------------------------------
    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        raise NotImplementedError

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = embed_columns(self.model, list(sentence_features))
        if len(embeddings) < 2:
            raise ValueError(f"{type(self).__name__} needs a query column and at least one label column")
        return self.compute_loss_from_embeddings_list(embeddings, labels)

    def compute_loss_from_embeddings_list(self, embeddings: list[Tensor], labels: Tensor | None) -> Tensor:
        """Loss from per-column embeddings ``[queries, positives, negatives_1, ...]`` and the collated labels."""
        query_ids, candidate_ids = split_labels(labels, embeddings[0].shape[0], len(embeddings) - 1)
        return self.compute_loss_from_embeddings(embeddings[0], torch.cat(embeddings[1:]), query_ids, candidate_ids)

    def compute_loss_from_embeddings(
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
        if candidate_embeddings.shape[0] % max(batch_size, 1) != 0:
            raise ValueError(
                f"candidate_embeddings ({candidate_embeddings.shape[0]} rows) must hold whole columns of the "
                f"{batch_size} queries"
            )
        if (query_ids is None) != (candidate_ids is None):
            raise ValueError("query_ids and candidate_ids must be given together")
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
        local_rows = torch.arange(rank * batch_size, (rank + 1) * batch_size, device=query_embeddings.device)
        global_batch = batch_size * world_size

        if candidate_ids is None:
            unique_embeddings = candidate_embeddings
            positives = torch.zeros(batch_size, candidate_embeddings.shape[0], dtype=torch.bool)
            positives[torch.arange(batch_size), local_rows.cpu()] = True
        else:
            if world_size == 1:
                all_query_ids = query_ids
            unique_ids, first = _dedupe(candidate_ids)
            unique_embeddings = candidate_embeddings[first.to(candidate_embeddings.device)]
            positives = self._positives_mask(
                query_ids.cpu(), all_query_ids.cpu(), candidate_ids[:global_batch].cpu(), unique_ids.cpu()
            )
        # Scores in fp32 even under fp16/bf16 autocast (as the reference does): scale = 20 on fp16 logits loses digits.
        with torch.autocast(device_type=query_embeddings.device.type, enabled=False):
            scores = self.similarity_fct(_at_least_fp32(query_embeddings), _at_least_fp32(unique_embeddings))
            scores = scores * self.scale
            if self.logq_correction:
                scores = scores - self._log_prior_of(unique_ids if candidate_ids is not None else None, scores)
        positives = positives.to(scores.device)
        total = self.loss_fn(scores, positives, reduction="sum")
        n_queries = positives.any(dim=1).sum()
        if world_size > 1:
            n_queries = n_queries.clone()
            torch.distributed.all_reduce(n_queries)
        # DDP averages gradients over ranks, hence the factor world_size: mean_r(loss_r) = global sum / global count.
        return total * world_size / n_queries.clamp_min(1).to(total.dtype)

    def _positives_mask(
        self, query_ids: Tensor, all_query_ids: Tensor, positive_ids: Tensor, unique_ids: Tensor
    ) -> Tensor:
        """Bool (B, C) mask: candidate c is a positive of query b.

        Always: the positive label of every batch row with the same query id (so a query's own positive, or one
        sampled for it in another row, is never its negative). With a label matrix: also every label in the
        query's row of the matrix, looked up vectorised (CSR row slice + searchsorted over the sorted candidates).
        """
        unique_np = unique_ids.numpy()
        n_unique = len(unique_np)
        same_query = query_ids[:, None] == all_query_ids[None, :]
        rows, others = same_query.nonzero(as_tuple=True)
        positive_columns = torch.searchsorted(unique_ids, positive_ids.contiguous())
        positives = torch.zeros(len(query_ids), n_unique, dtype=torch.bool)
        positives[rows, positive_columns[others]] = True
        if self.label_matrix is not None:
            q = query_ids.numpy()
            n_queries = self.label_matrix.shape[0]
            if q.size and (q.min() < 0 or q.max() >= n_queries):
                bad = int(q[(q < 0) | (q >= n_queries)][0])
                raise ValueError(
                    f"label column: query_id {bad} is outside the label matrix, which has {n_queries} rows"
                )
            block = self.label_matrix[q]
            row_of_entry = np.repeat(np.arange(len(q)), np.diff(block.indptr))
            cols = np.searchsorted(unique_np, block.indices)
            inside = cols < n_unique
            hit = np.zeros_like(inside)
            hit[inside] = unique_np[cols[inside]] == block.indices[inside]
            positives[torch.from_numpy(row_of_entry[hit]), torch.from_numpy(cols[hit])] = True
        return positives

    def _log_prior_of(self, label_ids: Tensor | None, scores: Tensor) -> Tensor:
        if label_ids is None or self.label_log_prior is None:
            raise ValueError(
                "logq_correction needs label ids (a 'label' column) and the training label_matrix, which gives how "
                "often each label is drawn as a positive"
            )
        return self.label_log_prior.to(scores.device, scores.dtype)[label_ids.to(scores.device)]

    # ------------------------------------------------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        config = {
            "scale": self.scale,
            "similarity_fct": similarity_fct_name(self.similarity_fct),
            "gather_across_devices": self.gather_across_devices,
            "logq_correction": self.logq_correction,
            "label_matrix": None
            if self.label_matrix is None
            else f"{self.label_matrix.shape[0]}x{self.label_matrix.shape[1]} CSR",
        }
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
