"""GradCache for the DEXML losses, on top of sentence-transformers' :class:`CachedLossMixin`.

The mixin embeds every column in mini-batches without gradients, computes the loss on the full batch, caches the
gradients w.r.t. the embeddings, then re-embeds each mini-batch with gradients (replaying the RNG state so dropout
matches) during backward. Loss and gradients equal the uncached loss; memory is bounded by ``mini_batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from torch import Tensor

GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


class CachedXMCMixin(CachedLossMixin):
    """Turns any :class:`~dexml_hf.losses.base.XMCLoss` subclass into its GradCache version.

    Use as the first base: ``class CachedSoftTopKLoss(CachedXMCMixin, SoftTopKLoss)``, then call
    ``self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)`` in ``__init__``.
    """

    def _init_cache(
        self, mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False
    ) -> None:
        if mini_batch_size <= 0:
            raise ValueError(f"mini_batch_size must be positive, got {mini_batch_size}")
        if mini_batch_num_tokens is not None and mini_batch_num_tokens <= 0:
            raise ValueError(f"mini_batch_num_tokens must be positive or None, got {mini_batch_num_tokens}")
        self.mini_batch_size = mini_batch_size
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        sentence_features = list(sentence_features)
        if len(sentence_features) < 2:
            raise ValueError(f"{type(self).__name__} needs a query column and at least one label column")
        return self.forward_cached(sentence_features, labels)

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        embeddings = [torch.cat(column) for column in reps]
        loss = self.compute_loss_from_embeddings_list(embeddings, labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "mini_batch_size": self.mini_batch_size,
            "mini_batch_num_tokens": self.mini_batch_num_tokens,
        }

    @property
    def citation(self) -> str:
        return super().citation + GRADCACHE_CITATION
