"""DecoupledSoftmaxLoss: the DEXML loss (each positive competes with the negatives only)."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses import functional
from dexml_hf.losses.base import XMCLoss


class DecoupledSoftmaxLoss(XMCLoss):
    all_labels_objective = "decoupled_softmax"

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
        The decoupled softmax of DEXML: for a query with positive labels P, each positive p is scored against
        the query's negatives only, L = −(1/|P|) Σ_p log(e^{s_p} / (e^{s_p} + Σ_n e^{s_n})). Unlike InfoNCE with
        several positives (:class:`SoftmaxLoss`), the other positives never sit in a positive's denominator, so the
        loss does not fight itself when a query has many labels.

        Candidates are the label columns of the batch (in-batch negatives plus any extra columns), deduplicated by
        label id so each label is scored once. A candidate is a positive of query b if it is the positive of any
        batch row with b's query id, or (with ``label_matrix``) any label of b in the training label matrix, so a
        true label is never pushed away as a negative, wherever in the batch it came from.

        Args:
            model: SentenceTransformer model (called only inside ``forward``, so a trainer may swap in a DDP wrapper).
            scale: Multiplies the similarities: ``scale = 1 / temperature`` (DEXML uses τ = 0.05, i.e. 20).
            label_matrix: scipy sparse queries × labels matrix of the training split (row = ``query_id``,
                column = label id). Kept on CPU as CSR. Without it only the positives named in the batch count.
            gather_across_devices: All-gather queries, candidates and ids across ranks (with gradients) so every
                query is scored against the candidates of all ranks. The loss then equals the single-process loss on
                the concatenated batch (its gradient, after DDP's averaging, too). Every rank must use the same
                batch size.
            similarity_fct: Similarity of query and label embeddings, ``cos_sim`` by default; use
                ``sentence_transformers.util.dot_score`` with ``scale=1`` for unnormalised DEXML checkpoints.
            logq_correction: Subtract log q_j, the share of training rows whose positive is label j, from label j's
                in-batch scores (Yi et al., RecSys 2019). In-batch negatives are drawn in proportion to how often a
                label is a positive, so without it the loss pushes popular labels down; with it the in-batch
                softmax estimates the softmax over all labels. Needs the label ids and ``label_matrix``.

        References:
            - Dual-Encoders for Extreme Multi-Label Classification (Gupta et al., ICLR 2024):
              https://arxiv.org/abs/2310.10636

        Requirements:
            1. (query, positive label) pairs, optionally with extra candidate label columns.
            2. A ``label`` column ``[query_id, positive_label_id, <one id per extra column>]``. Without a ``label``
               column the loss falls back to MultipleNegativesRankingLoss semantics: candidate i is query i's
               only positive and nothing is deduplicated.

        Inputs:
            +-----------------------------------------------------+----------------------------------------------+
            | Texts                                               | Labels                                       |
            +=====================================================+==============================================+
            | (query, positive label) pairs                       | [query_id, positive_label_id]                |
            +-----------------------------------------------------+----------------------------------------------+
            | (query, positive label, negative_1, ..., negative_m) | [query_id, positive_label_id, neg_1_id, ...] |
            +-----------------------------------------------------+----------------------------------------------+
            | (query, positive label) pairs                       | none (MNRL semantics)                        |
            +-----------------------------------------------------+----------------------------------------------+

        Recommendations:
            - Pass the training ``label_matrix``: with many labels per query, in-batch candidates are often other
              positives of the same query.
            - Use large batches: :class:`CachedDecoupledSoftmaxLoss` gives the same loss and gradients with bounded
              memory, and ``gather_across_devices=True`` shares candidates across GPUs.

        Relations:
            - :class:`SoftmaxLoss` keeps the other positives in the denominator (the "PAL" softmax baseline).
            - :class:`CachedDecoupledSoftmaxLoss` is the GradCache version of this loss.
            - :class:`SoftTopKLoss` optimises a top-k metric directly; :class:`OvABCELoss` is the one-vs-all baseline.

        Example:
            ::

                import scipy.sparse as sp
                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
                from dexml_hf import DecoupledSoftmaxLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "query": ["How do I proof bread dough?", "Best oil for deep frying?"],
                    "positive": ["bread", "frying"],
                    "label": [[0, 0], [1, 2]],
                })
                label_matrix = sp.csr_matrix(([1, 1, 1], ([0, 0, 1], [0, 1, 2])), shape=(2, 3))
                loss = DecoupledSoftmaxLoss(model, label_matrix=label_matrix)
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
        """
        super().__init__(model, scale, label_matrix, gather_across_devices, similarity_fct, logq_correction)

    def loss_fn(self, scores: Tensor, positives: Tensor, reduction: str) -> Tensor:
        return functional.decoupled_softmax(scores, positives, reduction=reduction)
