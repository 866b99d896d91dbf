"""SoftTopKLoss: maximise the soft top-k membership of the positives (DEXML's metric-aware loss)."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
import torch
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses import functional
from dexml_hf.losses.base import XMCLoss


class SoftTopKLoss(XMCLoss):
    all_labels_objective = "soft_topk"

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        label_matrix: sp.spmatrix | None = None,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        k: int | str = 5,
        alpha: float = 2.0,
        n_iter: int = 32,
        max_positives: int | None = None,
    ) -> None:
        """
        Soft top-k loss: topk(s)_j = σ(α(s_j + t)) with t chosen per query so that the memberships sum to k
        (bisection, no gradient through the search; the gradient comes from implicit differentiation). The loss is
        −(1/|P|) Σ_p log topk(s)_p, pushing every positive into the query's top k. k = 5 targets P@5, k = 100 R@100.

        Args:
            model: SentenceTransformer model (called only inside ``forward``).
            scale: ``1 / temperature`` applied to the similarities.
            label_matrix: scipy sparse training label matrix (queries × labels); kept on CPU as CSR.
            gather_across_devices: Score against the candidates of every rank.
            similarity_fct: ``cos_sim`` (default) or ``dot_score``.
            k: Size of the soft top-k set, or ``"num_pos"`` for k = the query's number of positives. A query must
                see more candidates than k (a ValueError otherwise: with fewer, every candidate is "in" and the loss
                and its gradient are 0).
            alpha: Sharpness of the sigmoid (2 in the reference).
            n_iter: Bisection steps for the threshold (32 in the reference; two Newton steps polish the result).
            max_positives: Keep at most this many positives per query each step (the row's sampled positive first,
                the others at random); the rest leave the candidates (neither in the constraint nor in the loss). The
                reference samples at most k positives per query, as ``max_positives=k`` does. ``None``: all.

        References:
            - Dual-Encoders for Extreme Multi-Label Classification (Gupta et al., ICLR 2024):
              https://arxiv.org/abs/2310.10636

        Requirements:
            1. (query, positive label[, extra candidates]) rows with a ``label`` column
               ``[query_id, positive_label_id, ...]`` (without it: MNRL semantics).
            2. More candidates than ``k`` per batch (so batch size × columns > k after deduplication).

        Inputs:
            +-----------------------------------------------------+----------------------------------------------+
            | Texts                                               | Labels                                       |
            +=====================================================+==============================================+
            | (query, positive label[, negative_1, ...])          | [query_id, positive_label_id, neg ids ...]   |
            +-----------------------------------------------------+----------------------------------------------+

        Recommendations:
            - Most useful when all labels are scored each step (the trainer's all-label mode), where "top k" means
              the same as at evaluation time.

        Relations:
            - :class:`DecoupledSoftmaxLoss` is the paper's default and trains faster from scratch.

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from dexml_hf import SoftTopKLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = SoftTopKLoss(model, k=5)
        """
        super().__init__(model, scale, label_matrix, gather_across_devices, similarity_fct)
        if isinstance(k, str) and k != "num_pos":
            raise ValueError(f"k must be a positive integer or 'num_pos', got {k!r}")
        if (not isinstance(k, str) and k <= 0) or alpha <= 0 or n_iter <= 0:
            raise ValueError(f"k, alpha and n_iter must be positive, got k={k}, alpha={alpha}, n_iter={n_iter}")
        if max_positives is not None and max_positives <= 0:
            raise ValueError(f"max_positives must be positive or None, got {max_positives}")
        self.k = k
        self.alpha = alpha
        self.n_iter = n_iter
        self.max_positives = max_positives

    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        return functional.soft_topk_loss(scores, positives, self.k, self.alpha, self.n_iter, reduction=reduction)

    def prepare_candidates(self, scores: Tensor, positives: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
        """At most ``max_positives`` positives per query (its sampled one first); the others get score -inf."""
        if self.max_positives is None:
            return scores, positives
        rows, cols = positives.nonzero(as_tuple=True)
        keep = functional.cap_positive_pairs(rows, sampled[rows, cols], self.max_positives, positives.shape[0])
        dropped = torch.zeros_like(positives)
        dropped[rows[~keep], cols[~keep]] = True
        return scores.masked_fill(dropped, float("-inf")), positives & ~dropped
