"""GradCache for the DEXML losses, on top of sentence-transformers' :class:`CachedLossMixin`.

The mixin embeds every column in mini-batches without gradients, computes the loss on the full batch, caches the
gradients w.r.t. the embeddings, then re-embeds each mini-batch with gradients (replaying the RNG state so dropout
matches) during backward. Loss and gradients equal the uncached loss; memory is bounded by ``mini_batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    _validate_mini_batch_num_tokens,
    has_static_embedding_input,
)
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


def _has_static_embedding(model) -> bool:
    """sentence-transformers' guard, for models it can inspect (a SentenceTransformer, i.e. an nn.Sequential)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)  # a DDP wrapper
    return isinstance(inner, torch.nn.Sequential) and len(inner) > 0 and has_static_embedding_input(inner)


class CachedXMCMixin(CachedLossMixin):
    """Turns any :class:`~dexml_hf.losses.base.XMCLoss` subclass into its GradCache version.

    Use as the first base: ``class CachedSoftTopKLoss(CachedXMCMixin, SoftTopKLoss)``, then call
    ``self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)`` in ``__init__``.
    """

    def _init_cache(
        self, mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False
    ) -> None:
        if _has_static_embedding(self.model):
            raise ValueError(
                f"{type(self).__name__} is not compatible with a SentenceTransformer model based on a StaticEmbedding, "
                "whose inputs cannot be split into mini-batches along a batch dimension. Use the uncached loss."
            )
        if mini_batch_size <= 0:
            raise ValueError(f"mini_batch_size must be positive, got {mini_batch_size}")
        _validate_mini_batch_num_tokens(mini_batch_num_tokens)
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
        loss = self.compute_loss_from_embeddings(embeddings, labels)
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss

    @property
    def citation(self) -> str:
        return super().citation + GRADCACHE_CITATION
