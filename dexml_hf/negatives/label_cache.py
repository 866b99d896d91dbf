"""The 'all_cached' mode's label-embedding table: every label embedded without grad, refreshed every N steps.

Scoring a batch against L cached embeddings costs one B × L product instead of encoding L labels; the price is
staleness (and no gradient into non-batch labels). The batch's own positives are re-embedded with gradient and
replace their cached rows, so the positive side is always fresh.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["LabelEmbeddingCache"]


class LabelEmbeddingCache:
    """Label embeddings (L × d, fp32, no grad) with the optimizer step they were computed at."""

    def __init__(
        self, label_texts: Sequence[str], refresh_steps: int, batch_size: int = 256, max_length: int | None = None
    ) -> None:
        if refresh_steps <= 0:
            raise ValueError(f"label_refresh_steps must be > 0, got {refresh_steps}")
        self.label_texts = label_texts
        self.refresh_steps = refresh_steps
        self.batch_size = batch_size
        self.max_length = max_length  # the training token limit: the table matches the re-embedded positives
        self.embeddings: Tensor | None = None
        self.step: int | None = None

    def is_stale(self, step: int) -> bool:
        return self.embeddings is None or self.step is None or step - self.step >= self.refresh_steps

    def refresh(self, model, step: int, device: torch.device | None = None) -> Tensor:
        """Re-embed every label with ``model`` (raw embeddings; the loss's similarity normalises if it must)."""
        from dexml_hf.index import encode_texts

        was_training = model.training
        try:
            emb = encode_texts(
                model,
                list(self.label_texts),
                "label",
                batch_size=self.batch_size,
                normalize=False,
                max_length=self.max_length,
            )
        finally:
            model.train(was_training)
        emb = emb.to(device) if device is not None else emb
        if emb.is_inference():  # encoded under inference_mode: autograd could not save it for the queries' gradient
            emb = emb.clone()
        self.embeddings = emb
        self.step = step
        return self.embeddings

    def get(self, model, step: int, device: torch.device | None = None) -> Tensor:
        if self.is_stale(step):
            self.refresh(model, step, device)
        return self.embeddings

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved table as given (``checkpoints.load_negatives_state`` puts it on the model's device)."""
        self.embeddings = state["embeddings"]
        self.step = state["step"]
