"""DEXML losses as sentence-transformers losses, plus their functional core (:mod:`.functional`)."""

from __future__ import annotations

from dexml_hf.losses.base import XMCLoss
from dexml_hf.losses.cached import CachedXMCMixin
from dexml_hf.losses.cached_decoupled_softmax import CachedDecoupledSoftmaxLoss
from dexml_hf.losses.cached_soft_topk import CachedSoftTopKLoss
from dexml_hf.losses.decoupled_softmax import DecoupledSoftmaxLoss
from dexml_hf.losses.functional import (
    DecoupledSoftmaxAccumulator,
    decoupled_softmax,
    decoupled_softmax_from_lse,
    negative_logsumexp,
    ova_bce,
    soft_topk,
    soft_topk_loss,
    softmax_pal,
)
from dexml_hf.losses.ova_bce import OvABCELoss
from dexml_hf.losses.soft_topk import SoftTopKLoss
from dexml_hf.losses.softmax import SoftmaxLoss

__all__ = [
    "XMCLoss",
    "CachedXMCMixin",
    "DecoupledSoftmaxLoss",
    "CachedDecoupledSoftmaxLoss",
    "SoftmaxLoss",
    "OvABCELoss",
    "SoftTopKLoss",
    "CachedSoftTopKLoss",
    "DecoupledSoftmaxAccumulator",
    "decoupled_softmax",
    "decoupled_softmax_from_lse",
    "negative_logsumexp",
    "ova_bce",
    "soft_topk",
    "soft_topk_loss",
    "softmax_pal",
]
