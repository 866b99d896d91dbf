"""SoftmaxLoss: InfoNCE with several positives ("PAL"), the softmax baseline of the DEXML paper."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses import functional
from dexml_hf.losses.base import XMCLoss


class SoftmaxLoss(XMCLoss):
    all_labels_objective = "softmax"

    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        label_matrix: sp.spmatrix | None = None,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        logq_correction: bool = False,
    ) -> None:
        """
        Multi-positive InfoNCE ("PAL"): every positive p of a query is scored against all candidates, the other
        positives included: L = −(1/|P|) Σ_p log(e^{s_p} / Σ_c e^{s_c}). Its optimum spreads probability equally
        over the positives; the paper's :class:`DecoupledSoftmaxLoss` removes that conflict. Candidates are deduped
        by label id and the positives mask is built as in :class:`DecoupledSoftmaxLoss`.

        Args:
            model: SentenceTransformer model (called only inside ``forward``).
            scale: ``1 / temperature`` applied to the similarities.
            label_matrix: scipy sparse training label matrix (queries × labels); kept on CPU as CSR.
            gather_across_devices: Score against the candidates of every rank (same loss as one process on the
                concatenated batch).
            similarity_fct: ``cos_sim`` (default) or ``dot_score``.
            logq_correction: Subtract log q_j, the share of training rows whose positive is label j, from label j's
                in-batch scores (Yi et al., RecSys 2019). In-batch negatives are drawn in proportion to how often a
                label is a positive, so without it the loss pushes popular labels down; with it the in-batch
                softmax estimates the softmax over all labels. Needs the label ids and ``label_matrix``.

        References:
            - Dual-Encoders for Extreme Multi-Label Classification (Gupta et al., ICLR 2024):
              https://arxiv.org/abs/2310.10636

        Requirements:
            1. (query, positive label[, extra candidates]) rows with a ``label`` column
               ``[query_id, positive_label_id, ...]`` (without it: MNRL semantics).

        Inputs:
            +-----------------------------------------------------+----------------------------------------------+
            | Texts                                               | Labels                                       |
            +=====================================================+==============================================+
            | (query, positive label[, negative_1, ...])          | [query_id, positive_label_id, neg ids ...]   |
            +-----------------------------------------------------+----------------------------------------------+

        Recommendations:
            - Prefer :class:`DecoupledSoftmaxLoss` for multi-label data; keep this loss as the baseline.

        Relations:
            - Equals sentence-transformers' ``MultipleNegativesRankingLoss`` when every query has one positive and all
              candidate labels are distinct.

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from dexml_hf import SoftmaxLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = SoftmaxLoss(model, scale=20.0)
        """
        super().__init__(model, scale, label_matrix, gather_across_devices, similarity_fct, logq_correction)

    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        return functional.softmax_pal(scores, positives, reduction=reduction)
