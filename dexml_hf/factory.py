"""The one place that turns names into objects: losses, models, datasets and evaluators.

The trainer, every ``dexml-hf`` command and the model card build through these functions, so a rule (what a Hub id
is, which keyword a loss takes, how a bundled model is found) is written once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from dexml_hf.bundled import BUNDLED_HUB_IDS, bundled_model_path
from dexml_hf.errors import DataError, UsageError

logger = logging.getLogger(__name__)

__all__ = [
    "INFERENCE_DTYPES",
    "cast_for_inference",
    "BUNDLED_PREFIX",
    "LOSSES",
    "build_evaluator",
    "build_loss",
    "hub_base_model",
    "is_hub_id",
    "load_dataset",
    "load_model",
    "loss_class",
    "resolve_model_path",
]

BUNDLED_PREFIX = "bundled:"

# CLI / recipe name -> (class name in dexml_hf.losses, extra constructor options taken from LossArguments)
LOSSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "decoupled_softmax": ("DecoupledSoftmaxLoss", ("logq_correction",)),
    "cached_decoupled_softmax": ("CachedDecoupledSoftmaxLoss", ("logq_correction",)),
    "softmax": ("SoftmaxLoss", ("logq_correction",)),
    "soft_topk": ("SoftTopKLoss", ("k", "alpha", "max_positives")),
    "cached_soft_topk": ("CachedSoftTopKLoss", ("k", "alpha", "max_positives")),
    "ova_bce": ("OvABCELoss", ()),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


# ---------------------------------------------------------------------------------------------------- names
def is_hub_id(name: str) -> bool:
    """A Hub repo id (``user/name`` or ``name``) that is not an existing local path, nor a bundled/synthetic name."""
    if not name or name == "synthetic" or name.startswith(BUNDLED_PREFIX) or Path(name).exists():
        return False
    return bool(_HUB_ID.match(name)) and ".." not in name


def hub_base_model(name: str) -> str | None:
    """The Hub id a card names as ``base_model``: bundled copies are the Hub models they ship; local paths: None."""
    if name.startswith(BUNDLED_PREFIX):
        return BUNDLED_HUB_IDS.get(name[len(BUNDLED_PREFIX) :])
    return name if is_hub_id(name) else None


def resolve_model_path(name: str) -> str:
    """``bundled:all-MiniLM-L6-v2`` / ``bundled:all-mpnet-base-v2`` -> their local folder; other names pass through."""
    if not name.startswith(BUNDLED_PREFIX):
        return name
    return str(bundled_model_path(name[len(BUNDLED_PREFIX) :]))


# ---------------------------------------------------------------------------------------------------- losses
def loss_class(name: str) -> type:
    """The loss class registered under ``name`` (``decoupled_softmax``, ``soft_topk``, ...)."""
    from dexml_hf import losses

    if name not in LOSSES:
        raise UsageError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return getattr(losses, LOSSES[name][0])


def loss_options(name: str, k: int | str = 5, alpha: float = 2.0, logq_correction: bool = False) -> dict[str, Any]:
    """The constructor options of loss ``name`` beyond the common ones (only those the class takes)."""
    # soft top-k: at most k positives per row and step (the reference samples them), the others masked out;
    # k = "num_pos" makes every positive part of the constraint, so none is dropped
    max_positives = None if k == "num_pos" else k
    values = {"k": k, "alpha": alpha, "logq_correction": logq_correction, "max_positives": max_positives}
    if logq_correction and "logq_correction" not in LOSSES[name][1]:
        raise UsageError(f"logq_correction applies to the softmax losses, not to loss={name!r}")
    return {key: values[key] for key in LOSSES[name][1] if key != "logq_correction" or logq_correction}


def build_loss(
    name: str,
    model,
    temperature: float = 0.05,
    label_matrix=None,
    world_size: int = 1,
    **options: Any,
):
    """Loss ``name`` with scale 1/τ, the training label matrix (masking), the model's similarity (cosine or dot;
    others refused) and, across processes, the batch gathered from every rank (in-batch negatives of the global
    batch)."""
    from sentence_transformers.util import cos_sim, dot_score

    from dexml_hf.model_options import check_similarity

    cls = loss_class(name)
    similarity = {"cosine": cos_sim, "dot": dot_score}[check_similarity(model)]
    return cls(
        model,
        scale=1.0 / temperature,
        label_matrix=label_matrix,
        gather_across_devices=world_size > 1,
        similarity_fct=similarity,
        **loss_options(name, **options),
    )


# ---------------------------------------------------------------------------------------------------- models
def load_model(
    name: str,
    revision: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_seq_length: int | None = None,
    token: str | None = None,
    dtype: str | None = None,
):
    """A SentenceTransformer from a local folder, a Hub id or a bundled name, by one rule:

    a released DEXML checkpoint, or a plain transformers encoder (no ``modules.json``), goes through
    :func:`~dexml_hf.hub.load_dexml_model` (CLS pooling unless ``pooling``); a sentence-transformers model loads as
    it is, then ``pooling`` / ``normalize`` / ``max_seq_length`` adjust it (:func:`~dexml_hf.hub.adjust_pipeline`).
    With ``normalize`` given, ``similarity_fn_name`` becomes ``cosine`` (normalised) or ``dot`` (the losses and the
    label index read it); otherwise the model's own similarity is kept. A ``max_seq_length`` beyond the encoder's
    position embeddings, and a euclidean / manhattan similarity, are refused (:mod:`dexml_hf.model_options`).
    ``dtype`` (``float32``, ``bfloat16``, ``float16``) casts the weights for inference (:func:`cast_for_inference`).
    """
    from sentence_transformers import SentenceTransformer

    from dexml_hf.hub import adjust_pipeline, get_checkpoint, load_dexml_model
    from dexml_hf.model_options import check_similarity

    path = resolve_model_path(name)
    local = Path(path)
    if not local.exists() and not is_hub_id(path):
        raise DataError(f"model {name}: no such folder, and not a valid Hub model id")
    released = get_checkpoint(name) is not None
    if released or not _has_modules_json(path, revision, token):
        model = load_dexml_model(
            path,
            revision=revision,
            normalize=normalize,
            max_seq_length=max_seq_length,
            pooling_mode=pooling or (None if released else "cls"),
            token=token,
        )
    else:
        model = SentenceTransformer(path, revision=revision, token=token)
        adjust_pipeline(model, pooling_mode=pooling, normalize=normalize, max_seq_length=max_seq_length, name=name)
    check_similarity(model)
    cast_for_inference(model, dtype)
    base = hub_base_model(name)
    if base is not None:
        model.model_card_data.base_model = base
    return model


INFERENCE_DTYPES = ("float32", "bfloat16", "float16")


def cast_for_inference(model, dtype: str | None):
    """Cast the encoder's weights to ``dtype`` for encoding (predict, evaluate, index, memory; not training).

    ``bfloat16`` runs the encoder about 2× faster on CPUs with AVX512-BF16 (benchmarks/RESULTS.md) with embeddings
    whose cosine to fp32 is ≥ 0.9999; ``float16`` is for CUDA only (torch's CPU fp16 kernels are slower than fp32).
    Embeddings still come out fp32 and are normalised in fp32 (:func:`~dexml_hf.encoding.encode_texts`)."""
    import torch

    if dtype is None or dtype == "float32":
        return model
    if dtype not in INFERENCE_DTYPES:
        raise UsageError(f"dtype {dtype!r}: expected one of {', '.join(INFERENCE_DTYPES)}")
    if dtype == "float16" and model.device.type == "cpu":
        raise UsageError("dtype float16 is for CUDA: on CPU use bfloat16 (torch's CPU fp16 kernels are slow)")
    return model.to(getattr(torch, dtype))


def _has_modules_json(path: str, revision: str | None, token: str | None) -> bool:
    local = Path(path)
    if local.is_dir():
        return (local / "modules.json").is_file()
    from huggingface_hub import file_exists

    try:
        return file_exists(path, "modules.json", revision=revision, token=token)
    except Exception as err:  # noqa: BLE001 - offline or unknown repo: SentenceTransformer reports it precisely
        logger.warning(
            "could not check %s for modules.json (%s); loading it as a sentence-transformers model", path, err
        )
        return True


# ---------------------------------------------------------------------------------------------------- datasets
def load_dataset(
    source: str,
    format: str | None = None,  # noqa: A002
    revision: str | None = None,
    token: str | None = None,
    max_train_samples: int | None = None,
    synthetic_options: dict[str, Any] | None = None,
    reader_options: dict[str, Any] | None = None,
):
    """The :class:`~dexml_hf.data.XMCDataset` named by ``source``: ``synthetic`` (generated, offline), a local path in
    any supported format, or a Hub dataset id (:func:`~dexml_hf.data.load_xmc_dataset` dispatches the last two);
    the train split cut to its first ``max_train_samples`` queries. ``synthetic_options`` apply to the
    synthetic dataset only, ``reader_options`` to a local format's reader."""
    from dexml_hf.data import load_xmc_dataset

    options = dict(reader_options or {})
    if source == "synthetic":
        from dexml_hf.data.synthetic import SYNTHETIC_NOTICE

        logger.warning(SYNTHETIC_NOTICE)
        options.update(synthetic_options or {})
    dataset = load_xmc_dataset(source, format=format, revision=revision, token=token, **options)
    if max_train_samples is not None and max_train_samples < dataset.num_queries("train"):
        dataset = dataset.head("train", max_train_samples)
    return dataset


# ---------------------------------------------------------------------------------------------------- evaluators
def build_evaluator(dataset, split: str, query_text_mode: str = "title", label_text_mode: str = "title", **kwargs):
    """The :class:`~dexml_hf.evaluation.XMCEvaluator` of ``dataset``'s ``split`` (the only builder)."""
    from dexml_hf.evaluation import XMCEvaluator

    if split not in dataset.splits:
        raise UsageError(f"dataset {dataset.name or ''} has no {split!r} split (has {', '.join(dataset.splits)})")
    return XMCEvaluator.from_xmc_dataset(
        dataset, split=split, query_mode=query_text_mode, label_mode=label_text_mode, **kwargs
    )
