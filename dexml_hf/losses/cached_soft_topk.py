"""CachedSoftTopKLoss: the soft top-k loss with GradCache, so "top k of the batch" can be top k of thousands."""

from __future__ import annotations

from collections.abc import Callable

import scipy.sparse as sp
from sentence_transformers.util import cos_sim
from torch import Tensor, nn

from dexml_hf.losses.cached import CachedXMCMixin
from dexml_hf.losses.soft_topk import SoftTopKLoss


class CachedSoftTopKLoss(CachedXMCMixin, SoftTopKLoss):
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
        mini_batch_size: int = 32,
        mini_batch_num_tokens: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        """
        :class:`SoftTopKLoss` with GradCache: columns are embedded ``mini_batch_size`` rows at a time without
        gradients, the soft top-k loss and its gradients w.r.t. the embeddings are computed on the whole batch, and
        each mini-batch is re-embedded with gradients during backward. Same loss and gradients as the uncached loss
        (up to float rounding). In-batch, the soft top-k only means "top k among the labels" when the batch holds
        many labels; this makes batches of thousands fit in memory.

        Args:
            model: SentenceTransformer model (called only inside ``forward``).
            scale: ``1 / temperature`` applied to the similarities.
            label_matrix: scipy sparse training label matrix (queries × labels); kept on CPU as CSR.
            gather_across_devices: Score against the candidates of every rank.
            similarity_fct: ``cos_sim`` (default) or ``dot_score``.
            k: Size of the soft top-k set.
            alpha: Sharpness of the sigmoid (2 in the reference).
            n_iter: Bisection steps for the threshold.
            max_positives: At most this many positives per query each step, as in :class:`SoftTopKLoss`.
            mini_batch_size: Rows embedded at once; bounds memory, not the loss.
            mini_batch_num_tokens: Alternatively, a token budget per mini-batch.
            show_progress_bar: Show a progress bar over the mini-batches.

        References:
            - Dual-Encoders for Extreme Multi-Label Classification (Gupta et al., ICLR 2024):
              https://arxiv.org/abs/2310.10636
            - Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup (GradCache):
              https://arxiv.org/abs/2101.06983

        Requirements:
            1. As :class:`SoftTopKLoss`: (query, positive label[, extra candidates]) rows and a ``label`` column
               ``[query_id, positive_label_id, ...]``; more deduplicated candidates per batch than ``k``.

        Inputs:
            +-----------------------------------------------------+----------------------------------------------+
            | Texts                                               | Labels                                       |
            +=====================================================+==============================================+
            | (query, positive label[, negative_1, ...])          | [query_id, positive_label_id, neg ids ...]   |
            +-----------------------------------------------------+----------------------------------------------+

        Relations:
            - Same loss as :class:`SoftTopKLoss`, which is faster when the batch fits in memory.

        Example:
            ::

                from sentence_transformers import SentenceTransformer
                from dexml_hf import CachedSoftTopKLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                loss = CachedSoftTopKLoss(model, k=5, mini_batch_size=64)
        """
        super().__init__(
            model, scale, label_matrix, gather_across_devices, similarity_fct, k, alpha, n_iter, max_positives
        )
        self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)
