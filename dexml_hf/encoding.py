"""Embedding texts the way an index expects: the model's role prompt, its normalisation, its name.

Shared by :mod:`dexml_hf.index` (label embeddings) and :mod:`dexml_hf.retrieval` (memory queries), so neither
imports the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["encode_texts", "encoder_dtype", "model_name_of", "prompt_name_for", "resolve_normalize"]


def prompt_name_for(model: SentenceTransformer, role: str) -> str | None:
    """The model's prompt name for ``role`` when it defines a non-empty one, else ``None``.

    ``"query"`` for queries; ``"label"`` for labels, falling back to sentence-transformers' ``"document"``.
    (Sentence-transformers 6 registers empty ``query``/``document`` prompts on every model; empty means none.)
    """
    prompts = getattr(model, "prompts", None) or {}
    candidates = ("label", "document") if role == "label" else (role,)
    return next((name for name in candidates if prompts.get(name)), None)


def resolve_normalize(model: SentenceTransformer, normalize: bool | None = None) -> bool:
    """Whether to L2-normalise embeddings before inner-product search, from the model's similarity function."""
    if normalize is not None:
        return bool(normalize)
    name = str(getattr(model, "similarity_fn_name", "cosine") or "cosine")
    name = getattr(getattr(model, "similarity_fn_name", None), "value", name)
    if name == "cosine":
        return True
    if name == "dot":
        return False
    raise ValueError(
        f"LabelIndex searches by inner product; model similarity {name!r} is not supported (use cosine or dot)"
    )


def encoder_dtype(model) -> torch.dtype | None:
    """The dtype of the model's weights (``None`` for an encoder without torch parameters, e.g. a test table)."""
    try:
        return next(iter(model.parameters())).dtype
    except (AttributeError, StopIteration, TypeError):
        return None


def model_name_of(model: SentenceTransformer) -> str | None:
    """A readable name for the model (Hub id or local path) recorded in the index metadata."""
    card = getattr(model, "model_card_data", None)
    for value in (getattr(card, "model_id", None), getattr(card, "base_model", None)):
        if value:
            return str(value)
    return None


def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    role: str,
    batch_size: int = 64,
    normalize: bool | None = None,
    show_progress_bar: bool | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Embed ``texts`` as ``role`` (``"query"`` or ``"label"``): batched, with the model's prompt of that name
    if it has one, its max length (or ``max_length`` tokens), and normalisation per :func:`resolve_normalize`.
    Returns fp32 on CPU."""
    texts = list(texts)
    if not texts:
        dim = model.get_embedding_dimension() or 0
        return torch.empty((0, dim), dtype=torch.float32)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{role} text #{bad[0]} is {type(texts[bad[0]]).__name__}, expected str")
    normalize = resolve_normalize(model, normalize)
    low_precision = encoder_dtype(model) in (torch.bfloat16, torch.float16)  # a cast: normalise in fp32
    emb = model.encode(
        texts,
        prompt_name=prompt_name_for(model, role),
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_tensor=True,
        normalize_embeddings=normalize and not low_precision,
        **({"processing_kwargs": {"text": {"max_length": max_length}}} if max_length is not None else {}),
    )
    emb = emb.detach().to("cpu", torch.float32)
    return torch.nn.functional.normalize(emb, dim=-1) if normalize and low_precision else emb
