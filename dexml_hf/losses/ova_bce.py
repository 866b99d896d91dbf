"""OvABCELoss: one-vs-all binary cross-entropy, the baseline that fails to train a dual encoder in the paper."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses import functional
from dexml_hf.losses.base import XMCLoss


class OvABCELoss(XMCLoss):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        label_matrix: sp.spmatrix | None = None,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
    ) -> None:
        """
        One-vs-all binary cross-entropy over the (deduped) batch candidates: per query, the mean over candidates of
        log(1 + e^{s_c}) − y_c s_c; queries without a positive among the candidates contribute nothing. Kept as the
        paper's baseline (P@1 0.1 on EURLex-4K when training a dual encoder).

        Args:
            model: SentenceTransformer model (called only inside ``forward``).
            scale: ``1 / temperature`` applied to the similarities (the logits are ``scale * similarity``).
            label_matrix: scipy sparse training label matrix (queries × labels); kept on CPU as CSR.
            gather_across_devices: Score against the candidates of every rank.
            similarity_fct: ``cos_sim`` (default) or ``dot_score``.

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
            - Use it as a baseline only; :class:`DecoupledSoftmaxLoss` is what trains a dual encoder.

        Relations:
            - :class:`DecoupledSoftmaxLoss`, :class:`SoftmaxLoss`, :class:`SoftTopKLoss` share its inputs.

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from dexml_hf import OvABCELoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = OvABCELoss(model)
        """
        super().__init__(model, scale, label_matrix, gather_across_devices, similarity_fct)

    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        return functional.ova_bce(scores, positives, reduction=reduction)
