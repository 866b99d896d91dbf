"""Evaluation for XMC: ranking metrics (numpy), exact chunked top-k, the sentence-transformers evaluator.

``metrics`` is imported eagerly (numpy/scipy only); ``XMCEvaluator`` and the top-k search (torch,
sentence-transformers) resolve on first use, so ``from dexml_hf.evaluation import xmc_metrics`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from dexml_hf.evaluation.metrics import (
    LABEL_GROUPS,
    PROPENSITY_PRESETS,
    bucket_metrics,
    frequency_buckets,
    hits_matrix,
    inv_propensity,
    label_group_metrics,
    metric_contributions,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    psndcg_at_k,
    psp_at_k,
    recall_at_k,
    xmc_metrics,
)

_LAZY = {
    "XMCEvaluator": "dexml_hf.evaluation.evaluator",
    "chunked_topk": "dexml_hf.evaluation.topk",
    "xmc_metric_path": "dexml_hf.evaluation.xmc_metric",
}

__all__ = [
    "LABEL_GROUPS",
    "PROPENSITY_PRESETS",
    "XMCEvaluator",
    "bucket_metrics",
    "chunked_topk",
    "frequency_buckets",
    "hits_matrix",
    "inv_propensity",
    "label_group_metrics",
    "metric_contributions",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "psndcg_at_k",
    "psp_at_k",
    "recall_at_k",
    "xmc_metric_path",
    "xmc_metrics",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dexml_hf.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
