"""Dual encoders for extreme multi-label classification (DEXML) on the Hugging Face stack.

Public names are resolved lazily so ``import dexml_hf`` stays cheap (torch, datasets and
sentence-transformers are only imported when a name that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # losses
    "DecoupledSoftmaxLoss": "dexml_hf.losses",
    "SoftTopKLoss": "dexml_hf.losses",
    "SoftmaxLoss": "dexml_hf.losses",
    "OvABCELoss": "dexml_hf.losses",
    "CachedDecoupledSoftmaxLoss": "dexml_hf.losses",
    "CachedSoftTopKLoss": "dexml_hf.losses",
    # data
    "XMCDataset": "dexml_hf.data",
    "load_xmc_dataset": "dexml_hf.data",
    # evaluation and prediction
    "XMCEvaluator": "dexml_hf.evaluation",
    "xmc_metrics": "dexml_hf.evaluation",
    "LabelIndex": "dexml_hf.index",
    "RetrievalMemory": "dexml_hf.retrieval",
    "tune_retrieval": "dexml_hf.retrieval",
    # training
    "DEXMLTrainer": "dexml_hf.trainer",
    "DEXMLTrainingArguments": "dexml_hf.training_args",
    # hub
    "load_dexml_model": "dexml_hf.hub",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dexml_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
