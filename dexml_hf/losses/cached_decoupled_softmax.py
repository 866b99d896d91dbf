"""CachedDecoupledSoftmaxLoss: the decoupled softmax with GradCache, for batches larger than memory allows."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses.cached import CachedXMCMixin
from dexml_hf.losses.decoupled_softmax import DecoupledSoftmaxLoss


class CachedDecoupledSoftmaxLoss(CachedXMCMixin, DecoupledSoftmaxLoss):
    def __init__(
        self,
        model: nn.Module,
        scale: float = 20.0,
        label_matrix: sp.spmatrix | None = None,
        gather_across_devices: bool = False,
        similarity_fct: Callable[[Tensor, Tensor], Tensor] = cos_sim,
        logq_correction: bool = False,
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """
        :class:`DecoupledSoftmaxLoss` with GradCache: the columns are embedded ``mini_batch_size`` rows at a time
        without gradients, the loss and its gradients w.r.t. the embeddings are computed on the whole batch, and each
        mini-batch is re-embedded with gradients during backward. Same loss and gradients as the uncached loss (up to
        float rounding), with activation memory bounded by the mini-batch; costs about one extra forward pass.

        Args:
            model: SentenceTransformer model (called only inside ``forward``).
            scale: ``1 / temperature`` applied to the similarities.
            label_matrix: scipy sparse training label matrix (queries × labels); kept on CPU as CSR.
            gather_across_devices: Score against the candidates of every rank.
            similarity_fct: ``cos_sim`` (default) or ``dot_score``.
            logq_correction: Subtract log q_j, the share of training rows whose positive is label j, from label j's
                in-batch scores (Yi et al., RecSys 2019). In-batch negatives are drawn in proportion to how often a
                label is a positive, so without it the loss pushes popular labels down; with it the in-batch
                softmax estimates the softmax over all labels. Needs the label ids and ``label_matrix``.
            mini_batch_size: Rows embedded at once; bounds memory, not the loss.
            mini_batch_num_tokens: Alternatively, a token budget per mini-batch.
            show_progress_bar: Show a progress bar over the mini-batches.

        References:
            - Dual-Encoders for Extreme Multi-Label Classification (Gupta et al., ICLR 2024):
              https://arxiv.org/abs/2310.10636
            - Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (GradCache):
              https://arxiv.org/abs/2101.06983

        Requirements:
            1. As :class:`DecoupledSoftmaxLoss`: (query, positive label[, extra candidates]) rows and a ``label``
               column ``[query_id, positive_label_id, ...]``.

        Inputs:
            +-----------------------------------------------------+----------------------------------------------+
            | Texts                                               | Labels                                       |
            +=====================================================+==============================================+
            | (query, positive label[, negative_1, ...])          | [query_id, positive_label_id, neg ids ...]   |
            +-----------------------------------------------------+----------------------------------------------+

        Recommendations:
            - Use with a large ``per_device_train_batch_size`` (DEXML uses 512 to 3000) and a small
              ``mini_batch_size``.

        Relations:
            - Same loss as :class:`DecoupledSoftmaxLoss`, which is faster when the batch fits in memory.

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from dexml_hf import CachedDecoupledSoftmaxLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = CachedDecoupledSoftmaxLoss(model, mini_batch_size=64)
        """
        super().__init__(model, scale, label_matrix, gather_across_devices, similarity_fct, logq_correction)
        self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)
